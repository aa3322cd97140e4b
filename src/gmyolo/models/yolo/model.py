"""``DetectionModel``: a YOLO detector built from a model YAML by :mod:`gmyolo.models.yolo.builder`."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ...errors import ModelConfigError
from .anchor_free import AnchorFreeDetect
from .builder import load_model_yaml, parse_model, run_layers
from .head import Detect
from .registry import MODULES

__all__ = ["DetectionModel", "is_head", "head_task"]


def is_head(module: nn.Module) -> bool:
    """Whether ``module`` can end a detector: it declares its training contract (see :mod:`.head`)."""
    return all(hasattr(module, name) for name in ("output_format", "criterion", "loss_names", "hyp_section", "task"))


def head_task(cfg: str | os.PathLike | Mapping[str, Any]) -> str:
    """The task of a model YAML's head (``detect``, ``segment``), read from the YAML without building the model."""
    d = load_model_yaml(cfg, None) if not isinstance(cfg, Mapping) else cfg
    layer = MODULES.get(d["head"][-1][2]) if d.get("head") else None
    return getattr(layer.constructor, "task", "detect") if layer is not None else "detect"


LOGGER = logging.getLogger("gmyolo")


class DetectionModel(nn.Module):
    """A YOLO detector built from a model YAML.

    Args:
        cfg: packaged model name ('yolov5s', 'yolo11n', 'yolov5s-gmf-t'), a path to a YAML file, or a dict.
        ch: input channels.
        nc: number of classes; overrides the file's ``nc``.
        scale: the row of the YAML's ``scales`` block ('n', 's', ...); default: from the file name.

    Train mode returns the head's raw outputs; eval mode returns ``(decoded, raw)``. The head declares the
    layout of ``decoded`` (``model.detect.output_format``, see :data:`gmyolo.models.yolo.head.OUTPUT_FORMATS`):
    YOLOv5's Detect gives B×N×(5+nc) (xywh in input pixels, objectness, class scores after sigmoid), the
    anchor-free Detect B×N×(4+nc), its end-to-end variant B×K×6 top-k detections.
    """

    def __init__(
        self,
        cfg: str | os.PathLike | Mapping[str, Any] = "yolov5s-gmf-t",
        ch: int = 3,
        nc: int | None = None,
        scale: str | None = None,
    ):
        super().__init__()
        d = load_model_yaml(cfg, scale)
        if nc is not None and nc != d["nc"]:
            if not isinstance(nc, int) or nc < 1:
                raise ModelConfigError(f"nc must be a positive integer, got {nc!r}")
            LOGGER.info("overriding the model's nc=%d with nc=%d", d["nc"], nc)
            d["nc"] = nc
        self.model, self.save, self.layer_rows = parse_model(d, ch)
        self.yaml = {k: v for k, v in d.items() if not k.startswith("_")}  # plain data, saved in checkpoints
        self.nc = d["nc"]
        self.names = {i: str(i) for i in range(self.nc)}
        head = self.model[-1]
        if not is_head(head):
            raise ModelConfigError(f"{d['_source']}: the last layer must be Detect, got {type(head).__name__}")
        head.initialize_biases()

    @property
    def stride(self) -> torch.Tensor:
        return self.model[-1].stride

    @property
    def detect(self) -> Detect | AnchorFreeDetect:
        return self.model[-1]

    @property
    def output_format(self) -> str:
        """The layout of the decoded output (a key of :data:`~gmyolo.models.yolo.head.OUTPUT_FORMATS`)."""
        return self.detect.output_format

    def forward(self, x: torch.Tensor):
        return run_layers(self.model, x, self.save)

    def no_weight_decay(self) -> set[str]:
        """Parameters that learn without weight decay: every norm weight and bias, and what each submodule
        names in its own ``no_weight_decay()`` (GroupMixFormer, GMA blocks: their position-encoding convs)."""
        names = {n for n, p in self.named_parameters() if p.ndim <= 1}
        for prefix, m in self.named_modules():
            if m is not self and callable(getattr(m, "no_weight_decay", None)):
                names |= {f"{prefix}.{n}" for n in m.no_weight_decay()}
        return names

    def fuse(self) -> DetectionModel:
        """Fold BatchNorm into the convolutions before it, for inference (YOLO layers and the backbone)."""
        self.eval()
        for m in list(self.modules()):
            if m is not self and callable(getattr(m, "fuse", None)):
                m.fuse()
        return self
