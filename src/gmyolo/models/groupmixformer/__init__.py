"""GroupMixFormer (Ge et al., 2023): the model (``model.py``), its inference form (``fused.py``), the
authors' checkpoints (``weights.py``) and the spec's literal operation order (``literal.py``)."""

from ...errors import CheckpointError
from .fused import FusedGMABlock
from .model import (
    AGGREGATORS,
    VARIANTS,
    GMABlock,
    GMAStage,
    GroupMixAttention,
    GroupMixFormer,
    groupmixformer,
    groupmixformer_b,
    groupmixformer_l,
    groupmixformer_m,
    groupmixformer_s,
    groupmixformer_t,
    is_variant_name,
    stage_output_sizes,
    variant_name,
)
from .weights import (
    LoadReport,
    describe_config,
    infer_config_from_state_dict,
    load_checkpoint_state_dict,
    load_groupmixformer_weights,
    read_checkpoint,
    variant_of,
)

__all__ = [
    "AGGREGATORS",
    "VARIANTS",
    "CheckpointError",
    "FusedGMABlock",
    "GMABlock",
    "GMAStage",
    "GroupMixAttention",
    "GroupMixFormer",
    "LoadReport",
    "describe_config",
    "groupmixformer",
    "groupmixformer_b",
    "groupmixformer_l",
    "groupmixformer_m",
    "groupmixformer_s",
    "groupmixformer_t",
    "infer_config_from_state_dict",
    "is_variant_name",
    "load_checkpoint_state_dict",
    "load_groupmixformer_weights",
    "read_checkpoint",
    "stage_output_sizes",
    "variant_name",
    "variant_of",
]
