"""Segmentation validation: boxes scored as detection scores them, and each detection's mask against the masks of
the labels, by the same matching rule with mask IoU in place of box IoU (as Ultralytics' SegmentationValidator
does), at the letterboxed input's resolution."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..detect.coco_eval import mask_rle
from ..detect.metrics import IOU_THRESHOLDS, match_predictions
from ..detect.postprocess import postprocess
from ..detect.validator import Validator, ValResults
from .loss import crop_to_boxes

__all__ = ["SegmentValidator", "predicted_masks", "scale_masks", "label_masks", "mask_iou"]


def predicted_masks(
    prototypes: torch.Tensor, coefficients: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """n detections' masks at the input's ``size`` (H, W), bool: sigmoid(coefficients · prototypes) > 0.5 inside
    each box. prototypes: nm×h×w; coefficients: n×nm; boxes: n×4 xyxy input pixels. The logits are upsampled
    first and cut at the box there (cut at the prototypes' size, a mask would spill up to 4 px past its box)."""
    nm, h, w = prototypes.shape
    logits = (coefficients.float() @ prototypes.float().view(nm, -1)).view(-1, h, w)
    if len(logits):
        logits = F.interpolate(logits[None], size, mode="bilinear", align_corners=False)[0]
    return crop_to_boxes(logits.view(-1, *size), boxes.float()) > 0.0


def scale_masks(
    masks: torch.Tensor, original_shape: tuple[int, int], ratio_pad: tuple[tuple[float, float], tuple[float, float]]
) -> torch.Tensor:
    """n×H×W bool masks on the letterboxed input -> n×h0×w0 bool on the original image: the padding cut off, the
    rest resized. ``ratio_pad`` = ((scale_h, scale_w), (pad_w, pad_h)) as the dataset reports it."""
    (sh, sw), (pw, ph) = ratio_pad
    h0, w0 = original_shape
    top, left = int(ph), int(pw)
    masks = masks[:, top : top + round(h0 * sh), left : left + round(w0 * sw)].float()
    if len(masks):
        masks = F.interpolate(masks[None], (h0, w0), mode="bilinear", align_corners=False)[0]
    return masks > 0.5


def label_masks(overlap: torch.Tensor, n: int, size: tuple[int, int]) -> torch.Tensor:
    """The image's n label masks (n×H×W bool at the input's size) from its overlap mask (value j + 1: label j)."""
    masks = (overlap[None] == torch.arange(1, n + 1, device=overlap.device).view(-1, 1, 1)).float()
    if n and masks.shape[1:] != size:
        masks = F.interpolate(masks[None], size, mode="bilinear", align_corners=False)[0]
    return masks > 0.5


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """m×H×W and n×H×W bool masks -> m×n IoU."""
    a, b = a.flatten(1).float(), b.flatten(1).float()
    inter = a @ b.T
    return inter / (a.sum(1)[:, None] + b.sum(1)[None] - inter).clamp(min=1e-9)


class SegmentValidator(Validator):
    """:class:`~gmyolo.tasks.detect.validator.Validator` for segmentation batches ``(images, targets, paths, shapes,
    masks)`` and heads whose output is ``(detections with mask coefficients, prototypes)``; the results carry the
    masks' metrics beside the boxes', and kept predictions each detection's mask on the original image (RLE)."""

    iou_types = ("bbox", "segm")

    def __call__(self, model, loader) -> ValResults:
        self.mask_stats: list[tuple[torch.Tensor, ...]] = []
        return super().__call__(model, loader)

    def unpack(self, batch):
        images, targets, paths, shapes, masks = batch
        return images, targets, paths, shapes, masks

    def split(self, out: Any) -> tuple[Any, Any]:
        first = out[0]
        return out if isinstance(first, tuple) else (out, None)  # a module: ((detections, prototypes), raw)

    def loss_targets(self, targets: torch.Tensor, masks: torch.Tensor) -> Any:
        return targets, masks

    def detections(self, decoded: Any) -> list[torch.Tensor]:
        detections, self.prototypes = decoded
        nm = self.prototypes.shape[1]
        return postprocess(
            detections.float(),
            self.output_format,
            self.conf,
            self.iou,
            multi_label=True,
            max_det=self.max_det,
            extra=nm,
        )

    def score(self, si: int, det: torch.Tensor, labels: torch.Tensor, shape: Any, masks: torch.Tensor) -> None:
        super().score(si, det, labels, shape, masks)
        h, w = (4 * s for s in self.prototypes.shape[2:])  # the input's size: prototypes are at 1/4 of it
        predicted = predicted_masks(self.prototypes[si], det[:, 6:], det[:, :4], (h, w))
        truth = label_masks(masks[si].to(det.device), len(labels), (h, w))
        overlaps = mask_iou(truth, predicted) if len(truth) and len(predicted) else None
        # Given the overlaps, matching reads only the labels' classes (column 0) and the detections' scores and classes.
        correct = match_predictions(det[:, :6], labels, IOU_THRESHOLDS, self.rule, iou=overlaps)
        self.mask_stats.append((correct, det[:, 4].cpu(), det[:, 5].cpu(), labels[:, 0].long().cpu()))
        if self.keep_predictions:  # on the original image, as the boxes
            kept = predicted if shape is None else scale_masks(predicted, shape[0], shape[1])
            self.predictions[-1]["masks"] = mask_rle(kept.cpu())

    def results(self, **fields: Any) -> ValResults:
        results = super().results(**fields)
        results.mask_metrics = self.metrics_of(self.mask_stats)
        return results
