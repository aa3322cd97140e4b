"""Choosing the device from a user string: '', 'cpu', '0', 'cuda:0', '0,1,2,3' (training on several GPUs), 'mps'."""

from __future__ import annotations

import torch

__all__ = ["select_device", "parse_gpus"]


def parse_gpus(device: str | int | None) -> list[int]:
    """The GPU indices a device string names: '0' -> [0], 'cuda:0,1' -> [0, 1]; [] for '', 'cpu', 'mps', ..."""
    text = str(device if device is not None else "").strip().lower().replace("cuda:", "")
    parts = [p.strip() for p in text.split(",")] if text else []
    return [int(p) for p in parts] if parts and all(p.isdigit() for p in parts) else []


def check_gpus(gpus: list[int], device: str | int | None) -> None:
    """Every named GPU exists, none twice."""
    if len(set(gpus)) < len(gpus):
        raise ValueError(f"device '{device}' names a GPU twice")
    n = torch.cuda.device_count()
    if max(gpus) >= n:
        have = f"{n} CUDA device(s)" if n else "no CUDA device"
        raise ValueError(f"device '{device}' requested but this machine has {have}; use --device cpu")


def select_device(device: str | int | None = "", local_rank: int = -1, local_world_size: int = 1) -> torch.device:
    """'' or None: the first GPU if there is one, else the CPU. A bad or unavailable device is a ValueError.

    Under torchrun (``local_rank`` >= 0, one process per GPU on each machine) process ``local_rank``
    takes its own GPU: GPU ``local_rank`` for '', the ``local_rank``-th of a list such as '0,1,2,3'.
    """
    text = str(device if device is not None else "").strip().lower().replace("cuda:", "")
    gpus = parse_gpus(device)
    if local_rank >= 0:
        return select_rank_device(device, text, gpus, local_rank, local_world_size)
    if text in ("", "auto"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError("device 'mps' requested but Apple MPS is not available")
        return torch.device("mps")
    if len(gpus) == 1:
        check_gpus(gpus, device)
        return torch.device(f"cuda:{gpus[0]}")
    if len(gpus) > 1:
        check_gpus(gpus, device)
        raise ValueError(f"device '{device}' names several GPUs; only `gmyolo train` uses several, so name one here")
    raise ValueError(f"unknown device '{device}': use '', 'cpu', a GPU index such as 0, GPUs such as 0,1, or 'cuda:0'")


def select_rank_device(
    device: str | int | None, text: str, gpus: list[int], local_rank: int, local_world_size: int
) -> torch.device:
    """The device of one torchrun process: the CPU (all processes) or its own GPU."""
    if text == "cpu" or (text in ("", "auto") and not torch.cuda.is_available()):
        return torch.device("cpu")
    if text in ("", "auto"):
        gpus = list(range(torch.cuda.device_count()))
        if local_world_size > len(gpus):
            raise ValueError(
                f"torchrun started {local_world_size} processes on this machine but it has {len(gpus)} GPU(s): "
                "use --nproc_per_node <number of GPUs>"
            )
    elif not gpus:
        raise ValueError(f"device '{device}' cannot be used with torchrun: use '', 'cpu' or GPU indices such as 0,1")
    elif len(gpus) != local_world_size:
        raise ValueError(
            f"device '{device}' names {len(gpus)} GPU(s) but torchrun started {local_world_size} processes on this "
            "machine: one process per GPU (--nproc_per_node must equal the number of GPUs)"
        )
    check_gpus(gpus, device)
    return torch.device(f"cuda:{gpus[local_rank]}")
