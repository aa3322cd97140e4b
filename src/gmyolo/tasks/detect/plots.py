"""Detection pictures: PR/F1/P/R curves, the confusion matrix, and validation images with the model's
boxes drawn for TensorBoard."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_convert

from ...data.plots import plot_batch
from ...engine.plots import draw_confusion, pyplot
from ...models.yolo.head import YOLOV5_FORMAT
from .metrics import ConfusionMatrix, DetectionMetrics
from .postprocess import postprocess

__all__ = ["plot_metric_curves", "plot_confusion_matrix", "PredictionPictures"]


def plot_metric_curves(
    metrics: DetectionMetrics, names: Sequence[str], save_dir: str | Path, prefix: str = ""
) -> list[Path]:
    """PR curve (IoU 0.5), and F1, precision and recall against confidence; per class and mean. ``prefix`` names
    the files of another set of the same scores (``Mask``: MaskPR_curve.png, ...)."""
    plt = pyplot()
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
    title = f"{prefix} Precision-Recall curve".strip()
    ax.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="lower left", fontsize=8)
    outputs.append(save_dir / f"{prefix}PR_curve.png")
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
        outputs.append(save_dir / f"{prefix}{ylabel}_curve.png")
        fig.savefig(outputs[-1], dpi=150)
        plt.close(fig)
    return outputs


def plot_confusion_matrix(cm: ConfusionMatrix, names: Sequence[str], save_dir: str | Path) -> Path:
    """Column-normalised confusion matrix (each true class sums to 1), background as the last row/column."""
    title = "Confusion matrix (normalised per true class)"
    return draw_confusion(cm.matrix, [*names, "background"], title, Path(save_dir) / "confusion_matrix.png")


class PredictionPictures:
    """The first validation images with a model's detections (score >= ``conf``) drawn, for TensorBoard.

    The images are read once, from the dataset rather than through a loader iterator (that would draw
    from the global RNG and a resumed run would no longer repeat the uninterrupted one), logged with
    their labels as ``val/labels``; the same images are drawn every epoch as ``val/predictions``.
    A task whose pictures show more (segmentation: masks) overrides ``samples_of`` and ``predictions``.
    """

    def __init__(
        self,
        loader: torch.utils.data.DataLoader,
        names: Sequence[str],
        max_images: int = 8,
        conf: float = 0.25,
        iou: float = 0.45,
    ):
        self.loader, self.names = loader, list(names)
        self.max_images, self.conf, self.iou = max_images, conf, iou
        self.samples: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None

    # ---- hooks ----------------------------------------------------------------------------------
    def samples_of(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """A collated batch -> its images (B×3×H×W uint8), targets (M×6) and the targets' masks (None here)."""
        return batch[0], batch[1], None

    def predictions(
        self, decoded, output_format: str, size: tuple[int, int]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """The model's decoded output (in its head's ``output_format``) -> per image n×6 [x1, y1, x2, y2, score,
        class] in input pixels, and per image the detections' n×H×W masks (None here). ``size``: the input's (H, W)."""
        return postprocess(decoded.float(), output_format, self.conf, self.iou, max_det=100), None

    # ---- drawing --------------------------------------------------------------------------------
    @torch.no_grad()
    def log(self, tb, model: nn.Module, step: int) -> None:
        """Draw ``model``'s detections on the sample images into ``tb`` (a TensorBoardLogger) at ``step``."""
        loader = self.loader
        if self.samples is None:
            n = min(self.max_images, loader.batch_size or 1, len(loader.dataset))  # one batch: shapes agree
            self.samples = self.samples_of(loader.collate_fn([loader.dataset[i] for i in range(n)]))
            self._log_plot(tb, "val/labels", *self.samples, step)
        images = self.samples[0]
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        decoded, _ = model(images.to(device).float() / 255)
        model.train(was_training)
        h, w = images.shape[2:]
        detections, masks = self.predictions(decoded, getattr(model, "output_format", YOLOV5_FORMAT), (h, w))
        rows = []
        for i, det in enumerate(detections):
            det = det.cpu()
            xywh = box_convert(det[:, :4], "xyxy", "cxcywh") / torch.tensor([w, h, w, h])
            rows.append(torch.cat([torch.full((len(det), 1), float(i)), det[:, 5:6], xywh, det[:, 4:5]], 1))
        boxes = torch.cat(rows) if rows else torch.zeros((0, 7))
        masks = torch.cat(masks).cpu() if masks is not None and masks else None
        self._log_plot(tb, "val/predictions", images, boxes, masks, step)

    def _log_plot(self, tb, tag: str, images: torch.Tensor, boxes: torch.Tensor, masks, step: int) -> None:
        with tempfile.TemporaryDirectory() as tmp:  # plot_batch draws into a file
            tb.log_image(tag, plot_batch(images, boxes, self.names, Path(tmp) / "plot.jpg", masks=masks), step)
