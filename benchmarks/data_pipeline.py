"""Images per second of the training data pipeline: per sample (one process) and through the DataLoader.

Usage: python benchmarks/data_pipeline.py [--data DATA.yaml] [--imgsz 640] [--batch 16] [--workers 0 1 2]
Without --data it generates the synthetic dataset (256 train images) in a temporary folder.
Measures (after a warm-up): decoding + augmentation per sample with and without mosaic in this process,
then whole-loader throughput (decode, augment, collate) for each worker count. Medians of --repeats runs.
`gmyolo bench` runs the same measurement (mosaic on, one worker count) as one of its sections.
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from gmyolo.data.synth import make_synthetic_dataset
from gmyolo.tools.bench import data_pipeline_rates


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
    print(f"data {data_yaml}, imgsz {args.imgsz}, batch {args.batch}, medians of {args.repeats}")
    rates = data_pipeline_rates(
        data_yaml, args.imgsz, args.batch, args.workers, args.samples, args.repeats, mosaic=(1.0, 0.0)
    )
    for setting, r in rates["one_process"].items():
        print(f"  one process, {setting}: {r['median']:7.1f} images/s (min {r['min']:.1f}, max {r['max']:.1f})")
    for w, r in rates["loader"].items():
        spread = f"(min {r['min']:.1f}, max {r['max']:.1f})"
        print(f"  DataLoader, {w} worker(s), mosaic on: {r['median']:7.1f} images/s {spread}")


if __name__ == "__main__":
    main()
