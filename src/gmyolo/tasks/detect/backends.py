"""Run a detector from any file it ships as: a gmyolo checkpoint (.pt), ONNX (.onnx) or TorchScript (.torchscript).

Every backend is called with a B×3×H×W float tensor in [0, 1] (RGB, letterboxed) and returns the decoded
tensor of the Detect head, in the layout its ``output_format`` names (YOLOv5's B×N×(5+nc): xywh in input
pixels, objectness, class scores; the anchor-free B×N×(4+nc); the end-to-end B×K×6 top-k rows; see
:data:`gmyolo.models.yolo.head.OUTPUT_FORMATS`). Each also knows the class names, the largest stride, the
image size it was trained or exported at, and whether it accepts other image sizes and batch sizes — so
predict and val treat the three file kinds the same way. Files exported before the layout was recorded
carry YOLOv5's, which is what they hold.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...models.groupmixformer import CheckpointError
from ...models.yolo import OUTPUT_FORMATS, DetectionModel, ModelConfigError
from ...models.yolo.head import YOLOV5_FORMAT
from .checkpoint import load_checkpoint, model_from_checkpoint

__all__ = [
    "Backend",
    "TorchBackend",
    "OnnxRuntimeModel",
    "TorchScriptModel",
    "load_backend",
    "METADATA_KEY",
    "ONNX_SUFFIXES",
    "TORCHSCRIPT_SUFFIXES",
]

LOGGER = logging.getLogger("gmyolo")
METADATA_KEY = "gmyolo"  # ONNX metadata_props key / TorchScript extra file holding the JSON metadata
ONNX_SUFFIXES = (".onnx",)
TORCHSCRIPT_SUFFIXES = (".torchscript", ".ts")


class Backend:
    """What predict and val need from a detector, whatever file it came from."""

    kind = "pytorch"

    def __init__(self, metadata: dict[str, Any], device: torch.device):
        self.metadata = metadata
        self.device = device
        self.names: dict[int, str] = dict(enumerate(metadata.get("names") or []))
        self.stride = int(metadata.get("stride", 32))
        imgsz = metadata.get("imgsz")
        self.imgsz: tuple[int, int] | None = (int(imgsz[0]), int(imgsz[1])) if imgsz else None
        self.dynamic_size = bool(metadata.get("dynamic_size", True))
        self.dynamic_batch = bool(metadata.get("dynamic_batch", True))
        self.data: str | None = metadata.get("data")  # the dataset YAML it was trained on, if known
        self.output_format: str = metadata.get("output_format", YOLOV5_FORMAT)
        if self.output_format not in OUTPUT_FORMATS:
            raise CheckpointError(
                f"this {self.kind} model's output format {self.output_format!r} is not one gmyolo knows "
                f"({', '.join(OUTPUT_FORMATS)}); a newer gmyolo may have written it"
            )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def check_input(self, images: torch.Tensor) -> None:
        """A fixed-size export only takes its own image size (and batch 1 unless the batch is dynamic)."""
        if not self.dynamic_size and self.imgsz and tuple(images.shape[2:]) != self.imgsz:
            raise ValueError(
                f"this {self.kind} model was exported for {self.imgsz[0]}x{self.imgsz[1]} inputs, got "
                f"{images.shape[2]}x{images.shape[3]}: use --imgsz {self.imgsz[0]} or export with --dynamic"
            )
        if not self.dynamic_batch and images.shape[0] != 1:
            raise ValueError(f"this {self.kind} model was exported for batch 1, got a batch of {images.shape[0]}")

    def warmup(self, imgsz: tuple[int, int] | None = None) -> None:
        h, w = imgsz or self.imgsz or (640, 640)
        self(torch.zeros(1, 3, h, w, device=self.device))


class TorchBackend(Backend):
    """A DetectionModel in eval mode (BatchNorm fused unless ``fuse=False``)."""

    def __init__(self, model: DetectionModel, device: torch.device, metadata: dict[str, Any], fuse: bool = True):
        super().__init__({**metadata, "output_format": model.output_format}, device)  # the model knows its own
        model = model.to(device).eval()
        self.model = model.fuse() if fuse else model

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(images.to(self.device, torch.float32))
        return out[0] if isinstance(out, tuple) else out


class OnnxRuntimeModel(Backend):
    """An exported .onnx detector run by onnxruntime (CUDA provider when the device is a GPU and ORT has it)."""

    kind = "ONNX"

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cpu"):
        import onnxruntime as ort

        device = torch.device(device)
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as e:  # ORT raises its own exception types for unreadable or invalid files
            raise CheckpointError(f"{path}: not a valid ONNX model ({str(e).splitlines()[0][:200]})") from None
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        metadata = json.loads(raw) if raw else {}
        if not metadata:
            LOGGER.warning("%s has no gmyolo metadata: class names and image size are unknown", path)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        dims = inp.shape  # ints for fixed axes, names (str) for dynamic ones
        metadata.setdefault("dynamic_batch", not isinstance(dims[0], int))
        metadata.setdefault("dynamic_size", not (isinstance(dims[2], int) and isinstance(dims[3], int)))
        if isinstance(dims[2], int) and isinstance(dims[3], int):
            metadata.setdefault("imgsz", [dims[2], dims[3]])
        super().__init__(metadata, device)
        # ORT returns host arrays; results go back to the requested device for post-processing.

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.check_input(images)
        x = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        outs = [torch.from_numpy(o).to(self.device) for o in self.session.run(None, {self.input_name: x})]
        return outs[0] if len(outs) == 1 else tuple(outs)  # a segmentation model: (detections, prototypes)


class TorchScriptModel(Backend):
    """An exported TorchScript detector (``torch.jit.load``; no Python pickle is involved)."""

    kind = "TorchScript"

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cpu"):
        device = torch.device(device)
        extra = {f"{METADATA_KEY}.json": ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated; the format still loads
                self.module = torch.jit.load(str(path), map_location=device, _extra_files=extra).eval()
        except (RuntimeError, ValueError) as e:
            raise CheckpointError(f"{path}: not a valid TorchScript model ({str(e).splitlines()[0][:200]})") from None
        raw = extra[f"{METADATA_KEY}.json"]
        super().__init__(json.loads(raw) if raw else {}, device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        self.check_input(images)
        out = self.module(images.to(self.device, torch.float32))
        return tuple(out) if isinstance(out, (list, tuple)) else out  # a segmentation model: two outputs


def checkpoint_metadata(ckpt: dict[str, Any], model: DetectionModel) -> dict[str, Any]:
    """Names, stride and training image size of a checkpoint (what exported files carry as metadata)."""
    imgsz = int((ckpt.get("args") or {}).get("imgsz") or 640)
    return {
        "task": "detect",
        "names": [model.names[i] for i in range(model.nc)],
        "stride": int(model.stride.max()),
        "imgsz": [imgsz, imgsz],
        "data": ckpt.get("data"),
        "dynamic_size": True,
        "dynamic_batch": True,
        "output_format": model.output_format,
    }


def load_backend(weights: str | os.PathLike | DetectionModel, device: torch.device | str = "cpu") -> Backend:
    """A backend for a checkpoint (.pt/.pth), an .onnx or .torchscript file, or a DetectionModel in memory."""
    device = torch.device(device)
    if isinstance(weights, DetectionModel):
        meta = {
            "names": [weights.names[i] for i in range(weights.nc)],
            "stride": int(weights.stride.max()),
            "output_format": weights.output_format,
        }
        return TorchBackend(weights, device, meta)
    path = Path(weights)
    suffix = path.suffix.lower()
    if not path.is_file():
        kind = "checkpoint" if suffix not in ONNX_SUFFIXES + TORCHSCRIPT_SUFFIXES else f"{suffix[1:]} file"
        raise FileNotFoundError(f"{kind} not found: {path}")
    if suffix in ONNX_SUFFIXES:
        return OnnxRuntimeModel(path, device)
    if suffix in TORCHSCRIPT_SUFFIXES:
        return TorchScriptModel(path, device)
    ckpt = load_checkpoint(path)
    if ckpt.get("task", "detect") != "detect":
        raise CheckpointError(f"{path}: a {ckpt['task']} checkpoint, not a detector")
    try:
        model = model_from_checkpoint(ckpt)
    except ModelConfigError as e:  # which file the model came from: an unknown module names its plugins
        raise ModelConfigError(f"{path}: {e}") from None
    return TorchBackend(model, device, checkpoint_metadata(ckpt, model))
