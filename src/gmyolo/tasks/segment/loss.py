"""The losses of the segmentation heads: the detection head's loss plus a mask term (YOLACT's, as YOLOv5-seg and
Ultralytics train it). :class:`AnchorFreeSegmentLoss` is Ultralytics' (described below); :class:`AnchorSegmentLoss`
YOLOv5-seg's, which averages the mask term per image and level instead (see its docstring).

A positive anchor point's predicted mask is its coefficients times the prototypes, ``c · P`` (logits, at the
prototypes' 1/4 resolution); its target is the mask of the object it was assigned, read from the image's overlap
mask (value j + 1 for the image's j-th target, :mod:`gmyolo.data.dataset`). The mask term is, over the positives,

    sum of mean(BCE(c · P, target) inside the object's box) / (the box's area as a fraction of the image)

divided by the number of positives (DDP: of the global batch, over world, as the box terms are normalised), times
the box gain (Ultralytics' choice: one gain for the box and its mask). Targets are ``(boxes M×6, masks B×h×w)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert

from ...engine.distributed import get_world_size, mean_over_ranks
from ...models.yolo.segment import AnchorFreeSegment, AnchorSegment
from ..detect.loss import ComputeLoss, register_criterion
from ..detect.loss_tal import AnchorFreeLoss, Matched

__all__ = ["AnchorFreeSegmentLoss", "AnchorSegmentLoss", "crop_to_boxes", "mask_loss"]


def crop_to_boxes(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """K×H×W maps with everything outside each one's box (K×4 xyxy, in map pixels) set to zero."""
    _, h, w = maps.shape
    x1, y1, x2, y2 = boxes[:, :, None, None].unbind(1)
    cols = torch.arange(w, device=maps.device, dtype=boxes.dtype).view(1, 1, w)
    rows = torch.arange(h, device=maps.device, dtype=boxes.dtype).view(1, h, 1)
    return maps * ((cols >= x1) & (cols < x2) & (rows >= y1) & (rows < y2))


def mask_loss(
    coefficients: torch.Tensor,
    prototypes: torch.Tensor,
    targets: torch.Tensor,
    boxes: torch.Tensor,
    areas: torch.Tensor,
) -> torch.Tensor:
    """Sum over K objects of the mean BCE of their mask logits inside their box, divided by the box's area.

    coefficients: K×nm; prototypes: nm×H×W; targets: K×H×W in {0, 1}; boxes: K×4 xyxy in prototype pixels;
    areas: K, each box's area as a fraction of the image's.
    """
    logits = torch.einsum("kn,nhw->khw", coefficients, prototypes)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (crop_to_boxes(bce, boxes).mean(dim=(1, 2)) / areas).sum()


