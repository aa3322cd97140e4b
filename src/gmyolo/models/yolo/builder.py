"""The model builder: YOLO model YAML read with ``yaml.safe_load`` and checked, then built layer by layer.

A model YAML has ``nc``, ``depth_multiple``, ``width_multiple``, ``anchors`` and ``backbone`` +
``head`` lists of ``[from, number, module, args]``. A module that returns several maps (a
backbone such as GroupMixFormer) occupies one layer index per map: later layers refer to each map
by its index, exactly like any other layer. Names resolve through :mod:`gmyolo.models.yolo.registry`;
errors name the file, line and layer.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from ...cfg import model_names, models_dir
from ...errors import ModelConfigError
from .registry import MODULES, LayerContext, checked

__all__ = [
    "ModelConfigError",
    "BackboneOutput",
    "LayerRow",
    "load_model_yaml",
    "parse_model",
    "packaged_models",
    "resolve_model_path",
]

LOGGER = logging.getLogger("gmyolo")


class BackboneOutput(nn.Module):
    """Placeholder for map ``k`` of the multi-output layer at index ``source`` (it holds no weights).

    It keeps layer indices equal to module positions, so ``model.model[i]`` is YAML layer ``i``.
    """

    def __init__(self, source: int, k: int):
        super().__init__()
        self.source, self.k = source, k

    def forward(self, x):  # never called: the backbone already stored this map
        raise RuntimeError("BackboneOutput is a placeholder and is not run")

    def extra_repr(self) -> str:
        return f"map {self.k} of layer {self.source}"


# --------------------------------------------------------------------------------------------------
# YAML
# --------------------------------------------------------------------------------------------------
def packaged_models() -> list[str]:
    """Names of the model YAMLs shipped with gmyolo."""
    return model_names()


def resolve_model_path(cfg: str | os.PathLike) -> Path:
    """A path, or a packaged name with or without '.yaml' ('yolov5s', 'yolov5s-gmf-t.yaml')."""
    path = Path(cfg)
    if path.is_file():
        return path
    name = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    packaged = models_dir() / name
    if len(path.parts) == 1 and packaged.is_file():
        return Path(str(packaged))
    raise ModelConfigError(f"model config not found: {cfg} (packaged models: {', '.join(packaged_models())})")


def layer_lines(text: str) -> dict[tuple[str, int], int]:
    """Line number (1-based) of every layer entry in the 'backbone' and 'head' lists, and of every
    top-level key (as index -1: ``lines[("nc", -1)]``)."""
    lines: dict[tuple[str, int], int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            lines[(key.value, -1)] = key.start_mark.line + 1
            if key.value in ("backbone", "head") and isinstance(value, yaml.SequenceNode):
                for j, node in enumerate(value.value):
                    lines[(key.value, j)] = node.start_mark.line + 1
    return lines


def load_model_yaml(cfg: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Read a model YAML (path, packaged name or dict) with yaml.safe_load; check the top-level fields."""
    if isinstance(cfg, Mapping):
        d, source, lines = copy.deepcopy(dict(cfg)), "model config", {}
    else:
        path = resolve_model_path(cfg)
        text = path.read_text()
        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ModelConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
        source, lines = str(path), layer_lines(text)
        if not isinstance(d, dict):
            raise ModelConfigError(f"{path}: expected a mapping with nc, anchors, backbone and head")
        d.setdefault("yaml_file", str(path))
    d["_source"], d["_lines"] = source, lines
    check_top_level(d)
    return d


def check_top_level(d: dict[str, Any]) -> None:
    src = d["_source"]

    def at(key: str) -> str:
        line = d["_lines"].get((key, -1))
        return f"{src} line {line}" if line else src

    for key in ("nc", "backbone", "head"):
        if key not in d:
            raise ModelConfigError(f"{src}: missing required field '{key}'")
    if not isinstance(d["nc"], int) or isinstance(d["nc"], bool) or d["nc"] < 1:
        raise ModelConfigError(f"{at('nc')}: 'nc' must be a positive integer, got {d['nc']!r}")
    for key in ("depth_multiple", "width_multiple"):
        v = d.setdefault(key, 1.0)
        if not positive_number(v):
            raise ModelConfigError(f"{at(key)}: '{key}' must be a positive number, got {v!r}")
    for key in ("backbone", "head"):
        if not isinstance(d[key], list):
            raise ModelConfigError(f"{at(key)}: '{key}' must be a list of [from, number, module, args] layers")
    anchors = d.get("anchors")
    if anchors is not None and not (
        (isinstance(anchors, int) and not isinstance(anchors, bool) and anchors > 0)
        or (
            isinstance(anchors, list)
            and anchors
            and all(
                isinstance(a, list) and a and len(a) % 2 == 0 and all(positive_number(v) for v in a) for a in anchors
            )
        )
    ):
        raise ModelConfigError(
            f"{at('anchors')}: 'anchors' must be a count per level or [w1, h1, w2, h2, ...] lists of positive "
            f"numbers, got {anchors!r}"
        )


def positive_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


# --------------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerRow:
    """One line of the layer table."""

    index: int
    source: int | list[int]
    number: int
    params: int
    module: str
    args: list[Any]


