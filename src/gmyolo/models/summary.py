"""Model size and cost: parameters, multiply-accumulates (MACs) and a per-stage table.

MACs are counted with PyTorch's own ``torch.utils.flop_counter.FlopCounterMode`` on a real forward
pass (FLOPs / 2). It counts convolutions and matrix products; norms and elementwise ops are not
counted, which is why its totals sit 0.5–1.3% below the fvcore numbers in the GroupMixFormer paper.
The unfused model is counted with its GMA blocks in their segment form: its arithmetic is the spec's (the
batched form and the fused inference path pad some kernels, which GPUs take for fewer launches).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .groupmixformer import GMABlock, GroupMixFormer, stage_output_sizes

__all__ = ["StageRow", "count_parameters", "count_macs", "groupmixformer_stages"]


@dataclass(frozen=True)
class StageRow:
    name: str
    channels: int
    depth: int
    stride: int
    output_shape: tuple[int, ...]
    params: int


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, imgsz: tuple[int, int], in_chans: int = 3) -> int:
    """Multiply-accumulates of one eval-mode forward pass on a 1×in_chans×H×W input."""
    was_training = model.training
    forms = {block: block.form for block in model.modules() if isinstance(block, GMABlock)}
    model.eval()
    for block in forms:
        block.form = "segments"  # the spec's arithmetic, whatever the device
    param = next(model.parameters())
    x = torch.zeros(1, in_chans, *imgsz, dtype=param.dtype, device=param.device)
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            model(x)
    finally:
        model.train(was_training)
        for block, form in forms.items():
            block.form = form
    return counter.get_total_flops() // 2


def groupmixformer_stages(model: GroupMixFormer, imgsz: tuple[int, int]) -> list[StageRow]:
    """One row for the stem, each built stage, and the classifier (if any); shapes for batch 1."""
    cfg = model.config
    sizes = stage_output_sizes(*imgsz)
    stem_hw = sizes[0]
    rows = [
        StageRow(
            "stem",
            cfg["embedding_dims"][0],
            2,
            4,
            (1, cfg["embedding_dims"][0], *stem_hw),
            count_parameters(model.conv_stem),
        )
    ]
    for i in range(model.num_stages):
        params = count_parameters(model.patch_embed_layers[i]) + count_parameters(model.groupmixformer_backbone[i])
        c = cfg["embedding_dims"][i]
        rows.append(
            StageRow(f"stage{i}", c, cfg["serial_depths"][i], model.stage_strides[i], (1, c, *sizes[i]), params)
        )
    if not model.features_only:
        head_params = count_parameters(model.norm4) + count_parameters(model.head)
        rows.append(StageRow("head", model.num_classes, 1, 0, (1, model.num_classes), head_params))
    return rows
