"""``gmyolo segment train|val|predict``: instance segmentation. The commands and options are detection's (a
command follows the model's head); ``segment train`` defaults to ``yolo11n-gmf-nano-seg`` on the synthetic shapes
with their outlines, so ``gmyolo segment train`` and ``gmyolo train --model yolo11n-gmf-nano-seg`` are one run."""

from __future__ import annotations

import argparse

from . import predict, train, val

__all__ = ["add_parser", "SEGMENT_MODEL"]

SEGMENT_MODEL = "yolo11n-gmf-nano-seg"


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("segment", help=f"instance segmentation: train, val, predict (default {SEGMENT_MODEL})")
    sub = p.add_subparsers(dest="segment_command", metavar="COMMAND", required=True)
    for command in (train, val, predict):
        command.add_parser(sub)
    sub.choices["train"].set_defaults(model=SEGMENT_MODEL)
