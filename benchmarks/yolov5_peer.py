"""The peer for gmyolo's training speed: YOLOv5's own yolov5s (the ``yolov5`` pip package, 7.0.14) against
gmyolo's yolov5s, the same training step timed the same way in one process.

Usage: python benchmarks/yolov5_peer.py [--imgsz 640] [--batch 64] [--device 0] [--repeats 5] [--warmup 2]
                                         [--json] [--out FILE.json]

A step is what each project's ``train.py`` does per batch: forward under autocast, its loss, backward (through a
GradScaler), gradient clipping at 10, the optimizer step. YOLOv5 trains in fp16 with a GradScaler on a GPU, so
both run so there (and fp32 on a CPU); on a GPU gmyolo's own default (bf16 where the GPU has it) is timed too, and
the candidates for it: bf16 and fp16 with the model and images in channels-last memory. Random
images and boxes, the two models interleaved run by run; medians. YOLOv5's optimizer is its SGD with its three
parameter groups, gmyolo's the SGD it picks for a convolutional backbone.

The package imports two things this benchmark never uses that a bare machine may lack: ``pkg_resources`` (old
setuptools) and ``ultralytics.utils.checks.check_requirements``; both are stubbed when missing, nothing else.
Exit status 3 (and ``{"skipped": why}``) when the yolov5 package cannot be imported.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import types
from pathlib import Path

import torch
from torch import nn

PEER_VERSION = "7.0.14"


def import_yolov5():
    """The yolov5 package's Model, ComputeLoss and smart_optimizer (stubs for its unused install helpers)."""
    if importlib.util.find_spec("yolov5") is None:
        raise ImportError(f"the yolov5 package ({PEER_VERSION}) is not installed (benchmarks/gpu_check.sh installs "
                          "it from .whl when the wheel is there)")  # fmt: skip
    if importlib.util.find_spec("pkg_resources") is None:
        from packaging.version import parse

        stub = types.ModuleType("pkg_resources")
        stub.parse_version = parse
        sys.modules["pkg_resources"] = stub
    if importlib.util.find_spec("ultralytics") is None:
        for name in ("ultralytics", "ultralytics.utils"):
            sys.modules[name] = types.ModuleType(name)
        checks = types.ModuleType("ultralytics.utils.checks")
        checks.check_requirements = lambda *a, **k: None
        sys.modules["ultralytics.utils.checks"] = checks
    import yolov5
    from yolov5.models.yolo import Model
    from yolov5.utils.loss import ComputeLoss
    from yolov5.utils.torch_utils import smart_optimizer

    return yolov5, Model, ComputeLoss, smart_optimizer


def yolov5_step(device: torch.device, imgsz: int, precision, x: torch.Tensor, targets: torch.Tensor):
    """YOLOv5 7.0's training step for its yolov5s (80 classes, hyp.scratch-low, SGD nesterov, lr 0.01)."""
    import yaml

    yolov5, Model, ComputeLoss, smart_optimizer = import_yolov5()
    root = Path(yolov5.__file__).parent
    hyp = yaml.safe_load((root / "data/hyps/hyp.scratch-low.yaml").read_text())
    model = Model(str(root / "models/yolov5s.yaml"), ch=3, nc=80).to(device).train()
    nl = model.model[-1].nl  # YOLOv5's train.py scales the gains to layers, classes and image size
    hyp["box"] *= 3 / nl
    hyp["cls"] *= 80 / 80 * 3 / nl
    hyp["obj"] *= (imgsz / 640) ** 2 * 3 / nl
    model.nc, model.hyp = 80, hyp
    compute_loss = ComputeLoss(model)
    optimizer = smart_optimizer(model, "SGD", hyp["lr0"], hyp["momentum"], hyp["weight_decay"])
    scaler = precision.scaler()

    def step() -> None:
        with precision.autocast():
            pred = model(x)
            loss, _ = compute_loss(pred, targets)  # YOLOv5 computes its loss under autocast
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()

    return step, sum(p.numel() for p in model.parameters())


