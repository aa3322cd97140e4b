"""Training hyper-parameters: YOLOv5's defaults plus the settings gmyolo adds, packaged sets, and checking.

A set is a YAML mapping of names to numbers. The packaged sets (``cfg/hyps/<name>.yaml``) list every key;
a user's file may set only some, the rest keep their defaults. Unknown keys are errors that name the file
and suggest the nearest valid key. YOLOv5's own hyp files load as they are: the few YOLOv5 keys gmyolo
has no use for are accepted where their value changes nothing (see ``YOLOV5_ONLY``).
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ...cfg import hyp_names, hyps_dir
from ...data.augment import AUGMENT_DEFAULTS

__all__ = ["HYP_DEFAULTS", "hyp_names", "load_hyp", "resolve_hyp"]

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
    "anchor_t": 4.0,  # anchor-target size ratio threshold for assignment (and AutoAnchor)
    "label_smoothing": 0.0,
    "grad_clip": 10.0,  # max gradient norm
    "ema_decay": 0.9999,  # EMA decay, ramped up over ~ema_tau updates
    "ema_tau": 2000.0,
    **AUGMENT_DEFAULTS,
}

# YOLOv5 keys without a gmyolo counterpart -> the value at which ignoring them changes nothing (None: any
# value; YOLOv5 itself no longer reads iou_t). Other values are errors rather than silently different training.
YOLOV5_ONLY: dict[str, float | None] = {"iou_t": None, "fl_gamma": 0.0, "copy_paste": 0.0}
YOLOV5_ONLY_WHY = {"fl_gamma": "focal loss is not implemented", "copy_paste": "copy-paste needs segment labels"}


def check_hyp(values: Mapping[str, Any], where: str) -> dict[str, float]:
    """Keys known, values numbers; returns them as floats. ``where`` starts every error message."""
    out = {}
    for key, value in values.items():
        if key in YOLOV5_ONLY and key not in HYP_DEFAULTS:
            inert = YOLOV5_ONLY[key]
            if inert is not None and value != inert:
                raise ValueError(f"{where}: '{key}: {value}' is not supported by gmyolo ({YOLOV5_ONLY_WHY[key]})")
            continue
        if key not in HYP_DEFAULTS:
            near = difflib.get_close_matches(str(key), HYP_DEFAULTS, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise ValueError(f"{where}: unknown hyper-parameter '{key}'{hint}")
        out[key] = _number(value, f"{where}: hyper-parameter '{key}'")
    return out


def _number(value: Any, what: str) -> float:
    """A finite number; strings such as '1e-3' count (YAML 1.1 reads exponents without a dot as strings)."""
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        number = float(value)
    except ValueError:
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return number


def load_hyp(source: str | os.PathLike) -> dict[str, float]:
    """The values set by a YAML file or a packaged set ('scratch-high'); checked, not merged with defaults."""
    path = Path(source)
    if not path.is_file():
        name = path.name[:-5] if path.name.endswith(".yaml") else path.name
        packaged = hyps_dir() / f"{name}.yaml"
        if len(path.parts) != 1 or not packaged.is_file():
            names = hyp_names()
            near = difflib.get_close_matches(name, names, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise ValueError(f"hyper-parameter file not found: {source} (packaged sets: {', '.join(names)}){hint}")
        path = Path(str(packaged))
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of hyper-parameter names to numbers")
    return check_hyp(values, str(path))


def resolve_hyp(overrides: Mapping[str, Any] | str | os.PathLike | None = None) -> dict[str, float]:
    """Every hyper-parameter: the defaults updated by ``overrides`` (a mapping, or a set's name or YAML path)."""
    if isinstance(overrides, (str, os.PathLike)):
        return {**HYP_DEFAULTS, **load_hyp(overrides)}
    return {**HYP_DEFAULTS, **check_hyp(overrides or {}, "--hyp")}
