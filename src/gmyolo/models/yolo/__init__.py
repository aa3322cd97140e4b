"""YOLO detectors from model YAML: the builder, the module registry, the YOLOv5 blocks and the heads."""

from ...errors import ModelConfigError
from .anchor_free import AnchorFreeDetect
from .builder import BackboneOutput, LayerRow, load_model_yaml, packaged_models, parse_model, resolve_model_path
from .head import OUTPUT_FORMATS, Detect
from .model import DetectionModel, is_head
from .registry import MODULES, register_module

__all__ = [
    "AnchorFreeDetect",
    "BackboneOutput",
    "is_head",
    "OUTPUT_FORMATS",
    "Detect",
    "DetectionModel",
    "LayerRow",
    "MODULES",
    "ModelConfigError",
    "load_model_yaml",
    "packaged_models",
    "parse_model",
    "register_module",
    "resolve_model_path",
]
