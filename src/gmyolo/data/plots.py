"""Pictures of the data a user looks at: training batches with their boxes, and label statistics."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .opencv import cv2

__all__ = ["class_colour", "draw_masks", "plot_batch", "plot_labels"]


def class_colour(c: int) -> tuple[int, int, int]:
    """A stable, distinct BGR colour per class (golden-ratio hues)."""
    hue = int((c * 0.618033988749895 % 1.0) * 179)
    hsv = np.uint8([[[hue, 220, 235]]])
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def draw_masks(image: np.ndarray, masks: np.ndarray, classes: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """A copy of the BGR ``image`` with n×H×W bool ``masks`` blended in their class colours (later ones on top)."""
    out = image.copy()
    for m, c in zip(masks, classes):
        colour = np.array(class_colour(int(c)), np.float32)
        out[m] = (out[m] * (1 - alpha) + colour * alpha).astype(np.uint8)
    return out


def plot_batch(
    images: torch.Tensor,
    targets: torch.Tensor,
    names: Sequence[str],
    path: str | Path,
    paths: Sequence[str] | None = None,
    max_images: int = 16,
    max_size: int = 1920,
    masks: torch.Tensor | None = None,
) -> Path:
    """Save a grid of batch images (B×3×H×W uint8 RGB) with their targets (M×6: i, cls, cx, cy, w, h normalised).

    Rows with a 7th column are predictions and are drawn with their score. ``masks``: the targets' M×h×w bool
    masks over the whole image at any resolution (segmentation), blended in under the boxes.
    """
    images = images[:max_images].cpu()
    targets = targets.cpu().numpy()
    if masks is not None:
        masks = masks.cpu().numpy().astype(np.uint8)
    b, _, h, w = images.shape
    cols = math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    scale = min(1.0, max_size / max(cols * w, rows * h))
    th, tw = int(h * scale), int(w * scale)
    grid = np.full((rows * th, cols * tw, 3), 255, np.uint8)
    font_scale = max(0.3, min(th, tw) / 600)
    for i in range(b):
        im = np.ascontiguousarray(images[i].permute(1, 2, 0).numpy()[:, :, ::-1])  # RGB -> BGR
        im = cv2.resize(im, (tw, th), interpolation=cv2.INTER_AREA) if scale != 1 else im.copy()
        mine = targets[:, 0] == i
        if masks is not None and mine.any():
            tile = [cv2.resize(m, (tw, th), interpolation=cv2.INTER_LINEAR) > 0 for m in masks[mine]]
            im = draw_masks(im, tile, targets[mine, 1])
        for row in targets[mine]:
            c = int(row[1])
            cx, cy, bw, bh = row[2] * tw, row[3] * th, row[4] * tw, row[5] * th
            p1, p2 = (int(cx - bw / 2), int(cy - bh / 2)), (int(cx + bw / 2), int(cy + bh / 2))
            colour = class_colour(c)
            cv2.rectangle(im, p1, p2, colour, max(1, round(font_scale * 2)), cv2.LINE_AA)
            label = names[c] if 0 <= c < len(names) else str(c)
            if len(row) > 6:
                label += f" {row[6]:.2f}"
            cv2.putText(
                im, label, (p1[0], max(p1[1] - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, font_scale, colour, 1, cv2.LINE_AA
            )
        if paths is not None:
            cv2.putText(
                im,
                Path(paths[i]).name[:40],
                (4, th - 6),
                cv2.FONT_HERSHEY_SIMPLEX,
                font_scale,
                (255, 255, 255),
                1,
                cv2.LINE_AA,
            )
        r, c = divmod(i, cols)
        grid[r * th : (r + 1) * th, c * tw : (c + 1) * tw] = im
        cv2.rectangle(grid, (c * tw, r * th), ((c + 1) * tw - 1, (r + 1) * th - 1), (255, 255, 255), 2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), grid)
    return path


def plot_labels(labels: np.ndarray, names: Sequence[str], path: str | Path) -> Path:
    """Save the label distribution: instances per class, box centres, and box widths/heights.

    ``labels``: (n, 5) rows [cls, cx, cy, w, h] normalised, over the whole split.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.5), tight_layout=True)
    nc = len(names)
    counts = np.bincount(labels[:, 0].astype(int), minlength=nc) if len(labels) else np.zeros(nc, int)
    ax[0].bar(range(nc), counts, color=[np.array(class_colour(i)[::-1]) / 255 for i in range(nc)])
    ax[0].set_xticks(range(nc), names, rotation=90 if nc > 10 else 0)
    ax[0].set_ylabel("instances")
    ax[0].set_title(f"{len(labels)} boxes in {nc} classes")
    if len(labels):
        ax[1].hist2d(labels[:, 1], labels[:, 2], bins=50, range=[[0, 1], [0, 1]], cmap="Blues")
        ax[2].hist2d(labels[:, 3], labels[:, 4], bins=50, range=[[0, 1], [0, 1]], cmap="Blues")
    ax[1].set(xlabel="x centre", ylabel="y centre", title="box positions", xlim=(0, 1), ylim=(1, 0))
    ax[2].set(xlabel="width", ylabel="height", title="box sizes (fraction of image)", xlim=(0, 1), ylim=(0, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
