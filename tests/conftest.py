"""Shared fixtures. Reference data lives in ../shared/reference (read only, never copied here)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_reference_dir() -> Path:
    return Path(os.environ.get("GMYOLO_SHARED", REPO_ROOT.parent / "shared")) / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    ref = shared_reference_dir()
    if not ref.is_dir():
        pytest.skip(f"reference data not found at {ref} (set GMYOLO_SHARED to the shared/ folder)")
    return ref


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))


class Watched:
    """A command started with stderr piped; a thread collects what it writes there into ``seen``."""

    def __init__(self, argv, env, cwd, new_session: bool = False):
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, cwd=cwd,
                                     start_new_session=new_session)  # fmt: skip
        self.seen = bytearray()
        self.reader = threading.Thread(target=self.read_stderr, daemon=True)
        self.reader.start()

    def read_stderr(self) -> None:
        while chunk := self.proc.stderr.read1(4096):
            self.seen.extend(chunk)

    def wait_for(self, marker: bytes, deadline: float) -> bool:
        """Whether ``marker`` showed on stderr before the command ended or the ``deadline`` (time.monotonic) passed."""
        while marker not in self.seen and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return marker in self.seen

    def stderr(self) -> bytes:
        """All it wrote (call once it has ended)."""
        self.reader.join(10)
        return bytes(self.seen)


def _run_until_then_kill(argv, marker: bytes, env, cwd, settle: float = 0.0, timeout: float = 240) -> bytes:
    """Start ``argv``; once ``marker`` shows on its stderr (then ``settle`` seconds more), SIGKILL it. Returns the
    stderr seen, for the caller to assert the marker was reached (the process is killed either way)."""
    run = Watched(argv, env, cwd)
    if run.wait_for(marker, time.monotonic() + timeout):
        time.sleep(settle)
    run.proc.send_signal(signal.SIGKILL)
    run.proc.wait()
    return run.stderr()


@pytest.fixture
def kill_when_seen():
    """SIGKILL a command once its stderr shows a marker (the resume tests' harness): ``kill_when_seen(argv,
    marker, env, cwd, settle=0.0) -> stderr bytes``."""
    return _run_until_then_kill


def _signal_group_when_seen(
    argv, marker: bytes, env, cwd, signals=((signal.SIGTERM, 0.0),), timeout: float = 240
) -> tuple[int | None, bytes, bool]:
    """Start ``argv`` as the leader of a process group of its own (it and its loader workers); once ``marker`` shows
    on its stderr, send each of ``signals`` — ``(signal, seconds after the one before)`` — to the whole group, as
    ``timeout``, ``kill -- -PGID``, SLURM and systemd do, and wait for it to end. Returns its exit code (None if it
    had to be killed after ``timeout`` seconds), the stderr seen, and whether any process of the group outlived it
    (workers left behind). Whatever is left of the group is SIGKILLed before returning."""
    run = Watched(argv, env, cwd, new_session=True)
    proc = run.proc

    def group_alive() -> bool:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    deadline = time.monotonic() + timeout
    if run.wait_for(marker, deadline):
        for sig, delay in signals:
            time.sleep(delay)
            if group_alive():
                os.killpg(proc.pid, sig)
    try:
        code = proc.wait(max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        code = None
    # The loaders' workers end before the main process does; one reparented away would still be in the group.
    time.sleep(0.2)
    left = group_alive()
    if left:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return code, run.stderr(), left


@pytest.fixture
def signal_group_when_seen():
    """Signal a command's whole process group once its stderr shows a marker (the process-group stop tests):
    ``signal_group_when_seen(argv, marker, env, cwd, signals=((SIGTERM, 0.0),)) -> (exit code, stderr, left)``."""
    return _signal_group_when_seen


def _validator_interrupted_at(validator: type, call: int = 2) -> type:
    """``validator`` (a trainer's Validator class) raising KeyboardInterrupt, as Ctrl-C would, when it is called for
    the ``call``-th time: with one validation per epoch, while epoch ``call`` validates (last.pt then holds the epoch
    before)."""

    class Interrupted(validator):
        calls = 0

        def __call__(self, model, loader):
            type(self).calls += 1
            if type(self).calls == call:
                raise KeyboardInterrupt
            return super().__call__(model, loader)

    return Interrupted


@pytest.fixture(scope="session")
def validator_interrupted_at():
    return _validator_interrupted_at
