"""Experiment logging to TensorBoard (optional: ``pip install tensorboard``); ``results.csv`` stays the record.

Per epoch: the ``results.csv`` values as scalars under the same names (``train/box_loss``, ``metrics/mAP_0.5``,
``x/lr_weights``, ...), with the epoch number as the step, and a grid of validation images with the model's
predictions drawn (the same images every epoch). The first training batches are logged as they are plotted.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import torch
from torch import nn
from torchvision.ops import box_convert

from ..data.plots import plot_batch
from .postprocess import non_max_suppression

__all__ = ["TensorBoardLogger", "tensorboard_logger"]

LOGGER = logging.getLogger("gmyolo")


class TensorBoardLogger:
    """Writes event files into ``log_dir`` (a run folder); see :func:`tensorboard_logger`."""

    def __init__(self, log_dir: str | Path, max_images: int = 8, conf: float = 0.25, iou: float = 0.45):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))
        self.max_images, self.conf, self.iou = max_images, conf, iou
        self.samples: tuple[torch.Tensor, torch.Tensor] | None = None  # fixed validation images and their labels

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, float(value), step)

    def log_image(self, tag: str, path: str | Path, step: int) -> None:
        """An image file (e.g. a plot the run saved), as HWC RGB."""
        im = cv2.imread(str(path))
        if im is None:
            raise OSError(f"cannot read image {path}")
        self.writer.add_image(tag, im[:, :, ::-1].copy(), step, dataformats="HWC")

    @torch.no_grad()
    def log_predictions(
        self, model: nn.Module, loader: torch.utils.data.DataLoader, names: Sequence[str], step: int
    ) -> None:
        """The first ``max_images`` images of ``loader`` with ``model``'s detections (score >= conf) drawn.

        The images are taken (and logged with their labels, as ``val/labels``) on the first call and reused.
        """
        if self.samples is None:
            # Read from the dataset, not through a loader iterator: that would draw from the global RNG and a
            # resumed run would no longer repeat the uninterrupted one. Within one batch, so shapes agree.
            n = min(self.max_images, loader.batch_size or 1, len(loader.dataset))
            images, targets, _, _ = loader.collate_fn([loader.dataset[i] for i in range(n)])
            self.samples = images, targets
            self._log_plot("val/labels", images, targets, names, step)
        images, _ = self.samples
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        decoded, _ = model(images.to(device).float() / 255)
        model.train(was_training)
        h, w = images.shape[2:]
        rows = []
        for i, det in enumerate(non_max_suppression(decoded.float(), self.conf, self.iou, max_det=100)):
            det = det.cpu()
            xywh = box_convert(det[:, :4], "xyxy", "cxcywh") / torch.tensor([w, h, w, h])
            rows.append(torch.cat([torch.full((len(det), 1), float(i)), det[:, 5:6], xywh, det[:, 4:5]], 1))
        self._log_plot("val/predictions", images, torch.cat(rows) if rows else torch.zeros((0, 7)), names, step)

    def _log_plot(self, tag: str, images: torch.Tensor, boxes: torch.Tensor, names: Sequence[str], step: int) -> None:
        with tempfile.TemporaryDirectory() as tmp:  # plot_batch draws into a file
            self.log_image(tag, plot_batch(images, boxes, names, Path(tmp) / "plot.jpg"), step)

    def log_epoch(
        self,
        epoch: int,
        values: Mapping[str, float],
        model: nn.Module | None = None,
        loader: torch.utils.data.DataLoader | None = None,
        names: Sequence[str] = (),
    ) -> None:
        """One epoch's scalars and, given a model and a validation loader, its predictions; then flush."""
        self.log_scalars(values, epoch)
        if model is not None and loader is not None:
            self.log_predictions(model, loader, names, epoch)
        self.writer.flush()  # an interrupted run keeps every finished epoch

    def close(self) -> None:
        self.writer.close()


def tensorboard_logger(log_dir: str | Path, enabled: bool = True) -> TensorBoardLogger | None:
    """A TensorBoard logger for ``log_dir``, or None when disabled or when tensorboard is not installed."""
    if not enabled:
        return None
    try:
        import torch.utils.tensorboard  # noqa: F401  (needs the tensorboard package)
    except ImportError:
        LOGGER.info("TensorBoard: not installed, logging to results.csv only (pip install tensorboard)")
        return None
    LOGGER.info("TensorBoard: tensorboard --logdir %s, then open http://localhost:6006/", Path(log_dir).parent)
    return TensorBoardLogger(log_dir)
