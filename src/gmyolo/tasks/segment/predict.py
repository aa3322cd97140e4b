"""Segmentation prediction: detection's :class:`~gmyolo.tasks.detect.predict.Predictor`, with each detection's
mask (cut at its box at the input's size, then mapped back through the letterbox to the image's size)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ...data.sources import Frame
from ..detect.postprocess import postprocess
from ..detect.predict import Predictor
from ..detect.results import Results
from .val import predicted_masks

__all__ = ["SegmentPredictor"]


class SegmentPredictor(Predictor):
    """Boxes and masks: the backend gives ``(detections with mask coefficients, prototypes)``."""

    def detections(self, out: Any) -> torch.Tensor:
        detections, self.prototypes = out
        a = self.args
        return postprocess(
            detections.float(),
            self.backend.output_format,
            a.conf,
            a.iou,
            a.classes,
            a.agnostic_nms,
            max_det=a.max_det,
            extra=self.prototypes.shape[1],
        )[0]

    def results(self, frame: Frame, det: torch.Tensor, size, ratio: float, pad, keep: bool) -> Results:
        h, w = size
        masks = predicted_masks(self.prototypes[0], det[:, 6:], det[:, :4], (h, w))  # n×h×w at the input's size
        left, top = pad
        h1, w1 = round(frame.image.shape[0] * ratio), round(frame.image.shape[1] * ratio)  # the image, unpadded
        masks = masks[:, int(top) : int(top) + h1, int(left) : int(left) + w1].float()
        if len(masks):
            masks = F.interpolate(masks[None], frame.image.shape[:2], mode="bilinear", align_corners=False)[0]
        results = super().results(frame, det[:, :6], size, ratio, pad, keep)
        results.masks = (masks > 0.5).cpu()
        return results
