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


def add_speed_arguments(parser: argparse.ArgumentParser, amp: bool = True) -> None:
    """``--workers``, ``--compile`` and (training) ``--amp auto|bf16|fp16|off`` with ``--no-amp``."""
    from ..engine.options import AMP_MODES

    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="data loader worker processes, per GPU under DDP (default: min(8, CPU cores / GPUs, batch), as YOLOv5); "
        "they stay alive across epochs",
    )
    add_compile_argument(parser, "torch.compile the model (not the loss): slower start, faster steps on a GPU")
    if amp:
        parser.add_argument(
            "--amp",
            default="auto",
            choices=AMP_MODES,
            help="mixed precision: auto (default) = bf16 on GPUs that have it, else fp16 with a GradScaler, and "
            "fp32 on a CPU; bf16 (also on a CPU), fp16 (GPUs), or off (fp32). Weights, EMA and checkpoints stay fp32",
        )
        parser.add_argument("--no-amp", dest="amp", action="store_const", const="off", help="the same as --amp off")


def add_compile_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--compile [MODE]``: off unless given; ``--compile`` alone is torch.compile's default mode."""
    from ..engine.options import COMPILE_MODES

    parser.add_argument(
        "--compile",
        nargs="?",
        const="default",
        default="off",
        choices=COMPILE_MODES,
        metavar="MODE",
        help=f"{what}; off by default. MODE: default (what --compile alone gives), reduce-overhead (also CUDA "
        "graphs), max-autotune. A GroupMixFormer's GMA blocks are compiled one block shape at a time",
    )


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


def add_plugin_argument(parser: argparse.ArgumentParser) -> None:
    """``--plugin FILE.py`` (repeatable): files that register your own modules, loaded before any model is built."""
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="FILE.py",
        help="a Python file that registers your own modules (gmyolo.models.yolo.registry.register_module); "
        "repeatable; the processes gmyolo starts (DDP workers) load it too",
    )


def load_plugin_arguments(args: argparse.Namespace) -> None:
    """Import the ``--plugin`` files (and the installed ``gmyolo.modules`` entry points) of a parsed command."""
    if getattr(args, "plugin", None):
        from ..plugins import load_plugins

        load_plugins(args.plugin)
