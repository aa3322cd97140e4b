"""``gmyolo data``: make, convert and check datasets.

- ``gmyolo data synth``: write the built-in synthetic dataset (the default data of the quick start);
- ``gmyolo data convert-coco``: COCO JSON annotations -> YOLO labels and a dataset YAML;
- ``gmyolo data check --data D``: check every image and label, print the summary and the problems,
  and save pictures of augmented training batches and of the label distribution.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..data.coco import add_convert_coco_parser
from ..data.config import load_dataset_config
from ..data.dataset import build_dataloader, create_dataset
from ..data.plots import plot_batch, plot_labels
from ..data.synth import add_synth_parser


def add_data_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("data", help="make (synth), convert (convert-coco) and check datasets")
    sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    add_synth_parser(sub)
    add_convert_coco_parser(sub)
    c = sub.add_parser("check", help="check images and labels, save batch and label pictures")
    c.add_argument("--data", required=True, help="dataset YAML")
    c.add_argument("--imgsz", type=int, default=640, help="training image size for the batch pictures")
    c.add_argument("--out", default="runs/data-check", help="folder for the pictures (default runs/data-check)")
    c.add_argument("--batches", type=int, default=2, help="augmented training batches to draw (default 2)")
    c.set_defaults(run=run_check)


def run_check(args: argparse.Namespace) -> None:
    data = load_dataset_config(args.data)
    out = Path(args.out)
    for split in data.splits:
        dataset, summary = create_dataset(data, split, imgsz=args.imgsz, augment=split == "train")
        print(summary.line(split))
        labels = np.concatenate([r.labels for r in dataset.records])
        print(f"  saved {plot_labels(labels, data.names, out / f'labels_{split}.jpg')}")
        if split == "train":
            loader = build_dataloader(dataset, batch_size=16, workers=0, shuffle=True)
            for i, (images, targets, paths, _) in zip(range(args.batches), loader):
                print(f"  saved {plot_batch(images, targets, data.names, out / f'train_batch{i}.jpg', paths)}")
