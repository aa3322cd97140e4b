"""Choosing the device from a user string: '', 'cpu', '0', 'cuda:0', 'mps'."""

from __future__ import annotations

import torch

__all__ = ["select_device"]


def select_device(device: str | int | None = "") -> torch.device:
    """'' or None: the first GPU if there is one, else the CPU. A bad or unavailable device is a ValueError."""
    text = str(device if device is not None else "").strip().lower().replace("cuda:", "")
    if text in ("", "auto"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError("device 'mps' requested but Apple MPS is not available")
        return torch.device("mps")
    if text.isdigit():
        n = torch.cuda.device_count()
        if int(text) >= n:
            have = f"{n} CUDA device(s)" if n else "no CUDA device"
            raise ValueError(f"device '{device}' requested but this machine has {have}; use --device cpu")
        return torch.device(f"cuda:{text}")
    if "," in text and all(p.strip().isdigit() for p in text.split(",")):
        raise ValueError(
            f"device '{device}' names several GPUs: launch with torchrun --nproc_per_node N -m gmyolo train ..."
        )
    raise ValueError(f"unknown device '{device}': use '', 'cpu', a GPU index such as 0, or 'cuda:0'")
