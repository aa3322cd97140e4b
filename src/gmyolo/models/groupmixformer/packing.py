"""Weights gathered into the shapes that a few large ops take: :class:`WeightPack`.

On a GPU a small model's training step costs about the same per launched kernel whatever the kernel does, so
a GMA block runs every segment and head in single ops (one depthwise conv for all aggregators, one CRPE conv
for all heads, ...). Those ops want kernels that exist in no parameter: zero-padded, concatenated,
block-diagonal. Built with pads and cats, they would cost a dozen small ops forward and as many backward, and a
cast for each under autocast. A pack builds them all with one gather from the block's parameters (and the
constants 0 and 1), then one cast: two ops forward, three backward, whatever the layout.

The layout is worked out once, on integer *positions*: each parameter is replaced by a tensor of the same
shape holding the positions of its elements in the flat gather source, and the layout function arranges those
with ordinary tensor ops (pad, cat, block_diag, transpose). Position 0 is the constant 0 (what ``F.pad`` and
``torch.block_diag`` fill with) and position 1 the constant 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import nn

__all__ = ["WeightPack", "autocast_dtype"]

ZERO, ONE = 0, 1  # positions of the constants in the gather source


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast runs matrix products in on ``device_type``, or None when autocast is off there."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


class WeightPack(nn.Module):
    """Gathers named parameters into the tensors a layout function describes, with one ``index_select``.

    ``shapes``: the parameters' shapes by name, in the order :meth:`forward` receives them.
    ``layout``: maps {name: positions (a long tensor of that shape)} to {output name: positions}.

    ``forward(params)`` returns {output name: tensor} in the autocast dtype when autocast is on (one cast for all),
    else in the parameters' dtype. Gradients flow back to every parameter through the gather.
    """

    def __init__(
        self,
        shapes: Mapping[str, torch.Size],
        layout: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    ):
        super().__init__()
        positions, offset = {}, 2
        for name, shape in shapes.items():
            n = math.prod(shape)
            positions[name] = torch.arange(offset, offset + n).view(shape)
            offset += n
        parts = layout(positions)
        self.inputs = tuple(shapes)
        self.names = tuple(parts)
        self.shapes = tuple(p.shape for p in parts.values())
        self.sizes = tuple(p.numel() for p in parts.values())
        # Constants, not buffers: state dicts, the EMA and DDP's buffer broadcast have no business with them.
        # ``_apply`` moves them with the module (``.to()``, ``.cuda()``, ``.half()``).
        self.index = torch.cat([p.flatten() for p in parts.values()])
        self.constants = torch.tensor([0.0, 1.0])

    def forward(self, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        first = params[self.inputs[0]]
        source = torch.cat([self.constants.to(first.dtype), *(params[name].reshape(-1) for name in self.inputs)])
        packed = source.index_select(0, self.index)
        dtype = autocast_dtype(packed.device.type)
        if dtype is not None:
            packed = packed.to(dtype)
        return {name: t.view(shape) for name, t, shape in zip(self.names, packed.split(self.sizes), self.shapes)}

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.index, self.constants = fn(self.index), fn(self.constants)
        return self

    def extra_repr(self) -> str:
        return f"{len(self.inputs)} parameters -> {', '.join(self.names)} ({self.index.numel()} values)"
