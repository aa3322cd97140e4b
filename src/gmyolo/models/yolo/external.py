"""Backbones from timm and torchvision as model-YAML layers: ``Timm``, ``TorchVision`` and Ultralytics' ``Index``.

- ``[-1, 1, Timm, [convnext_atto, [1, 2, 3], {pretrained_file: convnext_atto.pth}]]``: any timm model with
  ``features_only``; one layer index per returned map (as for GroupMixFormer), channels and strides from timm's
  ``feature_info``.
- ``[-1, 1, TorchVision, [resnet18, [2, 3, 4], {weights_file: resnet18.pth}]]``: a torchvision classifier cut
  into stages (the last child at each stride), numbered like timm's; again one layer index per map.
- Ultralytics' form, read unchanged: ``[-1, 1, TorchVision, [768, convnext_tiny, DEFAULT, True, 2, True]]``
  (``[c2, model, weights, unwrap, truncate, split]``) returns one list (the input, then every child's output),
  and ``[0, 1, Index, [192, 4]]`` picks element 4 of it. The builder finds each element's channels and stride
  by running the layer, so a wrong ``c2`` in an ``Index`` row is an error that gives the right one.

Weights never come from a pickle: a local file is read with ``torch.load(weights_only=True)`` (timm: through
``pretrained_cfg_overlay=dict(file=...)``, which does the same). ``pretrained: true`` (timm's hub) and
torchvision's weight names (``DEFAULT``, ``IMAGENET1K_V1``) download as timm and torchvision do. A layer that
loaded weights sets ``pretrained_loaded``: the detection optimizer gives it ``backbone_lr_ratio`` × lr.
timm and torchvision are imported when such a layer is built, not with this module.
"""

from __future__ import annotations

import contextlib
import difflib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .registry import BuiltLayer, LayerContext, checked

__all__ = [
    "Timm",
    "TorchVisionBackbone",
    "TorchVision",
    "Index",
    "timm_layer",
    "torchvision_layer",
    "index_layer",
    "timm_without_weights",
    "torchvision_without_weights",
]

# A module's output is a feature map when its stride is the same at two input sizes; a pooled or flattened
# output (B×C×1×1, B×C) is not. Both sizes are multiples of 64, the largest stride a backbone here would have.
PROBE_SIZES = (128, 192)


def closest(name: str, names: Sequence[str]) -> str:
    """' (closest: a, b, c)' for a misspelt name, or ''."""
    found = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return f" (closest: {', '.join(found)})" if found else ""


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients inside the block; every train flag restored after it."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, training in flags:
            m.training = training


def geometry(small: Any, large: Any) -> tuple[int | None, float | None]:
    """(channels, stride) of one output seen at both probe sizes; stride None unless it is a B×C×H×W map whose
    size follows the input."""
    if not isinstance(small, torch.Tensor) or small.ndim < 2:
        return None, None
    channels = int(small.shape[1])
    if small.ndim != 4:
        return channels, None
    strides = {PROBE_SIZES[0] / small.shape[d] for d in (2, 3)} | {PROBE_SIZES[1] / large.shape[d] for d in (2, 3)}
    stride = strides.pop() if len(strides) == 1 else None
    return channels, stride if stride is not None and stride.is_integer() else None


def probe_inputs(in_chans: int) -> list[torch.Tensor]:
    return [torch.zeros(1, in_chans, s, s) for s in PROBE_SIZES]


class FrozenStages:
    """``freeze_stages(n)`` for backbones whose stages are modules: parameters off, BatchNorm statistics kept."""

    _frozen: list[nn.Module]

    def stage_modules(self) -> list[list[nn.Module]]:
        """Per stage (in order), the modules it adds on top of the stages before it."""
        raise NotImplementedError

    @property
    def num_stages(self) -> int:
        return len(self.stage_modules())

    def freeze_stages(self, num_stages: int) -> None:
        """Freeze the stem and the first ``num_stages`` stages (numbered as ``out_indices`` number them)."""
        frozen = [m for stage in self.stage_modules()[: max(num_stages, 0)] for m in stage]
        self._frozen = frozen
        for m in frozen:
            m.training = False  # each module by itself: the list holds every descendant that is frozen
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in getattr(self, "_frozen", []):
            m.training = False  # frozen stages keep their BatchNorm statistics
        return self


