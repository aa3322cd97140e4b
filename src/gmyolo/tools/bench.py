"""``gmyolo bench``: how fast a model runs on this machine.

Parameters and MACs; inference latency and throughput at batch 1 and a larger batch in every mode
(eager, fused, channels-last, torch.compile, ONNX Runtime, and for GroupMixFormer the literal
spec-order implementation as a reference); a training step (forward, loss, backward, optimizer);
predict end to end on one image (decode, letterbox, model, NMS); the training data pipeline.

Every measurement: warm-up runs, then ``repeats`` timed runs. The modes are interleaved run by run,
so that a shared machine's load drifts over all of them alike, and the ratios between modes are
ratios of medians from the same run. The thread count is part of the result.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from ..data.config import load_dataset_config
from ..data.dataset import build_dataloader, create_dataset
from ..data.synth import make_synthetic_dataset
from ..engine.device import select_device
from ..models.groupmixformer import GroupMixFormer, groupmixformer, is_variant_name, variant_name
from ..models.groupmixformer.literal import literal_forward_features
from ..models.summary import count_macs, count_parameters
from ..models.yolo import DetectionModel
from ..tasks.detect.hyp import resolve_hyp
from ..tasks.detect.loss import ComputeLoss, scale_loss_gains
from ..tasks.detect.train import build_optimizer
from .options import MODES, BenchArgs

__all__ = [
    "BenchArgs",
    "MODES",
    "run_bench",
    "format_report",
    "time_interleaved",
    "summarize",
    "data_pipeline_rates",
]

LOGGER = logging.getLogger("gmyolo")


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------
def time_interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int, device: torch.device | None = None
) -> dict[str, list[float]]:
    """Seconds per call of each function: ``warmup`` untimed calls each, then ``repeats`` rounds calling each once."""
    sync = torch.cuda.synchronize if device is not None and device.type == "cuda" else (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times


def summarize(seconds: list[float], images: int = 1) -> dict[str, float]:
    """Median and spread in ms, and images/s at the median."""
    med = statistics.median(seconds)
    return {
        "median_ms": 1e3 * med,
        "min_ms": 1e3 * min(seconds),
        "max_ms": 1e3 * max(seconds),
        "images_per_s": images / med,
    }


# --------------------------------------------------------------------------------------------------
# Models and modes
# --------------------------------------------------------------------------------------------------
def build_model(args: BenchArgs) -> nn.Module:
    """A GroupMixFormer (classifier, or features mode) or a detector (YAML or checkpoint), in eval mode on CPU."""
    if is_variant_name(args.model):
        return groupmixformer(variant_name(args.model), features_only=args.features).eval()
    if args.model.endswith((".pt", ".pth")):
        from ..tasks.detect.checkpoint import load_checkpoint, model_from_checkpoint

        return model_from_checkpoint(load_checkpoint(args.model)).eval()
    return DetectionModel(args.model).eval()


def first_tensor(out: Any) -> torch.Tensor:
    """The decoded detections of a detector, the logits of a classifier, the last map of a backbone."""
    if isinstance(out, tuple):
        out = out[0]
    return out[-1] if isinstance(out, list) else out


def onnx_session(model: nn.Module, example: torch.Tensor, workdir: Path, threads: int, device: torch.device):
    """Export ``model`` with the project's exporter and open it in ONNX Runtime with ``threads`` intra-op threads."""
    import onnxruntime as ort

    from ..tasks.detect.export import export_onnx

    file = export_onnx(model, workdir / "model.onnx", example, {"bench": True})
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    providers = ["CUDAExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(file), options, providers=providers)
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        outs = [torch.from_numpy(o) for o in session.run(None, {name: x.cpu().numpy()})]
        return outs[0] if len(outs) == 1 else outs

    return run


def onnxruntime_providers() -> list[str]:
    try:
        import onnxruntime
    except ImportError:
        return []
    return onnxruntime.get_available_providers()


def inference_modes(
    model: nn.Module, args: BenchArgs, device: torch.device, workdir: Path
) -> tuple[dict[str, Callable[[torch.Tensor], Any]], dict[str, str]]:
    """The forward function of each mode, and why the modes that do not run were skipped."""
    wanted = args.modes or [m for m in MODES if m != "compile" or device.type == "cuda"]
    runs: dict[str, Callable[[torch.Tensor], Any]] = {}
    skipped: dict[str, str] = {}
    if args.modes is None and device.type != "cuda":
        skipped["compile"] = "not run on a CPU by default (it compiles for minutes); ask with --modes ... compile"
    eager = model.to(device).eval()
    fused = copy.deepcopy(eager).fuse()
    for mode in wanted:
        if mode == "literal":
            if not isinstance(eager, GroupMixFormer) or eager.config["aggregator"] != "conv":
                skipped[mode] = "only for GroupMixFormer models (conv aggregator)"
            elif eager.features_only:
                runs[mode] = lambda x: literal_forward_features(eager, x)
            else:
                runs[mode] = lambda x: eager.forward_head(literal_forward_features(eager, x)[-1])
        elif mode == "eager":
            runs[mode] = eager
        elif mode == "fused":
            runs[mode] = fused
        elif mode == "channels-last":
            cl = copy.deepcopy(fused).to(memory_format=torch.channels_last)
            runs[mode] = lambda x, cl=cl: cl(x.contiguous(memory_format=torch.channels_last))
        elif mode == "compile":
            if device.type == "cpu" and not (shutil.which("c++") or shutil.which("g++")):
                skipped[mode] = "torch.compile on a CPU needs a C++ compiler (none found)"
            else:
                runs[mode] = torch.compile(copy.deepcopy(fused))
        elif mode == "onnx":
            if device.type == "cuda" and "CUDAExecutionProvider" not in onnxruntime_providers():
                skipped[mode] = "this onnxruntime has no CUDA provider"
                continue
            net = copy.deepcopy(fused).cpu()
            if isinstance(net, DetectionModel):
                net.detect.export = True  # the decoded tensor only, as `gmyolo export` writes it
            example = torch.rand(1, 3, *image_size(args, model), generator=torch.Generator().manual_seed(0))
            try:
                runs[mode] = onnx_session(net, example, workdir, torch.get_num_threads(), device)
            except Exception as e:  # an exporter or ORT failure is a result to report, not a crash
                skipped[mode] = f"export or ONNX Runtime failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
    return runs, skipped


def image_size(args: BenchArgs, model: nn.Module) -> tuple[int, int]:
    size = args.imgsz or (224 if isinstance(model, GroupMixFormer) else 640)
    if isinstance(model, DetectionModel):
        stride = int(model.stride.max())
        size = -(-size // stride) * stride
    return size, size


def bench_inference(model: nn.Module, args: BenchArgs, device: torch.device, workdir: Path) -> dict[str, Any]:
    """Latency at batch 1 and throughput at ``args.batch`` for each mode; speed-ups and max |output - eager|."""
    runs, skipped = inference_modes(model, args, device, workdir)
    h, w = image_size(args, model)
    rows = []
    with torch.inference_mode():
        for batch in sorted({1, args.batch}):
            rows += bench_batch(runs, skipped, batch, (h, w), args, device)
    return {"imgsz": [h, w], "rows": rows, "skipped": skipped}


def bench_batch(
    runs: dict[str, Callable[[torch.Tensor], Any]],
    skipped: dict[str, str],
    batch: int,
    size: tuple[int, int],
    args: BenchArgs,
    device: torch.device,
) -> list[dict[str, Any]]:
    """One batch size: every mode timed, interleaved; a failing mode moves to ``skipped``."""
    rows = []
    x = torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(batch)).to(device)
    ok: dict[str, Callable[[], Any]] = {}
    outputs = {}
    for mode, fn in list(runs.items()):
        try:
            outputs[mode] = first_tensor(fn(x)).float().cpu()  # also the first warm-up run
            ok[mode] = lambda fn=fn: fn(x)
        except Exception as e:  # e.g. torch.compile failing on this platform: report it, run the others
            skipped[mode] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
            del runs[mode]
    times = time_interleaved(ok, args.repeats, max(args.warmup - 1, 0), device)
    ref = outputs.get("eager")
    for mode, seconds in times.items():
        row = {"mode": mode, "batch": batch, **summarize(seconds, batch)}
        if ref is not None and outputs[mode].shape == ref.shape:
            row["max_abs_diff_vs_eager"] = (outputs[mode] - ref).abs().max().item()
        for base in ("eager", "literal"):
            if base in times:
                row[f"speedup_vs_{base}"] = statistics.median(times[base]) / statistics.median(seconds)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------
# Training step
# --------------------------------------------------------------------------------------------------
def synthetic_targets(batch: int, nc: int, generator: torch.Generator, per_image: int = 4) -> torch.Tensor:
    """YOLO targets [image, class, cx, cy, w, h] (normalised): ``per_image`` random boxes per image."""
    n = batch * per_image
    image = torch.arange(batch).repeat_interleave(per_image).float()
    cls = torch.randint(0, nc, (n,), generator=generator).float()
    wh = 0.05 + 0.3 * torch.rand(n, 2, generator=generator)
    xy = wh / 2 + (1 - wh) * torch.rand(n, 2, generator=generator)
    return torch.cat([image[:, None], cls[:, None], xy, wh], 1)


def saved_activation_bytes(step: Callable[[], torch.Tensor]) -> int:
    """Bytes of tensors the forward pass keeps for the backward pass (each storage counted once)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step()
    loss.backward()
    return sum(seen.values())


def bench_train_step(model: nn.Module, args: BenchArgs, device: torch.device) -> dict[str, Any]:
    """Forward, loss, backward, gradient clipping and optimizer step at ``args.batch`` on random data."""
    model = copy.deepcopy(model).to(device).train()
    g = torch.Generator().manual_seed(0)
    h, w = image_size(args, model)
    x = torch.rand(args.batch, 3, h, w, generator=g).to(device)
    gmf = [m for m in model.modules() if isinstance(m, GroupMixFormer)]
    for m in gmf:
        m.set_grad_checkpointing(args.grad_checkpointing)
    hyp = resolve_hyp()
    if isinstance(model, DetectionModel):
        targets = synthetic_targets(args.batch, model.nc, g).to(device)
        compute_loss = ComputeLoss(model.detect, scale_loss_gains(hyp, model.nc, model.detect.nl, h))
        optimizer = build_optimizer(model, "auto", hyp, args.batch, 1, args.batch)

        def loss_fn() -> torch.Tensor:
            return compute_loss(model(x), targets)[0]
    else:
        labels = torch.randint(0, max(model.num_classes, 1), (args.batch,), generator=g).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def loss_fn() -> torch.Tensor:
            out = model(x)
            return (
                torch.stack([m.float().mean() for m in out]).sum()
                if isinstance(out, list)
                else (nn.functional.cross_entropy(out, labels))
            )

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn().backward()
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = time_interleaved({"train": step}, args.repeats, args.warmup, device)["train"]
    optimizer.zero_grad(set_to_none=True)
    result = {"batch": args.batch, "imgsz": [h, w], **summarize(times, args.batch)}
    result["optimizer"] = type(optimizer).__name__
    result["grad_checkpointing"] = bool(args.grad_checkpointing and gmf)
    result["saved_activations_mb"] = saved_activation_bytes(loss_fn) / 2**20
    if device.type == "cuda":
        result["cuda_max_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


# --------------------------------------------------------------------------------------------------
# Predict end to end, data pipeline
# --------------------------------------------------------------------------------------------------
def test_image(path: Path, width: int = 1080, height: int = 810) -> Path:
    """A photo-like JPEG (smooth gradients, shapes, some texture) to decode."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([xx / width * 255, yy / height * 255, (xx + yy) / (width + height) * 255], -1)
    image += rng.normal(0, 8, image.shape)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width - 100)), int(rng.integers(0, height - 100))
        color = [int(c) for c in rng.integers(0, 255, 3)]
        cv2.rectangle(image, (x0, y0), (x0 + int(rng.integers(40, 300)), y0 + int(rng.integers(40, 300))), color, -1)
    cv2.imwrite(str(path), np.clip(image, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


def bench_predict(model: DetectionModel, args: BenchArgs, device: torch.device, workdir: Path) -> dict[str, Any]:
    """`gmyolo predict` on one 1080×810 JPEG: decode, letterbox, fused model, NMS; time of each part."""
    from ..data.sources import read_image
    from ..tasks.detect.backends import TorchBackend
    from ..tasks.detect.predict import PredictArgs, Predictor

    backend = TorchBackend(copy.deepcopy(model), device, {"stride": int(model.stride.max())})
    predictor = Predictor(backend, PredictArgs(imgsz=image_size(args, model)[0]))
    path = test_image(workdir / "image.jpg")
    parts: dict[str, list[float]] = {"decode": [], "preprocess": [], "inference": [], "nms": [], "total": []}
    for i in range(args.warmup + args.repeats):
        t0 = time.perf_counter()
        frame = read_image(path)
        t1 = time.perf_counter()
        result = predictor(frame, keep_image=False)
        t2 = time.perf_counter()
        if i >= args.warmup:
            parts["decode"].append(1e3 * (t1 - t0))
            parts["total"].append(1e3 * (t2 - t0))
            for k in ("preprocess", "inference", "nms"):
                parts[k].append(result.speed[k])
    out = {f"{k}_ms": statistics.median(v) for k, v in parts.items()}
    out["model_share"] = out["inference_ms"] / out["total_ms"]
    out["image"] = "1080x810 JPEG"
    out["detections"] = len(result.boxes)
    return out


def samples_per_second(dataset, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        dataset[i % len(dataset)]
    return n / (time.perf_counter() - start)


def loader_per_second(dataset, batch: int, workers: int, n_batches: int) -> float:
    loader = build_dataloader(dataset, batch, workers, shuffle=True, seed=0)
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    start, seen = time.perf_counter(), 0
    for _ in range(n_batches):
        try:
            images, *_ = next(it)
        except StopIteration:
            it = iter(loader)
            images, *_ = next(it)
        seen += len(images)
    return seen / (time.perf_counter() - start)


def data_pipeline_rates(
    data_yaml: str | os.PathLike,
    imgsz: int,
    batch: int,
    workers: list[int],
    samples: int = 64,
    repeats: int = 3,
    mosaic: tuple[float, ...] = (1.0,),
) -> dict[str, Any]:
    """Training images/s: decode + augmentation in this process (per mosaic setting), then whole loaders."""
    data = load_dataset_config(data_yaml)
    result: dict[str, Any] = {"imgsz": imgsz, "one_process": {}, "loader": {}}
    for m in mosaic:
        ds, _ = create_dataset(data, "train", imgsz, augment=True, hyp={"mosaic": m})
        samples_per_second(ds, min(8, samples))
        rates = [samples_per_second(ds, samples) for _ in range(repeats)]
        result["one_process"][f"mosaic={m:g}"] = {
            "median": statistics.median(rates),
            "min": min(rates),
            "max": max(rates),
        }
    ds, _ = create_dataset(data, "train", imgsz, augment=True)
    for w in workers:
        rates = [loader_per_second(ds, batch, w, max(2, samples // batch)) for _ in range(repeats)]
        result["loader"][str(w)] = {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}
    return result


# --------------------------------------------------------------------------------------------------
# The whole benchmark
# --------------------------------------------------------------------------------------------------
@dataclass
class Environment:
    device: str
    device_name: str
    threads: int
    torch: str
    onnxruntime: str | None = None


def environment(device: torch.device) -> Environment:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    return Environment(
        str(device), f"{name} ({os.cpu_count()} logical CPUs)", torch.get_num_threads(), torch.__version__, ort_version
    )


def run_bench(args: BenchArgs) -> dict[str, Any]:
    """All sections of the benchmark; a JSON-serialisable dict (see :func:`format_report` for the table)."""
    args.check()
    device = select_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model = build_model(args)
    h, w = image_size(args, model)
    report: dict[str, Any] = {
        "model": args.model,
        "kind": "detector" if isinstance(model, DetectionModel) else "backbone" if args.features else "classifier",
        "environment": dataclasses.asdict(environment(device)),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "params": count_parameters(model),
        "macs": count_macs(model, (h, w)),
    }
    with tempfile.TemporaryDirectory(prefix="gmyolo-bench-") as tmp:
        workdir = Path(tmp)
        LOGGER.info("bench %s: inference (%d threads, %s)", args.model, torch.get_num_threads(), device)
        report["inference"] = bench_inference(model, args, device, workdir)
        if args.train:
            LOGGER.info("bench %s: training step", args.model)
            report["train"] = bench_train_step(model, args, device)
        if args.predict and isinstance(model, DetectionModel):
            LOGGER.info("bench %s: predict end to end", args.model)
            report["predict"] = bench_predict(model, args, device, workdir)
        if args.data and isinstance(model, DetectionModel):
            LOGGER.info("bench %s: data pipeline", args.model)
            yaml_file = make_synthetic_dataset(workdir / "synth", seed=0, n_train=64, n_val=4)
            report["data"] = data_pipeline_rates(yaml_file, h, args.batch, [args.workers], repeats=args.repeats)
    return report


def format_report(r: dict[str, Any]) -> str:
    """The benchmark as tables for people."""
    env = r["environment"]
    inf = r["inference"]
    lines = [
        f"{r['model']} ({r['kind']}): {r['params']:,} parameters, {r['macs'] / 1e9:.2f} GMACs at "
        f"{inf['imgsz'][0]}x{inf['imgsz'][1]}",
        f"{env['device']} {env['device_name']}, {env['threads']} thread(s), torch {env['torch']}, "
        f"onnxruntime {env['onnxruntime']}; medians of {r['repeats']} runs after {r['warmup']} warm-up, "
        "modes interleaved",
        "",
        f"{'mode':<14}{'batch':>6}{'median ms':>11}{'min..max ms':>19}{'img/s':>9}{'vs eager':>10}{'vs literal':>11}"
        f"{'max|diff|':>11}",
    ]
    for row in inf["rows"]:
        spread = f"{row['min_ms']:.1f}..{row['max_ms']:.1f}"
        eager = f"{row['speedup_vs_eager']:.2f}x" if "speedup_vs_eager" in row else "-"
        literal = f"{row['speedup_vs_literal']:.2f}x" if "speedup_vs_literal" in row else "-"
        diff = f"{row['max_abs_diff_vs_eager']:.1e}" if "max_abs_diff_vs_eager" in row else "-"
        lines.append(
            f"{row['mode']:<14}{row['batch']:>6}{row['median_ms']:>11.1f}{spread:>19}{row['images_per_s']:>9.2f}"
            f"{eager:>10}{literal:>11}{diff:>11}"
        )
    for mode, why in inf["skipped"].items():
        lines.append(f"{mode:<14}skipped: {why}")
    if "train" in r:
        t = r["train"]
        lines += [
            "",
            f"training step (forward, loss, backward, {t['optimizer']} step), batch {t['batch']} at "
            f"{t['imgsz'][0]}x{t['imgsz'][1]}: median {t['median_ms']:.0f} ms ({t['min_ms']:.0f}..{t['max_ms']:.0f}), "
            f"{t['images_per_s']:.2f} images/s; {t['saved_activations_mb']:.0f} MB of activations kept for backward"
            + (" (grad checkpointing)" if t["grad_checkpointing"] else ""),
        ]
        if "cuda_max_memory_mb" in t:
            lines[-1] += f"; CUDA peak {t['cuda_max_memory_mb']:.0f} MB"
    if "predict" in r:
        p = r["predict"]
        lines += [
            "",
            f"predict end to end on a {p['image']} (fused model): {p['total_ms']:.1f} ms = decode {p['decode_ms']:.1f}"
            f" + letterbox {p['preprocess_ms']:.1f} + model {p['inference_ms']:.1f} + NMS {p['nms_ms']:.1f} ms "
            f"(model {100 * p['model_share']:.0f}%)",
        ]
    if "data" in r:
        d = r["data"]
        rates = [f"one process {v['median']:.1f}" for v in d["one_process"].values()]
        rates += [f"DataLoader with {w} worker(s) {v['median']:.1f}" for w, v in d["loader"].items()]
        lines += ["", f"training data pipeline at {d['imgsz']} px (mosaic on), images/s: " + ", ".join(rates)]
    return "\n".join(lines)
