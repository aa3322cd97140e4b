"""Metrics: matching, AP, NMS, and agreement with pycocotools on the same detections."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gmyolo.data.labels import ImageRecord
from gmyolo.tasks.detect.coco_eval import coco_detections, coco_ground_truth, run_cocoeval
from gmyolo.tasks.detect.metrics import ConfusionMatrix, ap_per_class, fitness, match_predictions
from gmyolo.tasks.detect.postprocess import non_max_suppression, scale_boxes


def test_match_predictions_one_to_one():
    labels = torch.tensor([[0, 0, 0, 10, 10], [1, 20, 20, 30, 30]], dtype=torch.float32)
    dets = torch.tensor(
        [
            [0, 0, 10, 10, 0.9, 0],  # exact match of label 0
            [0, 0, 10, 11, 0.8, 0],  # duplicate of label 0: false positive
            [20, 20, 30, 30, 0.7, 0],  # right place, wrong class
            [22, 22, 30, 30, 0.6, 1],  # IoU 0.64 with label 1
        ],
        dtype=torch.float32,
    )
    correct = match_predictions(dets, labels)
    assert correct[0].all() and not correct[1].any() and not correct[2].any()
    assert correct[3, :3].all() and not correct[3, 3:].any()  # true at 0.50..0.60, false from 0.65


def test_ap_perfect_and_half():
    tp = np.ones((4, 10), bool)
    m = ap_per_class(tp, np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]))
    assert m.map == pytest.approx(1.0) and m.map50 == pytest.approx(1.0)
    # One class, 2 labels, one found first, a false positive, then nothing: AP = 0.5 (COCO 101-point).
    tp = np.array([[True] * 10, [False] * 10])
    m = ap_per_class(tp, np.array([0.9, 0.8]), np.array([0, 0]), np.array([0, 0]))
    assert m.map50 == pytest.approx(51 / 101)  # precision 1 for recall 0..0.5 (51 of 101 points)
    assert fitness(0.5, 0.3) == pytest.approx(0.32)


def random_scene(rng, n_images=30, nc=3, size=(480, 640)):
    """Ground truth and jittered, partly wrong detections (some missed, some false)."""
    records, predictions = [], []
    for i in range(n_images):
        h, w = size
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 0.8, (n, 2))
        wh = rng.uniform(0.05, 0.2, (n, 2))
        cls = rng.integers(0, nc, n)
        labels = np.concatenate([cls[:, None], xy + wh / 2, wh], 1).astype(np.float32)
        records.append(
            ImageRecord(image=__import__("pathlib").Path(f"/x/{i:04d}.jpg"), height=h, width=w, labels=labels)
        )
        dets = []
        for c, cx, cy, bw, bh in labels:
            if rng.random() < 0.15:
                continue  # missed
            jitter = rng.normal(0, 0.08, 4) * [bw, bh, bw, bh]
            x1, y1 = (cx - bw / 2 + jitter[0]) * w, (cy - bh / 2 + jitter[1]) * h
            x2, y2 = (cx + bw / 2 + jitter[2]) * w, (cy + bh / 2 + jitter[3]) * h
            wrong = rng.random() < 0.1
            dets.append([x1, y1, x2, y2, rng.uniform(0.2, 1.0), (c + 1) % nc if wrong else c])
        for _ in range(int(rng.integers(0, 3))):  # false positives
            x1, y1 = rng.uniform(0, 0.8) * w, rng.uniform(0, 0.8) * h
            dets.append([x1, y1, x1 + 50, y1 + 40, rng.uniform(0.0, 0.6), rng.integers(0, nc)])
        predictions.append({"path": f"/x/{i:04d}.jpg", "boxes": torch.tensor(dets, dtype=torch.float32).reshape(-1, 6)})
    return records, predictions


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_agrees_with_pycocotools(seed):
    rng = np.random.default_rng(seed)
    names = ["a", "b", "c"]
    records, predictions = random_scene(rng)
    stats = []
    for r, p in zip(records, predictions):
        boxes = torch.from_numpy(r.labels[:, 1:]).clone()
        xyxy = torch.stack(
            [
                (boxes[:, 0] - boxes[:, 2] / 2) * r.width,
                (boxes[:, 1] - boxes[:, 3] / 2) * r.height,
                (boxes[:, 0] + boxes[:, 2] / 2) * r.width,
                (boxes[:, 1] + boxes[:, 3] / 2) * r.height,
            ],
            1,
        )
        labels = torch.cat([torch.from_numpy(r.labels[:, :1]), xyxy], 1)
        stats.append((match_predictions(p["boxes"], labels), p["boxes"][:, 4], p["boxes"][:, 5], labels[:, 0]))
    tp, conf, pcls, tcls = (torch.cat(x).numpy() for x in zip(*stats))
    ours = ap_per_class(tp, conf, pcls, tcls)
    gt = coco_ground_truth(records, names)
    coco = run_cocoeval(gt, coco_detections(predictions, {im["file_name"]: im["id"] for im in gt["images"]}))
    assert abs(ours.map - coco["mAP50-95"]) < 0.005
    assert abs(ours.map50 - coco["mAP50"]) < 0.005
    assert 0.2 < ours.map < 0.95  # a meaningful, non-trivial score


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_coco_matching_reproduces_pycocotools(seed):
    # The rule the anchor-free heads are validated with: pycocotools' own matching (score order), so the mAP is
    # pycocotools' (to its 101-point rounding). Overlapping detections of one object, as the anchor-free heads'
    # many low-score boxes are, are where the two rules differ.
    rng = np.random.default_rng(seed)
    records, predictions = random_scene(rng)
    for p in predictions:  # add a lower-scored, better-placed duplicate of some detections
        extra = p["boxes"][: len(p["boxes"]) // 2].clone()
        extra[:, :4] += torch.from_numpy(rng.normal(0, 2, (len(extra), 4))).float()
        extra[:, 4] *= 0.5
        p["boxes"] = torch.cat((p["boxes"], extra))
    stats = {"coco": [], "best_iou": []}
    for r, p in zip(records, predictions):
        b = torch.from_numpy(r.labels[:, 1:]).clone()
        xyxy = torch.stack([(b[:, 0] - b[:, 2] / 2) * r.width, (b[:, 1] - b[:, 3] / 2) * r.height,
                            (b[:, 0] + b[:, 2] / 2) * r.width, (b[:, 1] + b[:, 3] / 2) * r.height], 1)  # fmt: skip
        labels = torch.cat([torch.from_numpy(r.labels[:, :1]), xyxy], 1)
        for rule in stats:
            correct = match_predictions(p["boxes"], labels, rule=rule)
            stats[rule].append((correct, p["boxes"][:, 4], p["boxes"][:, 5], labels[:, 0]))
    maps = {}
    for rule, rows in stats.items():
        tp, conf, pcls, tcls = (torch.cat(x).numpy() for x in zip(*rows))
        maps[rule] = ap_per_class(tp, conf, pcls, tcls)
    gt = coco_ground_truth(records, ["a", "b", "c"])
    coco = run_cocoeval(gt, coco_detections(predictions, {im["file_name"]: im["id"] for im in gt["images"]}))
    assert abs(maps["coco"].map - coco["mAP50-95"]) < 1e-3 and abs(maps["coco"].map50 - coco["mAP50"]) < 1e-3
    assert 0.2 < maps["coco"].map < 0.95


def test_nms_and_scaling():
    # Two overlapping boxes of one class and one of another; xywh, obj, 2 class scores.
    decoded = torch.tensor(
        [
            [
                [50, 50, 20, 20, 0.9, 0.9, 0.1],
                [51, 50, 20, 20, 0.8, 0.9, 0.1],  # suppressed by the first
                [52, 50, 20, 20, 0.9, 0.1, 0.9],  # other class: kept
                [10, 10, 4, 4, 0.01, 0.9, 0.1],  # below the confidence threshold
            ]
        ]
    )
    out = non_max_suppression(decoded, conf_thres=0.25, iou_thres=0.45)[0]
    assert out.shape == (2, 6)
    torch.testing.assert_close(out[0, :4], torch.tensor([40.0, 40, 60, 60]))
    assert sorted(out[:, 5].tolist()) == [0, 1]
    agnostic = non_max_suppression(decoded, conf_thres=0.25, iou_thres=0.45, agnostic=True)[0]
    assert len(agnostic) == 1
    ambiguous = torch.tensor([[[100, 100, 20, 20, 0.9, 0.6, 0.5]]])  # both classes above the threshold
    assert len(non_max_suppression(ambiguous, conf_thres=0.25)[0]) == 1
    multi = non_max_suppression(ambiguous, conf_thres=0.25, multi_label=True)[0]
    assert sorted(multi[:, 5].tolist()) == [0, 1]  # the box once per class (used for mAP)
    boxes = torch.tensor([[10.0, 26.0, 60.0, 76.0]])
    scale_boxes(boxes, (100, 200), ((0.5, 0.5), (0.0, 16.0)))  # 200x100 image letterboxed into 100x100
    torch.testing.assert_close(boxes, torch.tensor([[20.0, 20.0, 120.0, 100.0]]))


def test_confusion_matrix():
    cm = ConfusionMatrix(nc=2)
    labels = torch.tensor([[0, 0, 0, 10, 10], [1, 20, 20, 30, 30]], dtype=torch.float32)
    dets = torch.tensor([[0, 0, 10, 10, 0.9, 0], [20, 20, 30, 30, 0.9, 0], [50, 50, 60, 60, 0.9, 1]])
    cm.update(dets, labels)
    assert cm.matrix[0, 0] == 1 and cm.matrix[0, 1] == 1 and cm.matrix[1, 2] == 1 and cm.matrix.sum() == 3
