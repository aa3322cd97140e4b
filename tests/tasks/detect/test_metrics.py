"""Metrics: matching, AP, NMS, and agreement with pycocotools on the same detections."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gmyolo.data.labels import ImageRecord
from gmyolo.models.yolo.head import YOLOV5_FORMAT
from gmyolo.tasks.detect.coco_eval import coco_detections, coco_ground_truth, run_cocoeval
from gmyolo.tasks.detect.metrics import (
    AP_INTEGRATION,
    IOU_THRESHOLDS,
    ConfusionMatrix,
    ap_per_class,
    fitness,
    match_predictions,
    one_to_one,
)
from gmyolo.tasks.detect.postprocess import non_max_suppression, scale_boxes
from gmyolo.tasks.detect.validator import validate


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


# IOU_THRESHOLDS: 0.50 0.55 0.60 | 0.65 0.70 0.75 0.80 0.85 0.90 | 0.95
LABEL = [0, 0, 0, 10, 10]
CONFIDENT_LOOSE = [0, 0, 10, 6.2, 0.9, 0]  # IoU 0.62 with LABEL, the higher score
UNSURE_TIGHT = [0, 0, 10, 9.2, 0.8, 0]  # IoU 0.92 with LABEL, the lower score


def test_best_iou_gives_a_label_to_its_highest_score_candidate():
    # YOLOv5 7.0's process_batch: where both are candidates (t <= 0.62), the label goes to the higher-score
    # detection although the other overlaps it more; the lower-score one is a false positive there.
    labels = torch.tensor([LABEL], dtype=torch.float32)
    dets = torch.tensor([CONFIDENT_LOOSE, UNSURE_TIGHT], dtype=torch.float32)
    expected = torch.tensor(
        [
            [1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 1, 1, 1, 1, 1, 1, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(match_predictions(dets, labels, rule="best_iou"), expected)
    # Score order, not input order: the same detections listed lowest score first give the same matches.
    assert torch.equal(match_predictions(dets.flip(0), labels, rule="best_iou"), expected.flip(0))
    # pycocotools' rule agrees here (score order, too); matching each label to its best IoU would not.
    assert torch.equal(match_predictions(dets, labels, rule="coco"), expected)
    assert one_to_one(box_iou_of(labels, dets), torch.ones(1, 2, dtype=torch.bool))[1].tolist() == [1]


def test_best_iou_a_detection_keeps_only_its_best_label():
    # A detection whose best label is taken by a higher-score detection is a false positive under YOLOv5's rule,
    # even where it overlaps another free label enough; pycocotools' rule gives it that label.
    labels = torch.tensor([[0, 0, 0, 10, 10], [0, 4, 0, 14, 10]], dtype=torch.float32)
    dets = torch.tensor(
        [
            [0, 0, 10, 10, 0.9, 0],  # label 0 exactly (IoU 0.43 with label 1)
            [1.5, 0, 12, 10, 0.8, 0],  # IoU 0.708 with label 0, 0.64 with label 1
        ],
        dtype=torch.float32,
    )
    yolov5 = torch.tensor([[1] * 10, [0] * 10], dtype=torch.bool)
    coco = torch.tensor([[1] * 10, [1, 1, 1] + [0] * 7], dtype=torch.bool)
    assert torch.equal(match_predictions(dets, labels, rule="best_iou"), yolov5)
    assert torch.equal(match_predictions(dets, labels, rule="coco"), coco)


def test_best_iou_two_labels_two_classes():
    labels = torch.tensor([[0, 0, 0, 10, 10], [1, 0, 0, 10, 10], [1, 30, 30, 40, 40]], dtype=torch.float32)
    dets = torch.tensor(
        [
            [30, 30, 40, 39.2, 0.95, 1],  # label 2: IoU 0.92
            [0, 0, 10, 10, 0.9, 1],  # label 1 (class 1), not label 0 (class 0)
            [0, 0, 10, 7.2, 0.85, 0],  # label 0: IoU 0.72
            [0, 0, 10, 10, 0.5, 0],  # label 0, IoU 1, but after the 0.85 one where that one is a candidate
        ],
        dtype=torch.float32,
    )
    expected = torch.tensor(
        [
            [1, 1, 1, 1, 1, 1, 1, 1, 1, 0],
            [1] * 10,
            [1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(match_predictions(dets, labels, rule="best_iou"), expected)


def box_iou_of(labels: torch.Tensor, dets: torch.Tensor) -> torch.Tensor:
    from torchvision.ops import box_iou

    return box_iou(labels[:, 1:], dets[:, :4])


def process_batch_reference(dets: np.ndarray, labels: np.ndarray, iouv: np.ndarray) -> np.ndarray:
    """YOLOv5 7.0's val.py:process_batch, by its steps, with plain loops: at each threshold, the (label, detection)
    pairs of one class at or above it, listed label by label, ranked by descending float32 IoU (numpy's default
    argsort, reversed); each detection keeps its first pair; the kept pairs, by detection index, give each label
    its first detection. Detections in score order."""
    m, n = len(labels), len(dets)
    iou = np.zeros((m, n), np.float32)
    for i in range(m):
        for j in range(n):
            a, b = labels[i, 1:], dets[j, :4]
            w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            inter = w * h
            iou[i, j] = inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
    correct = np.zeros((n, len(iouv)), bool)
    for k, t in enumerate(iouv):
        pairs = [(i, j) for i in range(m) for j in range(n) if iou[i, j] >= t and labels[i, 0] == dets[j, 5]]
        if not pairs:
            continue
        values = np.array([iou[i, j] for i, j in pairs], np.float32)
        ranked = [pairs[r] for r in np.argsort(values)[::-1]]
        best_label: dict[int, int] = {}
        for i, j in ranked:
            best_label.setdefault(j, i)
        taken: set[int] = set()
        for j in sorted(best_label):
            if best_label[j] not in taken:
                taken.add(best_label[j])
                correct[j, k] = True
    return correct


def dense_case(rng, snap: bool):
    """Up to 8 labels of 1-2 classes and many jittered, partly wrong-class detections, scores descending.
    ``snap``: coordinates on a 5 px grid and duplicated labels, so that IoUs tie."""
    m, n, nc = int(rng.integers(1, 9)), int(rng.integers(1, 30)), int(rng.integers(1, 3))
    centre, size = rng.uniform(0, 100, (m, 2)), rng.uniform(10, 40, (m, 2))
    jitter = rng.normal(0, 6, (n, 4))
    if snap:
        centre, size, jitter = (np.round(x / 5) * 5 for x in (centre, size, jitter))
    labels = np.concatenate([rng.integers(0, nc, (m, 1)), centre - size / 2, centre + size / 2], 1)
    if snap and m > 1:
        labels[-1] = labels[0]
    source = rng.integers(0, m, n)
    boxes = labels[source, 1:] + jitter
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    cls = np.where(rng.random(n) < 0.8, labels[source, 0], rng.integers(0, nc, n))
    dets = np.concatenate([boxes, np.sort(rng.uniform(0, 1, n))[::-1, None], cls[:, None]], 1)
    return dets.astype(np.float32), labels.astype(np.float32)


def test_best_iou_equals_process_batch_on_random_dense_cases():
    rng = np.random.default_rng(0)
    iouv = IOU_THRESHOLDS.numpy()
    differs_from_resorted = 0
    for case in range(400):
        dets, labels = dense_case(rng, snap=case % 4 == 3)
        expected = process_batch_reference(dets, labels, iouv)
        d, lab = torch.from_numpy(dets), torch.from_numpy(labels)
        got = match_predictions(d, lab, rule="best_iou").numpy()
        np.testing.assert_array_equal(got, expected, err_msg=f"case {case}")
        perm = rng.permutation(len(dets))  # the input order does not matter, the scores do
        np.testing.assert_array_equal(match_predictions(d[perm], lab, rule="best_iou").numpy(), expected[perm])
        iou, same = box_iou_of(lab, d), lab[:, 0:1] == d[:, 5]
        resorted = np.zeros_like(expected)  # a label to its best-IoU detection: gmyolo's rule before issue 24
        for k, t in enumerate(iouv.tolist()):
            resorted[one_to_one(iou, (iou >= t) & same)[1], k] = True
        differs_from_resorted += not np.array_equal(resorted, expected)
    assert differs_from_resorted > 100  # the cases exercise where the two rules part


def test_yolov5_ap_integration():
    # YOLOv5's compute_ap: (recall 0, precision 1) before the curve, (1, 0) after, the precision envelope, np.interp
    # at 101 recall points, the trapezoid rule (step 0.01).
    ones = np.ones((2, 10), bool)
    perfect = ap_per_class(ones, np.array([0.9, 0.8]), np.array([0, 0]), np.array([0, 0]), integration="yolov5")
    # Precision 1 for recall < 1, and 0 at recall 1 (the end point): 0.99 + 0.01 * (1 + 0) / 2.
    assert perfect.map == pytest.approx(0.995, abs=1e-12)
    assert ap_per_class(ones, np.array([0.9, 0.8]), np.array([0, 0]), np.array([0, 0])).map == 1.0  # coco: 1
    tp = np.array([[True] * 10, [False] * 10])  # 2 labels: one found, then a false positive; recall 0.5, 0.5
    m = ap_per_class(tp, np.array([0.9, 0.8]), np.array([0, 0]), np.array([0, 0]), integration="yolov5")
    # Envelope 1 for recall < 0.5; 0.5 at recall 0.5 (np.interp takes the last of the repeated points); then the
    # line from (0.5, 0.5) to (1, 0): 1 - r. Trapezoids: 0.49 + 0.01 * (1 + 0.5) / 2 + 0.01 * (0.5 + 0.49) / 2
    # + 0.49**2 / 2 (exact on a line) = 0.49 + 0.0075 + 0.00495 + 0.12005 = 0.6225.
    assert m.map50 == pytest.approx(0.6225, abs=1e-12)
    assert ap_per_class(tp, np.array([0.9, 0.8]), np.array([0, 0]), np.array([0, 0])).map50 == pytest.approx(51 / 101)
    with pytest.raises(ValueError, match="unknown AP integration"):
        ap_per_class(tp, np.array([0.9, 0.8]), np.array([0, 0]), np.array([0, 0]), integration="voc")
    assert AP_INTEGRATION == {"coco": "coco", "best_iou": "yolov5"}


class FixedDetections:
    """A stand-in detector for validate(): whatever the image, YOLOv5-format rows (cx, cy, w, h, obj, class 0)."""

    output_format = YOLOV5_FORMAT

    def __init__(self, xyxy_scores):
        rows = [[(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, s, 1.0] for x1, y1, x2, y2, s in xyxy_scores]
        self.decoded = torch.tensor([rows], dtype=torch.float32)

    def __call__(self, images):
        return self.decoded.expand(len(images), -1, -1)


@pytest.mark.parametrize(
    "rule, ap",
    [
        # t ≤ 0.60: the 0.9 detection matches, recall 1 then a false positive: YOLOv5 0.995 (see above).
        # 0.65 ≤ t ≤ 0.90: only the 0.8 one: precision 0 then 0.5 at recall 1; envelope 0.5 from recall 0,
        # 0 at recall 1: 0.99 * 0.5 + 0.01 * 0.5 / 2 = 0.4975. t = 0.95: nothing.
        ("best_iou", [0.995] * 3 + [0.4975] * 6 + [0.0]),
        # pycocotools: the same matches here, sampled: 1 (t ≤ 0.60), 0.5, 0.
        ("coco", [1.0] * 3 + [0.5] * 6 + [0.0]),
    ],
)
def test_validate_scores_each_rule_with_its_own_ap(rule, ap):
    model = FixedDetections([CONFIDENT_LOOSE[:5], UNSURE_TIGHT[:5]])

    def loader():  # validate() scales the targets in place, as a DataLoader's fresh batches allow
        targets = torch.tensor([[0, 0, 5 / 32, 5 / 32, 10 / 32, 10 / 32]])  # LABEL, normalised cxcywh
        return [(torch.zeros((1, 3, 32, 32), dtype=torch.uint8), targets, ["a.jpg"], [None])]

    # NMS at 0.7 keeps both (their IoU is 0.67).
    results = validate(model, loader(), ["a"], iou=0.7, progress=False, matching=rule)
    np.testing.assert_allclose(results.metrics.ap[0], ap, atol=1e-12)
    if rule == "best_iou":
        auto = validate(model, loader(), ["a"], iou=0.7, progress=False)  # YOLOv5's head: best_iou by default
        np.testing.assert_array_equal(auto.metrics.ap, results.metrics.ap)
    with pytest.raises(ValueError, match="unknown matching rule"):
        validate(model, loader(), ["a"], progress=False, matching="voc")


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
