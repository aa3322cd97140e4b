"""What the sub-command modules share."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def args_as(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """The options dataclass ``cls`` filled from the parsed ``args`` (fields it lacks are ignored)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{**{k: v for k, v in vars(args).items() if k in names}, **overrides})


def add_resume_argument(parser: argparse.ArgumentParser) -> None:
    """``--resume [LAST_PT]``: continue an interrupted run (without a path: the latest under --project)."""
    parser.add_argument(
        "--resume",
        nargs="?",
        const="last",
        default=None,
        metavar="LAST_PT",
        help="continue an interrupted run (its last.pt; without a path: the latest run under --project)",
    )
