"""When training is stopped from outside: Ctrl-C / SIGTERM, out of memory, and what a killed run leaves behind.

A run is resumable at epoch boundaries: ``last.pt`` holds the last finished epoch and is replaced
atomically, so a run killed at any moment (even SIGKILL) loses at most the unfinished epoch.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import BatchTooLarge
from ..utils.files import atomic_write
from .distributed import get_world_size, is_main_process

__all__ = ["BatchTooLarge", "GracefulInterrupt", "out_of_memory_hint", "tidy_interrupted_run"]

LOGGER = logging.getLogger("gmyolo")


@contextlib.contextmanager
def out_of_memory_hint(batch: int, per_rank: int, images: torch.Tensor) -> Iterator[None]:
    """Turn an out-of-memory error inside the block into :class:`BatchTooLarge` with what to change."""
    try:
        yield
    except RuntimeError as e:  # torch.cuda.OutOfMemoryError is one
        if not isinstance(e, torch.cuda.OutOfMemoryError) and not is_allocation_failure(e):
            raise
        share = f" ({per_rank} per process)" if per_rank != batch else ""
        h, w = images.shape[-2:]
        raise BatchTooLarge(
            f"out of memory on {images.device} with --batch {batch}{share} at {w}x{h} px; "
            f"use a smaller --batch (e.g. {max(batch // 2, 1)}) or --imgsz"
        ) from None


def is_allocation_failure(e: RuntimeError) -> bool:
    """CPU and MPS allocators raise plain RuntimeErrors."""
    text = str(e).lower()
    return "out of memory" in text or "can't allocate memory" in text


class GracefulInterrupt:
    """Ctrl-C (SIGINT) or SIGTERM during training: a checkpoint being written is finished first.

    Outside :meth:`deferred` blocks a signal raises KeyboardInterrupt at once, its message saying
    which checkpoint to resume from; inside one it is held until the block ends. Handlers are
    installed for the ``with`` block (in the main thread only; elsewhere signals keep their handlers).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, command: str = "gmyolo train") -> None:
        self.command = command  # how the run was started, for the resume hint
        self.hint = "no checkpoint was saved yet"
        self.depth = 0  # nesting of deferred blocks
        self.pending: int | None = None
        self.previous: dict[int, object] = {}

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}

    def handle(self, signum: int, frame) -> None:
        if self.depth:
            self.pending = signum
            LOGGER.warning("%s: finishing the checkpoint being written, then stopping", signal.Signals(signum).name)
            return
        raise KeyboardInterrupt(self.hint if is_main_process() else "")  # rank 0 alone saves, and says so

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if not self.depth and self.pending is not None:
            self.pending = None
            raise KeyboardInterrupt(self.hint if is_main_process() else "")

    def saved(self, last: Path, epoch: int) -> None:
        """``last`` now holds ``epoch`` (0-based) finished."""
        how = "the same command and" if get_world_size() > 1 else self.command  # DDP: torchrun or --device 0,1
        self.hint = f"{last} holds epoch {epoch + 1}; continue with: {how} --resume {last}"


def tidy_interrupted_run(save_dir: Path, finished_epochs: int) -> None:
    """Before resuming: remove the temp files of checkpoints being written when the run was killed, and the
    ``results.csv`` rows of epochs after ``finished_epochs`` (written just before a checkpoint that never landed)."""
    for tmp in (save_dir / "weights").glob(".*.pt.*.tmp"):
        tmp.unlink(missing_ok=True)
        LOGGER.info("removed %s, left by the interrupted run", tmp)
    csv_file = save_dir / "results.csv"
    if not csv_file.is_file():
        return
    with open(csv_file, newline="") as f:
        rows = list(csv.reader(f))
    keep = [r for r in rows[1:] if r and r[0].strip().isdigit() and int(r[0]) <= finished_epochs]
    if len(keep) < len(rows) - 1:
        out = io.StringIO()
        csv.writer(out).writerows([rows[0], *keep])
        atomic_write(csv_file, out.getvalue())
        LOGGER.info("results.csv: dropped %d row(s) of unfinished epochs", len(rows) - 1 - len(keep))
