"""Eager CPU latency (batch 1) of GroupMixFormer variants or detectors, one process, medians.

Usage:
  python benchmarks/latency.py --models groupmixformer-m groupmixformer-t --imgsz 224 --threads 1
  python benchmarks/latency.py --models yolov5n yolov5n-gmf-m yolov5s-gmf-t --imgsz 640 --threads 1 --fuse

Prints, per model: parameters and the median and spread (min..max) of `repeats` timed runs after 2 warm-ups.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gmyolo.cli.info import is_backbone_name
from gmyolo.models.groupmixformer import groupmixformer
from gmyolo.models.yolo import DetectionModel


def time_forward(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> list[float]:
    with torch.inference_mode():
        for _ in range(2):
            model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["groupmixformer-m", "groupmixformer-t"])
    parser.add_argument("--imgsz", type=int, default=224)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--fuse", action="store_true", help="fold BatchNorm into convs first")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(1, 3, args.imgsz, args.imgsz)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), input 1x3x{args.imgsz}x{args.imgsz}, "
        f"fuse={args.fuse}"
    )
    for name in args.models:
        model = (groupmixformer(name) if is_backbone_name(name) else DetectionModel(name)).eval()
        if args.fuse:
            model.fuse()
        params = sum(p.numel() for p in model.parameters())
        ms = [t * 1e3 for t in time_forward(model, x, args.repeats)]
        print(
            f"{name}: {params:,} params  median {statistics.median(ms):.1f} ms  (min {min(ms):.1f}, max {max(ms):.1f})"
        )


if __name__ == "__main__":
    main()
