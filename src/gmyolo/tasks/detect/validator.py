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

__all__ = ["ValResults", "Validator", "validate", "format_table", "default_matching"]

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
    mask_metrics: DetectionMetrics | None = None  # segmentation: the same scores of the masks

    @property
    def fitness(self) -> float:
        """0.1·mAP@0.5 + 0.9·mAP@0.5:0.95 of the boxes, plus the masks' with segmentation (Ultralytics)."""
        masks = self.mask_metrics
        return fitness(self.metrics.map50, self.metrics.map) + (fitness(masks.map50, masks.map) if masks else 0.0)

    def as_dict(self) -> dict[str, float]:
        out = {
            "precision": self.metrics.mp,
            "recall": self.metrics.mr,
            "mAP50": self.metrics.map50,
            "mAP50-95": self.metrics.map,
        }
        if self.mask_metrics is not None:
            m = self.mask_metrics
            out.update({"mask_precision": m.mp, "mask_recall": m.mr, "mask_mAP50": m.map50, "mask_mAP50-95": m.map})
        return out


def format_table(r: ValResults, per_class: bool = True) -> str:
    """YOLOv5's validation table: an 'all' row, then one row per class with labels; with segmentation, the masks'
    P, R, mAP50 and mAP50-95 follow the boxes' on each row (as Ultralytics prints them)."""
    m, masks = r.metrics, r.mask_metrics
    head = f"{'Class':>22}{'Images':>11}{'Instances':>11}{'P':>11}{'R':>11}{'mAP50':>11}{'mAP50-95':>11}"
    if masks is not None:
        head = f"{'':>44}{'Box':>11}{'':>33}{'Mask':>11}\n{head}{'P':>11}{'R':>11}{'mAP50':>11}{'mAP50-95':>11}"

    def scores(x: DetectionMetrics, i: int | None) -> str:
        if i is None:
            return f"{x.mp:>11.3g}{x.mr:>11.3g}{x.map50:>11.3g}{x.map:>11.3g}"
        return f"{x.p[i]:>11.3g}{x.r[i]:>11.3g}{x.ap50[i]:>11.3g}{x.ap[i].mean():>11.3g}"

    rows = [head, f"{'all':>22}{r.images:>11}{int(r.instances.sum()):>11}" + scores(m, None)]
    if masks is not None:
        rows[-1] += scores(masks, None)
    if per_class and len(r.names) > 1:
        for i, c in enumerate(m.classes):
            row = f"{r.names[c][:22]:>22}{int(r.images_per_class[c]):>11}{int(r.instances[c]):>11}" + scores(m, i)
            if masks is not None:
                j = list(masks.classes).index(c) if c in list(masks.classes) else None
                row += scores(masks, j) if j is not None else f"{0:>11.3g}" * 4
            rows.append(row)
    return "\n".join(rows)


def validate(
    model: nn.Module, loader: torch.utils.data.DataLoader, names: Sequence[str], device="cpu", **options: Any
) -> ValResults:
    """Validate ``model`` on ``loader`` batches (see gmyolo.data.dataset): ``Validator(names, device, **options)``
    run once (:class:`Validator` documents the options)."""
    return Validator(names, device, **options)(model, loader)


