"""Kernel-launching ops of a training step, counted on any device.

At small batches a GPU training step costs about the same per launched kernel whatever the model (about 36 µs
on an H200), so the number of launching ops predicts the step where launches bind, and it can be counted on
the CPU. Every aten op PyTorch dispatches counts, except views and allocations, which launch nothing. A count
is per device type: each device takes its own form of a GroupMixFormer block (see
:class:`~gmyolo.models.groupmixformer.GMABlock`; ``GMYOLO_GMA_FORM=batched`` counts a GPU's form on the CPU),
and the CPU's and CUDA's autocast differ a little in what they cast.
"""

from __future__ import annotations

import collections
import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..engine.precision import Precision

__all__ = ["OpCounter", "count_ops", "training_ops"]

# Ops that launch no kernel: views of existing memory and allocations without a fill.
LAUNCH_FREE = frozenset(
    {
        "view", "_unsafe_view", "as_strided", "t", "transpose", "permute", "expand", "unsqueeze", "squeeze",
        "slice", "select", "split", "split_with_sizes", "unbind", "detach", "alias", "_reshape_alias", "reshape",
        "empty", "empty_strided", "chunk", "narrow", "sym_size", "sym_stride", "is_same_size", "lift_fresh",
    }
)  # fmt: skip


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched inside it by name (``counts``), leaving out :data:`LAUNCH_FREE`."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name not in LAUNCH_FREE:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def count_ops(fn: Callable[[], Any]) -> collections.Counter[str]:
    """The launching ops ``fn()`` dispatches, by name."""
    with OpCounter() as counter:
        fn()
    return counter.counts


def outputs(out: Any):
    """Every tensor in a model's output (tensors, or lists / tuples / dicts of them)."""
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, dict):
        for v in out.values():
            yield from outputs(v)
    elif isinstance(out, (list, tuple)):
        for v in out:
            yield from outputs(v)


def training_ops(
    model: nn.Module, imgsz: tuple[int, int], device: torch.device, precision: Precision, batch: int = 2
) -> dict[str, Any]:
    """Launching ops of one training forward + backward of a copy of ``model`` (train mode) on random images, the
    loss the sum of the outputs' means: the model's own ops, as ``op_count.py`` counts them.

    Returns the total, the six commonest ops, and how it was counted.
    """
    model = copy.deepcopy(model).to(device).train()
    x = torch.randn(batch, 3, *imgsz, device=device)

    def step() -> None:
        with precision.autocast():
            out = model(x)
        sum(t.float().mean() for t in outputs(out)).backward()

    step()  # lazy initialisation (cuDNN handles, autotuning) outside the count
    model.zero_grad(set_to_none=True)
    counts = count_ops(step)
    return {
        "ops": sum(counts.values()),
        "top": dict(counts.most_common(6)),
        "counted": f"forward + backward, batch {batch} at {imgsz[0]}x{imgsz[1]}, {device.type}, {precision.name}",
    }
