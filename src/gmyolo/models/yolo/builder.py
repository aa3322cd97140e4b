"""The model builder: YOLO model YAML read with ``yaml.safe_load`` and checked, then built layer by layer.

A model YAML has ``nc`` and ``backbone`` + ``head`` lists of ``[from, number, module, args]``, and either
YOLOv5's ``depth_multiple``, ``width_multiple`` and ``anchors``, or Ultralytics' ``scales`` block
(``n/s/m/l/x: [depth, width, max_channels]``; the scale comes from an argument, the YAML's ``scale``, or the
file name as Ultralytics reads it: ``yolo11n.yaml`` is ``yolo11.yaml`` at scale ``n``) with the optional
``reg_max``, ``end2end`` and ``activation``. A module that returns several maps (a backbone such as
GroupMixFormer) occupies one layer index per map: later layers refer to each map by its index, exactly like
any other layer. A module whose one output is a list (Ultralytics' ``TorchVision`` with split) occupies one index,
and the layers that pick from it (``Index``) learn each element's channels and stride from its rule. Names resolve
through :mod:`gmyolo.models.yolo.registry`; modules of your own come from plugins (:mod:`gmyolo.plugins`): installed
entry points and the files a parent process loaded are imported before a model is built, and the files of a YAML's
``plugins`` key when that YAML file is read (never those a model dict, such as a checkpoint's, names).

Errors name the file, line and layer: a layer whose construction fails for any reason, and a layer whose
first forward fails (every model runs once, layer by layer, on a small input when it is built: a stride of
0, a negative padding, an unknown upsampling mode, maps that do not fit together), is reported as one line
with its module and, for the forward, its input shapes.
"""

from __future__ import annotations

import ast
import copy
import logging
import math
import os
import re
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ...cfg import model_names, models_dir
from ...errors import ModelConfigError
from ...plugins import ENTRY_POINT_GROUP, load_plugin_file, load_plugins
from .common import activation_during_build
from .registry import MODULES, LayerContext, checked

