"""``gmyolo predict``: detect objects in images, folders, globs, list files or videos."""

from __future__ import annotations

import argparse

from ..tasks.detect.options import PredictArgs
from .common import add_compile_argument, add_plugin_argument, args_as


def add_parser(commands: argparse._SubParsersAction) -> None:
    d = PredictArgs()
    p = commands.add_parser("predict", help="detect objects in images, folders, globs, list files or videos")
    p.add_argument("--weights", default=d.weights, help="a gmyolo checkpoint (.pt), or an .onnx/.torchscript export")
    p.add_argument("--source", required=True, help="image, folder, glob ('imgs/*.jpg'), list file (.txt) or video")
    p.add_argument("--imgsz", type=int, default=None, help="inference size (default: the training/export size)")
    p.add_argument("--conf", "--conf-thres", dest="conf", type=float, default=d.conf, help="confidence threshold")
    p.add_argument("--iou", "--iou-thres", dest="iou", type=float, default=d.iou, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=d.max_det, help="maximum detections per image")
    p.add_argument("--classes", type=int, nargs="+", default=None, metavar="ID", help="keep only these class ids")
    p.add_argument("--agnostic-nms", action="store_true", help="class-agnostic NMS")
    p.add_argument("--device", default=d.device, help="'' (auto), cpu, 0, cuda:0")
    add_compile_argument(p, "torch.compile a checkpoint's model (slower start, faster frames)")
    p.add_argument("--vid-stride", type=int, default=d.vid_stride, help="use every n-th video frame")
    p.add_argument("--nosave", dest="save", action="store_false", help="do not save annotated images/videos")
    p.add_argument("--save-txt", action="store_true", help="save YOLO-format labels (labels/<name>.txt)")
    p.add_argument("--save-conf", action="store_true", help="add scores to the --save-txt labels")
    p.add_argument("--save-json", action="store_true", help="save all detections in predictions.json")
    p.add_argument("--line-width", type=int, default=None, help="box line width in pixels (default: from image size)")
    p.add_argument("--hide-labels", action="store_true")
    p.add_argument("--hide-conf", action="store_true")
    p.add_argument("--project", default=d.project)
    p.add_argument("--name", default=d.name)
    p.add_argument("--exist-ok", action="store_true", help="reuse project/name instead of incrementing it")
    add_plugin_argument(p)
    p.set_defaults(run=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    from ..tasks.detect.predict import predict

    n = 0
    for _ in predict(args_as(PredictArgs, args), keep_images=False):
        n += 1
    return n
