"""gmyolo: YOLO object detection with GroupMixFormer (Group-Mix Attention) backbones.

``import gmyolo`` is cheap: the names below are imported on first use (``from gmyolo import YOLO``
loads PyTorch and the model code; OpenCV, ONNX, timm and matplotlib load with the commands that use them).
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "YOLO", "CheckpointError", "DetectionModel", "GroupMixFormer", "groupmixformer"]

_LAZY = {
    "YOLO": "gmyolo.api",
    "CheckpointError": "gmyolo.errors",
    "DetectionModel": "gmyolo.models.yolo",
    "GroupMixFormer": "gmyolo.models.groupmixformer",
    "groupmixformer": "gmyolo.models.groupmixformer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # once
        return value
    raise AttributeError(f"module 'gmyolo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
