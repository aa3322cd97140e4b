"""Classification prediction: the top-k classes of images, printed and optionally saved
(``gmyolo classify predict``)."""

from __future__ import annotations

import csv
import glob
import json
import logging
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ...data.classify import ImageList, build_classify_loader, classify_eval_transform
from ...data.config import IMG_FORMATS
from ...engine.device import select_device
from ...utils.files import atomic_open, atomic_write
from .model import load_classifier
from .options import ClassifyPredictArgs
from .val import report_unreadable

__all__ = ["ClassifyPredictArgs", "classify_predict", "list_sources", "save_predictions"]

LOGGER = logging.getLogger("gmyolo")


def list_sources(source: str) -> list[Path]:
    """An image file, a folder (recursive) or a glob pattern -> sorted image paths."""
    path = Path(source)
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.suffix.lower() in IMG_FORMATS and p.is_file()]
    elif path.is_file():
        files = [path]
    else:
        files = [Path(p) for p in glob.glob(source, recursive=True)]
        files = [p for p in files if p.suffix.lower() in IMG_FORMATS and p.is_file()]
    if not files:
        raise OSError(f"--source {source}: no images found ({' '.join(IMG_FORMATS)})")
    return sorted(files)


@torch.no_grad()
def classify_predict(args: ClassifyPredictArgs) -> list[dict[str, Any]]:
    """Print the top-k classes of each image; returns ``[{path, top: [{class, index, prob}, ...]}, ...]``."""
    if args.topk < 1 or args.batch < 1:
        raise ValueError(f"--topk and --batch must be positive, got {args.topk} and {args.batch}")
    if args.save and Path(args.save).suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"--save {args.save}: the file must end in .csv or .json")
    device = select_device(args.device)
    model, info = load_classifier(args.weights)
    model.to(device).eval()
    names = info["names"] or [str(i) for i in range(model.num_classes)]
    imgsz = args.imgsz or info["imgsz"]
    transform = classify_eval_transform(imgsz, info["crop_pct"], info["interpolation"], info["mean"], info["std"])
    loader = build_classify_loader(
        ImageList(list_sources(args.source), transform), args.batch, args.workers, pin_memory=device.type == "cuda"
    )
    k = min(args.topk, len(names))
    results, seen = [], set()
    for images, _, paths, unreadable in tqdm(loader, desc="predict", disable=not args.progress, leave=False):
        report_unreadable(unreadable, seen)
        if not paths:
            continue
        probs = model(images.to(device)).float().softmax(1).cpu()
        values, indices = probs.topk(k, dim=1)
        for path, vs, ids in zip(paths, values.tolist(), indices.tolist()):
            top = [{"class": names[c], "index": c, "prob": round(v, 6)} for v, c in zip(vs, ids)]
            results.append({"path": path, "top": top})
            print(f"{path}: " + ", ".join(f"{t['class']} {t['prob']:.3f}" for t in top))
    if args.save:
        save_predictions(results, Path(args.save))
        LOGGER.info("predictions of %d images saved to %s", len(results), args.save)
    return results


def save_predictions(results: list[dict[str, Any]], path: Path) -> None:
    """JSON as returned by :func:`classify_predict`; CSV with one row per image (path, top1, prob1, ...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        atomic_write(path, json.dumps(results, indent=1))
        return
    k = max((len(r["top"]) for r in results), default=0)
    with atomic_open(path, "w", fsync=False) as f:
        w = csv.writer(f)
        w.writerow(["path", *(c for j in range(1, k + 1) for c in (f"top{j}", f"prob{j}"))])
        for r in results:
            w.writerow([r["path"], *(v for t in r["top"] for v in (t["class"], f"{t['prob']:.6f}"))])
