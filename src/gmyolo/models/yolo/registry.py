"""The registry of modules a model YAML may name, and how each one computes its outputs.

Every entry pairs a constructor with a *rule*: a function that receives the layer as written in
the YAML plus what the parser knows (input channels and strides, width multiple, channel cap and
scale, nc, anchors, the head options) and returns the built module with its output channels and
strides. The parser has no per-module special cases; adding a block is one ``register_module``
call. What a block means for the rest of the model (YOLO11-era blocks select the newer class branch
of the anchor-free head) it records in ``LayerContext.shared``. Nothing read from a file is ever
evaluated as Python: names are looked up here, argument strings stay strings.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..groupmixformer import GroupMixFormer, groupmixformer
from . import blocks, common
from .anchor_free import AnchorFreeDetect
from .head import Detect
from .segment import AnchorFreeSegment, AnchorSegment

__all__ = ["LayerContext", "BuiltLayer", "LayerType", "MODULES", "register_module", "make_divisible", "checked"]


def make_divisible(x: float, divisor: int = 8) -> int:
    """Smallest multiple of ``divisor`` that is >= x (YOLOv5's channel rounding)."""
    return math.ceil(x / divisor) * divisor


@dataclass
class LayerContext:
    """One YAML layer, with the channels and strides of the maps it reads."""

    index: int
    number: int  # repeats after depth_multiple
    args: list[Any]
    kwargs: dict[str, Any]
    in_channels: list[int]  # one entry per 'from' map
    in_strides: list[float]
    width_multiple: float
    nc: int
    num_outputs_detect: int  # na * (nc + 5): a channel count that width_multiple must not touch
    raw_args: list[Any] = field(default_factory=list)  # args as written ('nc', 'anchors' unresolved)
    max_channels: float = math.inf  # the scale's channel cap (Ultralytics' scales: [depth, width, max_channels])
    scale: str | None = None  # the model scale ('n', 's', ...) when the YAML has a scales block
    reg_max: int = 16  # anchor-free Detect: bins per box side (the YAML's top-level reg_max)
    end2end: bool = False  # anchor-free Detect: add the one-to-one branches (the YAML's end2end)
    shared: dict[str, Any] = field(default_factory=dict)  # model-wide facts that rules record for later layers
    # Per 'from' map: None, or (channels, stride) of each element when that layer returns one list of tensors
    # (Ultralytics' TorchVision with split; stride None for an element that is not a feature map).
    in_parts: list[list[tuple[int | None, float | None]] | None] = field(default_factory=list)


@dataclass
class BuiltLayer:
    module: nn.Module
    out_channels: list[int]
    out_strides: list[float]
    args: list[Any] = field(default_factory=list)  # the constructor arguments, for the layer table
    # A layer whose one output is a list of tensors: (channels, stride) of each element, for the layers that
    # pick from it (Index); out_channels/out_strides then describe the layer as a whole.
    parts: list[tuple[int | None, float | None]] | None = None


Rule = Callable[[Callable[..., nn.Module], LayerContext], BuiltLayer]
Portable = Callable[[list[Any]], list[Any]]


@dataclass(frozen=True)
class LayerType:
    constructor: Callable[..., nn.Module]
    rule: Rule
    portable: Portable | None = None  # args -> the args without weight files or downloads (for checkpoints)


MODULES: dict[str, LayerType] = {}


def register_module(
    name: str, constructor: Callable[..., nn.Module], rule: Rule | None = None, portable: Portable | None = None
) -> None:
    """Make ``name`` usable in model YAML files (default rule: YOLOv5's scaled-channel convention).

    ``portable(args)``, for a layer whose args name pretrained weights, returns the args without them: a
    checkpoint carries its own weights, and rebuilding it must not read a file or download.
    """
    MODULES[name] = LayerType(constructor, rule or scaled_channels(), portable)


def repeat(constructor: Callable[..., nn.Module], n: int, args: list[Any], kwargs: dict[str, Any]) -> nn.Module:
    return nn.Sequential(*(constructor(*args, **kwargs) for _ in range(n))) if n > 1 else constructor(*args, **kwargs)


SIMPLE_TYPES = {bool: (bool,), int: (int,), float: (int, float)}


def checked(constructor: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """``constructor``, refusing arguments that do not fit its ``bool``, ``int`` and ``float`` annotations.

    YAML values stay data: ``'False'`` is a string, which a bool parameter would take as true.
    """
    try:
        signature = inspect.signature(constructor, eval_str=True)
    except (NameError, TypeError, ValueError):  # annotations that cannot be resolved: build unchecked
        return constructor

    @functools.wraps(constructor, updated=())
    def build(*args, **kwargs):
        for name, value in signature.bind(*args, **kwargs).arguments.items():
            expected = signature.parameters[name].annotation
            if expected in SIMPLE_TYPES and (
                isinstance(value, bool) != (expected is bool) or not isinstance(value, SIMPLE_TYPES[expected])
            ):
                raise TypeError(f"argument '{name}' must be {expected.__name__}, got {value!r}")
        return constructor(*args, **kwargs)

    return build


def bound_argument(constructor: Callable[..., nn.Module], args: list[Any], kwargs: dict[str, Any], name: str):
    """The value a constructor parameter takes for these arguments (its default when not given)."""
    bound = inspect.signature(constructor).bind(*args, **kwargs)
    bound.apply_defaults()
    return bound.arguments.get(name)


# --------------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------------
def scaled_channels(
    repeat_inside: bool = False,
    stride_factor: float = 1.0,
    adjust: Callable[[list[Any], LayerContext], None] | None = None,
    newer_head: bool = False,
) -> Rule:
    """YOLOv5's rule: args[0] is the output width, capped at the scale's max_channels, scaled by width_multiple
    and rounded up to 8 (Ultralytics' rule; the cap is infinite without a scales block).

    The input width is prepended; blocks that repeat internally (C3, C2f, ...) take the repeat count as
    their third argument. The output stride is the input's times the ``s`` argument (default 1).
    ``adjust(args, ctx)`` edits the final arguments (a scale-dependent default); ``newer_head`` records that
    the model uses YOLO11-era blocks, which select the depthwise class branch of the anchor-free head.
    """

    def rule(constructor, ctx: LayerContext) -> BuiltLayer:
        if not ctx.args or not isinstance(ctx.args[0], (int, float)) or isinstance(ctx.args[0], bool):
            raise ValueError(f"the first argument must be the output width (a number), got {ctx.args[:1]}")
        c1, (c2, *rest) = ctx.in_channels[0], ctx.args
        if c2 != ctx.num_outputs_detect:
            c2 = make_divisible(min(c2, ctx.max_channels) * ctx.width_multiple, 8)
        args, n = [c1, c2, *rest], ctx.number
        if repeat_inside:
            args.insert(2, n)
            n = 1
        if adjust is not None:
            adjust(args, ctx)
        if newer_head:
            ctx.shared["legacy_head"] = False
        s = bound_argument(constructor, args, ctx.kwargs, "s")
        if s is None:
            s = 1
        elif not isinstance(s, int) or isinstance(s, bool) or s < 1:
            raise ValueError(f"the stride s must be a positive integer, got {s!r}")
        module = repeat(constructor, n, args, ctx.kwargs)
        return BuiltLayer(module, [c2], [ctx.in_strides[0] * s * stride_factor], args)

    return rule


def c3k_for_larger_scales(args: list[Any], ctx: LayerContext) -> None:
    """C3k2 at scales m, l and x uses C3k inner blocks whatever the YAML says (as Ultralytics builds them)."""
    if ctx.scale in ("m", "l", "x"):
        args[3:4] = [True]


def residual_attention_for_larger_scales(args: list[Any], ctx: LayerContext) -> None:
    """A2C2f at scales l and x: residual with a learnt gain, and an MLP ratio of 1.2 (as Ultralytics builds them)."""
    if ctx.scale in ("l", "x"):
        args.extend((True, 1.2))


def concat_channels(constructor, ctx: LayerContext) -> BuiltLayer:
    dimension = bound_argument(constructor, ctx.args, ctx.kwargs, "dimension")
    if dimension not in (1, -3):
        raise ValueError(
            f"Concat joins B×C×H×W maps along their channels (dimension 1); dimension {dimension!r} "
            "would not give the summed channel count the next layers are built for"
        )
    if len(set(ctx.in_strides)) > 1:
        raise ValueError(f"Concat inputs have different strides {ctx.in_strides}; their maps cannot be joined")
    return BuiltLayer(constructor(*ctx.args, **ctx.kwargs), [sum(ctx.in_channels)], [ctx.in_strides[0]], ctx.args)


def same_channels(constructor, ctx: LayerContext) -> BuiltLayer:
    """Channels pass through (nn.Upsample, nn.Identity, ...); an upsample divides the stride."""
    module = repeat(constructor, ctx.number, ctx.args, ctx.kwargs)
    scale = getattr(module, "scale_factor", None) or 1
    return BuiltLayer(module, [ctx.in_channels[0]], [ctx.in_strides[0] / float(scale)], ctx.args)


def batchnorm_channels(constructor, ctx: LayerContext) -> BuiltLayer:
    args = [ctx.in_channels[0]]
    return BuiltLayer(constructor(*args, **ctx.kwargs), [ctx.in_channels[0]], [ctx.in_strides[0]], args)


def detect_head(constructor, ctx: LayerContext) -> BuiltLayer:
    """``Detect``: YOLOv5's anchor-based head when anchors follow nc (``[nc, anchors]``), else the anchor-free
    head of YOLOv8 / YOLO11 / YOLO26 (``[nc]``, with the YAML's ``reg_max`` and ``end2end``). The input
    widths and strides of its levels are appended."""
    if len(ctx.raw_args) >= 2:
        nc, anchors, *rest = ctx.args
        if isinstance(anchors, int):  # YOLOv5: "anchors: 3" means 3 placeholder anchors per level (fit later)
            anchors = [list(range(anchors * 2))] * len(ctx.in_channels)
        args = [nc, anchors, list(ctx.in_channels), *rest]
        module = constructor(*args, strides=list(ctx.in_strides), **ctx.kwargs)
        return BuiltLayer(module, [module.no * module.na], list(ctx.in_strides), args)
    if len(ctx.args) != 1:
        raise ValueError(f"Detect takes [nc] (anchor-free) or [nc, anchors] (YOLOv5), got {ctx.raw_args}")
    options = dict(reg_max=ctx.reg_max, end2end=ctx.end2end, legacy=ctx.shared.get("legacy_head", True))
    options.update(ctx.kwargs)
    args = [ctx.args[0], options["reg_max"], options["end2end"], list(ctx.in_channels)]
    module = checked(AnchorFreeDetect)(ctx.args[0], ch=list(ctx.in_channels), strides=list(ctx.in_strides), **options)
    return BuiltLayer(module, [module.no], list(ctx.in_strides), args)


def segment_head(constructor, ctx: LayerContext) -> BuiltLayer:
    """``Segment``: YOLOv5-seg's anchor-based head with ``[nc, anchors, nm, npr]``, else the anchor-free one of
    YOLOv8-seg / YOLO11-seg with ``[nc]``, ``[nc, nm]`` or ``[nc, nm, npr]`` (defaults 32 and 256). The prototype
    width ``npr`` scales as a layer's output width does (capped by the scale's max_channels, times width_multiple)."""
    args = list(ctx.args)
    anchor_based = len(ctx.raw_args) == 4
    if not 1 <= len(args) <= 4:
        raise ValueError(f"Segment takes [nc, nm, npr] (anchor-free) or [nc, anchors, nm, npr] (YOLOv5), got {args}")
    nc, *rest = args
    if anchor_based:
        anchors, nm, npr = rest
        if isinstance(anchors, int):  # "anchors: 3": placeholders, fitted later
            anchors = [list(range(anchors * 2))] * len(ctx.in_channels)
    else:
        nm, npr = (list(rest) + [32, 256][len(rest) :])[:2]
    for name, value in (("nm", nm), ("npr", npr)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"Segment's {name} must be a positive integer, got {value!r}")
    npr = make_divisible(min(npr, ctx.max_channels) * ctx.width_multiple, 8)
    if anchor_based:
        args = [nc, anchors, nm, npr, list(ctx.in_channels)]
        module = checked(AnchorSegment)(*args, strides=list(ctx.in_strides), **ctx.kwargs)
        return BuiltLayer(module, [module.no * module.na], list(ctx.in_strides), args)
    options = dict(reg_max=ctx.reg_max, end2end=ctx.end2end, legacy=ctx.shared.get("legacy_head", True))
    options.update(ctx.kwargs)
    module = checked(AnchorFreeSegment)(nc, nm, npr, ch=list(ctx.in_channels), strides=list(ctx.in_strides), **options)
    return BuiltLayer(module, [module.no], list(ctx.in_strides), [nc, nm, npr, list(ctx.in_channels)])


def backbone_maps(constructor, ctx: LayerContext) -> BuiltLayer:
    """A multi-output backbone: it declares its maps' channels and strides (``out_channels``/``out_strides``)."""
    module = constructor(*ctx.args, in_chans=ctx.in_channels[0], **ctx.kwargs)
    strides = [ctx.in_strides[0] * s for s in module.out_strides]
    return BuiltLayer(module, list(module.out_channels), strides, ctx.args)


# --------------------------------------------------------------------------------------------------
# YAML-facing backbone constructors
# --------------------------------------------------------------------------------------------------
def groupmixformer_backbone(
    variant: str = "t",
    out_indices: list[int] | tuple[int, ...] = (1, 2, 3),
    pretrained: str | None = None,
    drop_path_rate: float | None = None,
    frozen_stages: int = 0,
    in_chans: int = 3,
    **overrides: Any,
) -> GroupMixFormer:
    """YAML args ``[variant, out_indices, pretrained, drop_path_rate, frozen_stages]``.

    Returns GroupMixFormer in features mode; ``pretrained`` is a path to the authors' checkpoint
    (its classifier is dropped); ``drop_path_rate`` None keeps the variant's default. Keyword
    arguments (a trailing mapping in the YAML args) override the variant's settings, e.g.
    ``{serial_depths: [1, 1, 2, 1]}`` or ``{aggregator: avg}``.
    """
    kwargs: dict[str, Any] = dict(features_only=True, out_indices=tuple(out_indices), in_chans=in_chans, **overrides)
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    model = groupmixformer(variant, pretrained=pretrained, **kwargs)
    if frozen_stages:
        model.freeze_stages(frozen_stages)
    return model


def groupmixformer_without_weights(args: list[Any]) -> list[Any]:
    """GroupMixFormer's args without the authors' checkpoint path (positional or keyword ``pretrained``)."""
    args = list(args)
    if len(args) > 2 and not isinstance(args[2], dict):
        args[2] = None
    if args and isinstance(args[-1], dict):
        kwargs = {k: v for k, v in args[-1].items() if k != "pretrained"}
        args = [*args[:-1], kwargs] if kwargs else args[:-1]  # an empty mapping would be read as an argument
    return args


def _register_defaults() -> None:
    from . import external  # timm and torchvision layers; it imports this module's names

    for name in ("Conv", "DWConv", "Bottleneck", "SPP", "SPPF"):
        register_module(name, getattr(common, name))
    register_module("Focus", common.Focus, scaled_channels(stride_factor=2))  # space-to-depth halves the map
    for name in ("C3", "BottleneckCSP", "C3GMA"):
        register_module(name, getattr(common, name), scaled_channels(repeat_inside=True))
    # YOLOv8 / YOLOv10 / YOLO11 / YOLO12 / YOLO26 blocks
    for name in ("C2f", "C2PSA"):
        register_module(name, getattr(blocks, name), scaled_channels(repeat_inside=True))
    register_module("C3k2", blocks.C3k2, scaled_channels(True, adjust=c3k_for_larger_scales, newer_head=True))
    register_module(
        "A2C2f", blocks.A2C2f, scaled_channels(True, adjust=residual_attention_for_larger_scales, newer_head=True)
    )
    for name in ("PSA", "SCDown"):
        register_module(name, getattr(blocks, name))
    register_module("Concat", common.Concat, concat_channels)
    for name in ("nn.Upsample", "Upsample"):
        register_module(name, nn.Upsample, same_channels)
    register_module("nn.Identity", nn.Identity, same_channels)
    register_module("nn.BatchNorm2d", nn.BatchNorm2d, batchnorm_channels)
    register_module("Detect", Detect, detect_head)
    register_module("Segment", AnchorFreeSegment, segment_head)
    register_module("GroupMixFormer", groupmixformer_backbone, backbone_maps, groupmixformer_without_weights)
    register_module("Timm", external.Timm, external.timm_layer, external.timm_without_weights)
    register_module(
        "TorchVision", external.TorchVision, external.torchvision_layer, external.torchvision_without_weights
    )
    register_module("Index", external.Index, external.index_layer)


_register_defaults()
