"""GroupMixFormer: a hierarchical vision transformer built on Group-Mix Attention (GMA).

Paper: Ge et al., "Advancing Vision Transformers with Group-Mix Attention", 2023.

The computation is the authors' released code's, so their ImageNet-1K checkpoints load unchanged
(module names equal the authors' state-dict keys) and give the same numbers. The memory layout is
ours, for speed: tokens share memory with channels-last maps (no copies between the two views), q, k
and v are aggregated one segment at a time (one conv per aggregator, no split/cat), and attention
runs per segment. ``groupmixformer_literal.py`` keeps the spec's own order as a benchmark reference;
``fuse()`` switches every block to :class:`FusedGMABlock` for inference. The order of this file:
layout helpers, building blocks, GMA, the GMA block, its inference form, the model, checkpoint
loading, variants.

Shapes: B batch, C channels, H×W map, N = H·W tokens, s = C/5 (one channel segment).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils.checkpoint import checkpoint
from torchvision.ops import StochasticDepth

__all__ = [
    "GroupMixFormer",
    "GMABlock",
    "GroupMixAttention",
    "CheckpointError",
    "VARIANTS",
    "groupmixformer",
    "groupmixformer_m",
    "groupmixformer_t",
    "groupmixformer_s",
    "groupmixformer_b",
    "groupmixformer_l",
    "load_checkpoint_state_dict",
    "infer_config_from_state_dict",
    "is_variant_name",
    "FusedGMABlock",
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


def norm_rows(norm: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """A BatchNorm2d over M×s rows (statistics over all M, as over batch and pixels of a map)."""
    return norm(rows.reshape(rows.shape[0], -1, 1, 1)).view(rows.shape)


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
    """Group aggregation of q, k and v.

    Segment S0 is the identity branch (BatchNorm, Hardswish); S1..S3 go through aggregators with
    kernels 3, 5, 7 (then BatchNorm, Hardswish); S4 of q, k and v together form the non-attention
    branch (`agg0` in the authors' names). The same layers serve q, k and v.

    The input comes one segment at a time, q's, k's and v's copies side by side on the channels
    (B×N×3s), so that each aggregator runs once over a contiguous map: a depthwise conv with its
    kernel repeated for q, k and v, then the pointwise conv as one matrix product over B·N·3 rows.
    BatchNorm statistics over those rows are those over the 3B images of the spec.
    """

    def __init__(self, dim: int, aggregator: str = "conv"):
        super().__init__()
        self.seg_dim = dim // NUM_SEGMENTS
        s = self.seg_dim
        self.norm0 = nn.BatchNorm2d(s)
        self.act0 = nn.Hardswish()
        self.agg1 = make_aggregator(aggregator, s, 3)
        self.norm1 = nn.BatchNorm2d(s)
        self.act1 = nn.Hardswish()
        self.agg2 = make_aggregator(aggregator, s, 5)
        self.norm2 = nn.BatchNorm2d(s)
        self.act2 = nn.Hardswish()
        self.agg3 = make_aggregator(aggregator, s, 7)
        self.norm3 = nn.BatchNorm2d(s)
        self.act3 = nn.Hardswish()
        self.agg0 = NonAttentionBranch(s)

    def branches(self) -> list[tuple[nn.Module, nn.Module, nn.Module]]:
        """(aggregator, BatchNorm, activation) of S1, S2, S3."""
        return [
            (self.agg1, self.norm1, self.act1),
            (self.agg2, self.norm2, self.act2),
            (self.agg3, self.norm3, self.act3),
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
        out = [self.act0(norm_rows(self.norm0, segments[0].reshape(-1, s)))]
        for (agg, norm, act), x in zip(self.branches(), segments[1:4]):
            out.append(act(norm_rows(norm, self.aggregate(agg, to_image(x, size)))))
        local = self.agg0(to_image(segments[4], size))
        return torch.stack(out).view(4, B, N, 3, s), local


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

    Heads never straddle segments (segment j of the a = 4s attention channels holds heads 2j and 2j+1),
    so q, k and v stay in their segments' layout and attention runs on a 4·B·2 batch of heads.
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
        self.crpe = ConvRelPosEnc(head_dim=4 * (dim // NUM_SEGMENTS) // num_heads)

    def qkv_segments(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The qkv projection one segment at a time: S0..S4, each B×N×3s with q's, k's, v's copies side by side."""
        C = x.shape[-1]
        s = C // NUM_SEGMENTS
        w = self.qkv.weight.view(3, NUM_SEGMENTS, s, C).transpose(0, 1).reshape(NUM_SEGMENTS, 3 * s, C)
        if self.qkv.bias is None:
            return [F.linear(x, w[j]) for j in range(NUM_SEGMENTS)]
        b = self.qkv.bias.view(3, NUM_SEGMENTS, s).transpose(0, 1).reshape(NUM_SEGMENTS, 3 * s)
        return [F.linear(x, w[j], b[j]) for j in range(NUM_SEGMENTS)]

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
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


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class GMABlock(nn.Module):
    """x + CPE; x + DropPath(GMA(LN(x))); x + DropPath(MLP(LN(x)))."""

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
        self.drop_path = StochasticDepth(drop_path, mode="row")
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = self.cpe(x, size)
        x = x + self.drop_path(self.att(self.norm1(x), size))
        return x + self.drop_path(self.mlp(self.norm2(x)))


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled() and x.requires_grad:
            return checkpoint(self.run_blocks, x, use_reentrant=False, context_fn=self.recompute_context)
        return self.run_blocks(x)

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[2], x.shape[3])
        tokens = to_tokens(x.contiguous(memory_format=torch.channels_last))
        for block in self.gma_stage:
            tokens = block(tokens, size)
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
                self.gma_stage[i] = FusedGMABlock(block)
        return self


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
# Inference form of a GMA block
# --------------------------------------------------------------------------------------------------
class FusedGMABlock(nn.Module):
    """A :class:`GMABlock` folded for inference; outputs equal the block's in eval mode (to float rounding).

    - CPE: the residual is the depthwise kernel's centre tap + 1.
    - qkv is computed per segment; S0's BatchNorm is folded into its rows.
    - each aggregator's BatchNorm is folded into its pointwise conv (a pooling aggregator gets a diagonal
      one), a matrix product over B·N·3 rows; the depthwise kernels are repeated for q, k, v once.
    - the CRPE kernels are grouped per segment once, not at every call.

    On small inputs (batch × tokens × channels at most ``MERGE_SIZE``) a call costs more than its
    arithmetic, so the same work runs in fewer, larger ops: one qkv product, one depthwise conv for every
    segment (kernels zero-padded to the largest, S0 an identity kernel), one CRPE conv. Larger inputs use
    the exact kernel sizes, which do less arithmetic. Pooling aggregators always take the per-segment path.
    On CPU, the output projection and the MLP run ``TAIL_ROWS`` tokens at a time (see :meth:`residual_tail`).
    """

    MERGE_SIZE = 2**17  # batch × tokens × channels; measured on CPU: merged is faster below, per-segment above
    TAIL_ROWS = 1024  # tokens per chunk of proj + MLP: the 4C-wide hidden stays in cache and is never allocated whole

    @torch.no_grad()
    def __init__(self, block: GMABlock):
        super().__init__()
        att, agg = block.att, block.att.aggregator
        self.dim = C = att.qkv.in_features
        self.seg_dim = s = C // NUM_SEGMENTS
        # LayerNorms stay as they are: PyTorch's kernel with an affine is faster than the one without.
        self.norm1, self.norm2 = block.norm1, block.norm2

        self.cpe = depthwise_conv(block.cpe.proj.weight, block.cpe.proj.bias)
        self.cpe.weight[:, 0, 1, 1] += 1  # x + conv(x) in one convolution

        # qkv per segment, S0's BatchNorm (scale, shift) folded into its rows.
        w = att.qkv.weight.clone()
        b = att.qkv.bias.clone() if att.qkv.bias is not None else torch.zeros_like(w[:, 0])
        w = w.view(3, NUM_SEGMENTS, s, C).transpose(0, 1).reshape(NUM_SEGMENTS, 3 * s, C)
        b = b.view(3, NUM_SEGMENTS, s).transpose(0, 1).reshape(NUM_SEGMENTS, 3 * s)
        scale, shift = bn_scale_shift(agg.norm0)
        w[0] *= scale.repeat(3)[:, None]
        b[0] = b[0] * scale.repeat(3) + shift.repeat(3)
        self.register_buffer("qkv_weight", w.contiguous())
        self.register_buffer("qkv_bias", b.contiguous())

        # S1..S3: the spatial step over q, k, v at once, then the pointwise step with the BatchNorm folded in.
        self.spatial = nn.ModuleList()
        pw_w, pw_b = [], []
        for agg_j, norm, _ in agg.branches():
            scale, shift = bn_scale_shift(norm)
            if isinstance(agg_j, SeparableConv2d):
                self.spatial.append(depthwise_conv(agg_j.conv1.weight.repeat(3, 1, 1, 1)))
                pw_w.append(agg_j.pointwise_conv.weight.flatten(1) * scale[:, None])
            else:  # pooling: per channel, no pointwise conv
                self.spatial.append(agg_j)
                pw_w.append(torch.diag(scale))
            pw_b.append(shift)
        self.register_buffer("pw_weight", torch.stack(pw_w))
        self.register_buffer("pw_bias", torch.stack(pw_b))
        self.local = agg.agg0
        kernels = att.crpe.segment_kernels(att.num_heads // 4)
        self.crpe_convs = nn.ModuleList(depthwise_conv(w, b) for w, b in kernels)

        # The merged form for small maps (conv aggregators only).
        self.merged = isinstance(agg.agg1, SeparableConv2d)
        if self.merged:
            k = max(agg_j.conv1.kernel_size[0] for agg_j, _, _ in agg.branches())
            identity = torch.zeros_like(pad_kernel(agg.agg1.conv1.weight.repeat(3, 1, 1, 1), k))
            identity[:, 0, k // 2, k // 2] = 1
            merged = [identity] + [
                pad_kernel(agg_j.conv1.weight.repeat(3, 1, 1, 1), k) for agg_j, _, _ in agg.branches()
            ]
            self.merged_dw = depthwise_conv(torch.cat([*merged, pad_kernel(agg.agg0.conv.conv1.weight, k)]))
            # Pointwise weights shared by q, k, v as one block-diagonal matrix over the segment's 3s channels.
            self.register_buffer("pw_blocks", torch.stack([torch.block_diag(w, w, w) for w in pw_w]))
            self.register_buffer("pw_blocks_bias", self.pw_bias.repeat(1, 3))
            self.register_buffer("local_pw", agg.agg0.conv.pointwise_conv.weight.flatten(1).clone())
            self.crpe_merged = depthwise_conv(*att.crpe.segment_kernels(att.num_heads)[0])
        # Inference attention per segment: the s×s context holds both heads' d×d ones on its diagonal (the
        # mask, with the scale, zeroes the cross-head entries): two larger products instead of copies per head.
        heads = att.num_heads // 4
        mask = block_diagonal_mask(heads, s // heads, att.scale).to(att.qkv.weight)
        self.register_buffer("head_mask", mask)
        self.proj = att.proj

        self.fc1, self.fc2 = block.mlp.fc1, block.mlp.fc2
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        B, N, _ = x.shape
        C, s = self.dim, self.seg_dim
        # Traced or exported graphs take the per-segment form for every size (runtimes there have no per-call cost).
        exporting = torch.jit.is_tracing() or torch.compiler.is_exporting()
        merged = self.merged and not exporting and B * N * C <= self.MERGE_SIZE
        x = to_tokens(self.cpe(to_image(x, size)))
        h = self.norm1(x)
        qkv, local = self.aggregate_merged(h, size) if merged else self.aggregate(h, size)
        q, k, v = qkv.unbind(3)  # 4×B×N×s each

        context = k.flatten(0, 1).softmax(dim=1).transpose(1, 2) @ v.flatten(0, 1)
        conv_v = self.crpe_merged_conv(v, size) if merged else self.crpe_conv(v, size)
        out = torch.baddbmm((q * conv_v).flatten(0, 1), q.flatten(0, 1), context * self.head_mask)
        out = torch.stack([*out.view(4, B, N, s).unbind(0), local], dim=2).view(B, N, C)  # head-major, then S4
        # out= buffers have no gradient and do not mix with autocast's dtype changes.
        compiled = exporting or torch.compiler.is_compiling()
        if x.device.type == "cpu" and not (compiled or x.requires_grad or cpu_autocast_enabled()):
            return self.residual_tail(x, out)
        x = x + self.proj(out)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))

    def residual_tail(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """x + proj(attn), then + MLP(LN2(·)), ``TAIL_ROWS`` tokens at a time (CPU inference only: compilers
        fuse these ops themselves, a GPU wants few large kernels, and out= has no gradient).

        Every step is per token, so chunks give the same numbers. On CPU this is the block's largest
        memory traffic: whole, the B×N×4C hidden is written and read twice and freshly allocated
        (page faults on every call at detection sizes); in chunks it stays in cache.
        """
        B, N, C = x.shape
        rows, attn = x.reshape(-1, C), attn.reshape(-1, C)
        out = torch.empty_like(rows)
        for i in range(0, rows.shape[0], self.TAIL_ROWS):
            y = out[i : i + self.TAIL_ROWS]
            torch.addmm(rows[i : i + self.TAIL_ROWS], attn[i : i + self.TAIL_ROWS], self.proj.weight.t(), out=y)
            y += self.proj.bias
            hidden = F.linear(self.norm2(y), self.fc1.weight, self.fc1.bias)
            y.addmm_(torch.ops.aten.gelu_(hidden), self.fc2.weight.t()).add_(self.fc2.bias)
        return out.view(B, N, C)

    def aggregate(self, h: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per segment: S0 (BatchNorm already in its rows), S1..S3 (spatial + pointwise), Hardswish; S4."""
        B, N, _ = h.shape
        s = self.seg_dim
        qkv = [F.linear(h, self.qkv_weight[0], self.qkv_bias[0])]
        for j, spatial in enumerate(self.spatial):
            seg = to_tokens(spatial(to_image(F.linear(h, self.qkv_weight[j + 1], self.qkv_bias[j + 1]), size)))
            if self.merged and s < SMALL_SEGMENT:
                qkv.append(F.linear(seg, self.pw_blocks[j], self.pw_blocks_bias[j]))
            else:
                qkv.append(F.linear(seg.reshape(B, N, 3, s), self.pw_weight[j], self.pw_bias[j]))
        qkv = F.hardswish(torch.stack([t.view(B, N, 3, s) for t in qkv]), inplace=True)
        local = self.local(to_image(F.linear(h, self.qkv_weight[4], self.qkv_bias[4]), size))
        return qkv, local

    def aggregate_merged(self, h: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The same with one qkv product and one depthwise conv; the pointwise steps read strided slices."""
        B, N, _ = h.shape
        s = self.seg_dim
        y = F.linear(h, self.qkv_weight.flatten(0, 1), self.qkv_bias.flatten())
        y = to_tokens(self.merged_dw(to_image(y, size))).view(B, N, NUM_SEGMENTS, 3 * s)
        qkv = [y[:, :, 0]] + [
            F.linear(y[:, :, j + 1], w, b) for j, (w, b) in enumerate(zip(self.pw_blocks, self.pw_blocks_bias))
        ]
        qkv = F.hardswish(torch.stack(qkv), inplace=True).view(4, B, N, 3, s)
        local = self.local.act(self.local.norm(F.linear(y[:, :, 4], self.local_pw)))
        return qkv, local

    def crpe_conv(self, v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """conv(v) for 4×B×N×s values, one depthwise conv per segment."""
        return torch.stack([to_tokens(conv(to_image(seg, size))) for conv, seg in zip(self.crpe_convs, v.unbind(0))])

    def crpe_merged_conv(self, v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The same as one depthwise conv over all heads (B×N×4s, head-major), returned as a 4×B×N×s view."""
        _, B, N, s = v.shape
        conv_v = self.crpe_merged(to_image(v.permute(1, 2, 0, 3).reshape(B, N, 4 * s), size))
        return to_tokens(conv_v).view(B, N, 4, s).permute(2, 0, 1, 3)


def cpu_autocast_enabled() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_cpu_enabled()


def pad_kernel(weight: torch.Tensor, k: int) -> torch.Tensor:
    """A C×1×k'×k' kernel zero-padded around its centre to k×k: the same 'same'-padded convolution."""
    return F.pad(weight, [(k - weight.shape[-1]) // 2] * 4)


def depthwise_conv(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Conv2d:
    """A stride-1 'same' depthwise Conv2d holding copies of ``weight`` (C×1×k×k) and ``bias``."""
    C, _, k, _ = weight.shape
    conv = nn.Conv2d(C, C, k, 1, k // 2, groups=C, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    conv.weight.data.copy_(weight)
    if bias is not None:
        conv.bias.data.copy_(bias)
    return conv


def bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as y = scale·x + shift."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureInfo:
    """One returned feature map: its stage index, channels and stride (reduction) w.r.t. the input."""

    index: int
    channels: int
    stride: int


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

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classification head with a freshly initialised one for ``num_classes``."""
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

    # ---- checkpoints ----------------------------------------------------------------------------
    def load_pretrained(self, checkpoint: str | os.PathLike | Mapping[str, Any], strict: bool = True) -> LoadReport:
        """Load an authors'-format checkpoint (a path or a dict); see :func:`load_groupmixformer_weights`.

        Sets ``pretrained_loaded``, which the detection optimizer reads to give the backbone its lower
        learning rate, however the weights arrived (``--backbone-weights`` or the YAML's ``pretrained``).
        """
        report = load_groupmixformer_weights(self, checkpoint, strict=strict)
        self.pretrained_loaded = True
        return report


# --------------------------------------------------------------------------------------------------
# Checkpoint loading
# --------------------------------------------------------------------------------------------------
class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the model; the message says what did not fit."""


@dataclass
class LoadReport:
    """What :func:`load_groupmixformer_weights` did, for logs and tests."""

    loaded: int = 0
    dropped: list[str] = field(default_factory=list)  # checkpoint keys deliberately not used
    missing: list[str] = field(default_factory=list)  # model keys left at their initial values
    notes: list[str] = field(default_factory=list)


def read_checkpoint(path: str | os.PathLike) -> Any:
    """torch.load with weights_only=True: tensors and plain containers only, never code."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError, RuntimeError (bad zip), EOFError, ...
        found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(e), re.IGNORECASE)  # any module, blocked too
        if found:
            raise CheckpointError(
                f"{path}: refused to load: the file holds a pickled Python object ({found.group(1)}), not only "
                f"tensors, and unpickling it could run code"
            ) from None
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (corrupt, truncated or not made by torch.save; "
            f"{type(e).__name__})"
        ) from None


def load_checkpoint_state_dict(checkpoint: str | os.PathLike | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Unwrap every checkpoint format the authors' code produces into a flat state dict.

    Accepted: ``{"model": sd}`` (released files), ``{"state_dict": sd}``, a bare state dict; keys may
    carry a ``module.`` prefix (DataParallel / DDP).
    """
    where = os.fspath(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "checkpoint dict"
    obj = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{where}: expected a dict of tensors, found {type(obj).__name__}")
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    state = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(
                f"{where}: entry {k!r} is a {type(v).__name__}, not a tensor; expected a state dict "
                f"(top level, or under 'model' or 'state_dict')"
            )
        state[k[len("module.") :] if k.startswith("module.") else k] = v
    if not state:
        raise CheckpointError(f"{where}: the checkpoint holds no tensors")
    return state


def infer_config_from_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, Any] | None:
    """Read widths, depths, MLP ratios and class count off an authors'-format state dict (None if not one)."""
    dims, depths, ratios = [], [], []
    for i in range(4):
        pw = state.get(f"patch_embed_layers.{i}.proj.pointwise_conv.weight")
        if pw is None:
            break
        dims.append(pw.shape[0])
        prefix = f"groupmixformer_backbone.{i}.gma_stage."
        blocks = {int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)}
        depths.append(len(blocks))
        fc1 = state.get(f"{prefix}0.mlp.fc1.weight")
        ratios.append(fc1.shape[0] / fc1.shape[1] if fc1 is not None else None)
    if not dims:
        return None
    ratios = [int(r) if r is not None and float(r).is_integer() else r for r in ratios]
    head = state.get("head.weight")
    return dict(
        embedding_dims=dims,
        serial_depths=depths,
        mlp_ratios=ratios,
        num_classes=head.shape[0] if head is not None else None,
    )


def describe_config(cfg: Mapping[str, Any]) -> str:
    """'GroupMixFormer-T (dims 80-160-200-240, depths 4-4-12-4)' or without the name if no variant fits."""
    name = variant_of(cfg)
    text = "dims {} depths {}".format(
        "-".join(map(str, cfg["embedding_dims"])), "-".join(map(str, cfg["serial_depths"]))
    )
    return f"GroupMixFormer-{name.upper()} ({text})" if name else f"GroupMixFormer ({text})"


def variant_of(cfg: Mapping[str, Any]) -> str | None:
    """The name of the variant with these widths, depths and MLP ratios, if any."""
    for name, v in VARIANTS.items():
        if all(list(cfg.get(k, [])) == list(v[k]) for k in ("embedding_dims", "serial_depths", "mlp_ratios")):
            return name
    return None


def load_groupmixformer_weights(
    model: GroupMixFormer, checkpoint: str | os.PathLike | Mapping[str, Any], strict: bool = True
) -> LoadReport:
    """Load authors'-format weights into ``model``.

    The classifier (``norm4``, ``head``) is dropped in features mode and re-initialised when the
    class count differs; stages the model did not build are dropped. Everything else must fit
    exactly when ``strict`` (the default); otherwise one :class:`CheckpointError` says what did not.
    """
    state = load_checkpoint_state_dict(checkpoint)
    found = infer_config_from_state_dict(state)
    if found is None:
        sample = ", ".join(list(state)[:3])
        raise CheckpointError(
            f"this is not a GroupMixFormer checkpoint: it has none of the patch_embed_layers.* weights "
            f"(its first keys: {sample}, ...)"
        )
    mine = model.config
    ours_desc, theirs_desc = describe_config(mine), describe_config(found)
    n = model.num_stages
    if (found["embedding_dims"][:n], found["serial_depths"][:n]) != (
        mine["embedding_dims"][:n],
        mine["serial_depths"][:n],
    ) or (found["mlp_ratios"][:n] != list(mine["mlp_ratios"][:n])):
        raise CheckpointError(
            f"checkpoint is {theirs_desc} with mlp ratios {found['mlp_ratios']}, but the model is "
            f"{ours_desc} with mlp ratios {mine['mlp_ratios']}: pick the matching variant"
        )

    report = LoadReport()
    model_state = model.state_dict()
    reinit: tuple[str, ...] = ()  # model keys deliberately left at their fresh initialisation
    if model.features_only:
        head_keys = [k for k in state if k.startswith(("norm4.", "head."))]
        if head_keys:
            report.notes.append("dropped the classification head (norm4, head): the model returns features")
    elif found["num_classes"] is not None and found["num_classes"] != model.num_classes:
        head_keys, reinit = [k for k in state if k.startswith("head.")], ("head.",)
        report.notes.append(
            f"classification head re-initialised for {model.num_classes} classes "
            f"(the checkpoint's head has {found['num_classes']})"
        )
    else:
        head_keys = []
    cut_stages = [
        k
        for k in state
        if k.split(".")[0] in ("patch_embed_layers", "groupmixformer_backbone") and int(k.split(".")[1]) >= n
    ]
    if cut_stages:
        report.notes.append(f"dropped stages {n}..3: the model stops at stage {n - 1} (out_indices)")
    report.dropped = head_keys + cut_stages
    dropped = set(report.dropped)
    usable = {k: v for k, v in state.items() if k not in dropped}

    unexpected = [k for k in usable if k not in model_state]
    shape_bad = [k for k in usable if k in model_state and usable[k].shape != model_state[k].shape]
    missing = [k for k in model_state if k not in usable and not k.startswith(reinit)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} model weights are absent from the checkpoint (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} checkpoint entries have no place in the model (e.g. {unexpected[0]})")
    if shape_bad:
        k = shape_bad[0]
        problems.append(
            f"{len(shape_bad)} entries have the wrong shape (e.g. {k}: checkpoint "
            f"{tuple(usable[k].shape)}, model {tuple(model_state[k].shape)})"
        )
    if problems and strict:
        raise CheckpointError(
            f"checkpoint ({theirs_desc}) does not fit the model ({ours_desc}): " + "; ".join(problems)
        )
    fitting = {k: v for k, v in usable.items() if k in model_state and k not in shape_bad}
    model.load_state_dict(fitting, strict=False)
    report.loaded = len(fitting)
    report.missing = missing
    for note in report.notes + problems:
        LOGGER.info("GroupMixFormer weights: %s", note)
    LOGGER.info("GroupMixFormer weights: loaded %d tensors from a %s checkpoint", report.loaded, theirs_desc)
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
