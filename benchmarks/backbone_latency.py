"""Eager CPU latency of each GroupMixFormer variant (classification, batch 1).

Usage: python benchmarks/backbone_latency.py [--imgsz 224] [--threads 1] [--repeats 7] [--variants m t s b l]
Prints one line per variant: median and spread (min..max) of `repeats` timed runs after 2 warm-up runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gmyolo.models.groupmixformer import groupmixformer


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
    parser.add_argument("--imgsz", type=int, default=224)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--variants", nargs="+", default=["m", "t", "s", "b", "l"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(1, 3, args.imgsz, args.imgsz)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), input 1x3x{args.imgsz}x{args.imgsz}")
    for v in args.variants:
        times = time_forward(groupmixformer(v).eval(), x, args.repeats)
        ms = [t * 1e3 for t in times]
        print(f"groupmixformer-{v}: median {statistics.median(ms):.1f} ms  (min {min(ms):.1f}, max {max(ms):.1f})")


if __name__ == "__main__":
    main()
