"""``gmyolo bench``: how fast a model runs on this machine, and where the training time goes.

Parameters and MACs; the kernel-launching ops of a training forward + backward (what a small GPU step costs:
:mod:`gmyolo.tools.opcount`); inference latency at batch 1 and throughput at a larger batch in every mode
(eager, fused, channels-last, torch.compile, on CUDA a captured CUDA graph, ONNX Runtime, and for
GroupMixFormer the literal spec-order implementation as a reference); a training step (forward, loss,
backward, optimizer; with ``--amp`` and ``--compile`` as ``gmyolo train`` applies them, the first step's time
apart, and the peak GPU memory); predict end to end on one image (decode, letterbox, model, NMS); the training
data pipeline with the loader workers ``gmyolo train`` would use, and the verdict: compute-bound or data-bound
(the loader slower than the training step), with the rate of training steps fed by that loader. Each section
is logged as it finishes.

The defaults fit a minute per model on a GPU at 640 px, batch 64: on CUDA the inference modes are eager,
fused, channels-last and a CUDA graph (torch.compile, ONNX Runtime and the literal reference when asked for
with ``--modes``), and the data pipeline is timed in one round of each kind.

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

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..data.config import load_dataset_config
from ..data.dataset import build_dataloader, create_dataset, default_workers
from ..data.opencv import cv2
from ..data.synth import make_synthetic_dataset
from ..engine.device import select_device
from ..engine.precision import Precision, compile_model, cudnn_benchmark, resolve_precision, to_float32
from ..models.groupmixformer import GroupMixFormer, groupmixformer, is_variant_name, variant_name
from ..models.groupmixformer.literal import literal_forward_features
from ..models.summary import count_macs, count_parameters
from ..models.yolo import DetectionModel
from ..tasks.detect.hyp import resolve_hyp
from ..tasks.detect.loss import loss_gains, make_loss
from ..tasks.detect.train import build_optimizer
from .opcount import training_ops
from .options import MODES, BenchArgs

__all__ = [
    "BenchArgs",
    "MODES",
    "run_bench",
    "format_report",
    "time_interleaved",
    "summarize",
    "data_pipeline_rates",
    "loader_rate",
    "balance",
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
class Detector:
    """A detector as the bench times it: the training step takes its head's own loss (the head's ``criterion`` and
    hyper-parameter section, as ``gmyolo train`` does); predict end to end and the data pipeline apply."""

    kind = "detector"
    pipeline = True  # `gmyolo predict` end to end and the training data pipeline

    def __init__(self, model: DetectionModel):
        self.model = model
        self.num_classes = model.nc

    def image_size(self, imgsz: int | None) -> tuple[int, int]:
        """``imgsz`` (default 640) rounded up to the model's stride."""
        stride = int(self.model.stride.max())
        size = -(-(imgsz or 640) // stride) * stride
        return size, size

    def targets(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        return synthetic_targets(batch, self.num_classes, generator)

    def training(self, model: DetectionModel, batch: int, size: int) -> tuple[Callable[[Any, Any], torch.Tensor], Any]:
        """(loss of the model's output and the targets, the optimizer ``gmyolo train`` would build at this batch)."""
        head = model.detect
        hyp = resolve_hyp(head=head.hyp_section)
        criterion = make_loss(head, loss_gains(hyp, head, self.num_classes, size))
        optimizer = build_optimizer(model, "auto", hyp, batch, 1, batch)
        return (lambda out, targets: criterion(to_float32(out), targets)[0]), optimizer

    def exported(self, net: DetectionModel) -> DetectionModel:
        net.detect.export = True  # the decoded tensor only, as `gmyolo export` writes it
        return net


class Classifier:
    """A GroupMixFormer classifier (cross-entropy on random labels) or, with ``--features``, its feature pyramid
    (the sum of the maps' means as the loss): AdamW at 1e-4."""

    pipeline = False

    def __init__(self, model: GroupMixFormer):
        self.model = model
        self.kind = "backbone" if model.features_only else "classifier"
        self.num_classes = max(model.num_classes, 1)

    def image_size(self, imgsz: int | None) -> tuple[int, int]:
        return imgsz or 224, imgsz or 224

    def targets(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.num_classes, (batch,), generator=generator)

    def training(self, model: GroupMixFormer, batch: int, size: int) -> tuple[Callable[[Any, Any], torch.Tensor], Any]:
        def loss(out: Any, labels: torch.Tensor) -> torch.Tensor:
            out = to_float32(out)
            if self.kind == "backbone":  # the feature maps
                return torch.stack([m.mean() for m in out]).sum()
            return nn.functional.cross_entropy(out, labels[: len(out)])

        return loss, torch.optim.AdamW(model.parameters(), lr=1e-4)

    def exported(self, net: GroupMixFormer) -> GroupMixFormer:
        return net


def build_subject(args: BenchArgs) -> Detector | Classifier:
    """The model ``--model`` names, in eval mode on CPU: a GroupMixFormer variant (classifier, or its features with
    ``--features``), or a detector (YAML or checkpoint)."""
    if is_variant_name(args.model):
        return Classifier(groupmixformer(variant_name(args.model), features_only=args.features).eval())
    if args.model.endswith((".pt", ".pth")):
        from ..tasks.detect.checkpoint import load_checkpoint, model_from_checkpoint

        return Detector(model_from_checkpoint(load_checkpoint(args.model)).eval())
    return Detector(DetectionModel(args.model).eval())


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


class CudaGraphed:
    """``module`` replayed from CUDA graphs, one captured per input shape (static input and output buffers):
    one launch per forward instead of one per kernel. The output is overwritten by the next call."""

    def __init__(self, module: nn.Module, precision: Precision):
        self.module, self.precision = module, precision
        self.graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, Any]] = {}

    def capture(self, x: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, Any]:
        static_x = x.clone()
        stream = torch.cuda.Stream(x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(stream), self.precision.autocast(cache=False):
            for _ in range(3):  # warm-up outside the graph (lazy buffers, cuDNN's choices)
                self.module(static_x)
        torch.cuda.current_stream(x.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), self.precision.autocast(cache=False):
            static_out = self.module(static_x)
        return graph, static_x, static_out

    def __call__(self, x: torch.Tensor) -> Any:
        key = tuple(x.shape)
        if key not in self.graphs:
            self.graphs[key] = self.capture(x)
        graph, static_x, static_out = self.graphs[key]
        static_x.copy_(x)
        graph.replay()
        return static_out


def with_precision(fn: Callable[[torch.Tensor], Any], precision: Precision) -> Callable[[torch.Tensor], Any]:
    if not precision.enabled:
        return fn

    def run(x: torch.Tensor) -> Any:
        with precision.autocast():
            return fn(x)

    return run


NOT_BY_DEFAULT = {
    "compile": "not run by default (it compiles for minutes); ask with --modes ... compile",
    "onnx": "not run by default on a GPU (export and session start take tens of seconds); ask with --modes ... onnx",
    "literal": "not run by default on a GPU (a slow reference); ask with --modes ... literal",
}


def default_modes(device: torch.device) -> list[str]:
    """The inference modes timed without ``--modes``: on CUDA eager, fused, channels-last and a CUDA graph; on a CPU
    also ONNX Runtime and the literal reference. torch.compile only when asked for."""
    if device.type == "cuda":
        return ["eager", "fused", "channels-last", "cuda-graph"]
    return [m for m in MODES if m not in ("compile", "cuda-graph")]


def inference_modes(
    subject: Detector | Classifier,
    args: BenchArgs,
    device: torch.device,
    workdir: Path,
    precision: Precision | None = None,
) -> tuple[dict[str, Callable[[torch.Tensor], Any]], dict[str, str]]:
    """The forward function of each mode, and why the modes that do not run were skipped.

    The PyTorch modes run under ``precision``'s autocast (bf16 or fp16 on a GPU with ``--amp auto``); ONNX
    Runtime runs the exported fp32 graph.
    """
    precision = precision or Precision(device.type)
    wanted = args.modes or default_modes(device)
    runs: dict[str, Callable[[torch.Tensor], Any]] = {}
    skipped: dict[str, str] = {}
    if args.modes is None:
        skipped.update({m: why for m, why in NOT_BY_DEFAULT.items() if m not in wanted})
        if device.type != "cuda":
            skipped["cuda-graph"] = "CUDA only"
    eager = subject.model.to(device).eval()
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
        elif mode == "cuda-graph":
            if device.type != "cuda":
                skipped[mode] = "CUDA only"
            else:
                runs[mode] = CudaGraphed(copy.deepcopy(fused), precision)
        elif mode == "onnx":
            if device.type == "cuda" and "CUDAExecutionProvider" not in onnxruntime_providers():
                skipped[mode] = "this onnxruntime has no CUDA provider"
                continue
            net = subject.exported(copy.deepcopy(fused).cpu())
            example = torch.rand(1, 3, *subject.image_size(args.imgsz), generator=torch.Generator().manual_seed(0))
            try:
                runs[mode] = onnx_session(net, example, workdir, torch.get_num_threads(), device)
            except Exception as e:  # an exporter or ORT failure is a result to report, not a crash
                skipped[mode] = f"export or ONNX Runtime failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
    for mode in runs:
        if mode not in ("onnx", "cuda-graph"):  # ONNX runs its fp32 graph; the graphs captured their autocast
            runs[mode] = with_precision(runs[mode], precision)
    return runs, skipped


def bench_inference(
    subject: Detector | Classifier,
    args: BenchArgs,
    device: torch.device,
    workdir: Path,
    precision: Precision | None = None,
) -> dict[str, Any]:
    """Latency at batch 1 and throughput at ``--infer-batch`` (default ``--batch``) for each mode; speed-ups and
    max |output - eager|."""
    precision = precision or Precision(device.type)
    runs, skipped = inference_modes(subject, args, device, workdir, precision)
    h, w = subject.image_size(args.imgsz)
    rows = []
    with torch.inference_mode():
        for batch in sorted({1, args.infer_batch or args.batch}):
            rows += bench_batch(runs, skipped, batch, (h, w), args, device)
    return {"imgsz": [h, w], "precision": precision.name, "rows": rows, "skipped": skipped}


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


def train_step_fn(
    subject: Detector | Classifier, args: BenchArgs, device: torch.device, precision: Precision
) -> tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], torch.optim.Optimizer, nn.Module]:
    """One training step as ``gmyolo train`` runs it, on a copy of the subject's model: ``step(images, targets)``
    runs the forward under ``precision``'s autocast (compiled with ``--compile``), the subject's loss in fp32,
    backward (scaled for fp16), clipping and the optimizer; returns the loss."""
    model = copy.deepcopy(subject.model).to(device).train()
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    for m in model.modules():
        if hasattr(m, "set_grad_checkpointing"):  # GroupMixFormer, timm backbones
            m.set_grad_checkpointing(args.grad_checkpointing)
    forward = compile_model(model, device, args.compile)
    scaler = precision.scaler()
    criterion, optimizer = subject.training(model, args.batch, subject.image_size(args.imgsz)[0])

    def loss_fn(x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with precision.autocast():
            out = forward(x)
        return criterion(out, targets)

    def step(x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(x.contiguous(memory_format=layout), targets)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()

    step.loss_fn = loss_fn  # type: ignore[attr-defined]  (saved_activation_bytes)
    return step, optimizer, model


def bench_train_step(
    subject: Detector | Classifier, args: BenchArgs, device: torch.device, precision: Precision | None = None
) -> dict[str, Any]:
    """Forward, loss, backward, gradient clipping and optimizer step at ``args.batch`` on random data."""
    precision = precision or Precision(device.type)
    g = torch.Generator().manual_seed(0)
    h, w = subject.image_size(args.imgsz)
    x = torch.rand(args.batch, 3, h, w, generator=g).to(device)
    targets = subject.targets(args.batch, g).to(device)
    step, optimizer, trained = train_step_fn(subject, args, device, precision)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with cudnn_benchmark(args.autotune and device.type == "cuda"):  # as `gmyolo train` runs its steps
        t0 = time.perf_counter()
        step(x, targets)  # the first step: cuDNN's autotuning, lazy initialisation, compilation with --compile
        sync()
        first = time.perf_counter() - t0
        times = time_interleaved({"train": lambda: step(x, targets)}, args.repeats, args.warmup, device)["train"]
    optimizer.zero_grad(set_to_none=True)
    result = {"batch": args.batch, "imgsz": [h, w], **summarize(times, args.batch), "first_step_s": first}
    result["optimizer"] = type(optimizer).__name__
    result["precision"] = precision.name + (" + GradScaler" if precision.scaled else "")
    result["compile"] = args.compile
    result["channels_last"] = args.channels_last
    result["autotune"] = args.autotune and device.type == "cuda"
    can = any(hasattr(m, "set_grad_checkpointing") for m in trained.modules())
    result["grad_checkpointing"] = bool(args.grad_checkpointing and can)
    if device.type == "cuda":  # the peak of the timed steps, before the activation count below
        result["cuda_max_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    if args.compile == "off":  # saved-tensor hooks are eager-mode machinery
        result["saved_activations_mb"] = saved_activation_bytes(lambda: step.loss_fn(x, targets)) / 2**20
    optimizer.zero_grad(set_to_none=True)
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


def bench_predict(subject: Detector, args: BenchArgs, device: torch.device, workdir: Path) -> dict[str, Any]:
    """`gmyolo predict` on one 1080×810 JPEG: decode, letterbox, fused model, NMS; time of each part."""
    from ..data.sources import read_image
    from ..tasks.detect.backends import TorchBackend
    from ..tasks.detect.predict import PredictArgs, Predictor

    model = subject.model
    backend = TorchBackend(copy.deepcopy(model), device, {"stride": int(model.stride.max())})
    predictor = Predictor(backend, PredictArgs(imgsz=subject.image_size(args.imgsz)[0]))
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


class Repeated(Dataset):
    """``dataset`` ``times`` over (index i is sample i mod n): enough batches per epoch for every worker of a
    large loader, from a small generated dataset."""

    def __init__(self, dataset: Dataset, times: int):
        self.dataset, self.times = dataset, times

    def __len__(self) -> int:
        return len(self.dataset) * self.times

    def __getitem__(self, i: int):
        return self.dataset[i % len(self.dataset)]


def loader_rate(
    dataset: Dataset,
    batch: int,
    workers: int | None,
    rounds: int = 3,
    pin_memory: bool = False,
    consume: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """Images/s of a training loader as ``gmyolo train`` builds it (persistent workers, prefetching).

    Each worker makes whole batches, so the first round of ``workers`` batches is warm-up (it arrives all
    at once, after the workers' start); then ``rounds`` rounds are timed. ``consume`` (e.g. a training
    step) runs on every batch, so the rate is then that of training fed by this loader.
    """
    workers = default_workers(batch) if workers is None else workers
    loader = build_dataloader(dataset, batch, workers, shuffle=True, seed=0, pin_memory=pin_memory)
    warm, timed = max(workers, 1), rounds * max(workers, 1)
    batches, epoch = iter(loader), 0
    seen, start = 0, time.perf_counter()
    for k in range(warm + timed):
        if k == warm:
            seen, start = 0, time.perf_counter()
        try:
            b = next(batches)
        except StopIteration:
            epoch += 1
            loader.sampler.set_epoch(epoch)
            batches = iter(loader)
            b = next(batches)
        if consume is not None:
            consume(b)
        seen += len(b[0])
    seconds = time.perf_counter() - start
    return {"workers": loader.num_workers, "images": seen, "seconds": seconds, "images_per_s": seen / seconds}


def data_pipeline_rates(
    data_yaml: str | os.PathLike,
    imgsz: int,
    batch: int,
    workers: list[int | None],
    samples: int = 64,
    repeats: int = 3,
    mosaic: tuple[float, ...] = (1.0,),
) -> dict[str, Any]:
    """Training images/s: decode + augmentation in this process (per mosaic setting), then whole loaders
    (``None`` in ``workers``: the number ``gmyolo train`` picks), medians of ``repeats``."""
    data = load_dataset_config(data_yaml)
    result: dict[str, Any] = {"imgsz": imgsz, "batch": batch, "one_process": {}, "loader": {}}
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
        n = default_workers(batch) if w is None else w
        repeated = Repeated(ds, -(-(max(n, 1) * batch * 2) // len(ds)))  # >= 2 batches per worker and epoch
        runs = [
            loader_rate(repeated, batch, n, rounds=max(1, samples // (batch * max(n, 1))) + 1) for _ in range(repeats)
        ]
        rates = [r["images_per_s"] for r in runs]
        result["loader"][str(runs[0]["workers"])] = {
            "median": statistics.median(rates),
            "min": min(rates),
            "max": max(rates),
        }
    return result


def bench_data(
    subject: Detector,
    args: BenchArgs,
    device: torch.device,
    workdir: Path,
    precision: Precision,
    train_rate: float | None,
) -> dict[str, Any]:
    """The training data pipeline at the model's size and ``--batch`` with ``--workers`` (default: what
    ``gmyolo train`` picks): in this process, through the loader, and (with the training step) training
    fed by that loader; the balance between them. One round of each: a rate, not its spread (a loader's start
    and a batch of mosaics at 640 px take seconds each; ``benchmarks/data_pipeline.py`` measures the spread)."""
    h, _ = subject.image_size(args.imgsz)
    yaml_file = make_synthetic_dataset(workdir / "synth", seed=0, n_train=32, n_val=4, imgsz=h)
    workers = default_workers(args.batch) if args.workers is None else args.workers
    result = data_pipeline_rates(yaml_file, h, args.batch, [workers], samples=args.batch, repeats=1)
    result["workers"] = workers
    result["workers_default"] = args.workers is None
    result["images"] = f"synthetic PNGs of about {h} px, mosaic on"
    rate = result["loader"][str(workers)]["median"]
    result["images_per_s"] = rate
    if train_rate is not None:
        data = load_dataset_config(yaml_file)
        ds, _ = create_dataset(data, "train", h, augment=True, hyp={"mosaic": 1.0})
        step, _, _ = train_step_fn(subject, args, device, precision)

        def train_on(batch: Any) -> None:
            images, targets = batch[0], batch[1]
            step(images.to(device, non_blocking=True).float() / 255, targets.to(device))

        fed = loader_rate(
            Repeated(ds, -(-(max(workers, 1) * args.batch * 2) // len(ds))),
            args.batch,
            workers,
            rounds=1,
            pin_memory=device.type == "cuda",
            consume=train_on,
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        result["training_fed_images_per_s"] = fed["images_per_s"]
        result["balance"] = balance(train_rate, rate, fed["images_per_s"], workers)
    return result


def balance(train_rate: float, data_rate: float, fed_rate: float | None, workers: int) -> dict[str, Any]:
    """Which side limits training: ``data`` when the loader delivers fewer images/s than the step consumes."""
    bound = "data" if data_rate < train_rate else "compute"
    ratio = data_rate / train_rate
    if bound == "data":
        text = (
            f"data-bound: the loader ({workers} worker(s)) delivers {data_rate:.1f} images/s, the training step could "
            f"take {train_rate:.1f} ({1 / ratio:.2f}x): more --workers, --cache, or smaller images on disk"
        )
    else:
        text = (
            f"compute-bound: the loader ({workers} worker(s)) delivers {data_rate:.1f} images/s, {ratio:.2f}x the "
            f"{train_rate:.1f} images/s the training step takes"
        )
    if fed_rate is not None:
        text += f"; training fed by this loader: {fed_rate:.1f} images/s"
    return {"bound": bound, "data_over_train": ratio, "text": text}


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
    precision = resolve_precision(args.amp, device)
    subject = build_subject(args)
    model = subject.model
    h, w = subject.image_size(args.imgsz)
    report: dict[str, Any] = {
        "model": args.model,
        "kind": subject.kind,
        "environment": dataclasses.asdict(environment(device)),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "params": count_parameters(model),
        "macs": count_macs(model, (h, w)),
        "precision": precision.name,
    }
    LOGGER.info("bench %s: %s", args.model, model_line(report, (h, w)))
    if args.train:
        report["ops"] = training_ops(model, (h, w), device, precision)
        LOGGER.info("bench %s: %s", args.model, ops_line(report["ops"]))
    with tempfile.TemporaryDirectory(prefix="gmyolo-bench-") as tmp:
        workdir = Path(tmp)
        report["inference"] = bench_inference(subject, args, device, workdir, precision)
        LOGGER.info("bench %s: inference (%d threads, %s, %s)\n%s", args.model, torch.get_num_threads(), device,
                    precision.name, "\n".join(inference_lines(report["inference"])))  # fmt: skip
        if args.train:
            report["train"] = bench_train_step(subject, args, device, precision)
            LOGGER.info("bench %s: %s", args.model, train_line(report["train"]))
        if args.predict and subject.pipeline:
            report["predict"] = bench_predict(subject, args, device, workdir)
            LOGGER.info("bench %s: %s", args.model, predict_line(report["predict"]))
        if args.data and subject.pipeline:
            train_rate = report["train"]["images_per_s"] if "train" in report else None
            report["data"] = bench_data(subject, args, device, workdir, precision, train_rate)
            LOGGER.info("bench %s: %s", args.model, " ".join(data_lines(report["data"])))
    return report


def model_line(r: dict[str, Any], size: tuple[int, int]) -> str:
    return f"{r['model']} ({r['kind']}): {r['params']:,} parameters, {r['macs'] / 1e9:.2f} GMACs at {size[0]}x{size[1]}"


def ops_line(ops: dict[str, Any]) -> str:
    top = ", ".join(f"{k} {v}" for k, v in ops["top"].items())
    return f"ops per training step: {ops['ops']:,} kernel-launching ops ({ops['counted']}; {top})"


def inference_lines(inf: dict[str, Any]) -> list[str]:
    lines = [
        f"{'mode':<14}{'batch':>6}{'median ms':>11}{'min..max ms':>19}{'img/s':>9}{'vs eager':>10}{'vs literal':>11}"
        f"{'max|diff|':>11}"
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
    return lines


def train_line(t: dict[str, Any]) -> str:
    kept = t.get("saved_activations_mb")
    line = (
        f"training step (forward, loss, backward, {t['optimizer']} step; {t['precision']}"
        + (f", compiled ({t['compile']})" if t["compile"] != "off" else "")
        + (", channels-last" if t.get("channels_last") else "")
        + (", cuDNN autotuning" if t.get("autotune") else "")
        + f"), batch {t['batch']} at {t['imgsz'][0]}x{t['imgsz'][1]}: median {t['median_ms']:.0f} ms "
        f"({t['min_ms']:.0f}..{t['max_ms']:.0f}), {t['images_per_s']:.2f} images/s; "
        f"first step {t['first_step_s']:.1f} s"
        + (f"; {kept:.0f} MB of activations kept for backward" if kept is not None else "")
        + (" (grad checkpointing)" if t["grad_checkpointing"] else "")
    )
    if "cuda_max_memory_mb" in t:
        line += f"; peak GPU memory {t['cuda_max_memory_mb']:.0f} MB"
    return line


def predict_line(p: dict[str, Any]) -> str:
    return (
        f"predict end to end on a {p['image']} (fused model): {p['total_ms']:.1f} ms = decode {p['decode_ms']:.1f}"
        f" + letterbox {p['preprocess_ms']:.1f} + model {p['inference_ms']:.1f} + NMS {p['nms_ms']:.1f} ms "
        f"(model {100 * p['model_share']:.0f}%)"
    )


def data_lines(d: dict[str, Any]) -> list[str]:
    rates = [f"one process {v['median']:.1f}" for v in d["one_process"].values()]
    rates += [
        f"DataLoader with {w} worker(s){' (the default)' if d.get('workers_default') else ''} {v['median']:.1f}"
        for w, v in d["loader"].items()
    ]
    lines = [f"training data pipeline at {d['imgsz']} px (mosaic on), images/s: " + ", ".join(rates)]
    if "balance" in d:
        lines.append(d["balance"]["text"])
    return lines


def format_report(r: dict[str, Any]) -> str:
    """The benchmark as tables for people (the lines each section logged as it finished, together)."""
    env = r["environment"]
    inf = r["inference"]
    lines = [
        model_line(r, tuple(inf["imgsz"])),
        f"{env['device']} {env['device_name']}, {env['threads']} thread(s), {inf.get('precision', 'fp32')}, "
        f"torch {env['torch']}, "
        f"onnxruntime {env['onnxruntime']}; medians of {r['repeats']} runs after {r['warmup']} warm-up, "
        "modes interleaved",
    ]
    if "ops" in r:
        lines.append(ops_line(r["ops"]))
    lines += ["", *inference_lines(inf)]
    if "train" in r:
        lines += ["", train_line(r["train"])]
    if "predict" in r:
        lines += ["", predict_line(r["predict"])]
    if "data" in r:
        lines += ["", *data_lines(r["data"])]
    return "\n".join(lines)
