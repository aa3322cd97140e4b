"""Models: the GroupMixFormer backbone/classifier and model summaries."""

from .groupmixformer import (
    VARIANTS,
    CheckpointError,
    GroupMixFormer,
    groupmixformer,
    groupmixformer_b,
    groupmixformer_l,
    groupmixformer_m,
    groupmixformer_s,
    groupmixformer_t,
)
from .yolo import DetectionModel, ModelConfigError

__all__ = [
    "DetectionModel",
    "ModelConfigError",
    "VARIANTS",
    "CheckpointError",
    "GroupMixFormer",
    "groupmixformer",
    "groupmixformer_m",
    "groupmixformer_t",
    "groupmixformer_s",
    "groupmixformer_b",
    "groupmixformer_l",
]
