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


class NoisyOracle(torch.nn.Module):
    """A segmentation 'model' for one loader: for each batch it answers with every label's box and outline, jittered,
    sometimes of the wrong class, with random scores, plus false detections; as an anchor-free Segment head's eval
    output ((B×N×(4 + nc + nm) xywh/scores/coefficients, B×nm×h×w prototypes), raw). Each detection has its own
    prototype, the outline drawn at the input's size and averaged down to the prototypes' (a soft edge, as a trained
    head's), and one-hot coefficients."""

    output_format = "xywh_cls_masks"

    def __init__(self, loader, nc, seed):
        super().__init__()
        self.batches, self.records = iter(loader), iter(loader.dataset.records)
        self.nc, self.rng = nc, np.random.default_rng(seed)

    def prototype(self, polygon, h, w):
        full = np.zeros((h, w), np.float32)
        cv2.fillPoly(full, [np.round((polygon - 0.5) * 16).astype(np.int32)], 1.0, cv2.LINE_8, 4)
        return 16.0 * (cv2.resize(full, (w // 4, h // 4), interpolation=cv2.INTER_AREA) - 0.5)

    def forward(self, images):
        shapes = next(self.batches)[3]
        b, _, h, w = images.shape
        rng, nc = self.rng, self.nc
        rows, prototypes = [], []
        for i in range(b):
            record = next(self.records)
            (sh, sw), (pw, ph) = shapes[i][1]
            scale = np.array([record.width * sw, record.height * sh])
            image_rows, image_masks = [], []
            for (cls, cx, cy, bw, bh), outline in zip(record.labels, record.segments):
                if rng.random() < 0.15:  # missed
                    continue
                (cx, cy), (bw, bh) = (cx, cy) * scale + (pw, ph), (bw, bh) * scale
                polygon = outline * scale + (pw, ph)
                polygon = polygon + rng.normal(0, 1.0, 2)  # the outline moved by about a pixel
                image_masks.append(self.prototype(polygon, h, w))
                jitter = rng.normal(0, 0.04, 4) * [bw, bh, bw, bh]
                c = int(cls) if rng.random() < 0.85 else int(rng.integers(nc))
                image_rows.append(([cx, cy, bw, bh] + jitter, c))
            for _ in range(int(rng.integers(0, 3))):  # false detections: random boxes, rectangular masks
                x1, y1 = rng.uniform(0, 0.7) * w, rng.uniform(0, 0.7) * h
                bw, bh = rng.uniform(0.1, 0.3) * w, rng.uniform(0.1, 0.3) * h
                corners = np.array([[x1, y1], [x1 + bw, y1], [x1 + bw, y1 + bh], [x1, y1 + bh]])
                image_masks.append(self.prototype(corners, h, w))
                image_rows.append((np.array([x1 + bw / 2, y1 + bh / 2, bw, bh]), int(rng.integers(nc))))
            rows.append(image_rows)
            prototypes.append(image_masks)
        nm = max(1, max(len(r) for r in rows))
        decoded = torch.zeros(b, nm, 4 + nc + nm)
        protos = torch.full((b, nm, h // 4, w // 4), -8.0)
        for i, (image_rows, image_masks) in enumerate(zip(rows, prototypes)):
            for j, ((box, c), m) in enumerate(zip(image_rows, image_masks)):
                decoded[i, j, :4] = torch.from_numpy(box)
                decoded[i, j, 4 + c] = rng.uniform(0.05, 1.0)
                decoded[i, j, 4 + nc + j] = 1.0
                protos[i, j] = torch.from_numpy(m)
        return (decoded, protos), None


@pytest.mark.parametrize("native", [True, False], ids=["input-is-original", "letterboxed"])
def test_val_predictions_scored_by_pycocotools_agree_with_our_mask_map(tmp_path, native):
    """End to end on a dataset's files: the validator's kept predictions (boxes and RLE masks on the original
    images) and the labels' COCO ground truth (polygons) scored by pycocotools agree with the validator's own box
    and mask mAP. Ours is at the input's size, pycocotools' on the original image: with the images at the input's
    size the two agree to rounding; letterboxed (scaled by 0.8-1.3 and padded), within 0.01 on mask mAP50-95."""
    from gmyolo.data.config import load_dataset_config
    from gmyolo.data.dataset import build_dataloader, collate_segments, create_dataset
    from gmyolo.data.synth import make_synthetic_dataset
    from gmyolo.tasks.detect.coco_eval import coco_detections, coco_ground_truth
    from gmyolo.tasks.segment.val import SegmentValidator

    data = load_dataset_config(make_synthetic_dataset(tmp_path, seed=3, n_train=1, n_val=48, imgsz=160, segments=True))
    if native:  # every image 160×160: normalised outlines stay exact under the stretch
        for path in (tmp_path / "images/val").iterdir():
            cv2.imwrite(str(path), cv2.resize(cv2.imread(str(path)), (160, 160), interpolation=cv2.INTER_AREA))
    dataset, _ = create_dataset(data, "val", imgsz=160, rect=True, batch_size=8, segments=True)
    loader = build_dataloader(dataset, 8, 0, shuffle=False, collate=collate_segments)
    truth = coco_ground_truth(dataset.records, data.names)
    file_to_id = {im["file_name"]: im["id"] for im in truth["images"]}
    for seed in (0, 1):
        validator = SegmentValidator(data.names, keep_predictions=True, progress=False, matching="coco")
        results = validator(NoisyOracle(loader, data.nc, seed), loader)
        detections = coco_detections(results.predictions, file_to_id)
        boxes, masks = run_cocoeval(truth, detections, "bbox"), run_cocoeval(truth, detections, "segm")
        ours, ours_masks = results.metrics, results.mask_metrics
        print(f"\nseed {seed}: box ours {ours.map50:.4f}/{ours.map:.4f} pycocotools {boxes['mAP50']:.4f}/"
              f"{boxes['mAP50-95']:.4f}; mask ours {ours_masks.map50:.4f}/{ours_masks.map:.4f} pycocotools "
              f"{masks['mAP50']:.4f}/{masks['mAP50-95']:.4f}")  # fmt: skip
        assert 0.2 < ours_masks.map < 0.9  # a case where agreement means something
        assert ours.map50 == pytest.approx(boxes["mAP50"], abs=0.002)
        assert ours.map == pytest.approx(boxes["mAP50-95"], abs=0.002)
        assert ours_masks.map50 == pytest.approx(masks["mAP50"], abs=0.002 if native else 0.005)
        assert ours_masks.map == pytest.approx(masks["mAP50-95"], abs=0.002 if native else 0.01)
