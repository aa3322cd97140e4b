"""Detection metrics: matching predictions to labels, AP per class, confusion matrix.

Two rules, each the whole of one reference's evaluation on the same detections: ``coco`` is pycocotools'
matching and 101-point AP; ``best_iou`` is YOLOv5 7.0's ``val.py`` (its ``process_batch`` matching and its
``compute_ap`` integration). :data:`AP_INTEGRATION` says which AP integration goes with which matching rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.ops import box_iou

__all__ = [
    "IOU_THRESHOLDS",
    "AP_INTEGRATION",
    "match_predictions",
    "coco_matches",
    "best_iou_matches",
    "one_to_one",
    "ap_per_class",
    "DetectionMetrics",
    "ConfusionMatrix",
    "fitness",
]

IOU_THRESHOLDS = torch.linspace(0.5, 0.95, 10)  # mAP@0.5:0.95

# The AP integration (see :func:`ap_per_class`) that goes with each matching rule (see :func:`match_predictions`).
AP_INTEGRATION = {"coco": "coco", "best_iou": "yolov5"}


def fitness(map50: float, map50_95: float) -> float:
    """Model selection score: 0.1·mAP@0.5 + 0.9·mAP@0.5:0.95 (YOLOv5)."""
    return 0.1 * map50 + 0.9 * map50_95


def match_predictions(
    detections: torch.Tensor,
    labels: torch.Tensor,
    iouv: torch.Tensor = IOU_THRESHOLDS,
    rule: str = "best_iou",
    iou: torch.Tensor | None = None,
) -> torch.Tensor:
    """Which detections are true positives at each IoU threshold.

    detections: n×6 [x1, y1, x2, y2, score, class]; labels: m×5 [class, x1, y1, x2, y2] (same pixels).
    ``iou``: the m×n overlaps to match by instead of the boxes' (segmentation: the masks').
    Returns n×len(iouv) bool. Each label matches at most one detection, at each threshold on its own.
    ``rule``:

    - ``best_iou``, YOLOv5 7.0's ``val.py:process_batch`` (and Ultralytics' ``match_predictions``): each
      detection keeps only the label of its class it overlaps most (at or above the threshold); each label then
      goes to the highest-score detection among those that kept it (:func:`best_iou_matches`). A detection
      whose best label goes to another is a false positive even when it overlaps a free label.
    - ``coco``, pycocotools': detections in score order, each taking the not yet matched label of its class it
      overlaps most (:func:`coco_matches`).
    """
    correct = torch.zeros(len(detections), len(iouv), dtype=torch.bool)
    if not len(detections) or not len(labels):
        return correct
    iou = (box_iou(labels[:, 1:], detections[:, :4]) if iou is None else iou).cpu()
    same_class = (labels[:, 0:1] == detections[:, 5]).cpu()
    if rule == "coco":
        return coco_matches(iou, same_class, detections[:, 4].cpu(), iouv)
    if rule != "best_iou":
        raise ValueError(f"unknown matching rule {rule!r}; known: best_iou, coco")
    return best_iou_matches(iou, same_class, detections[:, 4].cpu(), iouv)


def best_iou_matches(
    iou: torch.Tensor, same_class: torch.Tensor, scores: torch.Tensor, iouv: torch.Tensor
) -> torch.Tensor:
    """YOLOv5 7.0's matching (``val.py:process_batch``). iou, same_class: m×n. Returns n×len(iouv) bool.

    At each threshold t, the pairs of one class with IoU ≥ t, listed label by label, are ranked by descending
    IoU (the ascending order of numpy's default ``argsort`` of their IoUs, reversed, as YOLOv5 ranks them;
    exact ties fall as that sort leaves them, which can vary between numpy builds, as YOLOv5's do). Then:

    1. each detection keeps its first-ranked pair: the label it overlaps most;
    2. each label goes to the first detection, in descending score order (stable), among those that kept it.

    YOLOv5 takes step 2 in the order its detections come in, which is score order after NMS: on detections in
    score order the two are the same. It does not rank the pairs by IoU again before step 2 (that line is
    commented out in YOLOv5, and in Ultralytics), so a label goes to its highest-score candidate, not to its
    highest-IoU one.
    """
    n = iou.shape[1]
    correct = torch.zeros(n, len(iouv), dtype=torch.bool)
    order = torch.argsort(scores, descending=True, stable=True)  # rank → detection index
    order_np = order.numpy()
    iou, same_class = iou[:, order], same_class[:, order]
    for k, t in enumerate(iouv.tolist()):
        labels_idx, ranks = torch.where((iou >= t) & same_class)  # label by label, as YOLOv5 lists them
        if not len(ranks):
            continue
        by_iou = np.argsort(iou[labels_idx, ranks].numpy())[::-1]
        labels_idx, ranks = labels_idx.numpy()[by_iou], ranks.numpy()[by_iou]
        first = np.unique(ranks, return_index=True)[1]  # each detection's best label, now in score order
        labels_idx, ranks = labels_idx[first], ranks[first]
        first = np.unique(labels_idx, return_index=True)[1]  # each label's first detection by score
        correct[order_np[ranks[first]], k] = True
    return correct


def coco_matches(iou: torch.Tensor, same_class: torch.Tensor, scores: torch.Tensor, iouv: torch.Tensor) -> torch.Tensor:
    """pycocotools' matching: detections by descending score (stable), each matched, per IoU threshold, to the
    not yet matched label of its class with the highest IoU at or above the threshold. iou, same_class: m×n.
    Returns n×len(iouv) bool."""
    m, n = iou.shape
    t = iouv.view(1, -1)
    correct = torch.zeros(n, len(iouv), dtype=torch.bool)
    used = torch.zeros(m, len(iouv), dtype=torch.bool)
    overlap = torch.where(same_class, iou, torch.full_like(iou, -1.0))
    reachable = (overlap >= t.min()).any(0)  # detections that can match at the lowest threshold
    columns = torch.arange(len(iouv))
    for j in torch.argsort(scores, descending=True, stable=True).tolist():
        if not reachable[j]:
            continue
        candidates = (overlap[:, j : j + 1] >= t) & ~used  # m×T
        best = torch.where(candidates, overlap[:, j : j + 1], torch.tensor(-1.0)).argmax(0)  # T
        hit = candidates[best, columns]
        used[best[hit], columns[hit]] = True
        correct[j] = hit
    return correct


def one_to_one(iou: torch.Tensor, allowed: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Match labels (rows) to detections (columns) among the ``allowed`` pairs, best IoU first, each at most once.

    Each detection keeps its best-IoU label, then each label its best-IoU detection among those that kept it:
    YOLOv5's confusion matrix (``ConfusionMatrix.process_batch``), which, unlike its mAP matching
    (:func:`best_iou_matches`), sorts by IoU again before the second step. Returns the matched label indices
    and detection indices (equal length).
    """
    li, di = torch.where(allowed)
    if not len(li):
        return np.zeros(0, int), np.zeros(0, int)
    pairs = torch.stack((li, di, iou[li, di]), 1).numpy()
    pairs = pairs[pairs[:, 2].argsort()[::-1]]
    pairs = pairs[np.unique(pairs[:, 1], return_index=True)[1]]  # one label per detection
    pairs = pairs[pairs[:, 2].argsort()[::-1]]
    pairs = pairs[np.unique(pairs[:, 0], return_index=True)[1]]  # one detection per label
    return pairs[:, 0].astype(int), pairs[:, 1].astype(int)


def interpolated_ap(recall: np.ndarray, precision: np.ndarray) -> tuple[float, np.ndarray]:
    """COCO's AP: the precision envelope sampled at 101 recall points, averaged. Also returns those samples.

    A recall point's sample is the envelope at the first detection that reaches it, 0 past the highest recall.
    """
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    points = np.linspace(0, 1, 101)
    idx = np.searchsorted(recall, points, side="left")
    sampled = np.where(idx < len(envelope), envelope[np.minimum(idx, len(envelope) - 1)], 0.0)
    return float(sampled.mean()), sampled


_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy 2 renamed trapz


def yolov5_ap(recall: np.ndarray, precision: np.ndarray) -> tuple[float, np.ndarray]:
    """YOLOv5 7.0's AP (``utils/metrics.py:compute_ap``): the curve gets the points (recall 0, precision 1)
    before and (recall 1, precision 0) after it, takes its precision envelope, is interpolated linearly
    (``np.interp``) at 101 recall points, and integrated by the trapezoid rule. Also returns those samples.

    Unlike COCO's it counts area past the highest recall (the line down to precision 0 at recall 1), and a
    perfect detector reads 0.995, not 1.
    """
    r = np.concatenate(([0.0], recall, [1.0]))
    p = np.concatenate(([1.0], precision, [0.0]))
    envelope = np.maximum.accumulate(p[::-1])[::-1]
    points = np.linspace(0, 1, 101)
    sampled = np.interp(points, r, envelope)
    return float(_trapezoid(sampled, points)), sampled


# ap_per_class's integrations: the function that integrates a precision-recall curve, and the numpy sort that ranks
# detections by confidence (pycocotools' is stable; YOLOv5's is numpy's default, where equal scores fall as it leaves
# them).
INTEGRATIONS = {"coco": (interpolated_ap, "stable"), "yolov5": (yolov5_ap, "quicksort")}


@dataclass
class DetectionMetrics:
    """Per-class P, R (at the confidence of best mean F1), AP@0.5 and AP@0.5:0.95, and curves for plots."""

    classes: np.ndarray  # class ids that have labels or predictions
    p: np.ndarray
    r: np.ndarray
    ap: np.ndarray  # len(classes)×10
    curves: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def ap50(self) -> np.ndarray:
        return self.ap[:, 0] if len(self.ap) else np.zeros(0)

    @property
    def map50(self) -> float:
        return float(self.ap[:, 0].mean()) if len(self.ap) else 0.0

    @property
    def map(self) -> float:
        return float(self.ap.mean()) if len(self.ap) else 0.0

    @property
    def mp(self) -> float:
        return float(self.p.mean()) if len(self.p) else 0.0

    @property
    def mr(self) -> float:
        return float(self.r.mean()) if len(self.r) else 0.0


def ap_per_class(
    tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray, integration: str = "coco"
) -> DetectionMetrics:
    """AP of every class with labels. tp: n×10 bool, conf and pred_cls: n, target_cls: m (all images together).

    ``integration``: ``coco`` (pycocotools': :func:`interpolated_ap`) or ``yolov5`` (YOLOv5's: :func:`yolov5_ap`);
    :data:`AP_INTEGRATION` gives the one that goes with a matching rule.
    """
    if integration not in INTEGRATIONS:
        raise ValueError(f"unknown AP integration {integration!r}; known: {', '.join(INTEGRATIONS)}")
    integrate, sort_kind = INTEGRATIONS[integration]
    order = np.argsort(-conf, kind=sort_kind)
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    classes = np.unique(target_cls).astype(int)
    px = np.linspace(0, 1, 1000)  # confidence axis of the curves
    nt = len(classes)
    ap = np.zeros((nt, tp.shape[1]))
    p_curve, r_curve = np.zeros((nt, 1000)), np.zeros((nt, 1000))
    pr_curve = np.zeros((nt, 101))
    for ci, c in enumerate(classes):
        mask = pred_cls == c
        n_labels = int((target_cls == c).sum())
        if not mask.any():
            continue
        tpc = tp[mask].cumsum(0)
        fpc = (1 - tp[mask]).cumsum(0)
        recall = tpc / n_labels
        precision = tpc / (tpc + fpc)
        r_curve[ci] = np.interp(-px, -conf[mask], recall[:, 0], left=0)
        p_curve[ci] = np.interp(-px, -conf[mask], precision[:, 0], left=1)
        for j in range(tp.shape[1]):
            ap[ci, j], sampled = integrate(recall[:, j], precision[:, j])
            if j == 0:
                pr_curve[ci] = sampled
    f1 = 2 * p_curve * r_curve / (p_curve + r_curve + 1e-16)
    best = int(smooth(f1.mean(0), 0.1).argmax()) if nt else 0
    curves = {"px": px, "precision": p_curve, "recall": r_curve, "f1": f1, "pr": pr_curve}
    return DetectionMetrics(classes, p_curve[:, best], r_curve[:, best], ap, curves)


def smooth(y: np.ndarray, fraction: float) -> np.ndarray:
    """Box filter over a fraction of the curve (used to pick a stable best-F1 confidence)."""
    nf = round(len(y) * fraction * 2) // 2 + 1
    p = np.ones(nf // 2)
    yp = np.concatenate((p * y[0], y, p * y[-1]), 0)
    return np.convolve(yp, np.ones(nf) / nf, mode="valid")


class ConfusionMatrix:
    """(nc+1)×(nc+1) counts: rows predicted class (last: background), columns true class (last: background)."""

    def __init__(self, nc: int, conf: float = 0.25, iou_thres: float = 0.45):
        self.matrix = np.zeros((nc + 1, nc + 1), dtype=np.int64)
        self.nc, self.conf, self.iou_thres = nc, conf, iou_thres

    def update(self, detections: torch.Tensor, labels: torch.Tensor) -> None:
        """detections n×6 [xyxy, score, class]; labels m×5 [class, xyxy]."""
        detections = detections[detections[:, 4] > self.conf].cpu()
        labels = labels.cpu()
        gt = labels[:, 0].long()
        pred = detections[:, 5].long()
        if not len(labels):
            for p in pred.tolist():
                self.matrix[p, self.nc] += 1
            return
        iou = box_iou(labels[:, 1:], detections[:, :4]) if len(detections) else torch.zeros((len(labels), 0))
        label_idx, det_idx = one_to_one(iou, iou > self.iou_thres)  # any class: confusions are the point
        for l_idx, d_idx in zip(label_idx.tolist(), det_idx.tolist()):
            self.matrix[pred[d_idx], gt[l_idx]] += 1
        matched_l, matched_d = set(label_idx.tolist()), set(det_idx.tolist())
        for i, c in enumerate(gt.tolist()):
            if i not in matched_l:
                self.matrix[self.nc, c] += 1  # missed: predicted background
        for j, p in enumerate(pred.tolist()):
            if j not in matched_d:
                self.matrix[p, self.nc] += 1  # false positive on background