# --------------------------------------------------------------------------------------------------
# timm
# --------------------------------------------------------------------------------------------------
def find_submodule(root: nn.Module, dotted: str) -> nn.Module | None:
    """The module that timm's feature_info names ``dotted``, inside one of timm's feature wrappers: kept as it is
    (MobileNetV3Features), its top-level Sequential flattened ('stages.0' -> 'stages_0', FeatureListNet), or
    wrapped ('model.stages.0', FeatureGetterNet)."""
    head, _, rest = dotted.partition(".")
    for name in (dotted, f"{head}_{rest}" if rest else head, dotted.replace(".", "_"), f"model.{dotted}"):
        with contextlib.suppress(AttributeError):
            return root.get_submodule(name)
    return None


class Timm(FrozenStages, nn.Module):
    """A timm model as a multi-output backbone layer: ``timm.create_model(name, features_only=True, ...)``.

    YAML args ``[name, out_indices, {pretrained_file: PATH, pretrained: true, ...}]``. ``out_indices`` are
    timm's (entries of ``feature_info``); an int n (default 3) takes the last n. ``pretrained_file``: a local
    file of timm's weights for ``name`` (a state dict, ``.pth`` or ``.safetensors``); ``pretrained: true``
    alone downloads timm's default weights from the Hugging Face hub. Other keywords go to
    ``timm.create_model`` (``drop_path_rate``, ``img_size``, ...).

    Forward: B×in_chans×H×W -> one B×C_i×H/s_i×W/s_i map per out index (``out_channels``, ``out_strides``).
    """

    def __init__(
        self,
        name: str,
        out_indices: int | Sequence[int] = 3,
        pretrained: bool = False,
        pretrained_file: str | None = None,
        in_chans: int = 3,
        **kwargs: Any,
    ):
        super().__init__()
        import timm

        import gmyolo.models.groupmixformer.timm_models  # noqa: F401 - groupmixformer_* in timm's registry

        if not isinstance(name, str) or not timm.is_model(name):
            raise ValueError(f"unknown timm model {name!r}{closest(str(name), timm.list_models())}")
        if pretrained_file is not None:
            if not os.path.isfile(pretrained_file):
                raise FileNotFoundError(f"pretrained_file not found: {pretrained_file}")
            # timm reads the file with torch.load(weights_only=True) and its model's checkpoint filter.
            kwargs["pretrained_cfg_overlay"] = {**kwargs.get("pretrained_cfg_overlay", {}), "file": pretrained_file}
            pretrained = True
        indices = out_indices if isinstance(out_indices, int) else tuple(out_indices)
        try:
            self.model = timm.create_model(
                name, pretrained=pretrained, features_only=True, out_indices=indices, in_chans=in_chans, **kwargs
            )
        except IndexError:  # timm's words for an index past its stages
            info = timm.create_model(name, features_only=True).feature_info
            raise ValueError(
                f"{name} has {len(info.info)} feature stages (0-{len(info.info) - 1}, strides "
                f"{', '.join(str(d['reduction']) for d in info.info)}); out_indices {list(indices)} names one it lacks"
            ) from None
        except (RuntimeError, KeyError) as e:  # load_state_dict's report, or a tensor timm's filter looks for
            if pretrained_file is None:
                raise
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            detail = f"no tensor {e}" if isinstance(e, KeyError) else " ".join(lines[1:2] or lines[:1])
            raise ValueError(f"pretrained_file {pretrained_file} does not fit timm's {name}: {detail}") from None
        self.name = name
        self.feature_info = self.model.feature_info
        self.pretrained_loaded = bool(pretrained)

    @property
    def out_channels(self) -> list[int]:
        return list(self.feature_info.channels())

    @property
    def out_strides(self) -> list[int]:
        return list(self.feature_info.reduction())

    def stage_modules(self) -> list[list[nn.Module]]:
        """Stage i is feature_info entry i (out or not) and everything before it in module order: the stem goes
        with stage 0. Entries past the last out index were cut off by timm and are not stages here."""
        modules = list(self.model.modules())  # pre-order: a module, then its whole subtree
        position = {id(m): k for k, m in enumerate(modules)}
        stages, start = [], 1
        for entry in self.feature_info.info:
            module = find_submodule(self.model, entry["module"])
            if module is None or id(module) not in position:
                break
            end = position[id(module)] + len(list(module.modules()))
            # Containers that hold this stage (a 'blocks' list) come before it in pre-order, but are not frozen
            # with it: only their own parameters, none in timm's models, would be.
            stage = [m for m in modules[start:end] if not any(x is module for x in m.modules()) or m is module]
            stages.append(stage)
            start = max(start, end)
        return stages

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(x))

    def extra_repr(self) -> str:
        return f"{self.name}, out_indices={list(self.feature_info.out_indices)}"