__all__ = [
    "ModelConfigError",
    "BackboneOutput",
    "LayerRow",
    "load_model_yaml",
    "parse_model",
    "run_layers",
    "packaged_models",
    "resolve_model_path",
    "guess_model_scale",
    "parse_activation",
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


def unified_name(name: str) -> str:
    """Ultralytics' file-name rule: the scale letter after the version is dropped (yolo11n -> yolo11,
    yolov8s-p2 -> yolov8-p2); other names are returned unchanged."""
    return re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", name)


def guess_model_scale(name: str | os.PathLike) -> str | None:
    """The scale letter of a model file name as Ultralytics reads it ('yolo11s-gmf-t.yaml' -> 's'), or None."""
    found = re.search(r"yolo(e-)?v?\d+([nslmx])", Path(name).stem)
    return found.group(2) if found else None


def resolve_model_path(cfg: str | os.PathLike) -> Path:
    """A path, or a packaged name with or without '.yaml' ('yolov5s', 'yolov5s-gmf-t.yaml'); a scaled name
    whose file does not exist is looked up without its scale letter ('yolo11n' -> yolo11.yaml)."""
    path = Path(cfg)
    if path.is_file():
        return path
    name = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    unified = path.with_name(unified_name(Path(name).stem) + Path(name).suffix)
    if path.suffix in (".yaml", ".yml") and unified.name != name and unified.is_file():
        return unified
    for candidate in dict.fromkeys((name, unified.name)):
        packaged = models_dir() / candidate
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


def load_model_yaml(cfg: str | os.PathLike | Mapping[str, Any], scale: str | None = None) -> dict[str, Any]:
    """Read a model YAML (path, packaged name or dict) with yaml.safe_load; check the top-level fields.

    ``scale`` picks one row of a ``scales`` block (default: the dict's ``scale``, else the file name's letter,
    else the first row, with a warning); its depth, width and channel cap are set in the returned dict.
    """
    if isinstance(cfg, Mapping):
        d, source, lines = copy.deepcopy(dict(cfg)), "model config", {}
        named_scale = None
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
            raise ModelConfigError(f"{path}: expected a mapping with nc, backbone and head")
        d.setdefault("yaml_file", str(path))
        named_scale = guess_model_scale(cfg)
    d["_source"], d["_lines"] = source, lines
    check_top_level(d)
    if not isinstance(cfg, Mapping):
        load_yaml_plugins(d, path)
    apply_scale(d, scale, named_scale)
    return d


def load_yaml_plugins(d: dict[str, Any], path: Path) -> None:
    """Import the files of the YAML's ``plugins`` key (relative to the YAML). Only a YAML file the user names
    runs them: a model dict (a checkpoint's) keeps the key as data."""
    line = d["_lines"].get(("plugins", -1))
    at = f"{path} line {line}" if line else str(path)
    for name in d.get("plugins") or []:
        plugin = Path(name) if os.path.isabs(name) else path.parent / name
        try:
            load_plugin_file(plugin)
        except (OSError, ValueError) as e:
            raise ModelConfigError(f"{at}: plugin {name}: {e} (plugin paths are relative to the YAML)") from None


def apply_scale(d: dict[str, Any], scale: str | None, named_scale: str | None) -> None:
    """Resolve a ``scales`` block to depth_multiple, width_multiple and max_channels (and record ``scale``)."""
    scales, src = d.get("scales"), d["_source"]
    if scales is None:
        if scale is not None:
            raise ModelConfigError(f"{src}: scale {scale!r} requested, but the model YAML has no 'scales' block")
        return
    line = d["_lines"].get(("scales", -1))
    at = f"{src} line {line}" if line else src
    if scale is None:
        scale = d.get("scale") or named_scale
    if scale is None:
        scale = next(iter(scales))
        LOGGER.warning("%s: no model scale given (as an argument or in the file name); using scale '%s'", src, scale)
    if scale not in scales:
        raise ModelConfigError(f"{at}: scale {scale!r} is not one of the file's scales ({', '.join(map(str, scales))})")
    d["scale"] = scale
    d["depth_multiple"], d["width_multiple"], d["max_channels"] = scales[scale]


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
    scales = d.get("scales")
    if scales is not None and not (
        isinstance(scales, dict)
        and scales
        and all(
            isinstance(k, str) and isinstance(v, list) and len(v) == 3 and all(positive_number(x) for x in v)
            for k, v in scales.items()
        )
    ):
        raise ModelConfigError(
            f"{at('scales')}: 'scales' must map scale names to [depth, width, max_channels] (positive numbers), "
            f"got {scales!r}"
        )
    for key in ("depth_multiple", "width_multiple"):
        v = d.setdefault(key, 1.0)
        if not positive_number(v):
            raise ModelConfigError(f"{at(key)}: '{key}' must be a positive number, got {v!r}")
    if "scale" in d and not (d["scale"] is None or isinstance(d["scale"], str)):
        raise ModelConfigError(f"{at('scale')}: 'scale' must be a scale name such as n or s, got {d['scale']!r}")
    reg_max = d.get("reg_max", 16)
    if not isinstance(reg_max, int) or isinstance(reg_max, bool) or not 1 <= reg_max <= 64:
        raise ModelConfigError(f"{at('reg_max')}: 'reg_max' must be an integer from 1 to 64, got {reg_max!r}")
    if not isinstance(d.get("end2end", False), (bool, type(None))):
        raise ModelConfigError(f"{at('end2end')}: 'end2end' must be true or false, got {d['end2end']!r}")
    if d.get("activation") is not None:
        try:
            parse_activation(d["activation"])
        except ValueError as e:
            raise ModelConfigError(f"{at('activation')}: {e}") from None
    for key in ("backbone", "head"):
        if not isinstance(d[key], list):
            raise ModelConfigError(f"{at(key)}: '{key}' must be a list of [from, number, module, args] layers")
    plugins = d.get("plugins")
    if plugins is not None and not (isinstance(plugins, list) and all(isinstance(p, str) and p for p in plugins)):
        raise ModelConfigError(f"{at('plugins')}: 'plugins' must be a list of Python files, got {plugins!r}")
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


# Activations a model YAML's ``activation`` may name: ``nn.SiLU()``, ``torch.nn.LeakyReLU(0.1)``, ...
ACTIVATIONS = {
    name: getattr(nn, name)
    for name in (
        "SiLU",
        "ReLU",
        "ReLU6",
        "LeakyReLU",
        "GELU",
        "Hardswish",
        "Hardsigmoid",
        "Mish",
        "ELU",
        "CELU",
        "SELU",
        "PReLU",
        "Sigmoid",
        "Tanh",
        "Softplus",
        "Identity",
    )  # fmt: skip
}


def parse_activation(text: Any) -> Callable[[], nn.Module]:
    """``'nn.ReLU()'`` / ``'torch.nn.LeakyReLU(0.1)'`` -> a factory of that module; nothing is evaluated:
    the call is parsed, the class looked up among :data:`ACTIVATIONS`, its arguments read as literals."""
    if not isinstance(text, str):
        raise ValueError(f"'activation' must be a string such as 'nn.SiLU()', got {text!r}")
    try:
        call = ast.parse(text.strip(), mode="eval").body
        if not isinstance(call, ast.Call):
            raise ValueError
        names, node = [], call.func
        while isinstance(node, ast.Attribute):
            names.insert(0, node.attr)
            node = node.value
        if not isinstance(node, ast.Name) or [node.id, *names[:-1]] not in (["nn"], ["torch", "nn"]):
            raise ValueError
        args = [ast.literal_eval(a) for a in call.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg}
    except (SyntaxError, ValueError):
        raise ValueError(f"'activation' must be written as nn.<Name>(literal arguments), got {text!r}") from None
    if names[-1] not in ACTIVATIONS:
        raise ValueError(f"unknown activation {names[-1]!r}; known: {', '.join(ACTIVATIONS)}")
    cls = ACTIVATIONS[names[-1]]
    try:
        cls(*args, **kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"activation {text!r}: {e}") from None
    return lambda: cls(*args, **kwargs)


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
    """Build the layers of a checked model dict and run them once on a small input (see the module docstring).

    Returns the layers, the saved indices and the table.
    """
    load_plugins()  # installed entry points, and the files a parent process loaded (GMYOLO_PLUGINS)
    activation = parse_activation(d["activation"]) if d.get("activation") is not None else None
    with activation_during_build(activation):
        layers, save, rows, wheres = build_layers(d, ch)
    first_forward(layers, wheres, ch)
    return layers, save, rows


def build_layers(d: dict[str, Any], ch: int) -> tuple[nn.Sequential, list[int], list[LayerRow], list[str]]:
    anchors, nc, gd, gw = d.get("anchors"), d["nc"], d["depth_multiple"], d["width_multiple"]
    na = (len(anchors[0]) // 2 if isinstance(anchors, list) else anchors) if anchors else 3
    no = na * (nc + 5)
    channels: list[int] = []  # per layer index
    strides: list[float] = []
    parts: list[Any] = []  # per layer index: None, or the elements of its list output (BuiltLayer.parts)
    layers: list[nn.Module] = []
    wheres: list[str] = []  # per layer index: how errors name it
    rows: list[LayerRow] = []
    save: set[int] = set()
    shared: dict[str, Any] = {}
    entries = [("backbone", j, e) for j, e in enumerate(d["backbone"])] + [
        ("head", j, e) for j, e in enumerate(d["head"])
    ]
    for section, j, entry in entries:
        i = len(layers)
        line = d["_lines"].get((section, j))
        where = f"{d['_source']}" + (f" line {line}" if line else "") + f" ({section} entry {j}, layer {i})"
        f, n, name, args, kwargs = check_entry(entry, where, i)
        if name not in MODULES:
            raise ModelConfigError(f"{where}: {unknown_module(name, d)}")
        sources = [f] if isinstance(f, int) else list(f)
        in_ch = [ch if i == 0 else channels[s] for s in sources]
        in_st = [1.0 if i == 0 else strides[s] for s in sources]
        in_parts = [None if i == 0 else parts[s] for s in sources]
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
            raw_args=list(args),
            max_channels=d.get("max_channels", math.inf),
            scale=d.get("scale"),
            reg_max=d.get("reg_max", 16),
            end2end=bool(d.get("end2end", False)),
            shared=shared,
            in_parts=in_parts,
        )
        layer_type = MODULES[name]
        try:
            built = layer_type.rule(checked(layer_type.constructor), ctx)
        except ModelConfigError:
            raise
        except Exception as e:  # any failure of a constructor or rule is this layer's error  # noqa: BLE001
            raise ModelConfigError(f"{where}: cannot build {name} with args {args}: {one_line(e)}") from None
        module = built.module
        module.i, module.f, module.type = i, f, name
        module.num_outputs = len(built.out_channels)
        params = sum(p.numel() for p in module.parameters())
        rows.append(LayerRow(i, f, n, params, name, built.args))
        save.update(s % i for s in sources if s != -1)
        layers.append(module)
        wheres.append(where)
        for k in range(1, module.num_outputs):  # extra maps of a multi-output module get their own indices
            slot = BackboneOutput(i, k)
            slot.i, slot.f, slot.type, slot.num_outputs = i + k, i, "BackboneOutput", 1
            layers.append(slot)
            wheres.append(where)
            rows.append(LayerRow(i + k, i, 1, 0, f"  map {k} of layer {i}", []))
        channels.extend(built.out_channels)
        strides.extend(built.out_strides)
        parts.extend([built.parts] + [None] * (module.num_outputs - 1))
    if not layers:
        raise ModelConfigError(f"{d['_source']}: the model has no layers")
    for i, module in enumerate(layers):
        module.out_stride = strides[i]  # what the rules say; the first forward checks it
    return nn.Sequential(*layers), sorted(save), rows, wheres


def unknown_module(name: str, d: dict[str, Any]) -> str:
    """One line: the missing module, the registered names it is close to, the three ways to provide it, and the
    plugin files the model YAML names (a checkpoint's YAML keeps them, but they only load from a YAML file)."""
    import difflib

    close = difflib.get_close_matches(name, list(MODULES), n=3, cutoff=0.6)
    text = f"unknown module '{name}'" + (f" (did you mean {', '.join(close)}?)" if close else "")
    text += (
        f"; a module of your own must be registered (gmyolo.models.yolo.registry.register_module('{name}', ...)) "
        "by a plugin: --plugin FILE.py, the model YAML's 'plugins: [FILE.py]', or an installed package with a "
        f"'{ENTRY_POINT_GROUP}' entry point"
    )
    named = d.get("plugins")
    if named and isinstance(named, list):
        base = Path(d["yaml_file"]).parent if d.get("yaml_file") else None
        files = [str(base / p) if base is not None and not os.path.isabs(p) else str(p) for p in named]
        text += (
            f"; this model names the plugin file(s) {', '.join(files)}, which gmyolo does not run from a checkpoint "
            "or a model dict: pass them with --plugin"
        )
    return text


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception as one short line (torch's messages can span many)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shape_text(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return "x".join(map(str, x.shape))
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(shape_text(v) for v in x) + "]"
    return type(x).__name__


def run_layers(
    layers: nn.Sequential,
    x: Any,
    keep: Container[int] | None = None,
    call: Callable[[nn.Module, Any], Any] | None = None,
) -> Any:
    """The forward pass of built layers: each reads its ``from`` maps, a multi-output layer adds one map per output
    (its BackboneOutput placeholders are skipped). ``keep``: the layer indices later layers read (None: all);
    ``call(m, x)`` runs one layer (default ``m(x)``)."""
    y: list[Any] = []
    for m in layers:
        if isinstance(m, BackboneOutput):
            continue  # stored when its backbone ran
        if m.f != -1:
            x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
        x = call(m, x) if call is not None else m(x)
        if m.num_outputs > 1:
            y.extend(x)
            x = x[-1]
        else:
            y.append(x if keep is None or m.i in keep else None)
    return x


@torch.no_grad()
def first_forward(layers: nn.Sequential, wheres: list[str], ch: int) -> None:
    """Run the layers once in eval mode on a 1×ch×S×S zero input (S = twice the largest stride), as
    :meth:`DetectionModel.forward` does (:func:`run_layers`); a layer that fails, or whose map size disagrees with
    the stride its rule declared, is named. Nothing is changed: train/eval flags are restored, eval mode draws no
    random numbers and updates no statistics."""
    size = int(2 * max(max(getattr(m, "out_stride", 1) for m in layers), 1))
    flags = [(m, m.training) for m in layers.modules()]
    param = next(layers.parameters(), None)
    x = torch.zeros(1, ch, size, size, dtype=param.dtype if param is not None else torch.float32)

    def checked_call(m: nn.Module, x: Any) -> Any:
        where = wheres[m.i]
        try:
            out = m(x)
        except Exception as e:  # noqa: BLE001 - whatever torch raises, it is this layer's error
            raise ModelConfigError(f"{where}: {m.type} fails on input {shape_text(x)}: {one_line(e)}") from None
        for k, t in enumerate(list(out) if m.num_outputs > 1 else [out]):
            expected = size / layers[m.i + k].out_stride
            if isinstance(t, torch.Tensor) and t.ndim == 4 and (t.shape[2] != expected or t.shape[3] != expected):
                raise ModelConfigError(
                    f"{where}: {m.type} gives a {shape_text(t)} map from input {shape_text(x)}, but its declared "
                    f"stride {layers[m.i + k].out_stride:g} means {expected:g}x{expected:g} at this input size"
                )
        return out

    layers.eval()
    try:
        run_layers(layers, x, call=checked_call)
    finally:
        for m, training in flags:
            m.training = training


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
