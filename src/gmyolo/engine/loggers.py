"""Experiment logging to TensorBoard (optional: ``pip install tensorboard``); ``results.csv`` stays the record.

Per epoch the trainer logs every ``results.csv`` value as a scalar under its column name, with the
epoch number as the step; tasks add pictures (detection: validation images with the model's boxes).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["TensorBoardLogger", "tensorboard_logger"]

LOGGER = logging.getLogger("gmyolo")


class TensorBoardLogger:
    """Writes event files into ``log_dir`` (a run folder); see :func:`tensorboard_logger`."""

    def __init__(self, log_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, float(value), step)

    def log_array(self, tag: str, image: np.ndarray, step: int) -> None:
        """An H×W×3 RGB uint8 image."""
        self.writer.add_image(tag, image, step, dataformats="HWC")

    def log_image(self, tag: str, path: str | Path, step: int) -> None:
        """An image file (e.g. a plot the run saved)."""
        from ..data.opencv import imread

        im = imread(path)
        if im is None:
            raise OSError(f"cannot read image {path}")
        self.log_array(tag, im[:, :, ::-1].copy(), step)

    def flush(self) -> None:
        self.writer.flush()

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
