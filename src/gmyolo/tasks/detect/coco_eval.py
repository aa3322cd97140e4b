"""COCO-format output and the reference COCO evaluation (pycocotools).

Our own mAP (gmyolo.engine.metrics) is checked against pycocotools on the same detections; this module
writes detections as COCO JSON, builds COCO ground truth from YOLO labels when the dataset has none,
and runs pycocotools' COCOeval.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...data.labels import ImageRecord

__all__ = ["coco_ground_truth", "coco_detections", "mask_rle", "run_cocoeval"]


def coco_ground_truth(records: Sequence[ImageRecord], names: Sequence[str]) -> dict[str, Any]:
    """COCO ground truth from checked YOLO labels: image ids 1..n in order, category id = class id + 1; an object
    with an outline (a segmentation label) gets it as its polygon ``segmentation``, in pixels."""
    images, annotations = [], []
    for image_id, r in enumerate(records, start=1):
        images.append({"id": image_id, "file_name": r.image.name, "height": r.height, "width": r.width})
        outlines = r.segments or [()] * len(r.labels)
        for (cls, cx, cy, w, h), outline in zip(r.labels.tolist(), outlines):
            bw, bh = w * r.width, h * r.height
            annotation = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(cls) + 1,
                "iscrowd": 0,
                "bbox": [cx * r.width - bw / 2, cy * r.height - bh / 2, bw, bh],
                "area": bw * bh,
            }
            if len(outline):
                annotation["segmentation"] = [(outline * (r.width, r.height)).ravel().round(3).tolist()]
            annotations.append(annotation)
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def mask_rle(masks: torch.Tensor) -> list[dict[str, Any]]:
    """n×H×W bool masks -> their COCO run-length encodings (``{"size": [H, W], "counts": str}``, JSON-ready)."""
    from pycocotools import mask as mask_utils

    if not len(masks):
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.permute(1, 2, 0).numpy().astype(np.uint8)))
    return [{"size": r["size"], "counts": r["counts"].decode("ascii")} for r in rles]


def coco_detections(
    predictions: Sequence[dict[str, Any]], file_to_id: dict[str, int], class_to_category: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """Detections (per image: path and n×6 [x1, y1, x2, y2, score, class] in original pixels, and for segmentation
    each detection's mask as RLE, ``masks``) as COCO results."""
    out = []
    for p in predictions:
        image_id = file_to_id[Path(p["path"]).name]
        boxes: torch.Tensor = p["boxes"]
        masks = p.get("masks") or [None] * len(boxes)
        for (x1, y1, x2, y2, score, cls), mask in zip(boxes.tolist(), masks):
            category = class_to_category[int(cls)] if class_to_category else int(cls) + 1
            detection = {
                "image_id": image_id,
                "category_id": category,
                "bbox": [round(v, 3) for v in (x1, y1, x2 - x1, y2 - y1)],
                "score": round(score, 5),
            }
            if mask is not None:
                detection["segmentation"] = mask
            out.append(detection)
    return out


def run_cocoeval(
    ground_truth: dict[str, Any] | str | Path, detections: list[dict[str, Any]], iou_type: str = "bbox"
) -> dict[str, float]:
    """pycocotools evaluation of boxes (``bbox``) or masks (``segm``: RLE or polygon ``segmentation``); returns
    mAP50-95 and mAP50 (and COCO's summary table)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = (
            json.loads(Path(ground_truth).read_text()) if isinstance(ground_truth, (str, Path)) else ground_truth
        )
        gt.createIndex()
        dt = gt.loadRes(detections) if detections else COCO()
    if not detections:
        return {"mAP50-95": 0.0, "mAP50": 0.0}
    evaluator = COCOeval(gt, dt, iou_type)
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {"mAP50-95": float(evaluator.stats[0]), "mAP50": float(evaluator.stats[1]), "summary": summary.getvalue()}
