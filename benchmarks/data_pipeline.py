"""Images per second of the training data pipeline: per sample (one process) and through the DataLoader.

Usage: python benchmarks/data_pipeline.py [--data DATA.yaml] [--imgsz 640] [--batch 16] [--workers 0 1 2]
Without --data it generates the synthetic dataset (256 train images) in a temporary folder.
Measures (after a warm-up): decoding + augmentation per sample with and without mosaic in this process,
then whole-loader throughput (decode, augment, collate) for each worker count. Medians of --repeats runs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from gmyolo.data.config import load_dataset_config
from gmyolo.data.dataset import build_dataloader, create_dataset
from gmyolo.data.synth import make_synthetic_dataset


def samples_per_second(dataset, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        dataset[i % len(dataset)]
    return n / (time.perf_counter() - start)


def loader_per_second(dataset, batch: int, workers: int, n_batches: int) -> float:
    loader = build_dataloader(dataset, batch, workers, shuffle=True, seed=0)
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    start, seen = time.perf_counter(), 0
    for _ in range(n_batches):
        try:
            images, *_ = next(it)
        except StopIteration:
            it = iter(loader)
            images, *_ = next(it)
        seen += len(images)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data_yaml = args.data or make_synthetic_dataset(tempfile.mkdtemp(), seed=0, n_train=256, n_val=8)
    data = load_dataset_config(data_yaml)
    print(f"data {data_yaml}, imgsz {args.imgsz}, batch {args.batch}, medians of {args.repeats}")
    for mosaic in (1.0, 0.0):
        ds, _ = create_dataset(data, "train", args.imgsz, augment=True, hyp={"mosaic": mosaic})
        samples_per_second(ds, 8)
        rates = [samples_per_second(ds, args.samples) for _ in range(args.repeats)]
        print(
            f"  one process, mosaic={'on ' if mosaic else 'off'}: {statistics.median(rates):7.1f} images/s "
            f"(min {min(rates):.1f}, max {max(rates):.1f})"
        )
    ds, _ = create_dataset(data, "train", args.imgsz, augment=True)
    for w in args.workers:
        rates = [loader_per_second(ds, args.batch, w, max(2, args.samples // args.batch)) for _ in range(args.repeats)]
        print(
            f"  DataLoader, {w} worker(s), mosaic on: {statistics.median(rates):7.1f} images/s "
            f"(min {min(rates):.1f}, max {max(rates):.1f})"
        )


if __name__ == "__main__":
    main()
