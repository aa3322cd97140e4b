"""YOLOv5's detection loss: anchor assignment, CIoU box loss, IoU-target objectness, BCE classes; and
:func:`make_loss`, which gives every head the loss it declares (its ``criterion``, a key of :data:`CRITERIA`;
the anchor-free heads' losses: :mod:`.loss_tal`).

Targets are M×6 rows ``[image index, class, cx, cy, w, h]`` normalised to the input size. A target
is assigned to every anchor whose width and height ratios to it are below ``anchor_t`` (4.0), in the
cell holding its centre and in the two neighbouring cells nearest to that centre.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torchvision.ops import box_convert, complete_box_iou_loss

from ...engine.distributed import get_world_size, mean_over_ranks
from ...models.yolo.anchor_free import AnchorFreeDetect
from ...models.yolo.head import Detect
from .loss_tal import AnchorFreeLoss, EndToEndLoss

__all__ = [
    "ComputeLoss",
    "CRITERIA",
    "LEVEL_BALANCE",
    "criterion_of",
    "register_criterion",
    "scale_loss_gains",
    "loss_gains",
    "make_loss",
]

# Objectness loss weight per level (P3, P4, P5 and the P3..P7 set of YOLOv5).
LEVEL_BALANCE = {3: [4.0, 1.0, 0.4]}
DEFAULT_BALANCE = [4.0, 1.0, 0.25, 0.06, 0.02]
# The five candidate cells: the target's own, then left, up, right, down (scaled by 0.5 below).
CELL_OFFSETS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32)


def scale_loss_gains(hyp: Mapping[str, float], nc: int, nl: int, imgsz: int) -> dict[str, float]:
    """YOLOv5 scales the gains, tuned for 80 classes, 3 levels and 640 pixels, to the model and data."""
    hyp = dict(hyp)
    hyp["box"] *= 3 / nl
    hyp["cls"] *= nc / 80 * 3 / nl
    hyp["obj"] *= (imgsz / 640) ** 2 * 3 / nl
    return hyp


def criterion_of(detect: Detect | AnchorFreeDetect) -> type:
    """The loss class a head declares (its ``criterion``: a key of :data:`CRITERIA`)."""
    try:
        return CRITERIA[detect.criterion]
    except KeyError:
        known = ", ".join(CRITERIA)
        name = type(detect).__name__
        raise ValueError(f"{name} trains with {detect.criterion!r}, a loss gmyolo lacks ({known})") from None


def loss_gains(hyp: Mapping[str, float], detect: Detect | AnchorFreeDetect, nc: int, imgsz: int) -> dict[str, float]:
    """The gains ``detect``'s loss uses: YOLOv5's scaled to the model and data (:func:`scale_loss_gains`); the
    anchor-free heads' as they are (their losses are normalised by the assigned targets instead)."""
    return criterion_of(detect).gains(hyp, detect, nc, imgsz)


def make_loss(detect: Detect | AnchorFreeDetect, hyp: Mapping[str, float], distributed: bool = False):
    """The loss ``detect`` declares (:class:`ComputeLoss`, :class:`~.loss_tal.AnchorFreeLoss` or
    :class:`~.loss_tal.EndToEndLoss`), called as ``loss(raw, targets) -> (total, items)`` with the items of
    ``detect.loss_names``."""
    return criterion_of(detect)(detect, hyp, distributed)


