"""The ``gmyolo`` command line: ``gmyolo <command> [options]``; ``gmyolo <command> -h`` for each."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from ..engine.distributed import LaunchError
from ..engine.exporter import ExportError
from ..engine.faults import BatchTooLarge
from ..engine.trainer import TrainingDiverged
from .bench import add_bench_parser
from .classify import add_classify_parser
from .data import add_data_parser
from .info import add_info_parser
from .predict import add_export_parser, add_predict_parser
from .train import add_train_parser, add_val_parser

__all__ = ["main", "build_parser", "USER_ERRORS"]

# Errors a user can act on from the message alone: printed as one line, exit code 2 (no traceback).
USER_ERRORS = (ValueError, OSError, TrainingDiverged, ExportError, BatchTooLarge, LaunchError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gmyolo", description="YOLO object detection with GroupMixFormer backbones.")
    parser.add_argument("--version", action="version", version=f"gmyolo {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print warnings and errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_info_parser(commands)
    add_train_parser(commands)
    add_val_parser(commands)
    add_predict_parser(commands)
    add_export_parser(commands)
    add_data_parser(commands)
    add_bench_parser(commands)
    add_classify_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        args.run(args)
    except KeyboardInterrupt as e:  # the message, if any, says how to resume
        print(f"gmyolo {args.command}: interrupted" + (f"; {e}" if str(e) else ""), file=sys.stderr)
        return 130
    except USER_ERRORS as e:  # names, sizes, files, data
        name = " ".join(filter(None, [args.command, getattr(args, "data_command", None)]))
        print(f"gmyolo {name}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
