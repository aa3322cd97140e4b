"""Training hyper-parameters: YOLOv5's defaults plus the settings gmyolo adds, and checking overrides."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from ..data.augment import AUGMENT_DEFAULTS

__all__ = ["HYP_DEFAULTS", "resolve_hyp"]

HYP_DEFAULTS: dict[str, float] = {
    "lr0": 0.01,  # initial learning rate (SGD; AdamW uses lr0_adamw)
    "lr0_adamw": 0.002,  # initial learning rate with AdamW (transformer backbones)
    "lrf": 0.01,  # final learning rate = lr0 * lrf
    "momentum": 0.937,  # SGD momentum / Adam beta1
    "weight_decay": 0.0005,  # SGD weight decay (scaled by batch size / 64)
    "weight_decay_adamw": 0.05,  # AdamW weight decay
    "backbone_lr_ratio": 0.1,  # learning-rate factor for a pretrained backbone
    "warmup_epochs": 3.0,  # warm-up length (fractions allowed)
    "warmup_momentum": 0.8,  # momentum at the start of warm-up
    "warmup_bias_lr": 0.1,  # bias learning rate at the start of warm-up (SGD)
    "box": 0.05,  # box loss gain
    "cls": 0.5,  # class loss gain
    "cls_pw": 1.0,  # class BCE positive weight
    "obj": 1.0,  # objectness loss gain (scales with pixels)
    "obj_pw": 1.0,  # objectness BCE positive weight
    "anchor_t": 4.0,  # anchor-target size ratio threshold for assignment
    "label_smoothing": 0.0,
    "grad_clip": 10.0,  # max gradient norm
    "ema_decay": 0.9999,  # EMA decay, ramped up over ~ema_tau updates
    "ema_tau": 2000.0,
    **AUGMENT_DEFAULTS,
}


def resolve_hyp(overrides: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Defaults updated with ``overrides``; an unknown key is an error that suggests the nearest valid key."""
    hyp = dict(HYP_DEFAULTS)
    for key, value in (overrides or {}).items():
        if key not in hyp:
            near = difflib.get_close_matches(key, hyp, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise ValueError(f"unknown hyper-parameter '{key}'{hint}")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"hyper-parameter '{key}' must be a number, got {value!r}")
        hyp[key] = float(value)
    return hyp