class ComputeLoss:
    """Callable ``loss(preds, targets) -> (total * batch_size, [box, obj, cls] detached)``.

    ``preds`` are the head's raw outputs (one B×na×H×W×(5+nc) tensor per level). ``hyp`` needs
    box, obj, cls (gains), cls_pw, obj_pw (BCE positive weights), anchor_t and label_smoothing.

    ``distributed``: each DDP rank holds 1/world of the global batch and DDP averages the gradients,
    so every rank scales by the global batch size (as YOLOv5), and box and class losses, means over
    the matched anchors, are normalised by the mean number of matches over the ranks (as DETR
    normalises by the boxes of all ranks): the gradient is then the global batch's. Every rank must
    call it at the same step (it all-reduces); validation uses a plain instance.
    """

    def __init__(self, detect: Detect, hyp: Mapping[str, float], distributed: bool = False):
        self.hyp = dict(hyp)
        self.distributed = distributed
        device = detect.anchors.device
        self.bce_cls = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([hyp.get("cls_pw", 1.0)], device=device))
        self.bce_obj = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([hyp.get("obj_pw", 1.0)], device=device))
        eps = hyp.get("label_smoothing", 0.0)
        self.cls_pos, self.cls_neg = 1.0 - 0.5 * eps, 0.5 * eps
        self.balance = LEVEL_BALANCE.get(detect.nl, DEFAULT_BALANCE)
        self.na, self.nc, self.nl = detect.na, detect.nc, detect.nl
        self.anchors = detect.anchors  # nl×na×2, in grid units of each level

    @staticmethod
    def gains(hyp: Mapping[str, float], detect: Detect, nc: int, imgsz: int) -> dict[str, float]:
        """YOLOv5's gains, tuned for 80 classes, 3 levels and 640 pixels, scaled to the model and data."""
        return scale_loss_gains(hyp, nc, detect.nl, imgsz)

    def __call__(self, preds: list[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device = targets.device
        lcls, lbox, lobj = (torch.zeros(1, device=device) for _ in range(3))
        tcls, tbox, indices, anchors = self.build_targets(preds, targets)
        # Matches per level here and (DDP) their mean over the ranks: loss means become shares of the global mean.
        n_local = torch.tensor([float(len(ind[0])) for ind in indices], device=device)
        n_mean = mean_over_ranks(n_local) if self.distributed else n_local
        for i, p in enumerate(preds):
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(p.shape[:4], dtype=p.dtype, device=device)
            if len(b):  # (a segmentation head's anchors output mask coefficients after the classes: not used here)
                pxy, pwh, _, pcls = p[b, a, gj, gi][:, : 5 + self.nc].split((2, 2, 1, self.nc), 1)
                pxy = pxy.sigmoid() * 2 - 0.5
                pwh = (pwh.sigmoid() * 2) ** 2 * anchors[i]
                pbox = box_convert(torch.cat((pxy, pwh), 1), "cxcywh", "xyxy")
                ciou_loss = complete_box_iou_loss(pbox.float(), box_convert(tbox[i], "cxcywh", "xyxy"))
                share = n_local[i] / n_mean[i]  # exactly 1 in a single process
                lbox += ciou_loss.mean() * share
                tobj[b, a, gj, gi] = (1.0 - ciou_loss).detach().clamp(0).to(tobj.dtype)  # objectness target = CIoU
                if self.nc > 1:  # a single class needs no class loss
                    t = torch.full_like(pcls, self.cls_neg)
                    t[range(len(b)), tcls[i]] = self.cls_pos
                    lcls += self.bce_cls(pcls, t) * share
            lobj += self.bce_obj(p[..., 4], tobj) * self.balance[i]
        lbox *= self.hyp["box"]
        lobj *= self.hyp["obj"]
        lcls *= self.hyp["cls"]
        bs = preds[0].shape[0] * (get_world_size() if self.distributed else 1)  # the global batch
        return (lbox + lobj + lcls) * bs, torch.cat((lbox, lobj, lcls)).detach()

    def build_targets(self, preds: list[torch.Tensor], targets: torch.Tensor, carry: torch.Tensor | None = None):
        """Per level: target classes, boxes (cx, cy relative to the cell; w, h in grid units),
        indices (image, anchor, grid y, grid x) and the anchors they were matched to; with ``carry`` (M×k values
        per target), also each match's row of it."""
        na, nt = self.na, targets.shape[0]
        device = targets.device
        tcls, tbox, indices, anch, carried = [], [], [], [], []
        k = 0 if carry is None else carry.shape[1]
        gain = torch.ones(7 + k, device=device)
        anchor_ids = torch.arange(na, device=device, dtype=torch.float32).view(na, 1).repeat(1, nt)
        targets = torch.cat((targets.repeat(na, 1, 1), anchor_ids[..., None]), 2)  # na×nt×7
        if carry is not None:
            targets = torch.cat((targets, carry.to(targets.dtype).repeat(na, 1, 1)), 2)  # na×nt×(7+k)
        g = 0.5
        offsets_all = CELL_OFFSETS.to(device) * g
        for i in range(self.nl):
            anchors, shape = self.anchors[i], preds[i].shape
            gain[2:6] = torch.tensor(shape, device=device, dtype=torch.float32)[[3, 2, 3, 2]]
            t = targets * gain  # boxes in grid units of this level
            if nt:
                ratio = t[..., 4:6] / anchors[:, None]
                t = t[torch.max(ratio, 1 / ratio).max(2)[0] < self.hyp["anchor_t"]]
                gxy = t[:, 2:4]
                gxi = gain[[2, 3]] - gxy  # distance to the far edges
                left, up = ((gxy % 1 < g) & (gxy > 1)).T
                right, down = ((gxi % 1 < g) & (gxi > 1)).T
                chosen = torch.stack((torch.ones_like(left), left, up, right, down))
                t = t.repeat((5, 1, 1))[chosen]
                offsets = (torch.zeros_like(gxy)[None] + offsets_all[:, None])[chosen]
            else:
                t, offsets = targets[0], torch.zeros((0, 2), device=device)
            bc, gxy, gwh, a, extra = t.split((2, 2, 2, 1, k), 1)
            a, (b, c) = a.long().view(-1), bc.long().T
            gij = (gxy - offsets).long()
            gi = gij[:, 0].clamp(0, shape[3] - 1)
            gj = gij[:, 1].clamp(0, shape[2] - 1)
            indices.append((b, a, gj, gi))
            tbox.append(torch.cat((gxy - torch.stack((gi, gj), 1), gwh), 1))
            anch.append(anchors[a])
            tcls.append(c)
            carried.append(extra)
        return (tcls, tbox, indices, anch) if carry is None else (tcls, tbox, indices, anch, carried)


# The losses heads declare by name (``criterion``): each is built as ``cls(head, hyp, distributed)`` and scales its
# gains with ``cls.gains(hyp, head, nc, imgsz)``.
CRITERIA: dict[str, type] = {"yolov5": ComputeLoss, "tal": AnchorFreeLoss, "end2end": EndToEndLoss}


def register_criterion(name: str, loss: type) -> None:
    """Make ``loss`` the criterion that heads declaring ``name`` train with (another task's losses, such as
    segmentation's, register themselves when their module is imported)."""
    CRITERIA[name] = loss
