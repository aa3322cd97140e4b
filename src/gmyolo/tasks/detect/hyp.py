"""Training hyper-parameters: YOLOv5's defaults plus the settings gmyolo adds, packaged sets, and checking.

A set is a YAML mapping of names to numbers. The loss keys depend on the head being trained: YOLOv5's
anchor-based Detect (``box``, ``cls``, ``obj``, ...: :data:`HYP_DEFAULTS`) or the anchor-free heads of
YOLOv8 / YOLO11 / YOLO26 (``box`` 7.5, ``cls`` 0.5, ``dfl`` 1.5 and the end-to-end ``o2m`` schedule:
:data:`ANCHOR_FREE_LOSS`). A set may give values for one head in a section named after it
(``anchor_based:`` / ``anchor_free:``, or as ``anchor_free.box`` on the command line); keys outside a section
apply to whichever head trains and win over the section (so ``--hyp scratch-high box=5`` sets the box gain
of any head). The packaged sets (``cfg/hyps/<name>.yaml``) list every key, their loss gains in the two
sections; a user's file may set only some, the rest keep their defaults. Unknown keys are errors that name
the file and suggest the nearest valid key. YOLOv5's own hyp files load as they are: the few YOLOv5 keys
gmyolo has no use for are accepted where their value changes nothing (see ``YOLOV5_ONLY``).
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ...cfg import hyp_names, hyps_dir
from ...data.augment import AUGMENT_DEFAULTS

__all__ = [
    "HYP_DEFAULTS",
    "ANCHOR_FREE_LOSS",
    "HEAD_SECTIONS",
    "head_defaults",
    "hyp_names",
    "hyp_values",
    "load_hyp",
    "resolve_hyp",
]

LOGGER = logging.getLogger("gmyolo")

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

# The loss of the anchor-free heads (Ultralytics' defaults), in place of YOLOv5's loss keys.
ANCHOR_FREE_LOSS: dict[str, float] = {
    "box": 7.5,  # CIoU box loss gain
    "cls": 0.5,  # class BCE gain
    "dfl": 1.5,  # distribution focal loss gain (reg_max > 1; the L1 side-distance loss with reg_max 1)
    "o2m": 0.8,  # end-to-end heads: weight of the one-to-many loss at the first epoch (one-to-one: 1 - o2m) ...
    "o2m_final": 0.1,  # ... falling linearly to this at the last epoch
}
ANCHOR_BASED_LOSS = ("box", "cls", "cls_pw", "obj", "obj_pw", "anchor_t", "label_smoothing")
HEAD_SECTIONS = ("anchor_based", "anchor_free")  # the heads' names (a head's ``hyp_section``)


def head_defaults(head: str = "anchor_based") -> dict[str, float]:
    """Every hyper-parameter of ``head`` with its default, in the packaged files' order."""
    if head == "anchor_based":
        return dict(HYP_DEFAULTS)
    if head != "anchor_free":
        raise ValueError(f"unknown head {head!r}; known: {', '.join(HEAD_SECTIONS)}")
    out: dict[str, float] = {}
    for key, value in HYP_DEFAULTS.items():
        if key == ANCHOR_BASED_LOSS[0]:
            out.update(ANCHOR_FREE_LOSS)
        if key not in ANCHOR_BASED_LOSS:
            out[key] = value
    return out


ALL_KEYS = {**HYP_DEFAULTS, **ANCHOR_FREE_LOSS}

# YOLOv5 keys without a gmyolo counterpart -> the value at which ignoring them changes nothing (None: any
# value; YOLOv5 itself no longer reads iou_t). Other values are errors rather than silently different training.
YOLOV5_ONLY: dict[str, float | None] = {"iou_t": None, "fl_gamma": 0.0, "copy_paste": 0.0}
YOLOV5_ONLY_WHY = {"fl_gamma": "focal loss is not implemented", "copy_paste": "copy-paste needs segment labels"}


def check_hyp(values: Mapping[str, Any], where: str) -> dict[str, float]:
    """Keys known, values numbers; returns them as floats, a head's section as ``<head>.<key>`` entries.
    ``where`` starts every error message."""
    out = {}
    for key, value in values.items():
        head, dot, sub = str(key).partition(".")
        if key in HEAD_SECTIONS and isinstance(value, Mapping):  # a section: anchor_free: {box: 7.5, ...}
            out.update({f"{key}.{k}": v for k, v in check_head_keys(value, key, f"{where}: {key}").items()})
            continue
        if dot and head in HEAD_SECTIONS:  # anchor_free.box=7.5
            out.update({f"{head}.{k}": v for k, v in check_head_keys({sub: value}, head, where).items()})
            continue
        if key in YOLOV5_ONLY and key not in ALL_KEYS:
            inert = YOLOV5_ONLY[key]
            if inert is not None and value != inert:
                raise ValueError(f"{where}: '{key}: {value}' is not supported by gmyolo ({YOLOV5_ONLY_WHY[key]})")
            continue
        if key not in ALL_KEYS:
            raise ValueError(f"{where}: unknown hyper-parameter '{key}'{near_hint(key, [*ALL_KEYS, *HEAD_SECTIONS])}")
        out[key] = _number(value, f"{where}: hyper-parameter '{key}'")
    return out


def check_head_keys(values: Mapping[str, Any], head: str, where: str) -> dict[str, float]:
    known = head_defaults(head)
    out = {}
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"{where}: '{key}' is not a hyper-parameter of the {head} head{near_hint(key, known)}")
        out[key] = _number(value, f"{where}: hyper-parameter '{key}'")
    return out


def near_hint(key: Any, options) -> str:
    near = difflib.get_close_matches(str(key), list(options), n=1)
    return f"; did you mean '{near[0]}'?" if near else ""


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


HypSource = Mapping[str, Any] | str | os.PathLike | Sequence[str] | None


def hyp_values(source: HypSource) -> dict[str, float]:
    """The values a ``--hyp`` source sets (checked, not merged with defaults): a mapping; a packaged set's name or a
    YAML path; or the command line's items, ``[NAME|PATH] [KEY=VALUE ...]``: a set or file first, then overrides on
    top (['scratch-high', 'lr0=0.005'] -> the set's values with lr0 = 0.005)."""
    if isinstance(source, (str, os.PathLike)):
        return load_hyp(source)
    if source is None or isinstance(source, Mapping):
        return check_hyp(source or {}, "--hyp")
    items = list(source)
    out = load_hyp(items.pop(0)) if items and "=" not in items[0] else {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--hyp takes one set name or YAML file first, then KEY=VALUE pairs; got {item!r}")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--hyp {key}: {value!r} is not a number") from None
    return check_hyp(out, "--hyp")


def resolve_hyp(source: HypSource = None, head: str = "anchor_based", report: bool = False) -> dict[str, float]:
    """Every hyper-parameter of ``head``: its defaults, updated by ``source`` (see :func:`hyp_values`): first the
    head's section, then the keys outside sections. Loss keys of the other head are ignored (``report``: say so).
    Training resolves them once, when the model (and so its head's ``hyp_section``) exists."""
    values = hyp_values(source)
    out = head_defaults(head)
    prefix = f"{head}."
    out.update({k[len(prefix) :]: v for k, v in values.items() if k.startswith(prefix)})
    ignored = []
    for key, value in values.items():
        if "." in key:
            continue
        if key in out:
            out[key] = value
        else:
            ignored.append(key)
    if ignored and report:
        LOGGER.info("hyper-parameters %s are not used by the %s head; ignored", ", ".join(ignored), head)
    return out
