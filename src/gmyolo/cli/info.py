"""``gmyolo info``: what a model is made of — layers, parameters, MACs and output shapes at a size.

A GroupMixFormer variant name (``groupmixformer-t``) shows the backbone/classifier per stage; a model
YAML (packaged name or path, e.g. ``yolov5s-gmf-t.yaml``, ``yolo11n.yaml``) shows the detector layer by
layer, the way people check a new config before training it. A YAML with a ``scales`` block builds the
scale its name says (``yolo11n`` = ``yolo11.yaml`` at scale n) or the one ``--scale`` names.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import add_plugin_argument

DEFAULT_MODEL = "groupmixformer-t"


def image_size(values: list[int]) -> tuple[int, int]:
    """--imgsz 224 -> (224, 224); --imgsz 480 640 -> (480, 640) as height, width."""
    if len(values) not in (1, 2) or min(values) < 1:
        raise ValueError(f"--imgsz takes one or two positive integers (H W), got {values}")
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("info", help="layers, parameters, MACs and output shapes of a model")
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"groupmixformer-m|t|s|b|l, or a detector YAML: packaged name or path (default {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--imgsz",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="input size: N or H W (default 224 for a backbone, 640 for a detector)",
    )
    p.add_argument(
        "--num-classes",
        "--nc",
        type=int,
        default=None,
        dest="num_classes",
        help="classes (default: 1000 for a classifier, the YAML's nc for a detector)",
    )
    p.add_argument(
        "--scale",
        default=None,
        help="a detector YAML's scale (n, s, m, l, x: a row of its scales block; default: from the file name)",
    )
    p.add_argument("--features", action="store_true", help="backbone features mode: no classifier")
    p.add_argument(
        "--aggregator",
        default="conv",
        choices=["conv", "min", "avg", "max"],
        help="GMA aggregator (official weights only fit 'conv')",
    )
    p.add_argument("--weights", default=None, help="load an authors'-format GroupMixFormer checkpoint first")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    add_plugin_argument(p)
    p.set_defaults(run=run_info)


def run_info(args: argparse.Namespace) -> dict[str, Any]:
    from ..models.groupmixformer import is_variant_name  # 'groupmixformer-t', 't' — not a '.yaml' file

    summary = backbone_info(args) if is_variant_name(args.model) else detector_info(args)
    if args.json:
        print(json.dumps(summary, indent=2))
    return summary


def backbone_info(args: argparse.Namespace) -> dict[str, Any]:
    from ..models.groupmixformer import groupmixformer, variant_name
    from ..models.summary import count_macs, count_parameters, groupmixformer_stages

    imgsz = image_size(args.imgsz or [224])
    name = f"groupmixformer-{variant_name(args.model)}"
    model = groupmixformer(
        args.model,
        pretrained=args.weights,
        num_classes=args.num_classes or 1000,
        features_only=args.features,
        aggregator=args.aggregator,
    )
    rows = groupmixformer_stages(model, imgsz)
    summary = {
        "model": name,
        "imgsz": list(imgsz),
        "params": count_parameters(model),
        "macs": count_macs(model, imgsz),
        "stages": [
            dict(
                name=r.name,
                channels=r.channels,
                depth=r.depth,
                stride=r.stride,
                output_shape=list(r.output_shape),
                params=r.params,
            )
            for r in rows
        ],
    }
    if not args.json:
        print(f"{name}  input 1x3x{imgsz[0]}x{imgsz[1]}")
        header = f"{'layer':<8}{'channels':>9}{'depth':>7}{'stride':>8}  {'output shape':<22}{'params':>13}"
        print(header)
        print("-" * len(header))
        for r in rows:
            stride = str(r.stride) if r.stride else "-"
            shape = "x".join(map(str, r.output_shape))
            print(f"{r.name:<8}{r.channels:>9}{r.depth:>7}{stride:>8}  {shape:<22}{r.params:>13,}")
        print("-" * len(header))
        print(
            f"parameters {summary['params']:,}   MACs {summary['macs'] / 1e9:.3f} G "
            "(torch.utils.flop_counter: convs and matmuls)"
        )
    return summary


def detector_info(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ..models.summary import count_macs, count_parameters
    from ..models.yolo import OUTPUT_FORMATS, DetectionModel

    if args.weights or args.features or args.aggregator != "conv":
        raise ValueError(
            "--weights, --features and --aggregator apply to GroupMixFormer names; "
            "for a detector YAML set them in the backbone's args"
        )
    imgsz = image_size(args.imgsz or [640])
    model = DetectionModel(args.model, nc=args.num_classes, scale=getattr(args, "scale", None)).eval()
    max_stride = int(model.stride.max())
    if imgsz[0] % max_stride or imgsz[1] % max_stride:
        print(
            f"note: input {imgsz[0]}x{imgsz[1]} is not a multiple of the largest stride {max_stride}; "
            "YOLO training and validation round sizes up to a multiple of it"
        )
    with torch.no_grad():
        decoded, raw = model(torch.zeros(1, 3, *imgsz))
    macs = count_macs(model, imgsz)
    summary = {
        "model": model.yaml.get("yaml_file", args.model),
        "imgsz": list(imgsz),
        "nc": model.nc,
        "strides": [int(s) for s in model.stride.tolist()],
        "params": count_parameters(model),
        "macs": macs,
        "gflops": 2 * macs / 1e9,
        "scale": model.yaml.get("scale"),
        "output_format": model.output_format,
        "layers": [
            dict(index=r.index, source=r.source, number=r.number, params=r.params, module=r.module, args=r.args)
            for r in model.layer_rows
        ],
        "output_shapes": {"decoded": list(decoded.shape), "raw": raw_shapes(raw)},
    }
    if not args.json:
        scale = f"  scale {summary['scale']}" if summary["scale"] else ""
        print(f"{summary['model']}{scale}  nc={model.nc}  input 1x3x{imgsz[0]}x{imgsz[1]}")
        header = f"{'':>3}  {'from':>12}  {'n':>2}  {'params':>11}  {'module':<24}args"
        print(header)
        for r in model.layer_rows:
            print(f"{r.index:>3}  {str(r.source):>12}  {r.number:>2}  {r.params:>11,}  {r.module:<24}{r.args}")
        print(
            f"layers {len(model.layer_rows)}   parameters {summary['params']:,}   "
            f"GFLOPs {summary['gflops']:.1f} (= 2 x {macs / 1e9:.2f} G MACs)   strides {summary['strides']}"
        )
        print(f"output: decoded {tuple(decoded.shape)} ({OUTPUT_FORMATS[model.output_format]}); raw {raw_text(raw)}")
    return summary


def raw_shapes(raw: Any) -> Any:
    """The shapes in a head's raw output: a list per level (YOLOv5), or a dict of tensors (anchor-free)."""
    if isinstance(raw, dict):
        return {k: raw_shapes(v) for k, v in raw.items() if k != "sizes" and v is not None}
    if isinstance(raw, (list, tuple)):
        return [raw_shapes(r) for r in raw]
    return list(raw.shape)


def raw_text(raw: Any) -> str:
    shapes = raw_shapes(raw)
    if isinstance(shapes, dict):
        return ", ".join(f"{k} {v if isinstance(v, dict) else tuple(v)}" for k, v in shapes.items())
    return ", ".join(str(tuple(s)) for s in shapes)
