"""gmyolo: YOLO object detection with GroupMixFormer (Group-Mix Attention) backbones."""

__version__ = "0.1.0"

from .api import YOLO  # noqa: E402
from .models.groupmixformer import CheckpointError, GroupMixFormer, groupmixformer  # noqa: E402
from .models.yolo import DetectionModel  # noqa: E402

__all__ = ["__version__", "YOLO", "CheckpointError", "DetectionModel", "GroupMixFormer", "groupmixformer"]
