"""Segmentation prediction: detection's :class:`~gmyolo.tasks.detect.predict.Predictor`, with each detection's
mask (cut at its box at the input's size, then mapped back through the letterbox to the image's size)."""

from __future__ import annotations

from typing import Any

import torch

from ...data.sources import Frame
from ..detect.postprocess import postprocess
from ..detect.predict import Predictor
from ..detect.results import Results
from .val import predicted_masks, scale_masks

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
        masks = predicted_masks(self.prototypes[0], det[:, 6:], det[:, :4], size)  # n×H×W at the input's size
        results = super().results(frame, det[:, :6], size, ratio, pad, keep)
        results.masks = scale_masks(masks, frame.image.shape[:2], ((ratio, ratio), pad)).cpu()
        return results
