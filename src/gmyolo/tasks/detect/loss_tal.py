"""The loss of the anchor-free heads: TAL assignment, CIoU + DFL box losses, BCE classes; and the end-to-end
dual assignment (one-to-many + one-to-one).

Targets are M×6 rows ``[image index, class, cx, cy, w, h]`` normalised to the input size. With ``S`` the sum
of the assigner's class targets over the batch (its soft "number of positives"):

- ``cls`` = sum of BCE(logits, class targets) over every point and class / S;
- ``box`` = sum over positive points of (1 - CIoU) · w / S, with w the point's class-target sum;
- ``dfl`` (``reg_max`` > 1) = sum over positives of the distribution focal loss of the four side distances
  (cross-entropy with the two bins around the target distance, linearly weighted), averaged over the sides,
  · w / S; with ``reg_max`` 1 (YOLO26), an L1 loss of the side distances normalised by the image size
  instead (Ultralytics then names it ``l1_loss``).

Each term is multiplied by its gain (``box`` 7.5, ``cls`` 0.5, ``dfl`` 1.5 by default) and the total by the
batch size, as Ultralytics does.

DDP: each rank holds 1/world of the global batch and DDP averages the gradients, so every rank scales by
the global batch size and divides by S summed over all ranks (times world): the gradient is then exactly the
one-process gradient of the global batch (the YOLOv5 loss does the same with its match counts). Every rank
must call it at the same step (it all-reduces); validation uses a plain instance.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, complete_box_iou_loss

from ...engine.distributed import get_world_size, mean_over_ranks
from ...models.yolo.anchor_free import AnchorFreeDetect, bbox2dist, dist2bbox, make_anchor_points
from .assigner import Assignment, task_aligned_assign

__all__ = ["AnchorFreeLoss", "EndToEndLoss", "Matched", "padded_targets", "dfl_loss", "one_to_many_weight"]


def padded_targets(targets: torch.Tensor, batch_size: int, imgsz: tuple[float, float]):
    """M×6 normalised targets -> per image, padded to the most boxes any image has: labels B×K×1,
    boxes B×K×4 (xyxy pixels of an ``imgsz`` = (h, w) input) and a B×K×1 mask of the real ones."""
    device = targets.device
    image = targets[:, 0].long()
    counts = torch.bincount(image, minlength=batch_size) if len(targets) else torch.zeros(batch_size, dtype=torch.long)
    k = int(counts.max()) if len(targets) else 0
    labels = torch.zeros(batch_size, k, 1, device=device)
    boxes = torch.zeros(batch_size, k, 4, device=device)
    mask = torch.zeros(batch_size, k, 1, dtype=torch.bool, device=device)
    if k:
        order = torch.argsort(image, stable=True)
        image, rows = image[order], targets[order]
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(rows), device=device) - starts.to(device)[image]
        h, w = imgsz
        scale = torch.tensor([w, h, w, h], device=device, dtype=rows.dtype)
        labels[image, slot, 0] = rows[:, 1]
        boxes[image, slot] = box_convert(rows[:, 2:6] * scale, "cxcywh", "xyxy")
        mask[image, slot, 0] = True
    return labels, boxes, mask


def dfl_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Distribution focal loss: K×R bin logits, K target distances in [0, R - 1) -> K losses.

    The target lies between bins ``l = floor(t)`` and ``l + 1``; the loss is their cross-entropies weighted
    by closeness: ``-(l + 1 - t) · log p_l - (t - l) · log p_(l+1)``.
    """
    left = target.long()
    w_left = left + 1 - target
    logp = F.log_softmax(logits, -1)
    return -(
        logp.gather(1, left[:, None]).squeeze(1) * w_left + logp.gather(1, left[:, None] + 1).squeeze(1) * (1 - w_left)
    )


