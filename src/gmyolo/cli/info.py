"""``gmyolo info``: a model's stages, parameters and MACs at a given input size."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..models.groupmixformer import groupmixformer, variant_name
from ..models.summary import count_macs, count_parameters, groupmixformer_stages

DEFAULT_MODEL = "groupmixformer-t"


def image_size(values: list[int]) -> tuple[int, int]:
    """--imgsz 224 -> (224, 224); --imgsz 480 640 -> (480, 640) as height, width."""
    if len(values) not in (1, 2) or min(values) < 1:
        raise ValueError(f"--imgsz takes one or two positive integers (H W), got {values}")
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def add_info_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("info", help="per-stage table, parameters and MACs of a model")
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"model name (default {DEFAULT_MODEL}); groupmixformer-m, -t, -s, -b or -l",
    )
    p.add_argument(
        "--imgsz", type=int, nargs="+", default=[224], metavar="N", help="input size: N or H W (default 224)"
    )
    p.add_argument("--num-classes", type=int, default=1000, help="classifier classes (default 1000)")
    p.add_argument("--features", action="store_true", help="features mode: no classifier, four stage maps")
    p.add_argument(
        "--aggregator",
        default="conv",
        choices=["conv", "min", "avg", "max"],
        help="GMA aggregator (official weights only fit 'conv')",
    )
    p.add_argument("--weights", default=None, help="load an authors'-format checkpoint first")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    p.set_defaults(run=run_info)


def run_info(args: argparse.Namespace) -> dict[str, Any]:
    imgsz = image_size(args.imgsz)
    name = f"groupmixformer-{variant_name(args.model)}"
    model = groupmixformer(
        args.model,
        pretrained=args.weights,
        num_classes=args.num_classes,
        features_only=args.features,
        aggregator=args.aggregator,
    )
    rows = groupmixformer_stages(model, imgsz)
    summary = {
        "model": name,
        "imgsz": list(imgsz),
        "params": count_parameters(model),
        "macs": count_macs(model, imgsz),
        "stages": [
            dict(
                name=r.name,
                channels=r.channels,
                depth=r.depth,
                stride=r.stride,
                output_shape=list(r.output_shape),
                params=r.params,
            )
            for r in rows
        ],
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return summary
    print(f"{name}  input 1x3x{imgsz[0]}x{imgsz[1]}")
    header = f"{'layer':<8}{'channels':>9}{'depth':>7}{'stride':>8}  {'output shape':<22}{'params':>13}"
    print(header)
    print("-" * len(header))
    for r in rows:
        stride = str(r.stride) if r.stride else "-"
        shape = "x".join(map(str, r.output_shape))
        print(f"{r.name:<8}{r.channels:>9}{r.depth:>7}{stride:>8}  {shape:<22}{r.params:>13,}")
    print("-" * len(header))
    print(
        f"parameters {summary['params']:,}   MACs {summary['macs'] / 1e9:.3f} G "
        "(torch.utils.flop_counter: convs and matmuls)"
    )
    return summary
