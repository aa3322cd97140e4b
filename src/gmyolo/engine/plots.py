"""Plots of a run: training curves from results.csv, PR/F1 curves and the confusion matrix."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .metrics import ConfusionMatrix, DetectionMetrics

__all__ = ["plot_results", "plot_metric_curves", "plot_confusion_matrix"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_results(csv_file: str | Path) -> Path:
    """results.csv -> results.png: one panel per column (losses, metrics, learning rates) against epoch."""
    plt = _pyplot()
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


def plot_metric_curves(metrics: DetectionMetrics, names: Sequence[str], save_dir: str | Path) -> list[Path]:
    """PR curve (IoU 0.5), and F1, precision and recall against confidence; per class and mean."""
    plt = _pyplot()
    save_dir = Path(save_dir)
    curves, outputs = metrics.curves, []
    if not len(metrics.classes):
        return outputs
    label = [names[c] if c < len(names) else str(c) for c in metrics.classes]
    show_classes = len(label) <= 20
    fig, ax = plt.subplots(figsize=(7, 5.5), tight_layout=True)
    recall_axis = np.linspace(0, 1, 101)
    for i, pr in enumerate(curves["pr"]):
        if show_classes:
            ax.plot(recall_axis, pr, linewidth=1, label=f"{label[i]} {metrics.ap50[i]:.3f}")
    ax.plot(
        recall_axis, curves["pr"].mean(0), linewidth=3, color="blue", label=f"all classes {metrics.map50:.3f} mAP@0.5"
    )
    ax.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1.01), title="Precision-Recall curve")
    ax.legend(loc="lower left", fontsize=8)
    outputs.append(save_dir / "PR_curve.png")
    fig.savefig(outputs[-1], dpi=150)
    plt.close(fig)
    for key, ylabel in (("f1", "F1"), ("precision", "Precision"), ("recall", "Recall")):
        fig, ax = plt.subplots(figsize=(7, 5.5), tight_layout=True)
        if show_classes:
            for i, y in enumerate(curves[key]):
                ax.plot(curves["px"], y, linewidth=1, label=label[i])
        mean = curves[key].mean(0)
        best = int(mean.argmax())
        ax.plot(
            curves["px"],
            mean,
            linewidth=3,
            color="blue",
            label=f"all classes {mean[best]:.2f} at {curves['px'][best]:.3f}",
        )
        ax.set(xlabel="Confidence", ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.01), title=f"{ylabel}-Confidence curve")
        ax.legend(loc="lower left", fontsize=8)
        outputs.append(save_dir / f"{ylabel}_curve.png")
        fig.savefig(outputs[-1], dpi=150)
        plt.close(fig)
    return outputs


def plot_confusion_matrix(cm: ConfusionMatrix, names: Sequence[str], save_dir: str | Path) -> Path:
    """Column-normalised confusion matrix (each true class sums to 1), background as the last row/column."""
    title = "Confusion matrix (normalised per true class)"
    return draw_confusion(cm.matrix, [*names, "background"], title, Path(save_dir) / "confusion_matrix.png")


def draw_confusion(counts: np.ndarray, labels: Sequence[str], title: str, out: Path) -> Path:
    """Save an n×n count matrix (rows predicted, columns true) normalised per column; values under 0.005 blank."""
    plt = _pyplot()
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
