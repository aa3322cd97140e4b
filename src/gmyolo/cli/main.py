"""The ``gmyolo`` command line: ``gmyolo <command> [options]``; ``gmyolo <command> -h`` for each.

Arguments are parsed before anything heavy is imported: each command's module reads its defaults from
its options dataclass (plain data), and imports torch and the rest only when the command runs. So
``gmyolo --help`` and ``gmyolo train --help`` answer without loading PyTorch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import USER_ERRORS
from . import bench, classify, data, export, info, predict, segment, train, val
from .common import load_plugin_arguments

__all__ = ["main", "build_parser", "USER_ERRORS"]

COMMANDS = (info, train, val, predict, export, data, bench, classify, segment)  # in the order --help lists them


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gmyolo", description="YOLO object detection with GroupMixFormer backbones.")
    parser.add_argument("--version", action="version", version=f"gmyolo {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print warnings and errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s", stream=sys.stderr)
    name = " ".join(filter(None, [args.command, getattr(args, "data_command", None)]))  # 'classify train'
    try:
        load_plugin_arguments(args)  # before the command builds a model
        args.run(args)
    except KeyboardInterrupt as e:  # the message, if any, says how to resume
        print(f"gmyolo {name}: interrupted" + (f"; {e}" if str(e) else ""), file=sys.stderr)
        return 130
    except USER_ERRORS as e:  # names, sizes, files, data
        print(f"gmyolo {name}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
