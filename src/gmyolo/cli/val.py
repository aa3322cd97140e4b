"""``gmyolo val``: evaluate a detector (checkpoint or export): P, R, mAP50, mAP50-95 per class."""

from __future__ import annotations

import argparse

from ..tasks.detect.options import ValArgs
from .common import add_plugin_argument, add_speed_arguments, args_as


def add_parser(commands: argparse._SubParsersAction) -> None:
    d = ValArgs()
    p = commands.add_parser("val", help="evaluate a checkpoint: P, R, mAP50, mAP50-95 per class")
    p.add_argument("--weights", default=d.weights, help="checkpoint (best.pt) or its .onnx/.torchscript export")
    p.add_argument("--data", default=None, help="dataset YAML (default: the one the model was trained on)")
    p.add_argument("--split", default=d.split, choices=["train", "val", "test"])
    p.add_argument("--imgsz", type=int, default=None, help="image size (default: the training size)")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--device", default=d.device)
    add_speed_arguments(p, amp=False)
    p.add_argument("--conf", type=float, default=d.conf, help="confidence threshold")
    p.add_argument("--iou", type=float, default=d.iou, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=d.max_det)
    p.add_argument("--save-json", action="store_true", help="write COCO-format detections and run pycocotools")
    p.add_argument("--coco-gt", default=None, help="COCO ground-truth JSON for pycocotools (default: from labels)")
    p.add_argument(
        "--matching",
        default=d.matching,
        choices=["auto", "coco", "best_iou"],
        help="how detections are scored: coco (pycocotools' matching in score order and 101-point AP), best_iou "
        "(YOLOv5 7.0 val.py's: each detection's best-IoU label, to the highest-score such detection; YOLOv5's AP "
        "integration); auto (default): best_iou for YOLOv5's head, coco for the anchor-free heads",
    )
    p.add_argument("--project", default=d.project)
    p.add_argument("--name", default=d.name)
    p.add_argument("--exist-ok", action="store_true")
    add_plugin_argument(p)
    p.add_argument("--no-plots", dest="plots", action="store_false")
    p.set_defaults(run=run_val_cli)


def run_val_cli(args: argparse.Namespace) -> dict:
    from ..tasks.detect.val import run_val

    return run_val(args_as(ValArgs, args))
