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

__all__ = [
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
