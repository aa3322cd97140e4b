"""Plots every task's run folder has: training curves from results.csv and a confusion matrix."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["plot_results", "draw_confusion", "pyplot"]


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (imported when a plot is first drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_results(csv_file: str | Path) -> Path:
    """results.csv -> results.png: one panel per column (losses, metrics, learning rates) against epoch."""
    plt = pyplot()
    csv_file = Path(csv_file)
    with open(csv_file, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = [c for c in rows[0] if c != "epoch"] if rows else []
    n = max(1, len(columns))
    cols = min(5, n)
    fig, axes = plt.subplots(
        (n + cols - 1) // cols,
        cols,
        figsize=(3.2 * cols, 2.6 * ((n + cols - 1) // cols)),
        tight_layout=True,
        squeeze=False,
    )
    epochs = [int(r["epoch"]) for r in rows]
    for ax, c in zip(axes.flat, columns):
        ax.plot(epochs, [float(r[c]) for r in rows], marker=".", linewidth=1.5)
        ax.set_title(c, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
    for ax in list(axes.flat)[len(columns) :]:
        ax.axis("off")
    out = csv_file.with_suffix(".png")
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def draw_confusion(counts: np.ndarray, labels: Sequence[str], title: str, out: Path) -> Path:
    """Save an n×n count matrix (rows predicted, columns true) normalised per column; values under 0.005 blank."""
    plt = pyplot()
    m = counts.astype(float)
    m = m / np.maximum(m.sum(0, keepdims=True), 1e-9)
    m[m < 0.005] = np.nan
    n = len(labels)
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * n + 3), max(5, 0.45 * n + 2)), tight_layout=True)
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046)
    if n <= 30:
        ax.set_xticks(range(n), labels, rotation=90)
        ax.set_yticks(range(n), labels)
        for i in range(n):
            for j in range(n):
                if not np.isnan(m[i, j]):
                    colour = "white" if m[i, j] > 0.5 else "black"
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7, color=colour)
    ax.set(xlabel="True", ylabel="Predicted", title=title)
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return out
