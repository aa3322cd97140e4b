"""When training is stopped from outside: Ctrl-C / SIGTERM, out of memory, and what a killed run leaves behind.

A run is resumable at epoch boundaries: ``last.pt`` holds the last finished epoch and is replaced
atomically, so a run killed at any moment (even SIGKILL) loses at most the unfinished epoch. SIGINT or
SIGTERM, to the main process alone or to the whole job (its loader workers too), ends the step or checkpoint
in hand, shuts the loaders down and exits 130 with the command that resumes the run.
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

__all__ = [
    "BatchTooLarge",
    "GracefulInterrupt",
    "out_of_memory_hint",
    "shut_down_loader_workers",
    "tidy_interrupted_run",
]

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
    """Ctrl-C (SIGINT) or SIGTERM during training: the step or checkpoint in hand is finished first.

    Outside :meth:`deferred` blocks a signal raises KeyboardInterrupt at once, its message saying
    which checkpoint to resume from; inside one it is held until the block ends (or, with ``raise_at_end``
    False, until the caller acts on :attr:`requested`: DDP, where the ranks agree on when to stop). Handlers
    are installed for the ``with`` block (in the main thread only; elsewhere signals keep their handlers), and
    the ones found are put back afterwards, whatever they were (SIG_IGN in a background job, say).

    A signal sent to the whole job (``timeout``, ``kill -- -PGID``, SLURM, systemd) reaches the loader workers
    too; they leave it to this process (:func:`gmyolo.data.dataset.leave_stop_signals_to_the_main_process`).
    Once stopping, torch's SIGCHLD handler is set aside until the ``with`` block ends, so that a worker ending
    meanwhile (one that had not started when the signal came, say) cannot raise in the middle of a checkpoint.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, command: str = "gmyolo train") -> None:
        self.command = command  # how the run was started, for the resume hint
        self.hint = "no checkpoint was saved yet"
        self.holding: list[str] = []  # what the deferred blocks entered are finishing, innermost last
        self.pending: int | None = None  # a signal held by the deferred blocks
        self.requested: int | None = None  # the first signal received: the run is stopping
        self.previous: dict[int, object] = {}

    @property
    def depth(self) -> int:
        """The nesting of deferred blocks."""
        return len(self.holding)

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}

    def handle(self, signum: int, frame) -> None:
        if self.requested is None:
            self.requested = signum
            self.set_worker_failures_aside()
        if self.holding:
            if self.pending is None:
                LOGGER.warning("%s: finishing %s, then stopping", signal.Signals(signum).name, self.holding[-1])
            self.pending = signum
            return
        raise self.stop()

    def stop(self) -> KeyboardInterrupt:
        """The KeyboardInterrupt that ends the run: rank 0's says which checkpoint to resume from (it alone saves)."""
        self.pending = None
        return KeyboardInterrupt(self.hint if is_main_process() else "")

    def set_worker_failures_aside(self) -> None:
        """Stopping: torch's SIGCHLD handler (a loader worker that died raises RuntimeError wherever this process
        is) would only turn the stop into a traceback. Restored by ``__exit__``, after the loaders are shut down."""
        sigchld = getattr(signal, "SIGCHLD", None)
        if sigchld is not None and self.previous and sigchld not in self.previous:
            self.previous[sigchld] = signal.signal(sigchld, signal.SIG_DFL)

    @contextlib.contextmanager
    def deferred(self, what: str = "the checkpoint being written", raise_at_end: bool = True) -> Iterator[None]:
        """Hold SIGINT/SIGTERM while the block runs (``what`` it is finishing, for the log); the outermost block
        raises the held signal as KeyboardInterrupt once it ends, unless ``raise_at_end`` is False."""
        self.holding.append(what)
        try:
            yield
        finally:
            self.holding.pop()
        if raise_at_end and not self.holding and self.pending is not None:
            raise self.stop()

    def saved(self, last: Path, epoch: int) -> None:
        """``last`` now holds ``epoch`` (0-based) finished."""
        how = "the same command and" if get_world_size() > 1 else self.command  # DDP: torchrun or --device 0,1
        self.hint = f"{last} holds epoch {epoch + 1}; continue with: {how} --resume {last}"


def shut_down_loader_workers(*loaders: object) -> None:
    """End the worker processes of ``loaders`` now, in this order (persistent workers otherwise live as long as
    their loader, and stopping them from ``__del__`` at interpreter exit is where errors get ignored noisily).
    The loaders stay usable: iterating one again starts new workers."""
    for loader in loaders:
        iterator = getattr(loader, "_iterator", None)  # DataLoader keeps its persistent workers' iterator there
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is None:  # no workers (--workers 0), or not started
            continue
        loader._iterator = None
        shutdown()  # asks each worker to finish (torch's SIGTERM for the late ones is ignored by gmyolo's workers)
        for worker in getattr(iterator, "_workers", ()):
            if worker.is_alive():  # stuck in a sample: nothing depends on it now
                worker.kill()
                worker.join(5)


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
