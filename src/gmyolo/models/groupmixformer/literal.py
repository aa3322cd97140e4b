"""GroupMixFormer computed literally in the spec's operation order — a reference for tests and benchmarks only.

``GROUPMIXFORMER_SPEC.md`` step by step, the way the authors' code runs it: maps in NCHW, q, k and
v stacked on the batch axis, a split and a cat per segment, a BatchNorm after every small
convolution, tokens and images converted back and forth. It reads the weights of a
:class:`~gmyolo.models.groupmixformer.GroupMixFormer` (unfused) and is a pure function of them: in
eval mode BatchNorm uses the running statistics, in train mode the batch's (running statistics are
left alone); drop-path and dropout are not applied. Gradients flow through it.

Tests hold both of the model's block forms to it (outputs and parameter gradients); ``gmyolo bench``
times it next to the model's own paths, so that the speed-up of the optimised implementation is
measured in one run on one machine. Nothing else should use it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .model import NUM_SEGMENTS, GroupMixFormer

__all__ = ["literal_forward_features"]


def conv(x: torch.Tensor, m: nn.Conv2d) -> torch.Tensor:
    return F.conv2d(x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)


def bn(x: torch.Tensor, m: nn.BatchNorm2d, part: slice = slice(None)) -> torch.Tensor:
    """BatchNorm ``m`` (or the channels ``part`` of it) on x: running statistics in eval mode, the batch's in
    train mode (without updating the running ones)."""
    if m.training:
        return F.batch_norm(x, None, None, m.weight[part], m.bias[part], True, 0.0, m.eps)
    return F.batch_norm(x, m.running_mean[part], m.running_var[part], m.weight[part], m.bias[part], False, 0.0, m.eps)


def separable(x: torch.Tensor, m: nn.Module) -> torch.Tensor:
    return conv(conv(x, m.conv1), m.pointwise_conv)


def stem(x: torch.Tensor, m: nn.Module) -> torch.Tensor:
    x = F.hardswish(bn(conv(x, m.proj1), m.norm1))
    return F.hardswish(bn(conv(x, m.proj2), m.norm2))


def patch_embed(x: torch.Tensor, m: nn.Module) -> torch.Tensor:
    return F.hardswish(bn(separable(x, m.proj), m.norm))


def aggregate(qkv: torch.Tensor, agg: nn.Module, size: tuple[int, int], num_heads: int):
    """Spec GMA step 2-3 on 3B×N×C tokens (q, k, v stacked) -> q, k, v B×heads×N×d and S4 tokens B×N×s."""
    B3, N, C = qkv.shape
    B, H, W = B3 // 3, *size
    s = C // NUM_SEGMENTS
    x = qkv.transpose(1, 2).reshape(B3, C, H, W)
    x0, x1, x2, x3, x4 = x.split([s] * NUM_SEGMENTS, dim=1)
    local = x4.reshape(3, B, s, H, W).permute(1, 0, 2, 3, 4).reshape(B, 3 * s, H, W)
    local = separable(local, agg.agg0.conv).reshape(B, s, N).permute(0, 2, 1)
    local = F.hardswish(F.layer_norm(local, (s,), agg.agg0.norm.weight, agg.agg0.norm.bias, agg.agg0.norm.eps))
    norm = [slice(j * s, (j + 1) * s) for j in range(4)]  # the authors' norm0..norm3: segments of the joint norm
    x0 = F.hardswish(bn(x0, agg.norm, norm[0]))
    x1 = F.hardswish(bn(separable(x1, agg.agg1), agg.norm, norm[1]))
    x2 = F.hardswish(bn(separable(x2, agg.agg2), agg.norm, norm[2]))
    x3 = F.hardswish(bn(separable(x3, agg.agg3), agg.norm, norm[3]))
    x = torch.cat([x0, x1, x2, x3], dim=1)
    q, k, v = x.reshape(3, B, num_heads, 4 * s // num_heads, N).permute(0, 1, 2, 4, 3)
    return q, k, v, local


def relative_position(q: torch.Tensor, v: torch.Tensor, crpe: nn.Module, size: tuple[int, int]) -> torch.Tensor:
    """Spec GMA step 5: q ⊙ depthwise convs of v, heads split 2/3/3 over kernels 3/5/7."""
    B, h, N, d = q.shape
    v_img = v.permute(0, 1, 3, 2).reshape(B, h * d, *size)
    parts = v_img.split(crpe.splits, dim=1)
    conv_v = torch.cat([conv(p, m) for p, m in zip(parts, crpe.conv_list)], dim=1)
    return q * conv_v.reshape(B, h, d, N).permute(0, 1, 3, 2)


def attention(x: torch.Tensor, att: nn.Module, size: tuple[int, int]) -> torch.Tensor:
    """Spec GMA(x) on B×N×C tokens."""
    B, N, C = x.shape
    qkv = F.linear(x, att.qkv.weight, att.qkv.bias).reshape(B, N, 3, C).permute(2, 0, 1, 3).reshape(3 * B, N, C)
    q, k, v, local = aggregate(qkv, att.aggregator, size, att.num_heads)
    context = torch.einsum("bhnk,bhnv->bhkv", k.softmax(dim=2), v)
    out = att.scale * torch.einsum("bhnk,bhkv->bhnv", q, context) + relative_position(q, v, att.crpe, size)
    out = out.transpose(1, 2).reshape(B, N, -1)
    return F.linear(torch.cat([out, local], dim=-1), att.proj.weight, att.proj.bias)


def block(x: torch.Tensor, blk: nn.Module, size: tuple[int, int]) -> torch.Tensor:
    """Spec 'One GMA block' (without drop-path)."""
    B, N, C = x.shape
    img = x.transpose(1, 2).reshape(B, C, *size)
    x = (conv(img, blk.cpe.proj) + img).flatten(2).transpose(1, 2)
    x = x + attention(F.layer_norm(x, (C,), blk.norm1.weight, blk.norm1.bias, blk.norm1.eps), blk.att, size)
    h = F.layer_norm(x, (C,), blk.norm2.weight, blk.norm2.bias, blk.norm2.eps)
    h = F.linear(F.gelu(F.linear(h, blk.mlp.fc1.weight, blk.mlp.fc1.bias)), blk.mlp.fc2.weight, blk.mlp.fc2.bias)
    return x + h


def literal_forward_features(model: GroupMixFormer, x: torch.Tensor) -> list[torch.Tensor]:
    """The stage maps of ``model`` for x (B×3×H×W), computed in the spec's order; an unfused model."""
    if model.config["aggregator"] != "conv":
        raise ValueError("literal_forward_features follows the spec's conv aggregator; this model pools")
    if not isinstance(model.conv_stem.norm1, nn.BatchNorm2d):
        raise ValueError("literal_forward_features needs an unfused model (it reads the BatchNorm layers)")
    x = stem(x, model.conv_stem)
    maps = []
    for embed, stage in zip(model.patch_embed_layers, model.groupmixformer_backbone):
        x = patch_embed(x, embed)
        B, C, H, W = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        for blk in stage.gma_stage:
            tokens = block(tokens, blk, (H, W))
        x = tokens.transpose(1, 2).reshape(B, C, H, W).contiguous()
        maps.append(x)
    return maps
