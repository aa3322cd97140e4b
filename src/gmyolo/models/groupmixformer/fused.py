"""The inference form of a GMA block: :class:`FusedGMABlock`, which ``GroupMixFormer.fuse()`` switches to.

Outputs equal the training form's in eval mode, to float rounding; it is not trained further.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .model import (
    NUM_SEGMENTS,
    SMALL_SEGMENT,
    GMABlock,
    SeparableConv2d,
    block_diagonal_mask,
    pad_kernel,
    to_image,
    to_tokens,
)

__all__ = ["FusedGMABlock"]


class FusedGMABlock(nn.Module):
    """A :class:`GMABlock` folded for inference; outputs equal the block's in eval mode (to float rounding).

    - CPE: the residual is the depthwise kernel's centre tap + 1.
    - qkv is computed per segment; S0's BatchNorm is folded into its rows.
    - each aggregator's BatchNorm is folded into its pointwise conv (a pooling aggregator gets a diagonal
      one), a matrix product over B·N·3 rows; the depthwise kernels are repeated for q, k, v once.
    - the CRPE kernels are grouped per segment once, not at every call.

    On small inputs (batch × tokens × channels at most ``MERGE_SIZE``) and on GPUs, where a call costs more
    than its arithmetic, the same work runs in fewer, larger ops: one qkv product, one depthwise conv for every
    segment (kernels zero-padded to the largest, S0 an identity kernel), one CRPE conv. Larger inputs on the
    CPU use the exact kernel sizes, which do less arithmetic. Pooling aggregators always take the per-segment
    path.
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
        scales, shifts = (t.split(s) for t in bn_scale_shift(agg.norm))  # S0..S3's BatchNorm as scale, shift
        scale, shift = scales[0], shifts[0]
        w[0] *= scale.repeat(3)[:, None]
        b[0] = b[0] * scale.repeat(3) + shift.repeat(3)
        self.register_buffer("qkv_weight", w.contiguous())
        self.register_buffer("qkv_bias", b.contiguous())

        # S1..S3: the spatial step over q, k, v at once, then the pointwise step with the BatchNorm folded in.
        self.spatial = nn.ModuleList()
        pw_w, pw_b = [], []
        for agg_j, scale, shift in zip(agg.aggregators(), scales[1:], shifts[1:]):
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
        self.merged = agg.convolutional
        if self.merged:
            k = max(agg_j.conv1.kernel_size[0] for agg_j in agg.aggregators())
            identity = torch.zeros_like(pad_kernel(agg.agg1.conv1.weight.repeat(3, 1, 1, 1), k))
            identity[:, 0, k // 2, k // 2] = 1
            merged = [identity] + [pad_kernel(agg_j.conv1.weight.repeat(3, 1, 1, 1), k) for agg_j in agg.aggregators()]
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
        merged = self.merged and not exporting and (x.device.type != "cpu" or B * N * C <= self.MERGE_SIZE)
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
        if x.device.type == "cpu" and not (compiled or x.requires_grad or torch.is_autocast_enabled("cpu")):
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