def one_to_many_weight(epoch: int, epochs: int, start: float = 0.8, final: float = 0.1) -> float:
    """The end-to-end loss's weight of the one-to-many branch in ``epoch`` (0-based): ``start`` at the first
    epoch, falling linearly to ``final`` at the last (the one-to-one branch gets 1 minus it)."""
    return max(1 - epoch / max(epochs - 1, 1), 0.0) * (start - final) + final


@dataclass
class Matched:
    """A batch's predictions and their assigned targets, as :meth:`AnchorFreeLoss.match` finds them."""

    boxes: torch.Tensor  # B×N×4·reg_max box outputs (fp32)
    logits: torch.Tensor  # B×N×nc class logits (fp32)
    distances: torch.Tensor  # B×N×4 predicted side distances, grid units
    pred_boxes: torch.Tensor  # B×N×4 predicted boxes, xyxy grid units
    points: torch.Tensor  # N×2 anchor points, grid units
    strides: torch.Tensor  # N×1 their strides
    imgsz: tuple[int, int]  # the input's (h, w)
    assigned: Assignment  # boxes (input pixels), class targets, fg, the target slot of each point
    norm: torch.Tensor  # the normaliser of every term (see the module docstring)


class AnchorFreeLoss:
    """Callable ``loss(raw, targets) -> (total · batch size, [box, cls, dfl] detached)`` (see the module docstring).

    ``raw``: the head's raw outputs ``{"boxes": B×4·reg_max×N, "scores": B×nc×N, "sizes": [(h, w)]}``.
    ``hyp`` needs the gains box, cls, dfl. ``topk`` / ``topk2``: the assigner's cuts (10 / None: one-to-many).
    """

    def __init__(
        self,
        detect: AnchorFreeDetect,
        hyp: Mapping[str, float],
        distributed: bool = False,
        topk: int = 10,
        topk2: int | None = None,
    ):
        self.hyp = dict(hyp)
        self.distributed = distributed
        self.nc, self.reg_max = detect.nc, detect.reg_max
        self.strides = detect.stride.tolist()
        self.topk, self.topk2 = topk, topk2
        self.min_side = self.strides[1] if len(self.strides) > 1 else self.strides[0]
        self.names = ("box_loss", "cls_loss", "dfl_loss" if self.reg_max > 1 else "l1_loss")

    @staticmethod
    def gains(hyp: Mapping[str, float], detect: AnchorFreeDetect, nc: int, imgsz: int) -> dict[str, float]:
        """The gains as given: the losses are normalised by the assigned targets, not by classes or pixels."""
        return dict(hyp)

    def side_distances(self, boxes: torch.Tensor) -> torch.Tensor:
        """B×N×4·reg_max box outputs -> B×N×4 side distances in grid units (the distributions' means)."""
        if self.reg_max == 1:
            return boxes
        b, n, _ = boxes.shape
        bins = torch.arange(self.reg_max, dtype=boxes.dtype, device=boxes.device)
        return boxes.view(b, n, 4, self.reg_max).softmax(-1) @ bins

    def __call__(self, raw: dict, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        matched = self.match(raw, targets)
        return self.total(torch.stack(self.detection_terms(matched)), matched)

    def total(self, items: torch.Tensor, matched: Matched) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss to backpropagate (the items' sum times the global batch) and the items to report."""
        global_batch = matched.boxes.shape[0] * (get_world_size() if self.distributed else 1)
        return items.sum() * global_batch, items.detach()

    def match(self, raw: dict, targets: torch.Tensor) -> Matched:
        """Decode the raw outputs and assign the targets to the anchor points (TAL)."""
        boxes = raw["boxes"].float().permute(0, 2, 1).contiguous()  # B×N×4R
        logits = raw["scores"].float().permute(0, 2, 1).contiguous()  # B×N×nc
        b = boxes.shape[0]
        points, strides = make_anchor_points(raw["sizes"], self.strides, boxes)  # grid units, N×1
        h0, w0 = raw["sizes"][0]
        imgsz = (h0 * self.strides[0], w0 * self.strides[0])
        gt_labels, gt_boxes, gt_mask = padded_targets(targets.to(boxes.device), b, imgsz)
        distances = self.side_distances(boxes)
        pred_boxes = dist2bbox(distances, points, xywh=False)  # B×N×4, grid units
        assigned = task_aligned_assign(
            logits.detach().sigmoid(),
            pred_boxes.detach() * strides,
            points * strides,
            gt_labels,
            gt_boxes,
            gt_mask,
            topk=self.topk,
            topk2=self.topk2,
            min_side=self.min_side,
        )
        # The normaliser: target-score sum of the global batch, over world (1 in a single process).
        score_sum = assigned.scores.sum()
        if self.distributed:
            score_sum = mean_over_ranks(score_sum) * get_world_size()
        norm = score_sum.clamp(min=1) / (get_world_size() if self.distributed else 1)
        return Matched(boxes, logits, distances, pred_boxes, points, strides, imgsz, assigned, norm)

    def detection_terms(self, m: Matched) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The box, class and DFL (or L1) terms, times their gains."""
        boxes, logits, distances, pred_boxes, points, strides, imgsz = (
            m.boxes, m.logits, m.distances, m.pred_boxes, m.points, m.strides, m.imgsz
        )  # fmt: skip
        assigned, norm = m.assigned, m.norm
        lcls = F.binary_cross_entropy_with_logits(logits, assigned.scores, reduction="sum") / norm
        fg = assigned.fg
        if fg.any():
            weight = assigned.scores.sum(-1)[fg]  # K
            target = assigned.boxes / strides  # grid units
            ciou = complete_box_iou_loss(pred_boxes[fg], target[fg], reduction="none")
            lbox = (ciou * weight).sum() / norm
            if self.reg_max > 1:
                sides = bbox2dist(points, target, self.reg_max - 1 - 0.01)[fg]  # K×4
                per_side = dfl_loss(boxes[fg].reshape(-1, self.reg_max), sides.reshape(-1)).view(-1, 4)
                ldfl = (per_side.mean(-1) * weight).sum() / norm
            else:
                size = torch.tensor([imgsz[1], imgsz[0]] * 2, dtype=boxes.dtype, device=boxes.device)
                sides = bbox2dist(points, target) * strides / size
                predicted = distances * strides / size
                ldfl = ((predicted[fg] - sides[fg]).abs().mean(-1) * weight).sum() / norm
        else:  # no positives: zero, with every box output still in the graph (DDP needs every parameter used)
            lbox = ldfl = boxes.sum() * 0.0
        return lbox * self.hyp["box"], lcls * self.hyp["cls"], ldfl * self.hyp["dfl"]


class EndToEndLoss:
    """The end-to-end heads' dual assignment: one-to-many (TAL, top 10) on the one-to-many branches and
    one-to-one (TAL, top 7 then the single best point per box) on the one-to-one branches, summed with the
    weights ``o2m`` and 1 - ``o2m``; ``o2m`` falls over training from hyp ``o2m`` to ``o2m_final`` (YOLO26's
    schedule; :meth:`set_epoch` sets it). The reported items are the one-to-one branch's (what inference uses).
    """

    def __init__(self, detect: AnchorFreeDetect, hyp: Mapping[str, float], distributed: bool = False):
        self.one2many = AnchorFreeLoss(detect, hyp, distributed, topk=10)
        self.one2one = AnchorFreeLoss(detect, hyp, distributed, topk=7, topk2=1)
        self.start, self.final = hyp.get("o2m", 0.8), hyp.get("o2m_final", 0.1)
        self.names = self.one2one.names
        self.o2m = self.start

    gains = AnchorFreeLoss.gains

    def set_epoch(self, epoch: int, epochs: int) -> None:
        self.o2m = one_to_many_weight(epoch, epochs, self.start, self.final)

    def __call__(self, raw: dict, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        many, _ = self.one2many(raw["one2many"], targets)
        one, items = self.one2one(raw["one2one"], targets)
        return many * self.o2m + one * max(1.0 - self.o2m, 0.0), items