class Validator:
    """Validation, called as ``validator(model, loader) -> ValResults``.

    ``model`` is a DetectionModel (eval mode returns (decoded, raw)) or any callable returning the decoded
    tensor, such as an ONNX backend (then ``compute_loss`` cannot be used); its ``output_format`` (YOLOv5's
    when it has none) says whether NMS or the end-to-end top-k turns that into detections. ``conf``, ``iou`` and
    ``max_det`` are NMS's; ``compute_loss`` adds the loss items' means; ``keep_predictions`` keeps each image's
    detections. ``matching``: the rule detections are scored by, ``best_iou`` (YOLOv5 7.0's matching and AP
    integration) or ``coco`` (pycocotools'), see :func:`.metrics.match_predictions` and
    :data:`.metrics.AP_INTEGRATION`; default ``best_iou`` for YOLOv5's head, ``coco`` for the others.

    A task whose batches or predictions hold more (segmentation: masks) overrides the hooks: ``unpack`` (a loader
    batch), ``split`` (the model's output), ``detections`` (NMS), ``score`` (one image's predictions against its
    labels) and ``results``; ``iou_types`` names what its kept predictions are scored on by pycocotools.
    """

    iou_types: tuple[str, ...] = ("bbox",)

    def __init__(
        self,
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
    ):
        self.names, self.device = list(names), torch.device(device)
        self.conf, self.iou, self.max_det, self.half = conf, iou, max_det, half
        self.compute_loss, self.keep_predictions, self.progress, self.matching = (
            compute_loss, keep_predictions, progress, matching
        )  # fmt: skip
        self.nc = len(self.names)

    # ---- hooks ----------------------------------------------------------------------------------
    def unpack(self, batch) -> tuple[torch.Tensor, torch.Tensor, list[str], list, Any]:
        """A loader batch -> images, targets, paths, shapes and what else the task's batches hold (None)."""
        images, targets, paths, shapes = batch
        return images, targets, paths, shapes, None

    def split(self, out: Any) -> tuple[Any, Any]:
        """The model's output -> (decoded, raw); exported backends give the decoded output alone (raw None)."""
        return out if isinstance(out, tuple) else (out, None)

    def loss_targets(self, targets: torch.Tensor, extra: Any) -> Any:
        return targets

    def detections(self, decoded: Any) -> list[torch.Tensor]:
        """Decoded output -> per image n×6 [x1, y1, x2, y2, score, class] in input pixels (every class above conf)."""
        return postprocess(
            decoded.float(), self.output_format, self.conf, self.iou, multi_label=True, max_det=self.max_det
        )

    def score(self, si: int, det: torch.Tensor, labels: torch.Tensor, shape: Any, extra: Any) -> None:
        """Image ``si`` of the batch: its detections (input pixels) against its labels ([class, cx, cy, w, h] in
        input pixels); ``shape`` maps input pixels to the original image (None for a mosaic)."""
        det = det[:, :6].clone()
        if shape is not None:
            scale_boxes(det[:, :4], shape[0], shape[1])
        tbox = box_convert(labels[:, 1:5], "cxcywh", "xyxy")
        if shape is not None:
            scale_boxes(tbox, shape[0], shape[1])
        labelsn = torch.cat((labels[:, :1], tbox), 1)
        correct = match_predictions(det, labelsn, IOU_THRESHOLDS, self.rule)
        self.stats.append((correct, det[:, 4].cpu(), det[:, 5].cpu(), labels[:, 0].long().cpu()))
        self.confusion.update(det, labelsn)
        if self.keep_predictions:
            self.predictions.append({"path": self.paths[si], "boxes": det.cpu()})

    def results(self, **fields: Any) -> ValResults:
        return ValResults(metrics=self.metrics_of(self.stats), **fields)

    # ---- the pass -------------------------------------------------------------------------------
    def metrics_of(self, stats: list[tuple[torch.Tensor, ...]]) -> DetectionMetrics:
        """P, R and AP per class from (correct, score, class, label class) per image, by the rule's integration."""
        if stats:
            tp, confs, pcls, tcls = (torch.cat(x, 0).numpy() for x in zip(*stats))
        else:
            tp, confs, pcls, tcls = np.zeros((0, len(IOU_THRESHOLDS)), bool), np.zeros(0), np.zeros(0), np.zeros(0)
        return ap_per_class(tp, confs, pcls, tcls, integration=AP_INTEGRATION[self.rule])

    @torch.no_grad()
    def __call__(self, model: nn.Module, loader: torch.utils.data.DataLoader) -> ValResults:
        device, nc = self.device, self.nc
        was_training = isinstance(model, nn.Module) and model.training
        if isinstance(model, nn.Module):
            model.eval()
        self.confusion = ConfusionMatrix(nc)
        self.stats: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.predictions: list[dict[str, Any]] = []
        loss_sum: torch.Tensor | float = 0.0  # the loss items' sums (as many as the head's loss_names)
        n_batches, n_images = 0, 0
        t_pre = t_inf = t_nms = 0.0
        instances = np.zeros(nc, np.int64)
        images_per_class = np.zeros(nc, np.int64)
        self.output_format = getattr(model, "output_format", YOLOV5_FORMAT)
        self.rule = self.matching or default_matching(self.output_format)
        if self.rule not in AP_INTEGRATION:
            raise ValueError(f"unknown matching rule {self.rule!r}; known: {', '.join(AP_INTEGRATION)}")
        bar = tqdm(loader, desc=f"{'validating':>22}", leave=False, disable=not self.progress, dynamic_ncols=True)
        for batch in bar:
            t0 = time.perf_counter()
            images, targets, self.paths, shapes, extra = self.unpack(batch)
            images = images.to(device, non_blocking=True)
            images = (images.half() if self.half else images.float()) / 255
            targets = targets.to(device)
            b, _, h, w = images.shape
            t1 = time.perf_counter()
            decoded, raw = self.split(model(images))
            t2 = time.perf_counter()
            if self.compute_loss is not None:
                loss_sum += self.compute_loss(as_float(raw), self.loss_targets(targets, extra))[1].cpu()
            targets[:, 2:] *= torch.tensor((w, h, w, h), device=device)
            detections = self.detections(decoded)
            t3 = time.perf_counter()
            t_pre, t_inf, t_nms = t_pre + t1 - t0, t_inf + t2 - t1, t_nms + t3 - t2
            n_batches += 1
            for si, det in enumerate(detections):
                labels = targets[targets[:, 0] == si, 1:]
                cls = labels[:, 0].long().cpu().numpy()
                instances += np.bincount(cls, minlength=nc)[:nc]
                images_per_class[np.unique(cls)] += 1
                n_images += 1
                self.score(si, det, labels, shapes[si], extra)
        bar.close()
        n = max(n_images, 1)
        if isinstance(model, nn.Module):
            model.train(was_training)
        return self.results(
            names=self.names,
            images=n_images,
            instances=instances,
            images_per_class=images_per_class,
            loss=(loss_sum / n_batches).numpy() if self.compute_loss is not None and n_batches else None,
            speed_ms={"preprocess": 1e3 * t_pre / n, "inference": 1e3 * t_inf / n, "nms": 1e3 * t_nms / n},
            confusion=self.confusion,
            predictions=self.predictions,
            matching=self.rule,
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
    if results.mask_metrics is not None:  # segmentation: the masks' curves beside the boxes'
        outputs += plot_metric_curves(results.mask_metrics, results.names, save_dir, prefix="Mask")
    if results.confusion is not None:
        outputs.append(plot_confusion_matrix(results.confusion, results.names, save_dir))
    return outputs