def timm_layer(constructor, ctx: LayerContext) -> BuiltLayer:
    """``Timm``: its maps take consecutive layer indices; channels and strides from timm's ``feature_info``."""
    module = constructor(*ctx.args, in_chans=ctx.in_channels[0], **ctx.kwargs)
    strides = [ctx.in_strides[0] * s for s in module.out_strides]
    return BuiltLayer(module, module.out_channels, strides, ctx.args)


def timm_without_weights(args: list[Any]) -> list[Any]:
    """The layer's args without weights (a checkpoint carries its own): no hub download, no file."""
    args = list(args)
    if len(args) > 2 and not isinstance(args[2], dict):
        args[2] = False
    return without_keywords(args, ("pretrained", "pretrained_file"))


def without_keywords(args: list[Any], names: Sequence[str]) -> list[Any]:
    """``args`` whose trailing keyword mapping lacks ``names`` (and is gone when that leaves it empty: an empty
    mapping would be read as one more positional argument)."""
    if not args or not isinstance(args[-1], dict):
        return list(args)
    kwargs = {k: v for k, v in args[-1].items() if k not in names}
    return [*args[:-1], kwargs] if kwargs else list(args[:-1])


# --------------------------------------------------------------------------------------------------
# torchvision
# --------------------------------------------------------------------------------------------------
def torchvision_model(name: str, weights: str | None) -> nn.Module:
    """``torchvision.models.get_model(name)`` with ``weights`` (a weights name such as DEFAULT, which downloads as
    torchvision does), or random weights then a local state-dict file's (``weights_only``)."""
    import torchvision

    if not isinstance(name, str) or name not in torchvision.models.list_models():
        raise ValueError(f"unknown torchvision model {name!r}{closest(str(name), torchvision.models.list_models())}")
    if weights in (None, False, "None", "none", ""):
        return torchvision.models.get_model(name, weights=None)
    if not isinstance(weights, str):
        raise ValueError(
            f"weights must be a torchvision weights name (DEFAULT, IMAGENET1K_V1) or a file, got {weights!r}"
        )
    looks_like_file = os.sep in weights or weights.endswith((".pt", ".pth", ".bin", ".safetensors"))
    if not looks_like_file:
        return torchvision.models.get_model(name, weights=weights)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"weights file not found: {weights}")
    net = torchvision.models.get_model(name, weights=None)
    state = read_state_dict(weights)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"weights file {weights} does not fit torchvision's {name}: {len(missing)} missing tensors "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}), {len(unexpected)} unexpected"
        )
    return net


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a file of tensors (``.safetensors``, or torch.save'd with weights_only): as it is, or under
    'state_dict' / 'model'."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def chain_children(module: nn.Module) -> list[nn.Module]:
    """The children a classifier runs in order, with plain ``nn.Sequential`` containers opened (their forward is
    the chain of their children by definition; subclasses may override it and stay whole)."""
    out = []
    for child in module.children():
        out.extend(chain_children(child) if type(child) is nn.Sequential else [child])
    return out


class TorchVisionBackbone(FrozenStages, nn.Module):
    """A torchvision classifier as a multi-output backbone layer (gmyolo's form of ``TorchVision``).

    YAML args ``[name, out_indices, {weights_file: PATH}]`` or ``{weights: DEFAULT}`` (downloads, as torchvision
    does). The model's children, run in order, are cut into stages: stage i ends with the last child at the i-th
    stride (ResNet: stem 2, layer1 4, layer2 8, layer3 16, layer4 32, as timm numbers them); ``out_indices``
    (default: the last three) picks the maps, and the classifier after the last one is dropped. For models whose
    forward runs their children in order (ResNet, ConvNeXt, EfficientNet, MobileNet, RegNet, ...).

    Forward: B×3×H×W -> one B×C_i×H/s_i×W/s_i map per out index (``out_channels``, ``out_strides``).
    """

    def __init__(
        self,
        name: str,
        out_indices: int | Sequence[int] = 3,
        weights: str | None = None,
        weights_file: str | None = None,
        in_chans: int = 3,
    ):
        super().__init__()
        if in_chans != 3:
            raise ValueError(f"torchvision's classifiers read 3-channel images, not {in_chans}")
        if weights is not None and weights_file is not None:
            raise ValueError("give weights (a torchvision weights name) or weights_file, not both")
        if weights_file is not None and not os.path.isfile(weights_file):
            raise FileNotFoundError(f"weights_file not found: {weights_file}")
        net = torchvision_model(name, weights_file if weights_file is not None else weights)
        children = chain_children(net)
        ends, channels, strides = self.find_stages(name, children)
        n = len(ends)
        take = list(range(n - out_indices, n)) if isinstance(out_indices, int) else [int(i) for i in out_indices]
        if not take or any(not 0 <= i < n for i in take) or take != sorted(set(take)):
            raise ValueError(
                f"{name} has {n} stages (0-{n - 1}, strides {', '.join(map(str, strides))}); out_indices must be "
                f"increasing indices among them (or a count), got {out_indices!r}"
            )
        self.name = name
        self.layers = nn.Sequential(*children[: ends[take[-1]] + 1])  # the classifier after the last map goes
        self.stage_ends = ends[: take[-1] + 1]
        self.out_indices = take
        self.feature_info = [
            dict(num_chs=channels[i], reduction=strides[i], module=f"layers.{ends[i]}", index=i) for i in take
        ]
        self.pretrained_loaded = weights is not None or weights_file is not None

    @staticmethod
    def find_stages(name: str, children: list[nn.Module]) -> tuple[list[int], list[int], list[int]]:
        """Run the chain at both probe sizes; per stride: the index of its last child, its channels, the stride."""
        ends: list[int] = []
        channels: list[int] = []
        strides: list[int] = []
        chain = nn.Sequential(*children)
        small, large = probe_inputs(3)
        with evaluating(chain):
            for k, child in enumerate(children):
                try:
                    small, large = child(small), child(large)
                except Exception:  # noqa: BLE001 - a classifier past the pooling (nn.Linear on a map): stop here
                    break
                c, s = geometry(small, large)
                if s is None:
                    break  # pooled or flattened: no more maps
                if strides and s == strides[-1]:
                    ends[-1], channels[-1] = k, c
                else:
                    ends.append(k), channels.append(c), strides.append(int(s))
        if not ends:
            raise ValueError(f"torchvision's {name} gives no feature maps when its children are run in order")
        return ends, channels, strides

    @property
    def out_channels(self) -> list[int]:
        return [f["num_chs"] for f in self.feature_info]

    @property
    def out_strides(self) -> list[int]:
        return [f["reduction"] for f in self.feature_info]

    def stage_modules(self) -> list[list[nn.Module]]:
        starts = [0, *(e + 1 for e in self.stage_ends[:-1])]
        return [
            [m for child in self.layers[a : b + 1] for m in child.modules()] for a, b in zip(starts, self.stage_ends)
        ]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        wanted = {self.stage_ends[i] for i in self.out_indices}
        out = []
        for k, layer in enumerate(self.layers):
            x = layer(x)
            if k in wanted:
                out.append(x)
        return out

    def extra_repr(self) -> str:
        return f"{self.name}, out_indices={self.out_indices}"


class TorchVision(nn.Module):
    """Ultralytics' ``TorchVision`` layer, args ``[c2, model, weights, unwrap, truncate, split]`` after ``c2``.

    ``weights``: a torchvision weights name (default DEFAULT: downloads as torchvision does), None, or a local
    state-dict file. ``unwrap``: keep the model's children in a Sequential (a first child that is a Sequential,
    such as ``features``, is opened), without the last ``truncate``; else the whole model with its ``head`` /
    ``heads`` replaced by an identity. ``split`` (unwrapped only): return ``[input, output of child 1, ...]``, for
    ``Index`` layers to pick from. Forward: B×3×H×W -> the last child's output, or that list.
    """

    def __init__(
        self, model: str, weights: str | None = "DEFAULT", unwrap: bool = True, truncate: int = 2, split: bool = False
    ):
        super().__init__()
        net = torchvision_model(model, weights)
        if unwrap:
            children = list(net.children())
            if isinstance(children[0], nn.Sequential):
                children = [*children[0].children(), *children[1:]]
            self.m = nn.Sequential(*(children[:-truncate] if truncate else children))
        else:
            for attr in ("head", "heads"):
                if hasattr(net, attr):
                    setattr(net, attr, nn.Identity())
            self.m = net
        self.name = model
        self.split = bool(split and unwrap)
        self.pretrained_loaded = weights not in (None, False, "None", "none", "")

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if not self.split:
            return self.m(x)
        out = [x]
        for layer in self.m:
            out.append(layer(out[-1]))
        return out


class Index(nn.Module):
    """Ultralytics' ``Index`` layer, args ``[c2, index]``: element ``index`` of a list output (``TorchVision`` with
    split). Forward: a list of tensors -> its element ``index``."""

    def __init__(self, index: int = 0):
        super().__init__()
        self.index = index

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return x[self.index]

    def extra_repr(self) -> str:
        return f"index={self.index}"


def torchvision_layer(constructor, ctx: LayerContext) -> BuiltLayer:
    """``TorchVision``: gmyolo's form (args start with the model name) is a multi-output backbone; Ultralytics'
    (args start with the output width c2) is one layer whose maps the builder finds by running it."""
    if ctx.args and isinstance(ctx.args[0], str):
        module = checked(TorchVisionBackbone)(*ctx.args, in_chans=ctx.in_channels[0], **ctx.kwargs)
        strides = [ctx.in_strides[0] * s for s in module.out_strides]
        return BuiltLayer(module, module.out_channels, strides, ctx.args)
    if not ctx.args or not isinstance(ctx.args[0], int) or isinstance(ctx.args[0], bool):
        raise ValueError(
            "TorchVision takes [model_name, out_indices, {weights_file: ...}] or Ultralytics' "
            f"[c2, model_name, weights, unwrap, truncate, split], got {ctx.raw_args}"
        )
    if ctx.number != 1:
        raise ValueError(f"a TorchVision layer is not repeated (number 1), got {ctx.number}")
    c2, *rest = ctx.args
    module = constructor(*rest, **ctx.kwargs)
    small, large = probe_inputs(ctx.in_channels[0])
    with evaluating(module):
        small, large = module(small), module(large)
    if module.split:
        parts = []
        for a, b in zip(small, large):
            c, s = geometry(a, b)
            parts.append((c, None if s is None else s * ctx.in_strides[0]))
        deepest = max((s for _, s in parts if s is not None), default=ctx.in_strides[0])
        return BuiltLayer(module, [c2], [deepest], ctx.args, parts=parts)
    c, s = geometry(small, large)
    if small.ndim == 4 and s is None:
        raise ValueError(
            f"{module.name} gives a {'x'.join(map(str, small.shape))} output whose size does not follow the input "
            "(pooled): truncate more children, or split the output and pick maps with Index"
        )
    if s is not None and c != c2:
        raise ValueError(f"{module.name} gives {c}-channel maps here, not {c2}: write {c} as the first argument")
    return BuiltLayer(module, [c2], [ctx.in_strides[0] * (s or 1)], ctx.args)


def describe_parts(parts: list[tuple[int | None, float | None]]) -> str:
    return ", ".join(f"{k}: {c}ch/{s:g}" if s else f"{k}: not a map" for k, (c, s) in enumerate(parts))


def index_layer(constructor, ctx: LayerContext) -> BuiltLayer:
    """``Index``: one element of a list output, with the channels and stride found when that layer was built."""
    if not 1 <= len(ctx.args) <= 2 or not all(isinstance(a, int) and not isinstance(a, bool) for a in ctx.args):
        raise ValueError(f"Index takes [c2, index] (integers), got {ctx.raw_args}")
    c2, index = (*ctx.args, 0) if len(ctx.args) == 1 else ctx.args
    parts = ctx.in_parts[0] if ctx.in_parts else None
    if parts is None:
        raise ValueError("Index picks from a layer that returns a list (TorchVision with split); its input is one map")
    if not -len(parts) <= index < len(parts):
        raise ValueError(f"index {index} is past the {len(parts)} elements of the list ({describe_parts(parts)})")
    c, s = parts[index]
    if s is None:
        raise ValueError(f"element {index} is not a feature map whose size follows the input ({describe_parts(parts)})")
    if c != c2:
        raise ValueError(f"element {index} has {c} channels, not {c2}: write [{c}, {index}] ({describe_parts(parts)})")
    return BuiltLayer(constructor(index, **ctx.kwargs), [c], [s], [c2, index])


def torchvision_without_weights(args: list[Any]) -> list[Any]:
    """The layer's args without weights (a checkpoint carries its own): nothing to download or read."""
    args = list(args)
    if args and isinstance(args[0], str):  # gmyolo's form
        if len(args) > 2 and not isinstance(args[2], dict):
            args[2] = None
        if len(args) > 3 and not isinstance(args[3], dict):
            args[3] = None
        return without_keywords(args, ("weights", "weights_file"))
    kwargs = without_keywords([args.pop()], ("weights",)) if args and isinstance(args[-1], dict) else []
    if len(args) > 2:
        args[2] = None
    elif len(args) == 2:
        args.append(None)  # Ultralytics' default is DEFAULT: a download
    return args + kwargs
