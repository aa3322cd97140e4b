"""Classification evaluation: top-1/top-k, per-class accuracy, the confusion matrix; ``gmyolo classify val``."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ...data.classify import ClassifyFolder, build_classify_loader, classify_eval_transform
from ...engine.device import select_device
from ...engine.plots import draw_confusion
from ...engine.runs import increment_path
from .model import load_classifier
from .options import ClassifyValArgs

__all__ = [
    "ClassifyValArgs",
    "ClassifyMetrics",
    "evaluate",
    "format_table",
    "plot_classify_confusion",
    "report_unreadable",
    "classify_val",
]

LOGGER = logging.getLogger("gmyolo")


@dataclass
class ClassifyMetrics:
    """Accuracy over a split. ``confusion[p, t]`` counts images of true class t predicted as p."""

    names: list[str]
    confusion: np.ndarray
    top1: float
    top5: float  # top-k accuracy with k = min(5, number of classes)
    loss: float  # mean cross-entropy (no smoothing)
    speed_ms: float = 0.0  # model time per image

    @property
    def images_per_class(self) -> np.ndarray:
        return self.confusion.sum(0)

    @property
    def per_class(self) -> np.ndarray:
        """Accuracy (recall) of each true class; NaN for a class without images."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.diag(self.confusion) / self.images_per_class

    def as_dict(self) -> dict[str, Any]:
        return {
            "top1": self.top1,
            "top5": self.top5,
            "loss": self.loss,
            "images": int(self.confusion.sum()),
            "per_class": {n: (None if np.isnan(a) else float(a)) for n, a in zip(self.names, self.per_class)},
        }


def report_unreadable(unreadable: list[str], seen: set[str]) -> None:
    """Warn once per file about images that could not be decoded (they are skipped)."""
    for item in unreadable:
        if item not in seen:
            seen.add(item)
            LOGGER.warning("skipped unreadable image %s", item)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    names: Sequence[str],
    device: torch.device,
    progress: bool = False,
    seen_unreadable: set[str] | None = None,
) -> ClassifyMetrics:
    """Top-1/top-k accuracy, loss and the confusion matrix of ``model`` (B×3×H×W -> B×nc logits)."""
    model.eval()
    nc = len(names)
    k = min(5, nc)
    confusion = torch.zeros(nc, nc, dtype=torch.long)
    hits1 = hitsk = n = 0
    loss_sum, model_time = 0.0, 0.0
    seen = seen_unreadable if seen_unreadable is not None else set()
    bar = tqdm(loader, desc="val", disable=not progress, leave=False, dynamic_ncols=True)
    for images, labels, _, unreadable in bar:
        report_unreadable(unreadable, seen)
        if not len(labels):
            continue
        t = time.perf_counter()
        logits = model(images.to(device, non_blocking=True)).float().cpu()
        model_time += time.perf_counter() - t
        if logits.shape[1] != nc:
            raise ValueError(f"the model predicts {logits.shape[1]} classes but the dataset has {nc}")
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        top = logits.topk(k, dim=1).indices
        hit = top == labels[:, None]
        hits1 += int(hit[:, 0].sum())
        hitsk += int(hit.any(1).sum())
        confusion.index_put_((top[:, 0], labels), torch.ones_like(labels), accumulate=True)
        n += len(labels)
    if n == 0:
        raise ValueError("no readable images to evaluate")
    return ClassifyMetrics(list(names), confusion.numpy(), hits1 / n, hitsk / n, loss_sum / n, 1000 * model_time / n)


def format_table(metrics: ClassifyMetrics, max_rows: int = 50) -> str:
    """The per-class accuracy table with the overall top-1/top-k line first."""
    k = min(5, len(metrics.names))
    width = max(12, *(len(n) + 2 for n in metrics.names[:max_rows]))
    lines = [
        f"{'class':>{width}} {'images':>8} {'top1':>7} {f'top{k}':>7}",
        f"{'all':>{width}} {int(metrics.confusion.sum()):>8} {metrics.top1:>7.3f} {metrics.top5:>7.3f}",
    ]
    counts, accs = metrics.images_per_class, metrics.per_class
    for name, count, acc in list(zip(metrics.names, counts, accs))[:max_rows]:
        lines.append(f"{name:>{width}} {int(count):>8} {'-' if np.isnan(acc) else f'{acc:.3f}':>7}")
    if len(metrics.names) > max_rows:
        lines.append(f"{'...':>{width}} ({len(metrics.names) - max_rows} more classes)")
    return "\n".join(lines)


def plot_classify_confusion(metrics: ClassifyMetrics, save_dir: str | os.PathLike) -> Path:
    """confusion_matrix.png: columns are true classes, normalised to sum to 1; counts in the title."""
    title = f"Confusion matrix ({int(metrics.confusion.sum())} images, top-1 {metrics.top1:.3f})"
    return draw_confusion(metrics.confusion, metrics.names, title, Path(save_dir) / "confusion_matrix.png")


def classify_val(args: ClassifyValArgs) -> dict[str, Any]:
    """Evaluate a classifier on a split: top-1/top-k, per-class accuracy, confusion matrix."""
    if args.batch < 1:
        raise ValueError(f"--batch must be positive, got {args.batch}")
    device = select_device(args.device)
    model, info = load_classifier(args.weights)
    data = args.data or info["data"]
    if not data:
        raise ValueError("--data is required for a checkpoint that does not record its dataset")
    split_dir = Path(data) / args.split
    imgsz = args.imgsz or info["imgsz"]
    transform = classify_eval_transform(imgsz, info["crop_pct"], info["interpolation"], info["mean"], info["std"])
    dataset = ClassifyFolder(split_dir, info["names"], transform)  # no names (authors' file): sorted folders
    names = dataset.names
    if len(names) != model.num_classes:
        raise ValueError(f"{split_dir} has {len(names)} class folders but {args.weights} predicts {model.num_classes}")
    loader = build_classify_loader(dataset, args.batch, args.workers, pin_memory=device.type == "cuda")
    metrics = evaluate(model.to(device), loader, names, device, args.progress)
    save_dir = increment_path(Path(args.project) / args.name, args.exist_ok)
    save_dir.mkdir(parents=True, exist_ok=True)
    print(format_table(metrics))
    print(f"speed: {metrics.speed_ms:.1f} ms per image at {imgsz}px on {device}")
    if args.plots:
        plot_classify_confusion(metrics, save_dir)
    LOGGER.info("results saved to %s", save_dir)
    return {**metrics.as_dict(), "save_dir": str(save_dir), "speed_ms": metrics.speed_ms}
