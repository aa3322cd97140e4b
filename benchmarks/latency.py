"""Inference latency (batch 1) of several GroupMixFormer variants or detectors side by side, one process.

Usage:
  python benchmarks/latency.py --models groupmixformer-m groupmixformer-t --imgsz 224 --threads 1
  python benchmarks/latency.py --models yolov5n yolov5n-gmf-m yolov5s-gmf-t --imgsz 640 --threads 1 --fuse

A loop over `gmyolo bench` (inference only) for people comparing models; `gmyolo bench --model M` gives every
mode, the training step, predict and the data pipeline of one model.
"""

from __future__ import annotations

import argparse

from gmyolo.tools.bench import MODES, BenchArgs, run_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["groupmixformer-m", "groupmixformer-t"])
    parser.add_argument("--imgsz", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["eager", "fused"])
    parser.add_argument("--fuse", action="store_true", help="the fused model only (same as --modes fused)")
    args = parser.parse_args()
    if args.fuse:
        args.modes = ["fused"]
    for name in args.models:
        bench = BenchArgs(
            model=name,
            imgsz=args.imgsz,
            batch=1,
            threads=args.threads,
            repeats=args.repeats,
            modes=args.modes,
            train=False,
            predict=False,
            data=False,
        )
        report = run_bench(bench)
        h, w = report["inference"]["imgsz"]
        threads = report["environment"]["threads"]
        for row in report["inference"]["rows"]:
            print(
                f"{name} {row['mode']}: {report['params']:,} params, input 1x3x{h}x{w}, {threads} thread(s): "
                f"median {row['median_ms']:.1f} ms (min {row['min_ms']:.1f}, max {row['max_ms']:.1f})"
            )


if __name__ == "__main__":
    main()
