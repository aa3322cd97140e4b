"""The task-aligned assigner (TAL) of the anchor-free heads (Feng et al., *TOOD*, 2021; as YOLOv8 uses it).

For every ground-truth box, the candidate anchor points are those strictly inside it (a box narrower than
``min_side`` pixels, by default the second level's stride, is widened to it about its centre for this choice
only, as Ultralytics does, so that small objects still get candidates). Each candidate gets
the alignment metric ``t = s^alpha · u^beta`` (``s``: the predicted score of the box's class at that point,
``u``: the CIoU of the point's predicted box with the ground truth, clamped at 0); the box keeps its ``topk``
candidates with the highest ``t``. A point chosen by several boxes goes to the one its prediction overlaps
most. With ``topk2`` (the one-to-one assignment of the end-to-end heads) each box then keeps only its best
``topk2`` points. The class target of a positive point is its box's class, scaled by ``t`` normalised so
that the box's best point gets that box's best overlap: ``t / max t · max u``.

Shapes: B images, N anchor points, M ground-truth slots per image (padded; ``gt_mask`` marks the real ones),
nc classes. Boxes are xyxy in input pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import complete_box_iou_loss

__all__ = ["Assignment", "task_aligned_assign", "points_in_boxes"]


@dataclass
class Assignment:
    boxes: torch.Tensor  # B×N×4: the assigned box of every point (meaningful where fg)
    scores: torch.Tensor  # B×N×nc: the class targets (0 for background)
    fg: torch.Tensor  # B×N bool: positive points
    gt_index: torch.Tensor  # B×N: the slot of the assigned box (0 for background)


def points_in_boxes(
    points: torch.Tensor, boxes: torch.Tensor, eps: float = 1e-9, min_side: float | None = None
) -> torch.Tensor:
    """B×M×N: point n (N×2) lies strictly inside box m (B×M×4 xyxy), by more than ``eps`` on every side.

    A point exactly on an edge is outside (that edge's distance would be 0). With ``min_side``, a box side
    shorter than it counts as ``min_side`` long, centred where the box is.
    """
    if min_side is not None:
        centre, size = (boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]
        size = size.clamp(min=min_side)
        boxes = torch.cat((centre - size / 2, centre + size / 2), -1)
    x, y = points[:, 0], points[:, 1]
    x1, y1, x2, y2 = (boxes[..., i : i + 1] for i in range(4))
    inside = torch.stack((x - x1, y - y1, x2 - x, y2 - y), -1).amin(-1)
    return inside > eps


def pair_ciou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """CIoU of paired boxes (K×4 xyxy each), clamped at 0."""
    if not len(a):
        return a.new_zeros(0)
    return (1.0 - complete_box_iou_loss(a, b, reduction="none")).clamp(0)


@torch.no_grad()
def task_aligned_assign(
    pd_scores: torch.Tensor,
    pd_boxes: torch.Tensor,
    points: torch.Tensor,
    gt_labels: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_mask: torch.Tensor,
    topk: int = 10,
    alpha: float = 0.5,
    beta: float = 6.0,
    topk2: int | None = None,
    min_side: float | None = None,
    eps: float = 1e-9,
) -> Assignment:
    """Assign ground truth to anchor points (see the module docstring).

    Args:
        pd_scores: B×N×nc predicted class probabilities (after sigmoid, detached).
        pd_boxes: B×N×4 predicted boxes, xyxy pixels (detached).
        points: N×2 anchor points, pixels.
        gt_labels: B×M×1 class ids; gt_boxes: B×M×4 xyxy pixels; gt_mask: B×M×1, true for real boxes.
        topk, alpha, beta: candidates kept per box and the metric's exponents; topk2: the one-to-one cut.
        min_side: boxes are at least this wide and tall when candidates are chosen (None: as they are).
    """
    b, n, nc = pd_scores.shape
    m = gt_boxes.shape[1]
    device, dtype = pd_scores.device, pd_scores.dtype
    if m == 0:
        return Assignment(
            torch.zeros_like(pd_boxes),
            torch.zeros_like(pd_scores),
            torch.zeros(b, n, dtype=torch.bool, device=device),
            torch.zeros(b, n, dtype=torch.long, device=device),
        )
    valid = gt_mask.view(b, m, 1).bool()
    candidates = points_in_boxes(points, gt_boxes, min_side=min_side) & valid  # B×M×N
    labels = gt_labels.view(b, m).long().clamp(0, nc - 1)

    # Alignment metric and overlap of every candidate pair (zero elsewhere).
    bi, mi, ni = candidates.nonzero(as_tuple=True)
    overlaps = torch.zeros(b, m, n, dtype=dtype, device=device)
    metric = torch.zeros(b, m, n, dtype=dtype, device=device)
    u = pair_ciou(gt_boxes[bi, mi].to(pd_boxes.dtype), pd_boxes[bi, ni]).to(dtype)
    s = pd_scores[bi, ni, labels[bi, mi]]
    overlaps[bi, mi, ni] = u
    metric[bi, mi, ni] = s.pow(alpha) * u.pow(beta)

    # Each box's top-k points by the metric, among its candidates.
    k = min(topk, n)
    top = metric.topk(k, dim=-1).indices  # B×M×k
    chosen = torch.zeros(b, m, n, dtype=torch.bool, device=device).scatter_(-1, top, True)
    positive = chosen & candidates

    # A point chosen by several boxes goes to the box it overlaps most.
    multiple = positive.sum(1, keepdim=True) > 1  # B×1×N
    best_box = torch.zeros_like(positive).scatter_(1, overlaps.argmax(1, keepdim=True), True)
    positive = torch.where(multiple, best_box, positive)

    if topk2 is not None and topk2 != topk:  # one-to-one: each box keeps only its best topk2 points
        best = (metric * positive).topk(min(topk2, n), dim=-1).indices
        positive &= torch.zeros_like(positive).scatter_(-1, best, True)

    fg = positive.any(1)  # B×N
    gt_index = positive.to(torch.uint8).argmax(1)  # B×N (0 for background)
    batch = torch.arange(b, device=device).view(b, 1)
    boxes = gt_boxes[batch, gt_index]  # B×N×4
    target_labels = labels[batch, gt_index]  # B×N
    scores = torch.zeros(b, n, nc, dtype=dtype, device=device)
    scores.scatter_(2, target_labels.unsqueeze(-1), 1.0)
    scores *= fg.unsqueeze(-1)

    # t / max t · max u per box, then the largest over boxes per point.
    metric *= positive
    overlaps *= positive
    normalised = metric * overlaps.amax(-1, keepdim=True) / (metric.amax(-1, keepdim=True) + eps)
    scores *= normalised.amax(1).unsqueeze(-1)
    return Assignment(boxes, scores, fg, gt_index)
