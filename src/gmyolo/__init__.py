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


def _register_with_timm() -> None:
    """GroupMixFormer joins timm's model registry when timm is imported (now, if it already is): then
    ``timm.create_model("groupmixformer_t", ...)`` works after ``import gmyolo``, in either import order,
    while ``import gmyolo`` alone imports neither timm nor torch."""
    import sys

    if "timm" in sys.modules:
        import gmyolo.models.groupmixformer.timm_models  # noqa: F401

        return
    import importlib.abc
    import importlib.util

    class AfterTimm(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path=None, target=None):
            if name != "timm":
                return None
            sys.meta_path.remove(self)  # once; the real finder is asked next
            spec = importlib.util.find_spec("timm")
            if spec is None or spec.loader is None:
                return spec
            self.loader = spec.loader
            spec.loader = self
            return spec

        def create_module(self, spec):
            return self.loader.create_module(spec)

        def exec_module(self, module):
            self.loader.exec_module(module)
            import gmyolo.models.groupmixformer.timm_models  # noqa: F401

    sys.meta_path.insert(0, AfterTimm())


_register_with_timm()
