"""YOLOv5 building blocks (Conv, C3, SPPF, ...) and the GMA neck block C3GMA.

The blocks reproduce YOLOv5 v7.0's layer structure and parameter names, so that a YOLOv5 state dict
copies over tensor by tensor. Shapes: B×C×H×W throughout.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..groupmixformer import GMABlock, GMAStage

__all__ = [
    "autopad",
    "default_activation",
    "activation_during_build",
    "Conv",
    "DWConv",
    "Bottleneck",
    "BottleneckCSP",
    "C3",
    "C3GMA",
    "SPP",
    "SPPF",
    "Focus",
    "Concat",
]

# YOLOv5 trains its BatchNorms with these settings (set in its initialize_weights).
BN_EPS, BN_MOMENTUM = 1e-3, 0.03
# The activation of every Conv built with act=True: SiLU, unless a model YAML's ``activation`` names another
# while that model is built (a context variable, so nothing leaks to other models or threads).
_ACTIVATION: ContextVar[Callable[[], nn.Module] | None] = ContextVar("gmyolo_activation", default=None)


def default_activation() -> nn.Module:
    make = _ACTIVATION.get()
    return nn.SiLU(inplace=True) if make is None else make()


@contextlib.contextmanager
def activation_during_build(make: Callable[[], nn.Module] | None) -> Iterator[None]:
    """Within the block, Conv(act=True) uses ``make()`` (None: SiLU) as its activation."""
    token = _ACTIVATION.set(make)
    try:
        yield
    finally:
        _ACTIVATION.reset(token)


def autopad(k: int | Sequence[int], p: int | None = None, d: int = 1) -> int | list[int]:
    """'Same' padding for kernel k and dilation d."""
    if d > 1:
        k = d * (k - 1) + 1 if isinstance(k, int) else [d * (x - 1) + 1 for x in k]
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm + SiLU; after ``fuse()`` the BatchNorm is folded into the conv."""

    def __init__(self, c1: int, c2: int, k=1, s: int = 1, p=None, g: int = 1, d: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = default_activation() if act is True else act if isinstance(act, nn.Module) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def fuse(self) -> None:
        """Fold the BatchNorm into the convolution (eval mode only)."""
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = fuse_conv_bn_eval(self.conv.eval(), self.bn.eval())
            self.bn = nn.Identity()


class DWConv(Conv):
    """Depthwise-style Conv with groups = gcd(c1, c2)."""

    def __init__(self, c1: int, c2: int, k=1, s: int = 1, d: int = 1, act: bool = True):
        super().__init__(c1, c2, k, s, g=math.gcd(c1, c2), d=d, act=act)


class Bottleneck(nn.Module):
    """1×1 Conv -> 3×3 Conv, with a residual connection when shapes allow."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class BottleneckCSP(nn.Module):
    """CSP bottleneck (Cross Stage Partial Networks), the YOLOv5 v1–v5 block."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = nn.Conv2d(c1, c_, 1, 1, bias=False)
        self.cv3 = nn.Conv2d(c_, c_, 1, 1, bias=False)
        self.cv4 = Conv(2 * c_, c2, 1, 1)
        self.bn = nn.BatchNorm2d(2 * c_, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.SiLU(inplace=True)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y1 = self.cv3(self.m(self.cv1(x)))
        y2 = self.cv2(x)
        return self.cv4(self.act(self.bn(torch.cat((y1, y2), 1))))


class C3(nn.Module):
    """CSP bottleneck with 3 convolutions: cv3(cat(m(cv1(x)), cv2(x)))."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = self.hidden_channels(c2, e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = self.make_blocks(c_, n, shortcut, g)

    @staticmethod
    def hidden_channels(c2: int, e: float) -> int:
        return int(c2 * e)

    def make_blocks(self, c_: int, n: int, shortcut: bool, g: int) -> nn.Module:
        return nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class C3GMA(C3):
    """C3 whose inner blocks are GMA blocks: Group-Mix Attention in the neck.

    GMA splits channels into 5 segments and 8 heads, so the hidden width is ``c2 * e`` rounded up to
    a multiple of 10. YAML args: ``[c2, mlp_ratio]`` (the repeat count is the layer's ``number``).
    """

    def __init__(self, c1: int, c2: int, n: int = 1, mlp_ratio: float = 2.0, e: float = 0.5):
        self.mlp_ratio = mlp_ratio
        super().__init__(c1, c2, n, e=e)

    @staticmethod
    def hidden_channels(c2: int, e: float) -> int:
        return max(10, math.ceil(c2 * e / 10) * 10)

    def make_blocks(self, c_: int, n: int, shortcut: bool, g: int) -> nn.Module:
        return GMAStage([GMABlock(c_, num_heads=8, mlp_ratio=self.mlp_ratio) for _ in range(n)])


class SPP(nn.Module):
    """Spatial pyramid pooling with parallel max-pools of kernels k."""

    def __init__(self, c1: int, c2: int, k: Sequence[int] = (5, 9, 13)):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * (len(k) + 1), c2, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [m(x) for m in self.m], 1))


class SPPF(nn.Module):
    """Fast SPP: chained max-pools of kernel k, equal to SPP(k=(5, 9, 13)) for k=5 and 3 pools.

    ``[c2, k]`` is YOLOv5's block (cv1 activated, 3 pools). Giving the number of pools ``n`` selects YOLO26's
    form, ``[c2, k, n, shortcut]``: cv1 without activation and, with ``shortcut`` (and c1 == c2), x added back.
    """

    def __init__(self, c1: int, c2: int, k: int = 5, n: int | None = None, shortcut: bool = False):
        super().__init__()
        c_ = c1 // 2
        self.n = 3 if n is None else n
        self.cv1 = Conv(c1, c_, 1, 1, act=n is None)
        self.cv2 = Conv(c_ * (self.n + 1), c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        for _ in range(self.n):
            y.append(self.m(y[-1]))
        out = self.cv2(torch.cat(y, 1))
        return x + out if self.add else out


class Focus(nn.Module):
    """Space-to-depth (stride 2) then Conv: B×C×H×W -> B×4C×H/2×W/2 -> B×c2×H/2×W/2."""

    def __init__(self, c1: int, c2: int, k=1, s: int = 1, p=None, g: int = 1, act: bool = True):
        super().__init__()
        self.conv = Conv(c1 * 4, c2, k, s, p, g, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1))


class Concat(nn.Module):
    """Concatenate a list of tensors along ``dimension``."""

    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)
