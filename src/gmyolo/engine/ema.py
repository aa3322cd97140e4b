"""Exponential moving average of a model's weights and buffers, as YOLOv5 keeps it."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

__all__ = ["make_ema"]


def make_ema(model: nn.Module, decay: float, tau: float) -> AveragedModel:
    """EMA of weights and buffers; the decay ramps up as decay·(1 − exp(−updates/tau)) (YOLOv5)."""

    def ema_avg(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        if not averaged.is_floating_point():
            return current
        d = decay * (1 - math.exp(-float(num_averaged) / tau))
        return averaged * d + current * (1 - d)

    return AveragedModel(model, avg_fn=ema_avg, use_buffers=True)
