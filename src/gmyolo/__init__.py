"""gmyolo: YOLO object detection with GroupMixFormer (Group-Mix Attention) backbones."""

from .models.groupmixformer import CheckpointError, GroupMixFormer, groupmixformer

__version__ = "0.1.0"

__all__ = ["__version__", "CheckpointError", "GroupMixFormer", "groupmixformer"]
