"""Segmentation pictures: training batches and TensorBoard's validation images with the objects' masks drawn
under their boxes."""

from __future__ import annotations

import torch

from ..detect.plots import PredictionPictures
from ..detect.postprocess import postprocess
from .val import label_masks, predicted_masks

__all__ = ["SegmentPredictionPictures", "target_masks"]


def target_masks(targets: torch.Tensor, overlap: torch.Tensor) -> torch.Tensor:
    """A batch's M label masks (M×h×w bool, at the overlap masks' size), in the order of its targets' rows.

    targets: M×6 [image, class, cx, cy, w, h], each image's rows together; overlap: B×h×w (value j + 1: the image's
    label j, see :func:`gmyolo.data.augment.polygons_to_masks`)."""
    image = targets[:, 0].long()
    masks = [label_masks(overlap[i], int((image == i).sum()), overlap.shape[1:]) for i in range(len(overlap))]
    return torch.cat(masks) if masks else torch.zeros((0, *overlap.shape[1:]), dtype=torch.bool)


class SegmentPredictionPictures(PredictionPictures):
    """:class:`~gmyolo.tasks.detect.plots.PredictionPictures` with the labels' and the detections' masks."""

    def samples_of(self, batch):
        images, targets, _, _, overlap = batch
        return images, targets, target_masks(targets, overlap)

    def predictions(self, decoded, output_format, size):
        detections, prototypes = decoded
        nm = prototypes.shape[1]
        detections = postprocess(detections.float(), output_format, self.conf, self.iou, max_det=100, extra=nm)
        masks = [predicted_masks(p, d[:, 6:], d[:, :4], size) for p, d in zip(prototypes, detections)]
        return [d[:, :6] for d in detections], masks
