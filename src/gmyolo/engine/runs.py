"""Run folders: ``runs/train/exp``, ``exp2``, ...; the newest ``last.pt``; the per-epoch ``results.csv``."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["increment_path", "find_last_checkpoint", "write_csv_row"]


def increment_path(path: str | os.PathLike, exist_ok: bool = False) -> Path:
    """runs/train/exp -> runs/train/exp2, exp3, ... unless exist_ok."""
    path = Path(path)
    if exist_ok or not path.exists():
        return path
    for n in range(2, 10_000):
        candidate = path.with_name(f"{path.name}{n}")
        if not candidate.exists():
            return candidate
    raise RuntimeError(f"too many runs named {path}")


def find_last_checkpoint(project: str | os.PathLike) -> Path:
    """The most recently written ``<project>/*/weights/last.pt`` (``--resume`` without a path)."""
    runs = sorted(Path(project).glob("*/weights/last.pt"), key=os.path.getmtime)
    if not runs:
        raise ValueError(f"--resume: no last.pt found under {project}/*/weights/")
    return runs[-1]


def write_csv_row(path: Path, row: Mapping[str, float]) -> None:
    """Append one epoch's row (the header first, from the row's keys, when the file is new).

    The first column is written as is (the epoch), the others with 6 significant digits.
    """
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(list(row))
        first, *rest = row.values()
        w.writerow([first, *(f"{v:.6g}" for v in rest)])
