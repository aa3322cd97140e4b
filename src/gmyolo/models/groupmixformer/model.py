"""GroupMixFormer: a hierarchical vision transformer built on Group-Mix Attention (GMA).

Paper: Ge et al., "Advancing Vision Transformers with Group-Mix Attention", 2023.

The computation is the authors' released code's, so their ImageNet-1K checkpoints load unchanged
(state-dict keys equal the authors') and give the same numbers. The memory layout is ours, for speed:
tokens share memory with channels-last maps (no copies between the two views), and a GMA block computes
in one of two forms (:class:`GMABlock`): *batched* for GPUs, every segment and head in single ops, and
*segments* for CPUs, one segment at a time with the exact kernel sizes. The order of this file: layout
helpers, building blocks, GMA, the GMA block, the model, variants. Beside it: ``packing.py`` (the batched
form's kernels, gathered from the parameters), ``fused.py`` (the inference form ``fuse()`` switches every
block to), ``weights.py`` (reading the authors' checkpoints), ``literal.py`` (the spec's own order, the
reference for tests and benchmarks).

Shapes: B batch, C channels, H×W map, N = H·W tokens, s = C/5 (one channel segment).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils.checkpoint import checkpoint

from ...errors import CheckpointError
from .packing import ONE, ZERO, WeightPack

__all__ = [
    "GroupMixFormer",
    "GMABlock",
    "GMAStage",
    "GroupMixAttention",
    "CheckpointError",
    "VARIANTS",
    "PRETRAINED_CFG",
    "FeatureInfo",
    "groupmixformer",
    "groupmixformer_m",
    "groupmixformer_t",
    "groupmixformer_s",
    "groupmixformer_b",
    "groupmixformer_l",
    "is_variant_name",
    "variant_name",
    "stage_output_sizes",
]

LOGGER = logging.getLogger("gmyolo")

NUM_SEGMENTS = 5  # channels are cut into 5 segments: identity, 3 aggregators, non-attention branch
SMALL_SEGMENT = 16  # inference: below this segment width, pointwise convs run on q, k, v together (measured)
AGGREGATORS = ("conv", "min", "avg", "max")


# --------------------------------------------------------------------------------------------------
# Layout: tokens B×N×C and channels-last images B×C×H×W are the same memory
# --------------------------------------------------------------------------------------------------
def to_image(tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """B×N×C tokens -> B×C×H×W image in channels-last layout: a view, no copy."""
    B, N, C = tokens.shape
    return tokens.reshape(B, size[0], size[1], C).permute(0, 3, 1, 2)


def to_tokens(image: torch.Tensor) -> torch.Tensor:
    """B×C×H×W image -> B×N×C tokens: a view of a channels-last image (convolutions keep that layout)."""
    return image.permute(0, 2, 3, 1).flatten(1, 2)


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------
class SeparableConv2d(nn.Sequential):
    """Depthwise k×k (no bias) then pointwise 1×1 (no bias); names match the authors' keys."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, in_chs, kernel_size, stride, kernel_size // 2, groups=in_chs, bias=False)
        self.pointwise_conv = nn.Conv2d(in_chs, out_chs, 1, bias=False)


