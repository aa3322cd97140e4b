"""Choosing the device from a user string: '', 'cpu', '0', 'cuda:0', '0,1,2,3' (training on several GPUs), 'mps';
and the CPU memory allocator setting the ``gmyolo`` command runs with."""

from __future__ import annotations

import ctypes
import os
import sys

import torch

__all__ = ["select_device", "parse_gpus", "tune_cpu_allocator", "cpu_allocator_tuned", "ALLOCATOR_ENV"]

ALLOCATOR_ENV = "GMYOLO_MALLOC_TUNING"  # "0" leaves the C allocator as it is
_allocator_tuned = False


def tune_cpu_allocator() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    By default glibc gives large freed blocks (above a few MB) back to the kernel and maps fresh pages
    for the next one, so a CPU forward pass at detection sizes page-faults through every large activation
    on every call (measured here: 20-30% of a GroupMixFormer-M forward at 640; see the README's speed
    section). This is what PyTorch's tuning guide gets from jemalloc or tcmalloc. The price: the
    process keeps its peak heap instead of shrinking after it. The ``gmyolo`` command calls this at
    start; set ``GMYOLO_MALLOC_TUNING=0`` to turn it off. Returns whether the setting is in effect
    (False off Linux/glibc, e.g. on macOS, Windows or musl).
    """
    global _allocator_tuned
    if os.environ.get(ALLOCATOR_ENV, "1").strip() == "0" or not sys.platform.startswith("linux"):
        return _allocator_tuned
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return _allocator_tuned
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    # Blocks up to 32 MiB (glibc's maximum) come from the heap; the heap top is never trimmed.
    _allocator_tuned = bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 2**31 - 1))
    return _allocator_tuned


def cpu_allocator_tuned() -> bool:
    """Whether :func:`tune_cpu_allocator` has taken effect in this process."""
    return _allocator_tuned


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
