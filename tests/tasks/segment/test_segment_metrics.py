"""Mask mAP: the validator's matching on mask IoU with pycocotools' rule gives pycocotools' own ``segm`` mAP on the
same masks; the mask helpers in closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gmyolo.data.opencv import cv2
from gmyolo.tasks.detect.coco_eval import run_cocoeval
from gmyolo.tasks.detect.metrics import AP_INTEGRATION, ap_per_class, match_predictions
from gmyolo.tasks.segment.val import label_masks, mask_iou, predicted_masks

pycocotools_mask = pytest.importorskip("pycocotools.mask", reason="pycocotools is the reference")


def test_mask_helpers():
    a = torch.zeros(2, 4, 4, dtype=torch.bool)
    a[0, :2, :2] = True  # 4 pixels
    a[1] = True  # 16
    b = torch.zeros(1, 4, 4, dtype=torch.bool)
    b[0, :2] = True  # 8 pixels, holding a[0]
    torch.testing.assert_close(mask_iou(a, b), torch.tensor([[0.5], [0.5]]))
    overlap = torch.tensor([[0, 1], [2, 2]])
    np.testing.assert_array_equal(label_masks(overlap, 2, (2, 2)).numpy(), [[[0, 1], [0, 0]], [[0, 0], [1, 1]]])
    # One prototype of ones, coefficient +3: the mask is the box (scaled to the prototypes, then upsampled back).
    prototypes = torch.ones(1, 8, 8)
    masks = predicted_masks(
        prototypes, torch.tensor([[3.0], [-3.0]]), torch.tensor([[8.0, 8.0, 24.0, 16.0]] * 2), (32, 32)
    )
    assert masks.shape == (2, 32, 32) and not masks[1].any()
    ys, xs = torch.nonzero(masks[0], as_tuple=True)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (8, 23, 8, 15)


def random_polygon(rng, h, w):
    c = rng.uniform([0.15 * w, 0.15 * h], [0.85 * w, 0.85 * h])
    k = int(rng.integers(3, 9))
    a = np.sort(rng.uniform(0, 2 * np.pi, k))
    r = rng.uniform(0.1, 0.25) * min(h, w) * rng.uniform(0.7, 1.0, k)
    return c + np.stack([np.cos(a), np.sin(a)], 1) * r[:, None]


def raster(polygon, h, w):
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(polygon * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    return mask.astype(bool)


def rle(mask):
    code = pycocotools_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": code["size"], "counts": code["counts"].decode()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_map_equals_pycocotools_segm(seed):
    rng = np.random.default_rng(seed)
    h, w, nc = 96, 128, 3
    images, annotations, detections, stats = [], [], [], []
    for i in range(25):
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": h, "width": w})
        truth, classes = [], []
        for _ in range(int(rng.integers(0, 5))):
            truth.append(raster(random_polygon(rng, h, w), h, w))
            classes.append(int(rng.integers(0, nc)))
        predicted, scores, pclasses = [], [], []
        for m, c in zip(truth, classes):
            if rng.random() < 0.15:
                continue  # missed
            for _ in range(int(rng.integers(1, 3))):  # some objects found twice, the second one worse
                moved = np.roll(m, tuple(rng.integers(-1, 2, 2)), (0, 1))
                grown = cv2.dilate(moved.astype(np.uint8), np.ones((3, 3), np.uint8)) if rng.random() < 0.3 else moved
                predicted.append(grown.astype(bool))
                scores.append(float(rng.uniform(0.05, 1.0)))
                pclasses.append(c if rng.random() > 0.1 else (c + 1) % nc)
        for _ in range(int(rng.integers(0, 3))):  # false positives
            predicted.append(raster(random_polygon(rng, h, w), h, w))
            scores.append(float(rng.uniform(0.0, 0.6)))
            pclasses.append(int(rng.integers(0, nc)))
        for m, c in zip(truth, classes):
            ys, xs = np.nonzero(m)
            box = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": c + 1, "iscrowd": 0,
                                "area": float(m.sum()), "bbox": box, "segmentation": rle(m)})  # fmt: skip
        for m, s, c in zip(predicted, scores, pclasses):
            detections.append({"image_id": i + 1, "category_id": c + 1, "score": s, "segmentation": rle(m)})
        # Ours: the validator's matching on mask IoU (boxes are not used by the rule).
        n = len(predicted)
        det = torch.zeros(n, 6)
        det[:, 4], det[:, 5] = torch.tensor(scores), torch.tensor(pclasses, dtype=torch.float32)
        labels = torch.zeros(len(truth), 5)
        labels[:, 0] = torch.tensor(classes, dtype=torch.float32)
        overlaps = None
        if truth and predicted:
            overlaps = mask_iou(torch.from_numpy(np.stack(truth)), torch.from_numpy(np.stack(predicted)))
        correct = match_predictions(det, labels, rule="coco", iou=overlaps)
        stats.append((correct, det[:, 4], det[:, 5], labels[:, 0]))
    tp, conf, pcls, tcls = (torch.cat(x).numpy() for x in zip(*stats))
    ours = ap_per_class(tp, conf, pcls, tcls, integration=AP_INTEGRATION["coco"])
    categories = [{"id": c + 1, "name": str(c)} for c in range(nc)]
    gt = {"images": images, "annotations": annotations, "categories": categories}
    coco = run_cocoeval(gt, detections, iou_type="segm")
    print(f"mask mAP ours {ours.map:.5f} {ours.map50:.5f}, pycocotools {coco['mAP50-95']:.5f} {coco['mAP50']:.5f}")
    assert abs(ours.map - coco["mAP50-95"]) < 0.005 and abs(ours.map50 - coco["mAP50"]) < 0.005, (ours.map, coco)
    assert 0.2 < ours.map < 0.95  # a meaningful, non-trivial score
