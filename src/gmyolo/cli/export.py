"""``gmyolo export``: a checkpoint to ONNX or TorchScript, checked against PyTorch before it is put in place."""

from __future__ import annotations

import argparse

from ..tasks.detect.options import DEFAULT_OPSET, EXPORT_FORMATS, ExportArgs
from .common import add_plugin_argument, args_as


def add_parser(commands: argparse._SubParsersAction) -> None:
    d = ExportArgs()
    p = commands.add_parser("export", help="export a checkpoint to ONNX or TorchScript (checked against PyTorch)")
    p.add_argument("--weights", default=d.weights, help="a gmyolo checkpoint (.pt)")
    p.add_argument("--format", "--include", dest="format", default=d.format, choices=list(EXPORT_FORMATS))
    p.add_argument("--imgsz", type=int, default=None, help="input size (default: the training size)")
    p.add_argument("--batch", type=int, default=d.batch, help="batch of the example input (the batch is dynamic)")
    p.add_argument("--dynamic", action="store_true", help="also make the image size dynamic (ONNX, TorchScript)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--dynamo", action="store_true", help="ONNX: use the torch.export-based exporter")
    p.add_argument("--output", "-o", default=None, help="output file (default: beside the weights)")
    p.add_argument("--tolerance", type=float, default=d.tolerance, help="max allowed |exported - PyTorch|")
    add_plugin_argument(p)
    p.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> dict:
    from ..tasks.detect.export import export

    result = export(args_as(ExportArgs, args))
    print(result["file"])
    return result
