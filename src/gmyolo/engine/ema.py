"""Exponential moving average of a model's weights and buffers, as YOLOv5 keeps it."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

__all__ = ["make_ema"]


def make_ema(model: nn.Module, decay: float, tau: float) -> AveragedModel:
    """EMA of weights and buffers; the decay ramps up as decay·(1 − exp(−updates/tau)) (YOLOv5).

    An update is a few multi-tensor kernels, not a few per tensor: on a GPU a per-tensor update of a GroupMixFormer
    detector launched as many kernels as its whole forward and backward, and read the update count back once per
    tensor. Floating tensors move by ``lerp``, which leaves a tensor that did not change exactly as it was;
    integer buffers (BatchNorm's batch counts) take the model's value.
    """

    def ema_update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():  # the tensors come grouped by device and dtype
            torch._foreach_copy_(averaged, current)
            return
        d = decay * (1 - math.exp(-float(num_averaged) / tau))
        torch._foreach_lerp_(averaged, current, 1 - d)

    return AveragedModel(model, multi_avg_fn=ema_update, use_buffers=True)
