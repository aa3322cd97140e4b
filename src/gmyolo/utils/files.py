"""Writing files so that a reader never sees half of one: temp file beside the target, fsync, rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_open", "atomic_write"]


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", fsync: bool = True) -> Iterator[IO]:
    """Open a temp file in ``path``'s folder; on success it is flushed, fsynced and renamed over ``path``.

    On any error (or Ctrl-C) the temp file is removed and ``path`` keeps its old content.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def atomic_write(path: str | os.PathLike, data: str | bytes, fsync: bool = False) -> None:
    """Write text or bytes atomically (fsync off by default: for many small files, such as labels)."""
    with atomic_open(path, "w" if isinstance(data, str) else "wb", fsync=fsync) as f:
        f.write(data)
