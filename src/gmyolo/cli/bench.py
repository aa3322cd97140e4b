"""``gmyolo bench``: parameters, MACs, inference per mode, a training step, predict end to end, data pipeline and
whether training is data-bound."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..engine.options import AMP_MODES
from ..tools.options import MODES, BenchArgs
from .common import add_compile_argument, add_plugin_argument, args_as


def add_parser(commands: argparse._SubParsersAction) -> None:
    d = BenchArgs()
    p = commands.add_parser(
        "bench",
        help="speed of a model on this machine: inference modes, training step, predict, data pipeline",
        description=(
            "Times inference at batch 1 and --infer-batch in each mode (the modes interleaved run by run, medians of "
            "--repeats runs, ratios from the same run), a training step at --batch (with --amp and --compile as "
            "`gmyolo train` applies them; peak GPU memory), predict end to end on one image, and the training data "
            "pipeline with the workers `gmyolo train` would use: compute-bound or data-bound. Prints a table, or "
            "JSON with --json."
        ),
    )
    p.add_argument(
        "--model",
        default=d.model,
        help=f"detector YAML (packaged name or path), gmyolo checkpoint (.pt), or groupmixformer-m|t|s|b|l "
        f"(default {d.model})",
    )
    p.add_argument("--imgsz", type=int, default=None, help="input size (default 640 for a detector, 224 otherwise)")
    p.add_argument(
        "--batch", type=int, default=d.batch, help=f"training step and data pipeline batch (default {d.batch})"
    )
    p.add_argument(
        "--infer-batch", type=int, default=None, help="the inference throughput batch (default: --batch); latency: 1"
    )
    p.add_argument("--device", default=d.device, help="'' (auto), cpu, 0, cuda:0")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads for torch and ONNX Runtime")
    p.add_argument("--repeats", type=int, default=d.repeats, help=f"timed runs per measurement (default {d.repeats})")
    p.add_argument("--warmup", type=int, default=d.warmup, help=f"untimed runs first (default {d.warmup})")
    p.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=None,
        help="inference modes (default: all that apply; compile and cuda-graph only on CUDA: compiling takes "
        "minutes on a CPU)",
    )
    p.add_argument(
        "--amp",
        default=d.amp,
        choices=AMP_MODES,
        help="precision of the training step and the PyTorch inference modes, as `gmyolo train --amp` (default auto: "
        "bf16 or fp16 on a GPU, fp32 on a CPU)",
    )
    add_compile_argument(p, "torch.compile the model in the training step, as `gmyolo train --compile`")
    p.add_argument("--no-train", dest="train", action="store_false", help="skip the training step")
    p.add_argument("--no-predict", dest="predict", action="store_false", help="skip predict end to end")
    p.add_argument("--no-data", dest="data", action="store_false", help="skip the data pipeline")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader workers of the data pipeline (default: as `gmyolo train`, min(8, CPU cores, batch))",
    )
    p.add_argument("--features", action="store_true", help="a GroupMixFormer in features mode (no classifier)")
    p.add_argument(
        "--grad-checkpointing", action="store_true", help="GroupMixFormer activation checkpointing in the training step"
    )
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="the training step's model and images in channels-last memory (cuDNN's NHWC convolutions)",
    )
    p.add_argument(
        "--no-autotune",
        dest="autotune",
        action="store_false",
        help="no cuDNN autotuning in the training step (`gmyolo train` autotunes its steps on CUDA): what the "
        "first step's seconds owe to it",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    add_plugin_argument(p)
    p.set_defaults(run=run_bench_command)


def run_bench_command(args: argparse.Namespace) -> dict[str, Any]:
    from ..tools.bench import format_report, run_bench

    report = run_bench(args_as(BenchArgs, args))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return report