class AnchorFreeSegmentLoss(AnchorFreeLoss):
    """Callable ``loss(raw, (targets, masks)) -> (total · batch size, [box, seg, cls, dfl] detached)``.

    ``raw``: the anchor-free Segment head's training outputs (Detect's, with ``"masks"`` B×nm×N coefficients and
    ``"prototypes"`` B×nm×h×w); ``masks``: B×h'×w' overlap masks (resized to the prototypes' size if they differ).
    """

    def __init__(self, detect: AnchorFreeSegment, hyp: Mapping[str, float], distributed: bool = False):
        super().__init__(detect, hyp, distributed)
        self.names = ("box_loss", "seg_loss", "cls_loss", self.names[2])

    def __call__(self, raw: dict, targets: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        boxes, masks = targets
        matched = self.match(raw, boxes)
        lbox, lcls, ldfl = self.detection_terms(matched)
        lseg = self.mask_term(raw["masks"], raw["prototypes"], masks, matched) * self.hyp["box"]
        return self.total(torch.stack((lbox, lseg, lcls, ldfl)), matched)

    def mask_term(
        self, coefficients: torch.Tensor, prototypes: torch.Tensor, masks: torch.Tensor, m: Matched
    ) -> torch.Tensor:
        prototypes = prototypes.float()
        coefficients = coefficients.float().permute(0, 2, 1)  # B×N×nm
        h, w = prototypes.shape[2:]
        masks = masks.to(prototypes.device)
        if masks.shape[1:] != (h, w):
            masks = F.interpolate(masks[:, None].float(), (h, w), mode="nearest")[:, 0]
        fg, index = m.assigned.fg, m.assigned.gt_index
        positives = fg.sum().float()
        if self.distributed:
            positives = mean_over_ranks(positives) * get_world_size()
        norm = positives.clamp(min=1) / (get_world_size() if self.distributed else 1)
        ih, iw = m.imgsz
        to_prototypes = torch.tensor([w / iw, h / ih, w / iw, h / ih], device=prototypes.device)
        # Zero, with every coefficient and prototype in the graph (DDP needs every parameter used).
        total = (prototypes.sum() + coefficients.sum()) * 0.0
        for i in range(len(fg)):
            if not fg[i].any():
                continue
            slots = index[i][fg[i]]  # K: each positive's target in image i
            target = (masks[i] == (slots + 1).view(-1, 1, 1).to(masks.dtype)).float()  # K×h×w
            boxes = m.assigned.boxes[i][fg[i]]  # K×4, input pixels
            areas = ((boxes[:, 2] - boxes[:, 0]) / iw * (boxes[:, 3] - boxes[:, 1]) / ih).clamp(min=1e-9)
            total = total + mask_loss(coefficients[i][fg[i]], prototypes[i], target, boxes * to_prototypes, areas)
        return total / norm


class AnchorSegmentLoss(ComputeLoss):
    """YOLOv5-seg's loss: ``loss((raw, prototypes), (targets, masks)) -> (total · batch size, [box, seg, obj, cls])``.

    Box, objectness and class terms are YOLOv5's (:class:`~gmyolo.tasks.detect.loss.ComputeLoss`). The mask term
    takes each anchor matched to a target (as YOLOv5 matches them): per level and image, the mean over its matches
    of mean(BCE inside the target's box) / (the box's share of the image); summed over levels and images, times the
    box gain, over the batch size. Under DDP every rank holds the same number of images, so dividing by its own
    batch gives the global batch's gradient once DDP averages.
    """

    def __init__(self, detect: AnchorSegment, hyp: Mapping[str, float], distributed: bool = False):
        super().__init__(detect, hyp, distributed)
        self.names = ("box_loss", "seg_loss", "obj_loss", "cls_loss")

    def __call__(self, preds, targets) -> tuple[torch.Tensor, torch.Tensor]:
        (raw, prototypes), (boxes, masks) = preds, targets
        total, (lbox, lobj, lcls) = super().__call__(raw, boxes)
        lseg = self.mask_term(raw, prototypes.float(), boxes, masks)
        global_batch = raw[0].shape[0] * (get_world_size() if self.distributed else 1)
        return total + lseg * global_batch, torch.stack((lbox, lseg.detach(), lobj, lcls))

    def mask_term(
        self, raw: list[torch.Tensor], prototypes: torch.Tensor, boxes: torch.Tensor, masks: torch.Tensor
    ) -> torch.Tensor:
        b, _, h, w = prototypes.shape
        masks = masks.to(prototypes.device)
        if masks.shape[1:] != (h, w):
            masks = F.interpolate(masks[:, None].float(), (h, w), mode="nearest")[:, 0]
        # Carried with each match: the target's mask value in its image (its rank there, from 1) and its box.
        image = boxes[:, 0].long()
        rank = torch.zeros(len(boxes), device=boxes.device)
        for i in image.unique():
            where = image == i
            rank[where] = torch.arange(1, int(where.sum()) + 1, device=boxes.device, dtype=rank.dtype)
        _, _, indices, _, carried = self.build_targets(raw, boxes, carry=torch.cat((rank[:, None], boxes[:, 2:6]), 1))
        to_prototypes = torch.tensor([w, h, w, h], device=prototypes.device, dtype=prototypes.dtype)
        total = (prototypes.sum() + sum(p[..., 5 + self.nc :].sum() for p in raw)) * 0.0  # every output in the graph
        for level, (bi, a, gj, gi) in enumerate(indices):
            if not len(bi):
                continue
            coefficients = raw[level][bi, a, gj, gi][:, 5 + self.nc :].float()
            values, xywhn = carried[level][:, 0], carried[level][:, 1:5].float()
            areas = xywhn[:, 2:].prod(1)
            xyxy = box_convert(xywhn * to_prototypes, "cxcywh", "xyxy")
            for i in bi.unique():
                j = bi == i
                target = (masks[i][None] == values[j].view(-1, 1, 1).to(masks.dtype)).float()
                total = total + mask_loss(coefficients[j], prototypes[i], target, xyxy[j], areas[j]) / j.sum()
        return total * self.hyp["box"] / b


register_criterion("tal_seg", AnchorFreeSegmentLoss)
register_criterion("yolov5_seg", AnchorSegmentLoss)
