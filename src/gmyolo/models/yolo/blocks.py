"""The blocks of the YOLOv8 / YOLOv10 / YOLO11 / YOLO12 / YOLO26 model YAMLs, written from the published designs.

- ``C2f`` (YOLOv8): one 1×1 conv split in two halves, a chain of bottlenecks on the second half whose every
  output is kept, all joined by a 1×1 conv.
- ``C3k2`` (YOLO11): ``C2f`` whose inner blocks are bottlenecks, ``C3k`` blocks (``c3k``), or a bottleneck
  followed by a position-sensitive attention block (``attn``, YOLO26).
- ``PSA`` (YOLOv10) and ``C2PSA`` (YOLO11): half of the channels through multi-head self-attention (with a
  depthwise position encoding on the values) and a 2× feed-forward, the other half passed by.
- ``SCDown`` (YOLOv10): 1×1 conv then a strided depthwise conv.
- ``A2C2f`` (YOLO12): ``C2f``-like chain of area-attention blocks (``ABlock``) or ``C3k`` blocks.

Attribute names follow the published models' (``cv1``, ``cv2``, ``m``, ``attn``, ``ffn`` ...), so a state
dict of the reference implementation maps tensor by tensor. Shapes: B×C×H×W throughout.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .common import Conv

__all__ = ["KernelBottleneck", "C2f", "C3k", "C3k2", "Attention", "PSABlock", "PSA", "C2PSA", "SCDown",
           "AreaAttention", "ABlock", "A2C2f"]  # fmt: skip


class KernelBottleneck(nn.Module):
    """Conv(k0) -> Conv(k1), with a residual connection when ``shortcut`` and the widths agree.

    YOLOv5's ``Bottleneck`` is the (1, 3) case; the newer blocks use (3, 3).
    """

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, k: Sequence = (3, 3), e: float = 0.5):
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, k[0], 1)
        self.cv2 = Conv(hidden, c2, k[1], 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """cv1 -> halves (a, b); b -> m[0] -> m[1] ...; cv2(cat(a, b, every m output)). Output width c2."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, g: int = 1, e: float = 0.5):
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(KernelBottleneck(self.c, self.c, shortcut, g, k=(3, 3), e=1.0) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class C3k(nn.Module):
    """YOLOv5's C3 with k×k kernels in both convs of its bottlenecks: cv3(cat(m(cv1(x)), cv2(x)))."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5, k: int = 3):
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv(c1, hidden, 1, 1)
        self.cv3 = Conv(2 * hidden, c2, 1)
        self.m = nn.Sequential(*(KernelBottleneck(hidden, hidden, shortcut, g, k=(k, k), e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class C3k2(C2f):
    """C2f whose inner blocks are bottlenecks (default), C3k blocks of 2 bottlenecks (``c3k``), or a bottleneck
    followed by a PSA block (``attn``). The YAML's args: ``[c2, c3k, e, attn, g, shortcut]``."""

    def __init__(
        self,
        c1: int,
        c2: int,
        n: int = 1,
        c3k: bool = False,
        e: float = 0.5,
        attn: bool = False,
        g: int = 1,
        shortcut: bool = True,
    ):
        super().__init__(c1, c2, n, shortcut, g, e)
        c = self.c

        def block() -> nn.Module:
            if attn:
                return nn.Sequential(
                    KernelBottleneck(c, c, shortcut, g), PSABlock(c, attn_ratio=0.5, num_heads=max(c // 64, 1))
                )
            return C3k(c, c, 2, shortcut, g) if c3k else KernelBottleneck(c, c, shortcut, g)

        self.m = nn.ModuleList(block() for _ in range(n))


class Attention(nn.Module):
    """Multi-head self-attention over the H·W positions of a map, with 1×1 conv projections.

    Per head: queries and keys of ``key_dim = head_dim * attn_ratio`` channels, values of ``head_dim``; a 3×3
    depthwise conv of the values (``pe``) is added to the attention output before the output projection.
    """

    def __init__(self, dim: int, num_heads: int = 8, attn_ratio: float = 0.5):
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"attention width {dim} must be a positive multiple of its {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim**-0.5
        self.qkv = Conv(dim, dim + 2 * self.key_dim * num_heads, 1, act=False)
        self.proj = Conv(dim, dim, 1, act=False)
        self.pe = Conv(dim, dim, 3, 1, g=dim, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = (
            self.qkv(x)
            .view(b, self.num_heads, 2 * self.key_dim + self.head_dim, h * w)
            .split([self.key_dim, self.key_dim, self.head_dim], dim=2)
        )
        weights = ((q * self.scale).transpose(-2, -1) @ k).softmax(dim=-1)  # B×heads×N×N
        out = (v @ weights.transpose(-2, -1)).view(b, c, h, w) + self.pe(v.reshape(b, c, h, w))
        return self.proj(out)


class PSABlock(nn.Module):
    """x + attn(x), then + ffn(x) (a 2× 1×1-conv MLP); without ``shortcut`` the sums are dropped."""

    def __init__(self, c: int, attn_ratio: float = 0.5, num_heads: int = 4, shortcut: bool = True):
        super().__init__()
        self.attn = Attention(c, num_heads=num_heads, attn_ratio=attn_ratio)
        self.ffn = nn.Sequential(Conv(c, c * 2, 1), Conv(c * 2, c, 1, act=False))
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x) if self.add else self.attn(x)
        return x + self.ffn(x) if self.add else self.ffn(x)


def _same_width(c1: int, c2: int, name: str) -> None:
    if c1 != c2:
        raise ValueError(f"{name} keeps its input width: input {c1} channels, output {c2} (set args[0] to match)")


class PSA(nn.Module):
    """YOLOv10's position-sensitive attention: cv1 -> halves (a, b); b + attn(b), + ffn(b); cv2(cat(a, b))."""

    def __init__(self, c1: int, c2: int, e: float = 0.5):
        super().__init__()
        _same_width(c1, c2, "PSA")
        self.c = int(c1 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv(2 * self.c, c1, 1)
        self.attn = Attention(self.c, attn_ratio=0.5, num_heads=max(self.c // 64, 1))
        self.ffn = nn.Sequential(Conv(self.c, self.c * 2, 1), Conv(self.c * 2, self.c, 1, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).split((self.c, self.c), dim=1)
        b = b + self.attn(b)
        b = b + self.ffn(b)
        return self.cv2(torch.cat((a, b), 1))


class C2PSA(nn.Module):
    """YOLO11's PSA with ``n`` stacked PSA blocks on the attended half."""

    def __init__(self, c1: int, c2: int, n: int = 1, e: float = 0.5):
        super().__init__()
        _same_width(c1, c2, "C2PSA")
        self.c = int(c1 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv(2 * self.c, c1, 1)
        self.m = nn.Sequential(*(PSABlock(self.c, attn_ratio=0.5, num_heads=max(self.c // 64, 1)) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).split((self.c, self.c), dim=1)
        return self.cv2(torch.cat((a, self.m(b)), 1))


class SCDown(nn.Module):
    """Spatial-channel decoupled downsampling: 1×1 conv to c2, then a k×k depthwise conv of stride s."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 2):
        super().__init__()
        self.cv1 = Conv(c1, c2, 1, 1)
        self.cv2 = Conv(c2, c2, k=k, s=s, g=c2, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv2(self.cv1(x))


class AreaAttention(nn.Module):
    """YOLO12's area attention: the H·W positions are cut into ``area`` equal runs (rows of the map), and each
    run attends within itself; a 7×7 depthwise conv of the values is added before the output projection."""

    def __init__(self, dim: int, num_heads: int, area: int = 1):
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"area attention needs at least one head, got {num_heads}")
        self.area = area
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.all_head_dim = self.head_dim * num_heads
        self.qkv = Conv(dim, self.all_head_dim * 3, 1, act=False)
        self.proj = Conv(self.all_head_dim, dim, 1, act=False)
        self.pe = Conv(self.all_head_dim, self.all_head_dim, 7, 1, 3, g=self.all_head_dim, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        n, c = h * w, self.all_head_dim
        runs = self.area if self.area > 1 else 1
        qkv = self.qkv(x).flatten(2).transpose(1, 2).reshape(b * runs, n // runs, 3 * c)  # (B·runs)×(N/runs)×3C
        q, k, v = (
            qkv.view(b * runs, n // runs, self.num_heads, 3 * self.head_dim)
            .permute(0, 2, 3, 1)
            .split([self.head_dim] * 3, dim=2)
        )  # each (B·runs)×heads×head_dim×(N/runs)
        weights = ((q * self.head_dim**-0.5).transpose(-2, -1) @ k).softmax(dim=-1)
        out = (v @ weights.transpose(-2, -1)).permute(0, 3, 1, 2)  # (B·runs)×(N/runs)×heads×head_dim
        v = v.permute(0, 3, 1, 2)
        out = out.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()
        v = v.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()
        return self.proj(out + self.pe(v))


class ABlock(nn.Module):
    """x + area_attention(x), then + MLP(x) (1×1 convs, hidden ``dim * mlp_ratio``)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 1.2, area: int = 1):
        super().__init__()
        self.attn = AreaAttention(dim, num_heads=num_heads, area=area)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(Conv(dim, hidden, 1), Conv(hidden, dim, 1, act=False))
        for m in self.modules():  # the published initialisation of these blocks
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


class A2C2f(nn.Module):
    """cv1 -> m[0] -> m[1] ...; cv2(cat(cv1 output, every m output)); with ``a2`` each m is two ABlocks
    (heads of 32 channels), else a C3k. ``residual`` (with a2) adds x + gamma * y, gamma learnt per channel."""

    def __init__(
        self,
        c1: int,
        c2: int,
        n: int = 1,
        a2: bool = True,
        area: int = 1,
        residual: bool = False,
        mlp_ratio: float = 2.0,
        e: float = 0.5,
        g: int = 1,
        shortcut: bool = True,
    ):
        super().__init__()
        hidden = int(c2 * e)
        if hidden % 32:
            raise ValueError(f"A2C2f's hidden width {hidden} (c2 {c2} x e {e}) must be a multiple of 32")
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv((1 + n) * hidden, c2, 1)
        self.gamma = nn.Parameter(0.01 * torch.ones(c2)) if a2 and residual else None
        self.m = nn.ModuleList(
            nn.Sequential(*(ABlock(hidden, hidden // 32, mlp_ratio, area) for _ in range(2)))
            if a2
            else C3k(hidden, hidden, 2, shortcut, g)
            for _ in range(n)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        for m in self.m:
            y.append(m(y[-1]))
        out = self.cv2(torch.cat(y, 1))
        return x + self.gamma.view(1, -1, 1, 1) * out if self.gamma is not None else out
