"""Validation: run a model over a loader, match detections to labels, compute P, R, mAP, and report.

Boxes are compared in original image pixels (predictions and labels both mapped back through the
letterbox), as YOLOv5 and COCO do. Detections of YOLOv5's head are scored by YOLOv5 7.0's val rule (its
``process_batch`` matching and its ``compute_ap`` integration), so their mAP is YOLOv5's ``val.py``'s on the
same detections; those of the anchor-free and end-to-end heads by pycocotools' (score-order matching, 101-point
AP), so theirs is pycocotools'. See :mod:`.metrics`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_convert
from tqdm import tqdm

from ...models.yolo.head import YOLOV5_FORMAT
from .metrics import (
    AP_INTEGRATION,
    IOU_THRESHOLDS,
    ConfusionMatrix,
    DetectionMetrics,
    ap_per_class,
    fitness,
    match_predictions,
)
from .postprocess import postprocess, scale_boxes

__all__ = ["ValResults", "validate", "format_table"]

LOGGER = logging.getLogger("gmyolo")


@dataclass
class ValResults:
    metrics: DetectionMetrics
    names: list[str]
    images: int
    instances: np.ndarray  # labels per class id
    images_per_class: np.ndarray
    loss: np.ndarray | None = None  # box, obj, cls averaged over batches
    speed_ms: dict[str, float] = field(default_factory=dict)  # per image: preprocess, inference, nms
    confusion: ConfusionMatrix | None = None
    predictions: list[dict[str, Any]] = field(default_factory=list)  # per image: path, boxes (n×6, original px)
    matching: str = "coco"  # the rule that scored them (see default_matching)

    @property
    def fitness(self) -> float:
        return fitness(self.metrics.map50, self.metrics.map)

    def as_dict(self) -> dict[str, float]:
        return {
            "precision": self.metrics.mp,
            "recall": self.metrics.mr,
            "mAP50": self.metrics.map50,
            "mAP50-95": self.metrics.map,
        }


def format_table(r: ValResults, per_class: bool = True) -> str:
    """YOLOv5's validation table: an 'all' row, then one row per class with labels."""
    head = f"{'Class':>22}{'Images':>11}{'Instances':>11}{'P':>11}{'R':>11}{'mAP50':>11}{'mAP50-95':>11}"
    m = r.metrics
    rows = [
        head,
        f"{'all':>22}{r.images:>11}{int(r.instances.sum()):>11}{m.mp:>11.3g}{m.mr:>11.3g}"
        f"{m.map50:>11.3g}{m.map:>11.3g}",
    ]
    if per_class and len(r.names) > 1:
        for i, c in enumerate(m.classes):
            rows.append(
                f"{r.names[c][:22]:>22}{int(r.images_per_class[c]):>11}{int(r.instances[c]):>11}"
                f"{m.p[i]:>11.3g}{m.r[i]:>11.3g}{m.ap50[i]:>11.3g}{m.ap[i].mean():>11.3g}"
            )
    return "\n".join(rows)


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    names: Sequence[str],
    device: torch.device | str = "cpu",
    conf: float = 0.001,
    iou: float = 0.6,
    max_det: int = 300,
    half: bool = False,
    compute_loss=None,
    keep_predictions: bool = False,
    progress: bool = True,
    matching: str | None = None,
) -> ValResults:
    """Validate ``model`` on ``loader`` batches (see gmyolo.data.dataset).

    ``model`` is a DetectionModel (eval mode returns (decoded, raw)) or any callable returning the decoded
    tensor, such as an ONNX backend (then ``compute_loss`` cannot be used); its ``output_format`` (YOLOv5's
    when it has none) says whether NMS or the end-to-end top-k turns that into detections. ``matching``: the
    rule detections are scored by, ``best_iou`` (YOLOv5 7.0's matching and AP integration) or ``coco``
    (pycocotools'), see :func:`.metrics.match_predictions` and :data:`.metrics.AP_INTEGRATION`; default
    ``best_iou`` for YOLOv5's head, ``coco`` for the others.
    """
    device = torch.device(device)
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    nc = len(names)
    iouv = IOU_THRESHOLDS
    confusion = ConfusionMatrix(nc)
    stats: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    loss_sum: torch.Tensor | float = 0.0  # the loss items' sums (as many as the head's loss_names), with compute_loss
    n_batches, n_images = 0, 0
    t_pre = t_inf = t_nms = 0.0
    instances = np.zeros(nc, np.int64)
    images_per_class = np.zeros(nc, np.int64)
    predictions: list[dict[str, Any]] = []
    output_format = getattr(model, "output_format", YOLOV5_FORMAT)
    rule = matching or default_matching(output_format)
    if rule not in AP_INTEGRATION:
        raise ValueError(f"unknown matching rule {rule!r}; known: {', '.join(AP_INTEGRATION)}")
    bar = tqdm(loader, desc=f"{'validating':>22}", leave=False, disable=not progress, dynamic_ncols=True)
    for images, targets, paths, shapes in bar:
        t0 = time.perf_counter()
        images = images.to(device, non_blocking=True)
        images = (images.half() if half else images.float()) / 255
        targets = targets.to(device)
        b, _, h, w = images.shape
        t1 = time.perf_counter()
        out = model(images)  # a module in eval mode returns (decoded, raw); exported backends only decoded
        decoded, raw = out if isinstance(out, tuple) else (out, None)
        t2 = time.perf_counter()
        if compute_loss is not None:
            loss_sum += compute_loss(as_float(raw), targets)[1].cpu()
        targets[:, 2:] *= torch.tensor((w, h, w, h), device=device)
        detections = postprocess(decoded.float(), output_format, conf, iou, multi_label=True, max_det=max_det)
        t3 = time.perf_counter()
        t_pre, t_inf, t_nms = t_pre + t1 - t0, t_inf + t2 - t1, t_nms + t3 - t2
        n_batches += 1
        for si, det in enumerate(detections):
            labels = targets[targets[:, 0] == si, 1:]
            cls = labels[:, 0].long().cpu()
            instances += np.bincount(cls.numpy(), minlength=nc)[:nc]
            images_per_class[np.unique(cls.numpy())] += 1
            n_images += 1
            det = det.clone()
            if shapes[si] is not None:
                scale_boxes(det[:, :4], shapes[si][0], shapes[si][1])
            tbox = box_convert(labels[:, 1:5], "cxcywh", "xyxy")
            if shapes[si] is not None:
                scale_boxes(tbox, shapes[si][0], shapes[si][1])
            labelsn = torch.cat((labels[:, :1], tbox), 1)
            correct = match_predictions(det, labelsn, iouv, rule)
            stats.append((correct, det[:, 4].cpu(), det[:, 5].cpu(), cls))
            confusion.update(det, labelsn)
            if keep_predictions:
                predictions.append({"path": paths[si], "boxes": det.cpu()})
    bar.close()
    if stats:
        tp, confs, pcls, tcls = (torch.cat(x, 0).numpy() for x in zip(*stats))
    else:
        tp, confs, pcls, tcls = np.zeros((0, len(iouv)), bool), np.zeros(0), np.zeros(0), np.zeros(0)
    metrics = ap_per_class(tp, confs, pcls, tcls, integration=AP_INTEGRATION[rule])
    n = max(n_images, 1)
    if isinstance(model, nn.Module):
        model.train(was_training)
    return ValResults(
        metrics=metrics,
        names=list(names),
        images=n_images,
        instances=instances,
        images_per_class=images_per_class,
        loss=(loss_sum / n_batches).numpy() if compute_loss is not None and n_batches else None,
        speed_ms={"preprocess": 1e3 * t_pre / n, "inference": 1e3 * t_inf / n, "nms": 1e3 * t_nms / n},
        confusion=confusion,
        predictions=predictions,
        matching=rule,
    )


def default_matching(output_format: str) -> str:
    """How a head's detections are scored unless asked otherwise: YOLOv5's head by YOLOv5 7.0's val.py
    (``best_iou``), so that its numbers read as YOLOv5's; the other heads by pycocotools' rule (``coco``), the
    reference mAP."""
    return "best_iou" if output_format == YOLOV5_FORMAT else "coco"


def as_float(raw: Any) -> Any:
    """A head's raw outputs (a list of tensors, or nested dicts of them) in float32."""
    if isinstance(raw, torch.Tensor):
        return raw.float()
    if isinstance(raw, dict):
        return {k: as_float(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [as_float(v) for v in raw]
    return raw


def save_validation_plots(results: ValResults, save_dir: Path) -> list[Path]:
    from .plots import plot_confusion_matrix, plot_metric_curves

    save_dir.mkdir(parents=True, exist_ok=True)
    outputs = plot_metric_curves(results.metrics, results.names, save_dir)
    if results.confusion is not None:
        outputs.append(plot_confusion_matrix(results.confusion, results.names, save_dir))
    return outputs
