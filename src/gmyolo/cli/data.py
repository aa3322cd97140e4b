"""``gmyolo data``: make, convert and check datasets.

- ``gmyolo data synth``: write the built-in synthetic dataset (the default data of the quick start);
- ``gmyolo data convert-coco``: COCO JSON annotations -> YOLO labels and a dataset YAML;
- ``gmyolo data check --data D``: check every image and label, print the summary and the problems,
  and save pictures of augmented training batches and of the label distribution.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

__all__ = ["add_parser", "add_synth_parser", "add_convert_coco_parser", "run_synth", "run_convert_coco", "run_check"]


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("data", help="make (synth), convert (convert-coco) and check datasets")
    sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    add_synth_parser(sub)
    add_convert_coco_parser(sub)
    c = sub.add_parser("check", help="check images and labels, save batch and label pictures")
    c.add_argument("--data", required=True, help="dataset YAML")
    c.add_argument("--imgsz", type=int, default=640, help="training image size for the batch pictures")
    c.add_argument("--out", default="runs/data-check", help="folder for the pictures (default runs/data-check)")
    c.add_argument("--batches", type=int, default=2, help="augmented training batches to draw (default 2)")
    c.add_argument("--segments", action="store_true", help="segmentation labels: check the outlines, draw the masks")
    c.set_defaults(run=run_check)


def add_synth_parser(subparsers: argparse._SubParsersAction) -> None:
    """``synth``: write the synthetic shapes dataset."""
    p = subparsers.add_parser(
        "synth",
        help="write the built-in synthetic shapes dataset",
        description="Write the synthetic shapes dataset (circle, square, triangle, cross) in YOLO format.",
    )
    p.add_argument("--out", default="datasets/synth", help="output folder (default datasets/synth)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files (default 0)")
    p.add_argument("--n-train", type=int, default=256, help="training images (default 256)")
    p.add_argument("--n-val", type=int, default=64, help="validation images (default 64)")
    p.add_argument("--imgsz", type=int, default=256, help="image size in pixels (default 256)")
    p.add_argument("--max-objects", type=int, default=4, help="most objects per image (default 4)")
    p.add_argument(
        "--segments",
        action="store_true",
        help="polygon labels (each shape's exact outline; shapes never overlap), for instance segmentation",
    )
    p.set_defaults(run=run_synth)


def run_synth(args: argparse.Namespace) -> Path:
    """Write the dataset from parsed ``synth`` options, print a one-line summary, return the YAML path."""
    from ..data.synth import SYNTH_CLASSES, make_synthetic_dataset

    t0 = time.perf_counter()
    path = make_synthetic_dataset(
        args.out,
        seed=args.seed,
        n_train=args.n_train,
        n_val=args.n_val,
        imgsz=args.imgsz,
        max_objects=args.max_objects,
        segments=args.segments,
    )
    print(
        f"synth: {args.n_train} train + {args.n_val} val images, {len(SYNTH_CLASSES)} classes, "
        f"{'polygon' if args.segments else 'box'} labels, "
        f"in {time.perf_counter() - t0:.1f}s -> {path}"
    )
    return path


def add_convert_coco_parser(subparsers: argparse._SubParsersAction) -> None:
    """``convert-coco``: COCO JSON annotations -> YOLO labels and a dataset YAML."""
    p = subparsers.add_parser("convert-coco", help="COCO JSON annotations -> YOLO labels and a dataset YAML")
    p.add_argument("--json", required=True, metavar="FILE", help="COCO instances JSON, e.g. instances_val2017.json")
    p.add_argument("--images", required=True, metavar="DIR", help="folder the JSON's file_name entries are in")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for labels/, images/ and data.yaml")
    p.add_argument("--split", metavar="NAME", help="split name (default: JSON name without 'instances_')")
    p.add_argument(
        "--include-crowd", action="store_true", help="keep iscrowd=1 annotations (with --segments: their RLE regions)"
    )
    p.add_argument("--segments", action="store_true", help="write each object's outline (instance segmentation)")
    p.add_argument("--copy-list", action="store_true", help="write <split>.txt of image paths instead of a symlink")
    p.set_defaults(run=run_convert_coco)


def run_convert_coco(args: argparse.Namespace) -> Path:
    """Run ``convert-coco`` from parsed arguments; prints one summary line and returns the data.yaml path."""
    from ..data.coco import convert_coco_annotations

    r = convert_coco_annotations(
        args.json, args.images, args.out, args.split, args.include_crowd, not args.copy_list, args.segments
    )
    skipped = sum(r.skipped.values())
    print(
        f"converted {r.images} images, {r.boxes} boxes, {r.classes} classes"
        + (f" ({skipped} annotations skipped)" if skipped else "")
        + f" -> {r.yaml_file}"
    )
    return r.yaml_file


def run_check(args: argparse.Namespace) -> None:
    import numpy as np

    from ..data.config import load_dataset_config
    from ..data.dataset import build_dataloader, collate_fn, collate_segments, create_dataset
    from ..data.plots import plot_batch, plot_labels
    from ..tasks.segment.plots import target_masks

    data = load_dataset_config(args.data)
    out = Path(args.out)
    for split in data.splits:
        dataset, summary = create_dataset(
            data, split, imgsz=args.imgsz, augment=split == "train", segments=args.segments
        )
        print(summary.line(split))
        labels = np.concatenate([r.labels for r in dataset.records])
        print(f"  saved {plot_labels(labels, data.names, out / f'labels_{split}.jpg')}")
        if split == "train":
            collate = collate_segments if args.segments else collate_fn
            loader = build_dataloader(dataset, batch_size=16, workers=0, shuffle=True, collate=collate)
            for i, (images, targets, paths, _, *overlap) in zip(range(args.batches), loader):
                masks = target_masks(targets, overlap[0]) if overlap else None
                path = plot_batch(images, targets, data.names, out / f"train_batch{i}.jpg", paths, masks=masks)
                print(f"  saved {path}")
