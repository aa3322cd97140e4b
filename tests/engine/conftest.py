"""The harness of the tests marked ``cuda`` (test_cuda.py): each bounded in time, SIGTERM ending the session at once,
and a failure's text shown when it happens. Tests without the mark are untouched.

- Time limit: ``@pytest.mark.cuda(timeout=SECONDS)``, :data:`CUDA_TEST_SECONDS` unless the mark says. Past it,
  faulthandler's own thread (it needs no GIL: it fires while the main thread is stuck in C code too) writes every
  thread's stack to the terminal's stderr and ends the process, exit code 1. It replaces pytest's
  ``faulthandler_timeout`` (one timer per process) for these tests.
- SIGTERM (``timeout``, a scheduler's stop, a time-limited runner): every thread's stack on the terminal's stderr, then
  the process ends by the signal (at the C level: no Python handler has to get to run). The trainer's own SIGTERM
  handling is set aside for these tests: it holds the signal until the training step in hand has ended, and a
  compiled run's first step is the whole compile (on a CPU, SIGTERM at 40 s found pytest still compiling the first
  backward at 100 s). Ctrl-C still goes to the trainer, which stops after the step, and pytest with it.
- A failing ``cuda`` test's error is written to the terminal's stderr at once, not only in the session's summary: a
  later test that runs out of time (or a SIGTERM) ends the process before the summary, and would take the text of
  every earlier failure with it (issue 24: ``.F....``, then nothing).
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
from typing import IO

import pytest

CUDA_TEST_SECONDS = 60.0  # a CUDA test's time limit unless its mark gives one: @pytest.mark.cuda(timeout=...)
_TERMINAL_STDERR = pytest.StashKey["IO[str]"]()


def terminal_stderr(config: pytest.Config) -> IO[str]:
    """A file on the stderr pytest was started with, whatever it captures: a stack dump written into pytest's
    capture would end with the process, unread."""
    if _TERMINAL_STDERR not in config.stash:
        capman = config.pluginmanager.getplugin("capturemanager")
        with capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext():
            config.stash[_TERMINAL_STDERR] = os.fdopen(os.dup(2), "w", buffering=1)
    return config.stash[_TERMINAL_STDERR]


def pytest_unconfigure(config: pytest.Config) -> None:
    if _TERMINAL_STDERR in config.stash:
        config.stash[_TERMINAL_STDERR].close()
        del config.stash[_TERMINAL_STDERR]


def time_limit(item: pytest.Item) -> float | None:
    """A ``cuda`` test's time limit in seconds, None for other tests."""
    mark = item.get_closest_marker("cuda")  # the test's own mark first, then the module's
    if mark is None:
        return None
    seconds = float(mark.kwargs.get("timeout", CUDA_TEST_SECONDS))
    if not seconds > 0:
        raise ValueError(f"{item.nodeid}: the cuda mark's timeout must be a positive number of seconds, got {seconds}")
    return seconds


@pytest.fixture(autouse=True)
def _bounded_cuda_test(request: pytest.FixtureRequest):
    """For ``cuda`` tests: the time limit and SIGTERM's stack dump (see the module docstring), both undone after."""
    seconds = time_limit(request.node)
    if seconds is None:
        yield
        return
    from gmyolo.engine.faults import GracefulInterrupt

    out = terminal_stderr(request.config)
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    # The trainer keeps Ctrl-C and leaves SIGTERM alone. Should faults.py lose SIGNALS, this fails loudly rather than
    # letting the trainer hold SIGTERM again unseen.
    kept = tuple(s for s in GracefulInterrupt.SIGNALS if s != signal.SIGTERM)
    monkeypatch.setattr(GracefulInterrupt, "SIGNALS", kept)
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # what the dump chains to: the process ends
    faulthandler.register(signal.SIGTERM, file=out, all_threads=True, chain=True)
    faulthandler.dump_traceback_later(seconds, exit=True, file=out)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        faulthandler.unregister(signal.SIGTERM)
        if previous is not None:  # None: a handler not set from Python; SIG_DFL stays
            signal.signal(signal.SIGTERM, previous)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.failed and item.get_closest_marker("cuda") is not None:
        crash = getattr(report.longrepr, "reprcrash", None)
        where = f"{crash.path}:{crash.lineno}: " if crash is not None else ""
        text = crash.message if crash is not None else report.longreprtext
        terminal_stderr(item.config).write(f"\n{report.nodeid} FAILED ({report.when}): {where}{text}\n")
    return report
