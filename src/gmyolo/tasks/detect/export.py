"""``gmyolo export`` / ``YOLO(...).export()``: a checkpoint to ONNX or TorchScript, checked against PyTorch.

The exported graph is the fused inference model (BatchNorm folded) returning the decoded tensor of its
head (YOLOv5's B×N×(5+nc), the anchor-free B×N×(4+nc), or the end-to-end B×K×6 top-k rows: the layout is
recorded as ``output_format``); the batch axis is always dynamic, the image size optionally. Class names,
stride, image size, output format and the training dataset travel in the file's metadata, so predict and
val need nothing else. After export the file is run (onnxruntime / torch.jit.load) and compared with
PyTorch on the same inputs; the file is only put in place if the largest difference is within ``tolerance``.
End-to-end outputs are compared as sets of detections (each row against the nearest row of the same class),
since two detections of almost equal score may come out in either order.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from ...data.augment import stride_multiple
from ...errors import ExportError
from ...models.yolo import DetectionModel
from ...models.yolo.head import FORMAT_TASKS
from .backends import METADATA_KEY, Backend, OnnxRuntimeModel, TorchBackend, TorchScriptModel, load_backend
from .options import DEFAULT_OPSET, EXPORT_FORMATS, ExportArgs

__all__ = ["ExportArgs", "ExportError", "export", "export_onnx", "export_torchscript", "OnnxRuntimeModel"]

LOGGER = logging.getLogger("gmyolo")
FORMATS = EXPORT_FORMATS


def inference_model(backend: TorchBackend) -> DetectionModel:
    """A fused copy whose Detect head returns only the decoded tensor (export mode)."""
    model = copy.deepcopy(backend.model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.model[-1].export = True
    return model


@contextlib.contextmanager
def temp_output(final: Path):
    """A temp path beside ``final``; renamed over it only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.stem}.", suffix=final.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def export_onnx(
    model: DetectionModel,
    file: str | os.PathLike,
    example: torch.Tensor,
    metadata: dict[str, Any],
    dynamic: bool = False,
    opset: int = DEFAULT_OPSET,
    dynamo: bool = False,
) -> Path:
    """Write ``model`` (export mode) to ONNX with a dynamic batch (and image size if ``dynamic``) and metadata.
    A segmentation model has two outputs: ``output`` (the detections with their mask coefficients) and
    ``prototypes``."""
    import onnx

    file = Path(file)
    outputs = ["output", "prototypes"] if FORMAT_TASKS[model.output_format] == "segment" else ["output"]
    axes = {"images": {0: "batch"}, **{name: {0: "batch"} for name in outputs}}
    if dynamic:
        axes["images"].update({2: "height", 3: "width"})
        axes["output"][1] = "anchors"
        if "prototypes" in axes:
            axes["prototypes"].update({2: "mask_height", 3: "mask_width"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter; the file is checked afterwards
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=1024)
            shapes = {"x": {0: batch}}
            if dynamic:
                shapes["x"].update({2: 32 * torch.export.Dim("h32", min=1, max=128),
                                    3: 32 * torch.export.Dim("w32", min=1, max=128)})  # fmt: skip
            program = torch.onnx.export(
                model, (example,), dynamo=True, input_names=["images"], output_names=outputs,
                dynamic_shapes=shapes, opset_version=max(opset, 18), verbose=False,
            )  # fmt: skip
            program.save(str(file))
        else:
            torch.onnx.export(
                model, (example,), str(file), dynamo=False, input_names=["images"], output_names=outputs,
                dynamic_axes=axes, opset_version=opset, do_constant_folding=True,
            )  # fmt: skip
    proto = onnx.load(str(file))
    onnx.checker.check_model(proto)
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if batch_dim.HasField("dim_value"):  # torch.export specialises axes the model branches on
        LOGGER.warning("the exporter fixed the batch at %d; the default exporter keeps it dynamic", batch_dim.dim_value)
        metadata = {**metadata, "dynamic_batch": False}
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.save(proto, str(file))
    return file


def export_torchscript(
    model: DetectionModel, file: str | os.PathLike, example: torch.Tensor, metadata: dict[str, Any]
) -> Path:
    """Trace ``model`` (export mode) and save it with the metadata as an extra file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace is deprecated but still what TorchScript needs
        traced = torch.jit.trace(model, example, strict=False, check_trace=False)
    traced.save(str(file), _extra_files={f"{METADATA_KEY}.json": json.dumps(metadata)})
    return Path(file)


def check_inputs(example: torch.Tensor, stride: int, dynamic: bool, dynamic_batch: bool = True) -> list[torch.Tensor]:
    """Inputs the export is compared on: the example, another batch size, and another image size if dynamic."""
    g = torch.Generator().manual_seed(0)
    b, _, h, w = example.shape
    inputs = [example] + ([torch.rand(b + 1, 3, h, w, generator=g)] if dynamic_batch else [])
    if dynamic:
        inputs.append(torch.rand(1, 3, h + stride, max(w - stride, stride), generator=g))
    return inputs


def max_difference(exported: Backend, reference: DetectionModel, inputs: list[torch.Tensor]) -> float:
    """The largest difference between the exported file's outputs and PyTorch's on ``inputs`` (each output: the
    decoded tensor, and a segmentation model's prototypes)."""
    worst = 0.0
    ranked = reference.output_format == "xyxy_score_class"
    with torch.no_grad():
        for x in inputs:
            wanted, gotten = reference(x), exported(x)
            if isinstance(wanted, torch.Tensor):  # one output; a segmentation model has two
                wanted, gotten = (wanted,), (gotten,)
            for want, got in zip(wanted, gotten, strict=True):
                got = got.to(want.device)
                if got.shape != want.shape:
                    raise ExportError(f"exported output has shape {tuple(got.shape)}, PyTorch {tuple(want.shape)}")
                difference = detections_difference(got, want) if ranked else (got - want).abs().max().item()
                worst = max(worst, difference)
    return worst


def detections_difference(got: torch.Tensor, want: torch.Tensor, margin: float = 1e-4) -> float:
    """B×K×6 ranked detections: the largest distance (max |difference| over the 6 values) from a detection of
    either side to the nearest detection of the same class on the other. Rows scoring within ``margin`` of the
    K-th score are only matched, not required: a near-tie at the cut may keep a different detection."""
    worst = 0.0
    for a, b in zip(got.float(), want.float()):
        cut = min(a[:, 4].min().item(), b[:, 4].min().item()) + margin
        for rows, other in ((a, b), (b, a)):
            rows = rows[rows[:, 4] > cut]
            if not len(rows):
                continue
            distance = (rows[:, None, :] - other[None, :, :]).abs().amax(-1)  # K×K
            distance[rows[:, None, 5] != other[None, :, 5]] = float("inf")
            worst = max(worst, distance.amin(1).max().item())
    return worst


def export(args: ExportArgs, model: DetectionModel | None = None) -> dict[str, Any]:
    """Export ``args.weights`` (or ``model``) and check it; returns the file, the max difference and timings."""
    args.check()
    if args.device not in ("", "cpu"):
        LOGGER.info("exporting on the CPU (the exported file runs on any device)")
    backend = load_backend(copy.deepcopy(model) if model is not None else args.weights, "cpu")  # fuses a copy
    if not isinstance(backend, TorchBackend):
        raise ValueError(f"{args.weights}: export needs a gmyolo checkpoint (.pt), not an exported file")
    stride = backend.stride
    size = stride_multiple(args.imgsz or (backend.imgsz[0] if backend.imgsz else 640), stride)
    net = inference_model(backend)
    metadata = {**backend.metadata, "imgsz": [size, size], "dynamic_size": args.dynamic, "dynamic_batch": True}
    if args.output:
        final = Path(args.output)
    elif model is None:
        final = Path(args.weights).with_suffix(FORMATS[args.format])
    else:
        final = Path(f"model{FORMATS[args.format]}")
    example = torch.rand(args.batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    t0 = time.perf_counter()
    with temp_output(final) as tmp:
        if args.format == "onnx":
            export_onnx(net, tmp, example, metadata, args.dynamic, args.opset, args.dynamo)
            exported: Backend = OnnxRuntimeModel(tmp)
        else:
            export_torchscript(net, tmp, example, metadata)
            exported = TorchScriptModel(tmp)
        t1 = time.perf_counter()
        diff = max_difference(exported, net, check_inputs(example, stride, args.dynamic, exported.dynamic_batch))
        if not diff <= args.tolerance:  # also catches NaN
            raise ExportError(
                f"the exported {args.format} model differs from PyTorch by {diff:.3g} (> {args.tolerance:g}); "
                "the file was not written"
            )
    size_mb = final.stat().st_size / 1e6
    LOGGER.info(
        "exported %s (%.1f MB, %s, input %s, %s batch%s) in %.1f s; max |%s - PyTorch| = %.2e on the decoded output",
        final, size_mb, args.format, f"{args.batch}x3x{size}x{size}", "dynamic" if exported.dynamic_batch else "fixed",
        " and image size" if args.dynamic else "", t1 - t0, args.format, diff,
    )  # fmt: skip
    return {"file": str(final), "format": args.format, "max_abs_diff": diff, "seconds": t1 - t0, "imgsz": size}
