"""Mixed precision, cuDNN autotuning and ``torch.compile`` as the trainer (and bench, val, predict) apply them.

:func:`resolve_precision` turns ``--amp auto|bf16|fp16|off`` and the device into a :class:`Precision`: the
autocast dtype, and whether the loss needs a GradScaler (fp16 only: bf16 has fp32's exponent range). The
weights, their gradients, the optimizer state, the EMA and every checkpoint stay fp32; autocast only runs the
forward pass's matrix products and convolutions in the lower precision.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .options import amp_mode, compile_mode

__all__ = [
    "Precision",
    "resolve_precision",
    "bf16_supported",
    "to_float32",
    "cudnn_benchmark",
    "compile_model",
    "compile_backend",
]

LOGGER = logging.getLogger("gmyolo")


@dataclass(frozen=True)
class Precision:
    """How a forward pass runs: ``dtype`` None is fp32 (no autocast)."""

    device_type: str
    dtype: torch.dtype | None = None

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    @property
    def scaled(self) -> bool:
        """fp16 needs a GradScaler (small gradients underflow); bf16 and fp32 do not."""
        return self.dtype == torch.float16

    @property
    def name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[self.dtype]

    def autocast(self, cache: bool = True) -> contextlib.AbstractContextManager:
        """Autocast in ``dtype`` (nothing for fp32); ``cache=False`` for CUDA-graph capture."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype, cache_enabled=cache)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.scaled)


def bf16_supported(device: torch.device) -> bool:
    """Native bf16 on this GPU (Ampere and later); emulated bf16 does not count."""
    if device.type != "cuda":
        return False
    return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_precision(amp: str | bool | None, device: torch.device) -> Precision:
    """``--amp`` on ``device``. ``auto``: bf16 on GPUs that have it, else fp16 (with a GradScaler); fp32 elsewhere.

    An explicit ``bf16`` runs on the CPU too (CPU autocast); ``fp16`` is for GPUs only.
    """
    mode = amp_mode(amp)
    if mode == "off":
        return Precision(device.type)
    if mode == "auto":
        if device.type != "cuda":
            return Precision(device.type)
        return Precision("cuda", torch.bfloat16 if bf16_supported(device) else torch.float16)
    if mode == "bf16":
        if device.type == "cuda" and not bf16_supported(device):
            raise ValueError(f"--amp bf16: {torch.cuda.get_device_name(device)} has no native bf16; use --amp fp16")
        return Precision(device.type, torch.bfloat16)
    if device.type == "cpu":
        raise ValueError("--amp fp16 is for GPUs; on a CPU use --amp bf16 or --amp off")
    return Precision(device.type, torch.float16)


def to_float32(out: Any) -> Any:
    """Model outputs (tensors, or lists / tuples / dicts of them) with every floating tensor in fp32."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, (list, tuple)):
        return type(out)(to_float32(o) for o in out)
    if isinstance(out, dict):
        return {k: to_float32(v) for k, v in out.items()}
    return out


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool):
    """cuDNN autotuning on or off inside the block, restored on exit. On, cuDNN times every algorithm for each new
    convolution shape it meets and keeps the fastest: worth it for shapes that repeat, as fixed-size training
    batches do, and not for validation's rectangular batches, whose shapes each come once an epoch."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def compile_model(model: nn.Module, device: torch.device, mode: str | bool = "default", **options: Any) -> nn.Module:
    """``torch.compile`` for the forward pass; the weights, the state dict (what is saved) and the EMA are unchanged.

    Regional compilation where the model has compile regions (modules with ``compile_region = True``: blocks
    repeated many times with the same code, such as GroupMixFormer's GMA blocks): each is compiled in place and the
    model comes back as it was, so a GroupMixFormer compiles one graph per block shape (four) instead of the whole
    network, and the stem, neck and head run eagerly. Otherwise the whole model (a wrapper that runs the compiled
    forward). ``mode``: one of :data:`~gmyolo.engine.options.COMPILE_MODES` (``reduce-overhead`` replays each
    compiled region from a CUDA graph). On a CPU, Inductor needs a C++ compiler: without one this is a ValueError.
    """
    mode = compile_mode(mode)
    if mode == "off":
        return model
    if device.type == "cpu" and not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        raise ValueError("--compile on a CPU needs a C++ compiler (none found); drop --compile")
    # Shapes specialised (dynamic=False) unless asked: training batches have one size, and GroupMixFormer's
    # stages call the same code at four sizes, which would otherwise turn symbolic (slower kernels, and an
    # Inductor failure seen with torch 2.14 on its strided attention maps).
    options.setdefault("dynamic", False)
    if mode != "default":
        options["mode"] = mode
    regions = [m for m in model.modules() if getattr(m, "compile_region", False)]
    if regions:
        name = type(regions[0]).__name__
        LOGGER.info("torch.compile (%s): %d %s regions, one graph per block shape", mode, len(regions), name)
        for region in regions:
            region.compile(**options)
        return model
    LOGGER.info("torch.compile (%s): %s (compiles during the first batches)", mode, type(model).__name__)
    return torch.compile(model, **options)


def compile_backend(backend: Any, mode: str | bool) -> Any:
    """``--compile`` for val and predict: the backend's PyTorch model compiled, shapes specialised as in training
    (each new rectangular batch shape compiles once, up to Dynamo's recompile limit, then runs eager: symbolic shapes
    failed in Inductor on GroupMixFormer's strided attention maps with torch 2.14); exported backends (ONNX,
    TorchScript) run as they are."""
    if compile_mode(mode) == "off":
        return backend
    model = getattr(backend, "model", None)
    if not isinstance(model, nn.Module):
        LOGGER.info("--compile: a %s model runs as exported (only checkpoints are compiled)", backend.kind)
        return backend
    if hasattr(model, "_orig_mod") or any(getattr(m, "_compiled_call_impl", None) for m in model.modules()):
        return backend  # already compiled (a backend the Python API keeps between calls)
    backend.model = compile_model(model, backend.device, mode)
    return backend