def gmyolo_step(
    device: torch.device, imgsz: int, batch: int, amp: str, x: torch.Tensor, targets: torch.Tensor, nhwc: bool = False
):
    from gmyolo.engine.precision import resolve_precision
    from gmyolo.models.yolo import DetectionModel
    from gmyolo.tools.bench import BenchArgs, Detector, train_step_fn

    args = BenchArgs(model="yolov5s", imgsz=imgsz, batch=batch, amp=amp, channels_last=nhwc)
    model = DetectionModel("yolov5s", nc=80)
    step, _, trained = train_step_fn(Detector(model), args, device, resolve_precision(amp, device))
    return (lambda: step(x, targets)), sum(p.numel() for p in trained.parameters())


def run(args: argparse.Namespace) -> dict:
    from gmyolo.engine.device import select_device
    from gmyolo.engine.precision import resolve_precision
    from gmyolo.tools.bench import summarize, synthetic_targets, time_interleaved

    device = select_device(args.device)
    peer_amp = "fp16" if device.type == "cuda" else "off"  # YOLOv5's own: fp16 + GradScaler on CUDA
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, args.imgsz, args.imgsz, generator=g).to(device)
    targets = synthetic_targets(args.batch, 80, g).to(device)
    try:
        peer, peer_params = yolov5_step(device, args.imgsz, resolve_precision(peer_amp, device), x, targets)
    except Exception as e:  # not installed, or an import it needs is missing: a result, not a crash
        return {"skipped": f"yolov5 {PEER_VERSION}: {type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    ours, params = gmyolo_step(device, args.imgsz, args.batch, peer_amp, x, targets)
    fns = {"yolov5": peer, "gmyolo": ours}
    if device.type == "cuda":  # gmyolo's default, and the candidates for it: bf16 or fp16, NCHW or channels-last
        fns["gmyolo_default_amp"] = gmyolo_step(device, args.imgsz, args.batch, "auto", x, targets)[0]
        for amp in ("bf16", "fp16"):
            fns[f"gmyolo_{amp}_channels_last"] = gmyolo_step(device, args.imgsz, args.batch, amp, x, targets, True)[0]
    times = time_interleaved(fns, args.repeats, args.warmup, device)
    rows = {name: summarize(t, args.batch) for name, t in times.items()}
    import yolov5

    return {
        "peer": f"yolov5 {yolov5.__version__} (pip) yolov5s",
        "device": str(device) + (f" {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
        "torch": torch.__version__,
        "imgsz": args.imgsz,
        "batch": args.batch,
        "precision": {
            "yolov5": peer_amp,
            "gmyolo": peer_amp,
            "gmyolo_default_amp": "auto",
            "gmyolo_bf16_channels_last": "bf16",
            "gmyolo_fp16_channels_last": "fp16",
        },
        "params": {"yolov5": peer_params, "gmyolo": params},
        "train_step": rows,
        "gmyolo_over_yolov5_images_per_s": rows["gmyolo"]["images_per_s"] / rows["yolov5"]["images_per_s"],
        "over_yolov5": {k: r["images_per_s"] / rows["yolov5"]["images_per_s"] for k, r in rows.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print JSON (default: a short table)")
    parser.add_argument("--out", default=None, help="also write the JSON to this file (YOLOv5 logs to stdout)")
    args = parser.parse_args()
    result = run(args)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
    elif "skipped" in result:
        print(f"skipped: {result['skipped']}")
    else:
        for name, r in result["train_step"].items():
            ratio = result["over_yolov5"][name]
            print(f"{name:<28} {r['median_ms']:9.1f} ms  {r['images_per_s']:9.1f} images/s  {ratio:6.3f}x yolov5")
        print(f"gmyolo / yolov5 images/s: {result['gmyolo_over_yolov5_images_per_s']:.3f}")
    return 3 if "skipped" in result else 0


if __name__ == "__main__":
    sys.exit(main())
