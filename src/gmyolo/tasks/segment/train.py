"""Segmentation training: detection's trainer (:class:`~gmyolo.tasks.detect.train.DetectionTrainer`) with the
datasets' outlines and the batches' masks, the head's segmentation loss, and box and mask mAP at validation.

The task follows the model's head: a model whose head is a Segment head trains here (``gmyolo train --model
yolo11n-seg``, ``gmyolo segment train``, ``YOLO("yolo11n-gmf-nano-seg.yaml").train(...)``).
"""

from __future__ import annotations

from typing import Any

from ...data.dataset import collate_segments
from ...engine.trainer import Evaluation
from ..detect.options import TrainArgs
from ..detect.train import METRIC_COLUMNS, DetectionTrainer
from . import loss as _registers_the_losses  # noqa: F401 (the Segment heads' criteria, by name)
from .plots import SegmentPredictionPictures, target_masks
from .val import SegmentValidator

__all__ = ["SegmentationTrainer", "MASK_COLUMNS", "train_segmentation"]

MASK_COLUMNS = ("metrics/mask_precision", "metrics/mask_recall", "metrics/mask_mAP_0.5", "metrics/mask_mAP_0.5:0.95")


def train_segmentation(args: TrainArgs) -> dict[str, Any]:
    """Train a segmentation model; returns the final box and mask metrics and the run's paths."""
    return SegmentationTrainer(args).train()


class SegmentationTrainer(DetectionTrainer):
    """Detection's hooks, with masks: batches ``(images, (targets, masks), paths)``, box and mask metrics."""

    command = "gmyolo segment train"
    validator = SegmentValidator
    segments = True
    collate = staticmethod(collate_segments)
    pictures_type = SegmentPredictionPictures

    def preprocess(self, batch):
        images, targets, paths, _, masks = batch
        images = images.to(self.device, non_blocking=True).float() / 255
        return images, (targets.to(self.device), masks.to(self.device)), paths

    def progress_text(self, mean_loss, images, targets) -> str:
        return super().progress_text(mean_loss, images, targets[0])

    def plot_train_batch(self, i, images, targets, paths, masks=None) -> None:
        targets, overlap = targets
        super().plot_train_batch(i, images, targets, paths, target_masks(targets, overlap))

    def validate(self) -> Evaluation:
        ev = super().validate()
        m = self.last_results.mask_metrics
        values = {}
        for k, v in ev.values.items():  # the masks' columns right after the boxes'
            values[k] = v
            if k == METRIC_COLUMNS[-1]:
                values.update(zip(MASK_COLUMNS, (m.mp, m.mr, m.map50, m.map)))
        text = f"box {ev.text} | mask P {m.mp:.3f} R {m.mr:.3f} mAP50 {m.map50:.3f} mAP50-95 {m.map:.3f}"
        return Evaluation(ev.fitness, values, text, ev.metrics)
