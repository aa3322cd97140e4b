"""Checkpoint files: read with ``torch.load(weights_only=True)`` (data, never code), written atomically."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .files import atomic_open

__all__ = ["read_checkpoint", "atomic_save"]


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


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save to a temp file in the same folder, fsync, then rename over ``path``: never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return path
