"""OpenCV as gmyolo uses it: its own logging off, and image decoding that leaves stderr to gmyolo.

An image that cannot be decoded (or only in part) is reported once by gmyolo, with its path: by the label
check when the dataset is loaded, by the loader or by ``predict``. Left alone, OpenCV would add its own
``[ WARN:0@0.1] global loadsave.cpp ... imread_(...)`` lines, and libjpeg (inside OpenCV) a "Premature end of
JPEG file" line every time a truncated JPEG is decoded: every epoch, from every worker. Importing this module
silences OpenCV's logging for the process (worker processes import it too); :func:`imread` and
:func:`imdecode` also keep libjpeg's messages off stderr while they decode.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import cv2
import numpy as np

__all__ = ["cv2", "imread", "imdecode", "quiet_stderr"]

with contextlib.suppress(AttributeError):  # OpenCV >= 4.5 (cv2.utils.logging); older builds log less
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


_lock = threading.Lock()
_depth = 0  # threads inside quiet_stderr(); the first redirects, the last restores
_saved: int | None = None  # the real stderr while redirected


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """File descriptor 2 points at /dev/null inside the block (C libraries write there directly).

    Safe with several threads (the redirection lasts while any of them is inside) and across fork (a
    child started meanwhile gets the real stderr back).
    """
    global _depth, _saved
    with _lock:
        if _depth == 0:
            try:
                saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
            except OSError:  # no stderr to redirect
                saved = None
            else:
                os.dup2(null, 2)
                os.close(null)
            _saved = saved
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _restore()


def _restore() -> None:
    global _saved
    if _saved is not None:
        os.dup2(_saved, 2)
        os.close(_saved)
        _saved = None


def _after_fork_in_child() -> None:
    global _depth, _lock
    _lock = threading.Lock()
    if _depth:
        _depth = 0
        _restore()


os.register_at_fork(after_in_child=_after_fork_in_child)


def imread(path: str | os.PathLike, flags: int = cv2.IMREAD_COLOR) -> np.ndarray | None:
    """``cv2.imread`` (BGR), or None when the file cannot be decoded; nothing printed."""
    with quiet_stderr():
        return cv2.imread(str(path), flags)


def imdecode(data: np.ndarray, flags: int = cv2.IMREAD_COLOR) -> np.ndarray | None:
    """``cv2.imdecode`` of encoded bytes (a uint8 array), or None; nothing printed."""
    with quiet_stderr():
        return cv2.imdecode(data, flags)
