"""``gmyolo val`` / ``YOLO(weights).val()``: evaluate a checkpoint (or an exported ONNX/TorchScript file)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ...data.augment import stride_multiple
from ...data.config import load_dataset_config
from ...data.dataset import build_dataloader, create_dataset
from ...engine.device import select_device
from ...engine.precision import compile_backend
from ...engine.runs import increment_path
from .backends import load_backend
from .coco_eval import coco_detections, coco_ground_truth, run_cocoeval
from .options import ValArgs
from .validator import format_table, save_validation_plots

__all__ = ["ValArgs", "run_val", "MATCHING_RULES"]

MATCHING_RULES = ("auto", "coco", "best_iou")

LOGGER = logging.getLogger("gmyolo")


def run_val(args: ValArgs) -> dict[str, Any]:
    if args.batch < 1:
        raise ValueError(f"--batch must be positive, got {args.batch}")
    if not 0 <= args.conf <= 1 or not 0 <= args.iou <= 1:
        raise ValueError("--conf and --iou must be between 0 and 1")
    if args.matching not in MATCHING_RULES:
        raise ValueError(f"--matching must be one of {', '.join(MATCHING_RULES)}, got {args.matching!r}")
    device = select_device(args.device)
    backend = load_backend(args.weights, device)  # a checkpoint, or an exported .onnx / .torchscript file
    backend = compile_backend(backend, args.compile)
    if not (args.data or backend.data):
        raise ValueError(f"{args.weights} does not say which dataset it was trained on: pass --data")
    data = load_dataset_config(args.data or backend.data, require=(args.split,))
    names = [backend.names[i] for i in range(len(backend.names))]
    if names and data.names != names:
        LOGGER.warning("the dataset's names %s differ from the model's %s", data.names[:5], names[:5])
    stride = backend.stride
    if backend.dynamic_size:
        imgsz = stride_multiple(args.imgsz or (backend.imgsz[0] if backend.imgsz else 640), stride)
    else:  # a fixed-size export: square letterboxed batches at exactly its size
        if args.imgsz and (args.imgsz, args.imgsz) != backend.imgsz:
            raise ValueError(f"{args.weights} was exported for {backend.imgsz[0]} px inputs; drop --imgsz or re-export")
        imgsz = backend.imgsz[0]
    from .. import validator_for  # the head's task: detection, or segmentation (masks in the batches)

    validator_type, segments, collate = validator_for(backend.output_format)
    dataset, _ = create_dataset(
        data,
        args.split,
        imgsz,
        rect=backend.dynamic_size,
        batch_size=args.batch,
        stride=stride,
        segments=segments,
    )
    loader = build_dataloader(
        dataset,
        args.batch if backend.dynamic_batch else 1,
        args.workers,
        shuffle=False,
        collate=collate,
    )
    validator = validator_type(
        data.names,
        device,
        conf=args.conf,
        iou=args.iou,
        max_det=args.max_det,
        keep_predictions=args.save_json,
        progress=args.progress,
        matching=None if args.matching == "auto" else args.matching,
    )
    results = validator(backend, loader)
    save_dir = increment_path(Path(args.project) / args.name, args.exist_ok)
    save_dir.mkdir(parents=True, exist_ok=True)
    print(format_table(results))
    s = results.speed_ms
    print(
        f"speed per image: {s['preprocess']:.1f} ms preprocess, {s['inference']:.1f} ms inference, "
        f"{s['nms']:.1f} ms NMS at {imgsz}px"
    )
    rule = results.matching
    about = "YOLOv5 7.0 val.py's matching and AP" if rule == "best_iou" else "pycocotools' matching and AP"
    print(f"matching: {rule} ({about})")
    out: dict[str, Any] = {**results.as_dict(), "fitness": results.fitness, "save_dir": str(save_dir), "matching": rule}
    if args.plots:
        save_validation_plots(results, save_dir)
    if args.save_json:
        if args.coco_gt:
            gt = json.loads(Path(args.coco_gt).read_text())
            file_to_id = {Path(im["file_name"]).name: im["id"] for im in gt["images"]}
            category_ids = sorted(c["id"] for c in gt["categories"])
        else:
            gt = coco_ground_truth(dataset.records, data.names)
            file_to_id = {im["file_name"]: im["id"] for im in gt["images"]}
            category_ids = None
            (save_dir / "ground_truth.json").write_text(json.dumps(gt))
        missing = [p["path"] for p in results.predictions if Path(p["path"]).name not in file_to_id]
        if missing:
            raise ValueError(f"{len(missing)} images are not in the COCO ground truth (e.g. {missing[0]})")
        detections = coco_detections(results.predictions, file_to_id, category_ids)
        (save_dir / "predictions.json").write_text(json.dumps(detections))
        out["coco"] = {}
        for iou_type in validator.iou_types:  # boxes; and masks for segmentation
            if iou_type == "segm" and not all("segmentation" in a for a in gt["annotations"]):
                source = args.coco_gt or "the labels"
                LOGGER.warning("%s has objects without a 'segmentation': masks not scored by pycocotools", source)
                continue
            coco = run_cocoeval(gt, detections, iou_type)
            prefix = "mask_" if iou_type == "segm" else ""
            print(coco.get("summary", ""))
            who = "pycocotools" if iou_type == "bbox" else f"pycocotools ({iou_type})"
            print(f"{who}: {prefix}mAP50-95 {coco['mAP50-95']:.4f}  {prefix}mAP50 {coco['mAP50']:.4f}")
            out["coco"].update({prefix + k: v for k, v in coco.items() if k != "summary"})
    LOGGER.info("results saved to %s", save_dir)
    return out