class MinPool2d(nn.Module):
    """Stride-1 min pooling (-maxpool(-x)); 'same' padding so the map size is kept."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.pool = nn.MaxPool2d(kernel_size, 1, kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.pool(-x)


def make_aggregator(kind: str, chs: int, kernel_size: int) -> nn.Module:
    """The spatial aggregator of one segment: the authors' separable conv, or a pooling ablation."""
    if kind == "conv":
        return SeparableConv2d(chs, chs, kernel_size)
    if kind == "max":
        return nn.MaxPool2d(kernel_size, 1, kernel_size // 2)
    if kind == "avg":
        # count_include_pad=False so border tokens are not pulled towards zero.
        return nn.AvgPool2d(kernel_size, 1, kernel_size // 2, count_include_pad=False)
    if kind == "min":
        return MinPool2d(kernel_size)
    raise ValueError(f"unknown aggregator {kind!r}; choose one of {', '.join(AGGREGATORS)}")


class ConvStem(nn.Module):
    """Two stride-2 3×3 convs (with bias) + BatchNorm + Hardswish: image -> stride-4 map of C0."""

    def __init__(self, in_chans: int, out_chs: int):
        super().__init__()
        self.proj1 = nn.Conv2d(in_chans, out_chs // 2, 3, 2, 1)
        self.norm1 = nn.BatchNorm2d(out_chs // 2)
        self.act1 = nn.Hardswish()
        self.proj2 = nn.Conv2d(out_chs // 2, out_chs, 3, 2, 1)
        self.norm2 = nn.BatchNorm2d(out_chs)
        self.act2 = nn.Hardswish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.norm1(self.proj1(x)))
        return self.act2(self.norm2(self.proj2(x)))


class PatchEmbed(nn.Module):
    """Separable 3×3 conv (stride 1 or 2) + BatchNorm + Hardswish. Returns a B×C×H×W map."""

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.proj = SeparableConv2d(in_chs, out_chs, 3, stride)
        self.norm = nn.BatchNorm2d(out_chs)
        self.act = nn.Hardswish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.proj(x)))


class ConvPosEnc(nn.Module):
    """Conditional position encoding: tokens + depthwise 3×3 conv (with bias) of their image."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return x + to_tokens(self.proj(to_image(x, size)))


class ConvRelPosEnc(nn.Module):
    """Convolutional relative position encoding: depthwise convs of v, heads split 2/3/3 over kernels 3/5/7.

    ``forward`` returns conv(v); the caller multiplies by q (the spec's crpe = q ⊙ conv(v)).
    """

    windows = {3: 2, 5: 3, 7: 3}  # kernel size -> number of heads (the authors' fixed split of 8 heads)

    def __init__(self, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        self.splits = [heads * head_dim for heads in self.windows.values()]
        self.conv_list = nn.ModuleList(
            nn.Conv2d(chs, chs, k, 1, k // 2, groups=chs) for k, chs in zip(self.windows, self.splits)
        )

    def head_kernels(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(depthwise kernel d×1×k×k, bias d) of each of the 8 heads, in head order."""
        d = self.head_dim
        return [(w, b) for conv in self.conv_list for w, b in zip(conv.weight.split(d), conv.bias.split(d))]

    def segment_kernels(self, heads_per_segment: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Depthwise kernel and bias for each group of ``heads_per_segment`` heads.

        A group whose heads have different kernel sizes (head 4 has 5×5, head 5 has 7×7) gets the largest
        size, smaller kernels zero-padded around their centre: the same convolution.
        """
        heads = self.head_kernels()
        kernels = []
        for i in range(0, len(heads), heads_per_segment):
            group = heads[i : i + heads_per_segment]
            k = max(w.shape[-1] for w, _ in group)
            weight = torch.cat([pad_kernel(w, k) for w, _ in group])
            kernels.append((weight, torch.cat([b for _, b in group])))
        return kernels

    def forward(self, v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """v: S×B×N×s, segment j holding heads j·h..(j+1)·h-1 (h = heads per segment) -> conv(v), same shape.

        Each run of heads with the same kernel size in a segment is one depthwise conv (two runs in the
        segment that holds heads 4 and 5), so the arithmetic is exactly the spec's.
        """
        heads = self.head_kernels()
        per_segment = len(heads) // len(v)
        out = []
        for j, seg in enumerate(v):
            parts = []
            for k, run in itertools.groupby(heads[j * per_segment : (j + 1) * per_segment], lambda wb: wb[0].shape[-1]):
                w, b = (torch.cat(t) for t in zip(*run))
                c0 = sum(p.shape[-1] for p in parts)
                x = to_image(seg[..., c0 : c0 + w.shape[0]], size)
                parts.append(to_tokens(F.conv2d(x, w, b, 1, k // 2, 1, w.shape[0])))
            out.append(torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0])
        return torch.stack(out)


class NonAttentionBranch(nn.Module):
    """Segment S4 of q, k and v (3s channels) -> separable 3×3 conv to s -> tokens -> LayerNorm, Hardswish."""

    def __init__(self, seg_dim: int):
        super().__init__()
        self.conv = SeparableConv2d(3 * seg_dim, seg_dim, 3)
        self.norm = nn.LayerNorm(seg_dim)  # default eps 1e-5, as the authors have it
        self.act = nn.Hardswish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B×3s×H×W -> B×N×s."""
        return self.act(self.norm(to_tokens(self.conv(x))))


class Aggregator(nn.Module):
    """Group aggregation's layers, under the authors' names; the same layers serve q, k and v.

    Segment S0 is the identity branch (BatchNorm, Hardswish); S1..S3 go through aggregators with
    kernels 3, 5, 7 (then BatchNorm, Hardswish); S4 of q, k and v together form the non-attention
    branch (`agg0` in the authors' names).

    The BatchNorms of S0..S3 are one BatchNorm over their 4s channels (``norm``): statistics are per
    channel, so it is the authors' four (``norm0``..``norm3``) in one kernel. State dicts hold the
    authors' four entries, in their order (:func:`split_segment_norms`, :func:`join_segment_norms`).

    ``forward`` is the segment form (see :class:`GMABlock`): the input comes one segment at a time, q's,
    k's and v's copies side by side on the channels (B×N×3s), so that each aggregator runs once over a
    contiguous map: a depthwise conv with its kernel repeated for q, k and v, then the pointwise conv as
    one matrix product over B·N·3 rows. BatchNorm statistics over those rows are those over the 3B
    images of the spec.
    """

    def __init__(self, dim: int, aggregator: str = "conv"):
        super().__init__()
        self.seg_dim = s = dim // NUM_SEGMENTS
        self.norm = nn.BatchNorm2d(4 * s)
        self.act = nn.Hardswish()
        self.agg1 = make_aggregator(aggregator, s, 3)
        self.agg2 = make_aggregator(aggregator, s, 5)
        self.agg3 = make_aggregator(aggregator, s, 7)
        self.agg0 = NonAttentionBranch(s)
        self.register_state_dict_post_hook(split_segment_norms)
        self.register_load_state_dict_pre_hook(join_segment_norms)

    @property
    def convolutional(self) -> bool:
        """The authors' separable-conv aggregators (the pooling ablations have no kernels to pack)."""
        return isinstance(self.agg1, SeparableConv2d)

    def aggregators(self) -> list[nn.Module]:
        """The spatial aggregators of S1, S2, S3."""
        return [self.agg1, self.agg2, self.agg3]

    def norm_segments(self, rows: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``norm`` on S0..S3 given apart, as M×s rows each: each segment with its channels' share of the weights
        and running statistics (updated in place), as ``norm`` itself computes them."""
        n, s = self.norm, self.seg_dim
        if n.training and n.track_running_stats:
            n.num_batches_tracked.add_(1)
            factor = n.momentum if n.momentum is not None else 1.0 / float(n.num_batches_tracked)
        else:
            factor = 0.0
        batch_stats = n.training or n.running_mean is None
        if (not n.training or n.track_running_stats) and n.running_mean is not None:
            stats = zip(n.running_mean.split(s), n.running_var.split(s))
        else:
            stats = [(None, None)] * 4
        return [
            F.batch_norm(x, mean, var, w, b, batch_stats, factor, n.eps)
            for x, (mean, var), w, b in zip(rows, stats, n.weight.split(s), n.bias.split(s))
        ]

    def aggregate(self, agg: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """One aggregator over q, k and v at once: x B×3s×H×W -> rows (B·N·3)×s."""
        s = self.seg_dim
        if not isinstance(agg, SeparableConv2d):
            return to_tokens(agg(x)).reshape(-1, s)  # pooling is per channel
        conv = agg.conv1
        x = to_tokens(F.conv2d(x, conv.weight.repeat(3, 1, 1, 1), None, 1, conv.padding, 1, 3 * s))
        return F.linear(x.reshape(-1, s), agg.pointwise_conv.weight.flatten(1))

    def forward(self, segments: Sequence[torch.Tensor], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """segments: S0..S4, each B×N×3s (q, k, v side by side).

        Returns the attention input 4×B×N×3×s (segment j of q, k, v = their heads 2j and 2j+1) and the
        non-attention tokens B×N×s.
        """
        B, N, _ = segments[0].shape
        s = self.seg_dim
        rows = [segments[0].reshape(-1, s)]
        rows += [self.aggregate(agg, to_image(x, size)) for agg, x in zip(self.aggregators(), segments[1:4])]
        out = [self.act(r) for r in self.norm_segments(rows)]
        local = self.agg0(to_image(segments[4], size))
        return torch.stack(out).view(4, B, N, 3, s), local


SEGMENT_ORDER = ("norm0", "agg1", "norm1", "agg2", "norm2", "agg3", "norm3", "agg0")  # the authors' key order


def split_segment_norms(module: Aggregator, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """State-dict hook: the joint ``norm`` saved as the authors' ``norm0``..``norm3`` (views of it), in their order."""
    mine = {k[len(prefix) :]: state_dict.pop(k) for k in [k for k in state_dict if k.startswith(prefix)]}
    s = module.seg_dim
    for part in SEGMENT_ORDER:
        if part.startswith("norm"):
            j = int(part[-1])
            for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                value = mine.get(f"norm.{name}")
                if value is not None:
                    state_dict[f"{prefix}{part}.{name}"] = value if value.ndim == 0 else value[j * s : (j + 1) * s]
        else:
            for key, value in mine.items():
                if key.startswith(part + "."):
                    state_dict[prefix + key] = value


def join_segment_norms(module: Aggregator, state_dict: dict, prefix: str, *args: Any) -> None:
    """Load-state-dict pre-hook: the authors' ``norm0``..``norm3`` entries joined into ``norm``'s."""
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        keys = [f"{prefix}norm{j}.{name}" for j in range(4)]
        if all(k in state_dict for k in keys):
            parts = [state_dict.pop(k) for k in keys]
            state_dict[f"{prefix}norm.{name}"] = parts[0] if parts[0].ndim == 0 else torch.cat(parts)


def pad_kernel(weight: torch.Tensor, k: int) -> torch.Tensor:
    """A C×1×k'×k' kernel zero-padded around its centre to k×k: the same 'same'-padded convolution."""
    return F.pad(weight, [(k - weight.shape[-1]) // 2] * 4)


# --------------------------------------------------------------------------------------------------
# Group-Mix Attention and the GMA block
# --------------------------------------------------------------------------------------------------
def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """4×B×N×s (segment-major, ``heads`` heads per segment) -> (4·B·heads)×N×d, one head per batch entry."""
    S, B, N, s = t.shape
    return t.reshape(S, B, N, heads, s // heads).transpose(2, 3).reshape(S * B * heads, N, s // heads)


def merge_heads(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The inverse of :func:`split_heads`: (4·B·heads)×N×d -> 4×B×N×s."""
    S, B, N, s = shape
    return t.reshape(S, B, -1, N, t.shape[-1]).transpose(2, 3).reshape(S, B, N, s)


def block_diagonal_mask(num_blocks: int, block: int, value: float) -> torch.Tensor:
    """(num_blocks·block)² matrix: ``value`` on the diagonal blocks, 0 elsewhere."""
    return torch.block_diag(*[torch.full((block, block), value)] * num_blocks)


class GroupMixAttention(nn.Module):
    """GMA over tokens B×N×C: group aggregation, factorised attention, CRPE, non-attention branch.

    Two forms compute it (see :class:`GMABlock`). ``forward_batched`` follows the spec's layout — q, k, v
    of S0..S4 side by side on the channels — and runs every segment and head in single ops.
    ``forward_segments`` runs one segment at a time: heads never straddle segments (segment j of the
    a = 4s attention channels holds heads 2j and 2j+1), so q, k and v stay in their segments' layout and
    attention runs on a 4·B·2 batch of heads.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        aggregator: str = "conv",
    ):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5  # head size of the full C, as the authors compute it
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.aggregator = Aggregator(dim, aggregator)
        head_dim = 4 * (dim // NUM_SEGMENTS) // num_heads
        self.crpe = ConvRelPosEnc(head_dim=head_dim)
        # The batched form's context for all heads at once keeps each head's d×d block, scaled: a constant, not a
        # buffer (state dicts, the EMA and DDP's buffer broadcast have no business with it); ``_apply`` moves it.
        self.head_mask = block_diagonal_mask(num_heads, head_dim, self.scale)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.head_mask = fn(self.head_mask)
        return self

    def forward_batched(self, x: torch.Tensor, size: tuple[int, int], w: dict[str, torch.Tensor]) -> torch.Tensor:
        """x: B×N×C -> B×N×C, with ``w`` the block's packed weights (:func:`batched_layout`)."""
        B, N, C = x.shape
        s = C // NUM_SEGMENTS
        a = 4 * s
        y = F.linear(x, w["qkv_weight"], w["qkv_bias"])  # B×N×3C: q, k and v, each S0..S4
        # Group aggregation's spatial step for every segment of q, k and v in one depthwise conv: an identity kernel
        # for S0, S1..S3's 3×3, 5×5 and 7×7 (zero-padded to 7×7), and the non-attention branch's 3×3 for S4.
        y = to_tokens(F.conv2d(to_image(y, size), w["spatial"], None, 1, 3, 1, 3 * C))
        attended, nonattended = y.view(B * N, 3, 5 * s).split([a, s], dim=-1)
        # S1..S3's pointwise convs, shared by q, k and v: one a×a block-diagonal matrix (identity on S0).
        qkv = torch.bmm(attended.transpose(0, 1), w["pointwise"].expand(3, a, a))  # 3×(B·N)×a
        qkv = self.aggregator.act(self.aggregator.norm(qkv.view(3 * B * N, a, 1, 1)))
        q, k, v = qkv.view(3, B, N, a).unbind(0)  # B×N×a each, head-major channels
        branch = self.aggregator.agg0
        local = branch.act(branch.norm(nonattended.reshape(B * N, 3 * s) @ w["local_pointwise"])).view(B, N, s)

        # Factorised attention, every head at once: softmax_N(k)ᵀ·v is a×a, and the mask keeps each head's d×d.
        context = self.attn_drop((k.softmax(dim=1).transpose(1, 2) @ v).mul_(self.head_mask))
        crpe = to_tokens(F.conv2d(to_image(v, size), w["crpe_weight"], w["crpe_bias"], 1, 3, 1, a))
        out = torch.baddbmm(q * crpe, q, context)  # q ⊙ CRPE(v) + scale · q·context
        out = F.linear(torch.cat([out, local], dim=-1), w["proj_weight"], w["proj_bias"])
        return self.proj_drop(out)

    def qkv_segments(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The qkv projection one segment at a time: S0..S4, each B×N×3s with q's, k's, v's copies side by side."""
        C = x.shape[-1]
        s = C // NUM_SEGMENTS
        w = self.qkv.weight.view(3, NUM_SEGMENTS, s, C).transpose(0, 1).reshape(NUM_SEGMENTS, 3 * s, C)
        if self.qkv.bias is None:
            return [F.linear(x, w[j]) for j in range(NUM_SEGMENTS)]
        b = self.qkv.bias.view(3, NUM_SEGMENTS, s).transpose(0, 1).reshape(NUM_SEGMENTS, 3 * s)
        return [F.linear(x, w[j], b[j]) for j in range(NUM_SEGMENTS)]

    def forward_segments(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """x: B×N×C -> B×N×C, one segment at a time."""
        B, N, C = x.shape
        qkv, local = self.aggregator(self.qkv_segments(x), size)  # 4×B×N×3×s, B×N×s
        q, k, v = qkv.unbind(3)  # 4×B×N×s each
        h = self.num_heads // 4  # heads per segment

        # Factorised attention per head: q · (softmax_N(k)ᵀ · v); the contexts are only d×d.
        qh, kh, vh = (split_heads(t, h) for t in (q, k, v))
        context = self.attn_drop(kh.softmax(dim=1).transpose(1, 2) @ vh)
        attn = merge_heads(qh @ context, q.shape)
        out = torch.add(q * self.crpe(v, size), attn, alpha=self.scale)  # scale·attention + crpe

        # Head-major channels, then the non-attention tokens: B×N×C.
        out = torch.stack([*out.unbind(0), local], dim=2).view(B, N, C)
        return self.proj_drop(self.proj(out))


def batched_layout(p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Where each packed weight of the batched form comes from (positions; see :class:`WeightPack`).

    ``spatial`` (3C×1×7×7) is group aggregation's depthwise kernel for q's S0..S4, then k's, then v's: an
    identity kernel for S0, the aggregators' kernels zero-padded to 7×7 for S1..S3, and the non-attention
    branch's own kernel (one per q, k, v) for S4. ``pointwise`` (a×a, a = 4s) is the transposed
    block-diagonal of S0's identity and S1..S3's pointwise convs; ``crpe_weight`` the CRPE kernels of all
    heads, zero-padded to 7×7.
    """
    s = p["agg1_pointwise"].shape[0]
    C = NUM_SEGMENTS * s

    def pad7(t: torch.Tensor) -> torch.Tensor:
        return pad_kernel(t, 7)

    identity = torch.zeros(s, 1, 7, 7, dtype=torch.long)
    identity[:, 0, 3, 3] = ONE
    shared = torch.cat([identity, pad7(p["agg1_spatial"]), pad7(p["agg2_spatial"]), p["agg3_spatial"]])
    local = pad7(p["agg0_spatial"]).view(3, s, 1, 7, 7)  # the non-attention branch's kernels of q, k, v
    spatial = torch.cat([torch.cat([shared, local[t]]) for t in range(3)])
    eye = torch.where(torch.eye(s, dtype=torch.bool), ONE, ZERO)
    pointwise = torch.block_diag(eye, *(p[f"agg{j}_pointwise"].flatten(1) for j in (1, 2, 3))).t()
    return dict(
        cpe_weight=p["cpe_weight"],
        cpe_bias=p["cpe_bias"],
        qkv_weight=p["qkv_weight"],
        qkv_bias=p.get("qkv_bias", torch.full((3 * C,), ZERO)),
        spatial=spatial,
        pointwise=pointwise,
        local_pointwise=p["agg0_pointwise"].flatten(1).t(),
        crpe_weight=torch.cat([pad7(p[f"crpe_weight{i}"]) for i in range(3)]),
        crpe_bias=torch.cat([p[f"crpe_bias{i}"] for i in range(3)]),
        proj_weight=p["proj_weight"],
        proj_bias=p["proj_bias"],
        fc1_weight=p["fc1_weight"],
        fc1_bias=p["fc1_bias"],
        fc2_weight=p["fc2_weight"],
        fc2_bias=p["fc2_bias"],
    )


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


BLOCK_FORMS = ("auto", "batched", "segments")
# The form new blocks take; GMYOLO_GMA_FORM=batched makes a CPU run (an op count, a test) compute as a GPU does.
DEFAULT_BLOCK_FORM = os.environ.get("GMYOLO_GMA_FORM", "auto")


class GMABlock(nn.Module):
    """x + CPE; x + DropPath(GMA(LN(x))); x + DropPath(MLP(LN(x))).

    Two forms compute the same function (tested against the spec, outputs and gradients):

    - ``batched``: every segment and head of the block in single ops — one qkv product, one depthwise conv
      for all aggregators (kernels zero-padded to 7×7), one batched pointwise product, one BatchNorm,
      attention for all heads with a block-diagonal mask, one CRPE conv — with the weights those ops take
      built by one gather (:class:`WeightPack`). About 90 kernel launches per training step (forward and
      backward), for GPUs, where a small step costs its launches.
    - ``segments``: one segment at a time with the exact kernel sizes: less arithmetic and more, smaller
      ops; measured faster on CPUs.

    ``form`` ``auto`` (the default) takes ``segments`` on the CPU and ``batched`` elsewhere; the pooling
    aggregators (an ablation) always run in segments. :meth:`GroupMixFormer.set_block_form` sets it.

    ``--compile`` compiles each block in place (``compile_region``): the blocks of one width share one graph.
    """

    compile_region = True

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        aggregator: str = "conv",
    ):
        super().__init__()
        self.cpe = ConvPosEnc(dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.att = GroupMixAttention(dim, num_heads, qkv_bias, attn_drop, drop, aggregator)
        self.drop_path = drop_path  # stochastic depth's rate (a sample skips a residual branch); the stage draws
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        if DEFAULT_BLOCK_FORM not in BLOCK_FORMS:
            raise ValueError(f"GMYOLO_GMA_FORM must be one of {', '.join(BLOCK_FORMS)}, got {DEFAULT_BLOCK_FORM!r}")
        self.form = DEFAULT_BLOCK_FORM
        if self.att.aggregator.convolutional:
            shapes = {name: p.shape for name, p in self.packed_parameters().items()}
            self.pack = WeightPack(shapes, batched_layout)

    def packed_parameters(self) -> dict[str, torch.Tensor]:
        """The parameters the batched form reads through its pack (the norms it uses as they are)."""
        att, agg = self.att, self.att.aggregator
        params = {"cpe_weight": self.cpe.proj.weight, "cpe_bias": self.cpe.proj.bias, "qkv_weight": att.qkv.weight}
        if att.qkv.bias is not None:
            params["qkv_bias"] = att.qkv.bias
        for j, branch in enumerate(agg.aggregators(), 1):
            params[f"agg{j}_spatial"] = branch.conv1.weight
            params[f"agg{j}_pointwise"] = branch.pointwise_conv.weight
        params["agg0_spatial"] = agg.agg0.conv.conv1.weight
        params["agg0_pointwise"] = agg.agg0.conv.pointwise_conv.weight
        for i, conv in enumerate(att.crpe.conv_list):
            params[f"crpe_weight{i}"], params[f"crpe_bias{i}"] = conv.weight, conv.bias
        params.update(proj_weight=att.proj.weight, proj_bias=att.proj.bias)
        params.update(fc1_weight=self.mlp.fc1.weight, fc1_bias=self.mlp.fc1.bias)
        params.update(fc2_weight=self.mlp.fc2.weight, fc2_bias=self.mlp.fc2.bias)
        return params

    def no_weight_decay(self) -> set[str]:
        """Norms, biases and the position-encoding convs (CPE, CRPE) learn without weight decay."""
        return {n for n, p in self.named_parameters() if p.ndim <= 1 or n.startswith("cpe.") or ".crpe." in n}

    def batched(self, x: torch.Tensor) -> bool:
        """Whether this call runs the batched form (see the class docstring)."""
        if self.form == "auto":
            return x.device.type != "cpu" and hasattr(self, "pack")
        return self.form == "batched"

    def forward(self, x: torch.Tensor, size: tuple[int, int], keep: torch.Tensor | None = None) -> torch.Tensor:
        """x: B×N×C tokens of an H×W map (``size``) -> B×N×C. ``keep``: stochastic depth's 2×B×1×1 factors for the
        two residual branches (drawn by the stage, see :meth:`GMAStage.keep_factors`), None when off."""
        if self.batched(x):
            w = self.pack(self.packed_parameters())
            x = x + to_tokens(F.conv2d(to_image(x, size), w["cpe_weight"], w["cpe_bias"], 1, 1, 1, x.shape[-1]))
            x = residual(x, self.att.forward_batched(self.norm1(x), size, w), keep, 0)
            hidden = self.mlp.drop(F.gelu(F.linear(self.norm2(x), w["fc1_weight"], w["fc1_bias"])))
            return residual(x, self.mlp.drop(F.linear(hidden, w["fc2_weight"], w["fc2_bias"])), keep, 1)
        x = self.cpe(x, size)
        x = residual(x, self.att.forward_segments(self.norm1(x), size), keep, 0)
        return residual(x, self.mlp(self.norm2(x)), keep, 1)


def residual(x: torch.Tensor, branch: torch.Tensor, keep: torch.Tensor | None, i: int) -> torch.Tensor:
    """x + branch, the branch scaled by stochastic depth's ``keep[i]`` factors when given (one op either way)."""
    return x + branch if keep is None else torch.addcmul(x, branch, keep[i])


class GMAStage(nn.Module):
    """A stack of GMA blocks on a B×C×H×W map (named `gma_stage` as in the authors' checkpoints).

    Works on tokens that share memory with a channels-last map, so no layout copies between blocks;
    returns a channels-last map. With ``grad_checkpointing`` the stage's activations are recomputed
    in the backward pass instead of stored.
    """

    def __init__(self, blocks: Sequence[nn.Module]):
        super().__init__()
        self.gma_stage = nn.ModuleList(blocks)
        self.grad_checkpointing = False
        # Stochastic depth for the whole stage at once: each block's survival rate and the factor kept samples
        # take (1/rate). Constants, not buffers (see GroupMixAttention.head_mask); drawn here, not in the blocks, so
        # that blocks of one width are one compiled graph whatever their rates (and two ops a stage, not a block).
        rates = torch.tensor([float(getattr(b, "drop_path", 0.0)) for b in blocks])
        self.stochastic_depth = bool((rates > 0).any())
        self.survival = 1 - rates
        self.keep_scale = torch.where(self.survival > 0, 1 / self.survival, torch.zeros(()))

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.survival, self.keep_scale = fn(self.survival), fn(self.keep_scale)
        return self

    def keep_factors(self, x: torch.Tensor) -> torch.Tensor | None:
        """depth×2×B×1×1: per block, residual branch and sample, 0 (dropped) or 1/survival (kept); None when off."""
        if not (self.training and self.stochastic_depth):
            return None
        keep = x.new_empty(len(self.gma_stage), 2, x.shape[0], 1, 1).bernoulli_(self.survival.view(-1, 1, 1, 1, 1))
        return keep.mul_(self.keep_scale.view(-1, 1, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled() and x.requires_grad:
            return checkpoint(self.run_blocks, x, use_reentrant=False, context_fn=self.recompute_context)
        return self.run_blocks(x)

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[2], x.shape[3])
        tokens = to_tokens(x.contiguous(memory_format=torch.channels_last))
        keep = self.keep_factors(x)
        for i, block in enumerate(self.gma_stage):
            tokens = block(tokens, size) if keep is None else block(tokens, size, keep[i])
        return to_image(tokens, size)

    def recompute_context(self) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        """The recomputation must not update BatchNorm running statistics a second time."""
        return contextlib.nullcontext(), frozen_batchnorm_stats(self)

    @torch.no_grad()
    def fuse(self) -> GMAStage:
        """Switch the blocks to their inference form (:class:`FusedGMABlock`); for eval mode only."""
        self.eval()
        for i, block in enumerate(self.gma_stage):
            if isinstance(block, GMABlock):
                from .fused import FusedGMABlock  # the inference form builds on this file's blocks

                self.gma_stage[i] = FusedGMABlock(block)
        return self


def set_block_form(module: nn.Module, form: str) -> None:
    """Set ``form`` on every :class:`GMABlock` under ``module`` (a backbone, a detector, a GMA neck)."""
    if form not in BLOCK_FORMS:
        raise ValueError(f"unknown GMA block form {form!r}; choose one of {', '.join(BLOCK_FORMS)}")
    for m in module.modules():
        if isinstance(m, GMABlock):
            if form == "batched" and not hasattr(m, "pack"):
                raise ValueError("the batched form needs the conv aggregators; pooling aggregators run in segments")
            m.form = form


@contextlib.contextmanager
def frozen_batchnorm_stats(module: nn.Module):
    """BatchNorms under ``module`` normalise with batch statistics as usual but leave their running stats alone."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------
class FeatureInfo(dict):
    """One returned feature map: its stage ``index``, ``channels`` and ``stride`` (reduction) w.r.t. the input.

    A dict with timm's keys (``num_chs``, ``reduction``, ``module``), so timm's feature machinery reads it too.
    """

    def __init__(self, index: int, channels: int, stride: int):
        super().__init__(num_chs=channels, reduction=stride, module=f"groupmixformer_backbone.{index}", index=index)

    @property
    def index(self) -> int:
        return self["index"]

    @property
    def channels(self) -> int:
        return self["num_chs"]

    @property
    def stride(self) -> int:
        return self["reduction"]


def check_dims(embedding_dims: Sequence[int], num_heads: int) -> None:
    """Refuse widths that GMA cannot split: C/5 segments, 4C/5 over the heads, the fixed 2/3/3 head split."""
    if num_heads != sum(ConvRelPosEnc.windows.values()):
        raise ValueError(
            f"GroupMixFormer needs num_heads=8 (its relative position encoding splits 8 heads into "
            f"groups of 2, 3 and 3); got num_heads={num_heads}"
        )
    bad = [c for c in embedding_dims if c <= 0 or c % (2 * NUM_SEGMENTS) != 0]
    if bad:
        raise ValueError(
            f"GroupMixFormer embedding_dims must be positive multiples of 10 so that each width splits "
            f"into 5 segments and 8 heads; got {list(embedding_dims)} (not splittable: {bad})"
        )


class GroupMixFormer(nn.Module):
    """GroupMixFormer classifier, or multi-scale backbone with ``features_only=True``.

    Args use the authors' names. In features mode ``forward`` returns the maps of ``out_indices``
    (strides 4, 8, 16, 32 for stages 0..3); ``feature_info``, ``out_channels`` and ``out_strides``
    tell their channels and strides without running the model. Stages after the last requested one
    are not built. ``grad_checkpointing`` recomputes stage activations in the backward pass (memory for
    compute). ``fuse()`` switches to the inference path.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        embedding_dims: Sequence[int] = (80, 160, 200, 240),
        serial_depths: Sequence[int] = (4, 4, 12, 4),
        mlp_ratios: Sequence[float] = (4, 4, 4, 4),
        num_heads: int = 8,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        aggregator: str = "conv",
        features_only: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        if not (len(embedding_dims) == len(serial_depths) == len(mlp_ratios) == 4):
            raise ValueError("embedding_dims, serial_depths and mlp_ratios must each have 4 entries (one per stage)")
        check_dims(embedding_dims, num_heads)
        if aggregator not in AGGREGATORS:
            raise ValueError(f"unknown aggregator {aggregator!r}; choose one of {', '.join(AGGREGATORS)}")
        out_indices = tuple(sorted({int(i) for i in out_indices}))
        if features_only and (not out_indices or out_indices[0] < 0 or out_indices[-1] > 3):
            raise ValueError(f"out_indices must be a non-empty subset of 0..3, got {out_indices}")

        self.config = dict(
            embedding_dims=list(embedding_dims),
            serial_depths=list(serial_depths),
            mlp_ratios=list(mlp_ratios),
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            aggregator=aggregator,
        )
        self.num_classes = num_classes
        self.features_only = features_only
        self.out_indices = out_indices if features_only else (0, 1, 2, 3)
        num_stages = self.out_indices[-1] + 1
        self.stage_strides = [4 * 2**i for i in range(4)]

        self.conv_stem = ConvStem(in_chans, embedding_dims[0])
        in_dims = [embedding_dims[0], *embedding_dims[:3]]
        self.patch_embed_layers = nn.ModuleList(
            PatchEmbed(in_dims[i], embedding_dims[i], 1 if i == 0 else 2) for i in range(num_stages)
        )
        # Drop-path rises linearly over all blocks of the full network (also when stages are cut).
        dpr = torch.linspace(0, drop_path_rate, sum(serial_depths)).tolist()
        starts = [sum(serial_depths[:i]) for i in range(4)]
        self.groupmixformer_backbone = nn.ModuleList(
            GMAStage(
                [
                    GMABlock(
                        embedding_dims[i],
                        num_heads,
                        mlp_ratios[i],
                        qkv_bias,
                        drop_rate,
                        attn_drop_rate,
                        dpr[starts[i] + j],
                        aggregator,
                    )
                    for j in range(serial_depths[i])
                ]
            )
            for i in range(num_stages)
        )
        self.feature_info = [FeatureInfo(i, embedding_dims[i], self.stage_strides[i]) for i in self.out_indices]
        if not features_only:
            self.norm4 = nn.BatchNorm2d(embedding_dims[3])
            self.head = nn.Linear(embedding_dims[3], num_classes) if num_classes > 0 else nn.Identity()
            self.drop = nn.Dropout(drop_rate)
        self.apply(self._init_weights)
        self.set_grad_checkpointing(grad_checkpointing)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ---- the backbone contract ------------------------------------------------------------------
    @property
    def out_channels(self) -> list[int]:
        return [f.channels for f in self.feature_info]

    @property
    def out_strides(self) -> list[int]:
        return [f.stride for f in self.feature_info]

    @property
    def num_stages(self) -> int:
        return len(self.groupmixformer_backbone)

    def no_weight_decay(self) -> set[str]:
        """Parameter names that should not get weight decay: norms, biases and position-encoding convs."""
        names = set()
        for name, p in self.named_parameters():
            if p.ndim <= 1 or ".cpe." in name or ".crpe." in name:
                names.add(name)
        return names

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's activations in the backward pass instead of keeping them (less memory, ~1/3
        more compute); for the large variants at detection sizes. BatchNorm statistics are updated once."""
        for stage in self.groupmixformer_backbone:
            stage.grad_checkpointing = enable

    def set_block_form(self, form: str = "auto") -> None:
        """How the GMA blocks compute: ``auto`` (segments on the CPU, batched elsewhere), ``batched`` or ``segments``
        (see :class:`GMABlock`). The function is the same; only the kernels that compute it differ."""
        set_block_form(self, form)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classification head with a freshly initialised one for ``num_classes`` (0: none).

        ``global_pool`` is timm's argument; GroupMixFormer always averages (None or 'avg').
        """
        if global_pool not in (None, "avg"):
            raise ValueError(f"GroupMixFormer pools by averaging; global_pool={global_pool!r} is not supported")
        if self.features_only:
            raise RuntimeError("a features_only GroupMixFormer has no classifier")
        self.num_classes = num_classes
        dim = self.config["embedding_dims"][3]
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights(self.head)

    def freeze_stages(self, num_stages: int) -> None:
        """Freeze the stem and the first ``num_stages`` stages (parameters and BatchNorm statistics)."""
        frozen = [self.conv_stem]
        for i in range(min(num_stages, self.num_stages)):
            frozen += [self.patch_embed_layers[i], self.groupmixformer_backbone[i]]
        self._frozen = frozen if num_stages > 0 else []
        for module in self._frozen:
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> GroupMixFormer:
        super().train(mode)
        for module in getattr(self, "_frozen", []):
            module.eval()  # frozen stages keep their BatchNorm statistics
        return self

    @torch.no_grad()
    def fuse(self) -> GroupMixFormer:
        """Switch to the inference path (eval mode): outputs unchanged up to float rounding.

        BatchNorm is folded into the convolution before it in the stem and patch embeddings, and every
        GMA block becomes a :class:`FusedGMABlock`. The classifier's ``norm4`` stays.
        Meant for inference: the fused model is not trained further.
        """
        self.eval()
        pairs = [(self.conv_stem, "proj1", "norm1"), (self.conv_stem, "proj2", "norm2")]
        pairs += [(embed, "proj.pointwise_conv", "norm") for embed in self.patch_embed_layers]
        for stage in self.groupmixformer_backbone:
            stage.fuse()
        for owner, conv_name, bn_name in pairs:
            bn = getattr(owner, bn_name)
            if not isinstance(bn, nn.BatchNorm2d):
                continue  # already fused
            parent_name, _, leaf = conv_name.rpartition(".")
            parent = owner.get_submodule(parent_name) if parent_name else owner
            setattr(parent, leaf, fuse_conv_bn_eval(getattr(parent, leaf), bn))
            setattr(owner, bn_name, nn.Identity())
        return self

    # ---- forward --------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: B×3×H×W -> the map of every built stage, B×C_i×ceil(H/s_i)×ceil(W/s_i) (channels-last memory)."""
        # Channels-last from the start: depthwise convs are fastest on it, and tokens are then views of maps.
        x = self.conv_stem(x.contiguous(memory_format=torch.channels_last))
        maps = []
        for embed, stage in zip(self.patch_embed_layers, self.groupmixformer_backbone):
            x = stage(embed(x))
            maps.append(x)
        return maps

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Last stage map B×C3×H×W -> logits B×num_classes."""
        x = self.norm4(x).mean(dim=(2, 3))
        return self.head(self.drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        maps = self.forward_features(x)
        if self.features_only:
            return [maps[i] for i in self.out_indices]
        return self.forward_head(maps[-1])

    # ---- timm's feature-extraction protocol (timm.create_model(..., features_only=True)) ---------
    def take_indices(self, indices: int | Sequence[int] | None) -> list[int]:
        """timm's convention: None = every built stage, n = the last n, a sequence = those stages."""
        n = self.num_stages
        if indices is None:
            return list(range(n))
        if isinstance(indices, int):
            if not 0 < indices <= n:
                raise ValueError(f"GroupMixFormer has {n} stages; cannot take the last {indices}")
            return list(range(n - indices, n))
        take = sorted({int(i) % n if i < 0 else int(i) for i in indices})
        if not take or take[-1] >= n:
            raise ValueError(f"stage indices must be within 0..{n - 1}, got {list(indices)}")
        return take

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The stage maps of ``indices`` (B×C_i×H_i×W_i); with ``intermediates_only=False`` also the final map."""
        if output_fmt != "NCHW":
            raise ValueError(f"GroupMixFormer returns NCHW maps, not {output_fmt}")
        take = self.take_indices(indices)
        x = self.conv_stem(x.contiguous(memory_format=torch.channels_last))
        intermediates = []
        for i, (embed, stage) in enumerate(zip(self.patch_embed_layers, self.groupmixformer_backbone)):
            if stop_early and i > take[-1]:
                break
            x = stage(embed(x))
            if i in take:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        if not self.features_only and not stop_early:
            x = self.norm4(x)
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last of ``indices`` (and the classifier): what a feature extractor keeps."""
        take = self.take_indices(indices)
        keep = take[-1] + 1
        self.patch_embed_layers = self.patch_embed_layers[:keep]
        self.groupmixformer_backbone = self.groupmixformer_backbone[:keep]
        if not self.features_only:
            if prune_norm:
                self.norm4 = nn.Identity()
            if prune_head:
                self.reset_classifier(0)
        return take

    # ---- checkpoints ----------------------------------------------------------------------------
    def load_pretrained(self, checkpoint: str | os.PathLike | Mapping[str, Any], strict: bool = True):
        """Load an authors'-format checkpoint (a path or a dict); see :func:`load_groupmixformer_weights`.

        Sets ``pretrained_loaded``, which the detection optimizer reads to give the backbone its lower
        learning rate, however the weights arrived (``--backbone-weights`` or the YAML's ``pretrained``).
        """
        from .weights import load_groupmixformer_weights  # checkpoint reading builds on the variant table

        report = load_groupmixformer_weights(self, checkpoint, strict=strict)
        self.pretrained_loaded = True
        return report


# --------------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------------
VARIANTS: dict[str, dict[str, Any]] = {
    "m": dict(
        embedding_dims=(40, 80, 160, 160), serial_depths=(3, 3, 12, 4), mlp_ratios=(4, 4, 4, 4), drop_path_rate=0.1
    ),
    "t": dict(
        embedding_dims=(80, 160, 200, 240), serial_depths=(4, 4, 12, 4), mlp_ratios=(4, 4, 4, 4), drop_path_rate=0.1
    ),
    "s": dict(
        embedding_dims=(80, 160, 320, 320), serial_depths=(2, 4, 12, 4), mlp_ratios=(4, 4, 4, 4), drop_path_rate=0.2
    ),
    "b": dict(
        embedding_dims=(200, 240, 320, 480), serial_depths=(8, 8, 12, 8), mlp_ratios=(2, 2, 4, 4), drop_path_rate=0.5
    ),
    "l": dict(
        embedding_dims=(240, 320, 360, 480), serial_depths=(8, 10, 30, 10), mlp_ratios=(4, 4, 2, 2), drop_path_rate=0.1
    ),
}


# How each variant's released ImageNet-1K weights expect images (the authors' evaluation: resize to 256/224 of
# the size, centre crop, bicubic, ImageNet mean and std). timm's pretrained configs are made from this table
# (timm_models.py), and classification reads its preprocessing defaults from it.
PRETRAINED_CFG: dict[str, dict[str, Any]] = {
    v: dict(
        input_size=(3, 224, 224),
        crop_pct=0.875,
        interpolation="bicubic",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        num_classes=1000,
        first_conv="conv_stem.proj1",
        classifier="head",
    )
    for v in VARIANTS
}
MODEL_ZOO = "https://github.com/AILab-CVC/GroupMixFormer#-model-zoo"  # the authors' release (download by hand)


def is_variant_name(name: str) -> bool:
    """'groupmixformer-t', 't', 'gmf-x' (refused later by :func:`variant_name`) — not a file name."""
    key = name.strip().lower()
    if key.endswith((".yaml", ".yml", ".pt", ".pth")):
        return False
    return key in VARIANTS or key.startswith(("groupmixformer", "gmf-", "gmf_"))


def variant_name(name: str) -> str:
    """'t', 'T', 'groupmixformer-t', 'groupmixformer_t', 'GroupMixFormer-T' -> 't'."""
    key = name.strip().lower()
    for prefix in ("groupmixformer-", "groupmixformer_", "gmf-", "gmf_"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    if key not in VARIANTS:
        choices = ", ".join(f"groupmixformer-{v}" for v in VARIANTS)
        raise ValueError(f"unknown GroupMixFormer variant {name!r}; choose one of {choices}")
    return key


def groupmixformer(
    variant: str = "t", pretrained: str | os.PathLike | Mapping[str, Any] | None = None, **kwargs: Any
) -> GroupMixFormer:
    """Build a GroupMixFormer variant (M, T, S, B, L), optionally loading the authors' weights.

    ``kwargs`` override the variant's settings and pass through to :class:`GroupMixFormer`
    (``num_classes``, ``features_only``, ``out_indices``, ``drop_path_rate``, ``aggregator``, ...).
    """
    config = {**VARIANTS[variant_name(variant)], **kwargs}
    model = GroupMixFormer(**config)
    if pretrained is not None:
        if model.config["aggregator"] != "conv":
            raise ValueError("the authors' weights only fit the default conv aggregator (aggregator='conv')")
        model.load_pretrained(pretrained)
    return model


def groupmixformer_m(**kwargs: Any) -> GroupMixFormer:
    return groupmixformer("m", **kwargs)


def groupmixformer_t(**kwargs: Any) -> GroupMixFormer:
    return groupmixformer("t", **kwargs)


def groupmixformer_s(**kwargs: Any) -> GroupMixFormer:
    return groupmixformer("s", **kwargs)


def groupmixformer_b(**kwargs: Any) -> GroupMixFormer:
    return groupmixformer("b", **kwargs)


def groupmixformer_l(**kwargs: Any) -> GroupMixFormer:
    return groupmixformer("l", **kwargs)


def stage_output_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """Map size of each stage for an input of height×width (each stride-2 conv gives ceil(n/2))."""
    sizes, h, w = [], height, width
    for i in range(4):
        for _ in range(2 if i == 0 else 1):  # the stem halves twice, each later embedding once
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        sizes.append((h, w))
    return sizes