def resolve_arg(a: Any, d: dict[str, Any]) -> Any:
    """YOLOv5 writes 'nc', 'anchors' and 'None' as strings; every other string stays a string."""
    if a == "nc":
        return d["nc"]
    if a == "anchors":
        return d.get("anchors")
    if a == "None":
        return None
    return a


def parse_model(d: dict[str, Any], ch: int = 3) -> tuple[nn.Sequential, list[int], list[LayerRow]]:
    """Build the layers of a checked model dict. Returns the layers, the saved indices and the table."""
    anchors, nc, gd, gw = d.get("anchors"), d["nc"], d["depth_multiple"], d["width_multiple"]
    na = (len(anchors[0]) // 2 if isinstance(anchors, list) else anchors) if anchors else 3
    no = na * (nc + 5)
    channels: list[int] = []  # per layer index
    strides: list[float] = []
    layers: list[nn.Module] = []
    rows: list[LayerRow] = []
    save: set[int] = set()
    entries = [("backbone", j, e) for j, e in enumerate(d["backbone"])] + [
        ("head", j, e) for j, e in enumerate(d["head"])
    ]
    for section, j, entry in entries:
        i = len(layers)
        line = d["_lines"].get((section, j))
        where = f"{d['_source']}" + (f" line {line}" if line else "") + f" ({section} entry {j}, layer {i})"
        f, n, name, args, kwargs = check_entry(entry, where, i)
        if name not in MODULES:
            raise ModelConfigError(
                f"{where}: unknown module '{name}'; registered modules: {', '.join(sorted(MODULES))}"
            )
        sources = [f] if isinstance(f, int) else list(f)
        in_ch = [ch if i == 0 else channels[s] for s in sources]
        in_st = [1.0 if i == 0 else strides[s] for s in sources]
        n = max(round(n * gd), 1) if n > 1 else n
        ctx = LayerContext(
            index=i,
            number=n,
            args=[resolve_arg(a, d) for a in args],
            kwargs=kwargs,
            in_channels=in_ch,
            in_strides=in_st,
            width_multiple=gw,
            nc=nc,
            num_outputs_detect=no,
        )
        layer_type = MODULES[name]
        try:
            built = layer_type.rule(checked(layer_type.constructor), ctx)
        except ModelConfigError:
            raise
        except (TypeError, ValueError, IndexError, KeyError, RuntimeError, OSError) as e:
            raise ModelConfigError(f"{where}: cannot build {name} with args {args}: {e}") from None
        module = built.module
        module.i, module.f, module.type = i, f, name
        module.num_outputs = len(built.out_channels)
        params = sum(p.numel() for p in module.parameters())
        rows.append(LayerRow(i, f, n, params, name, built.args))
        save.update(s % i for s in sources if s != -1)
        layers.append(module)
        for k in range(1, module.num_outputs):  # extra maps of a multi-output module get their own indices
            slot = BackboneOutput(i, k)
            slot.i, slot.f, slot.type, slot.num_outputs = i + k, i, "BackboneOutput", 1
            layers.append(slot)
            rows.append(LayerRow(i + k, i, 1, 0, f"  map {k} of layer {i}", []))
        channels.extend(built.out_channels)
        strides.extend(built.out_strides)
    if not layers:
        raise ModelConfigError(f"{d['_source']}: the model has no layers")
    return nn.Sequential(*layers), sorted(save), rows


def check_entry(entry: Any, where: str, i: int) -> tuple[Any, int, str, list[Any], dict[str, Any]]:
    """Validate one [from, number, module, args] entry; a trailing dict in args holds keyword arguments."""
    if not isinstance(entry, list) or len(entry) != 4:
        raise ModelConfigError(f"{where}: a layer must be [from, number, module, args], got {entry!r}")
    f, n, name, args = entry
    sources = [f] if isinstance(f, int) and not isinstance(f, bool) else f
    if (
        not isinstance(sources, list)
        or not sources
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in sources)
    ):
        raise ModelConfigError(f"{where}: 'from' must be a layer index or a list of indices, got {f!r}")
    for s in sources:
        if i == 0 and s != -1:
            raise ModelConfigError(f"{where}: the first layer must read the input (from -1), got {s}")
        if i > 0 and not (-i <= s < i):
            raise ModelConfigError(f"{where}: 'from' index {s} does not name an earlier layer (0..{i - 1} or -1..-{i})")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ModelConfigError(f"{where}: 'number' must be a positive integer, got {n!r}")
    if not isinstance(name, str):
        raise ModelConfigError(f"{where}: 'module' must be a module name, got {name!r}")
    if not isinstance(args, list):
        raise ModelConfigError(f"{where}: 'args' must be a list, got {args!r}")
    kwargs = args[-1] if args and isinstance(args[-1], dict) else {}
    if kwargs:
        args = args[:-1]
        if not all(isinstance(k, str) and k.isidentifier() for k in kwargs):
            raise ModelConfigError(f"{where}: keyword argument names must be identifiers, got {list(kwargs)}")
    return f, n, name, list(args), dict(kwargs)
