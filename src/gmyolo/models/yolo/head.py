"""The YOLOv5 detection head: one 1×1 conv per level, anchor-based box decoding in eval mode.

Every detection head declares what training and evaluation need from it, so that the trainer, the validator,
bench and export ask the head and never test its type:

- ``output_format``: the layout of its decoded (eval-mode) output, one of :data:`OUTPUT_FORMATS`;
  post-processing, validation's matching rule, prediction and exported files follow it;
- ``criterion``: the name of the loss (with its target assignment) that trains it, a key of
  :data:`gmyolo.tasks.detect.loss.CRITERIA`;
- ``loss_names``: the items that loss returns, in order (results.csv's ``train/<name>`` and ``val/<name>``);
- ``hyp_section``: the section of a hyper-parameter set that holds its loss's keys;
- ``task``: the task whose trainer, validator and predictor it goes with (``detect``, ``segment``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["Detect", "OUTPUT_FORMATS", "FORMAT_TASKS", "YOLOV5_FORMAT"]

YOLOV5_FORMAT = "xywh_obj_cls"
OUTPUT_FORMATS = {
    YOLOV5_FORMAT: "B×N×(5+nc): cx, cy, w, h in input pixels, objectness, class scores; NMS follows",
    "xywh_cls": "B×N×(4+nc): cx, cy, w, h in input pixels, class scores (no objectness); NMS follows",
    "xyxy_score_class": "B×K×6: x1, y1, x2, y2 in input pixels, score, class id, best first; no NMS (end-to-end)",
    # Instance segmentation: a pair, the detections with each one's nm mask coefficients appended, and the
    # prototype masks (a detection's mask is sigmoid(coefficients · prototypes), at 1/4 of the input size).
    "xywh_obj_cls_masks": "(B×N×(5+nc+nm) as xywh_obj_cls then nm mask coefficients, B×nm×H/4×W/4 prototypes)",
    "xywh_cls_masks": "(B×N×(4+nc+nm) as xywh_cls then nm mask coefficients, B×nm×H/4×W/4 prototypes)",
}
# The task of each output format: what a checkpoint or an exported file (which records only its format) is
# validated and predicted as.
FORMAT_TASKS = {
    YOLOV5_FORMAT: "detect",
    "xywh_cls": "detect",
    "xyxy_score_class": "detect",
    "xywh_obj_cls_masks": "segment",
    "xywh_cls_masks": "segment",
}


def ordered_by_stride(anchors: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """Anchor sets (nl×na×2, pixels) must grow with stride; YOLOv5 flips them when given the other way."""
    area = anchors.prod(-1).mean(-1)
    da, ds = area[-1] - area[0], strides[-1] - strides[0]
    return anchors.flip(0) if da and ds and da.sign() != ds.sign() else anchors


class Detect(nn.Module):
    """YOLOv5 Detect head.

    Args: ``nc`` classes, ``anchors`` one list of (w, h) pairs in pixels per level, ``ch`` input widths,
    ``strides`` the stride of each level (the builder knows them without a forward pass).

    Train mode returns the raw outputs, one B×na×H×W×(5+nc) tensor per level. Eval mode returns
    ``(decoded, raw)`` with decoded B×N×(5+nc): xywh in input pixels, then objectness and class
    scores after sigmoid — YOLOv5's layout.
    """

    export = False  # when True, eval mode returns only the decoded tensor (for ONNX)
    task = "detect"  # the task that trains it (gmyolo.tasks.trainer_for)
    output_format = YOLOV5_FORMAT
    criterion = "yolov5"  # YOLOv5's loss: anchor-ratio assignment, CIoU, IoU-target objectness, BCE classes
    loss_names = ("box_loss", "obj_loss", "cls_loss")
    hyp_section = "anchor_based"  # the loss and hyper-parameters it trains with

    def __init__(
        self,
        nc: int = 80,
        anchors: Sequence[Sequence[float]] = (),
        ch: Sequence[int] = (),
        inplace: bool = True,
        strides: Sequence[float] | None = None,
    ):
        super().__init__()
        if len(anchors) != len(ch):
            raise ValueError(f"Detect has {len(ch)} input levels but {len(anchors)} anchor sets")
        if len({len(a) for a in anchors}) != 1 or len(anchors[0]) % 2:
            raise ValueError("every level needs the same, even number of anchor values (w, h pairs)")
        self.nc = nc
        self.no = nc + 5  # outputs per anchor: xywh, objectness, classes
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.inplace = inplace
        stride = torch.tensor(strides if strides is not None else [0.0] * self.nl, dtype=torch.float32)
        self.register_buffer("stride", stride, persistent=False)
        pixel_anchors = ordered_by_stride(torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2), stride)
        # Anchors are stored in grid units (pixels / stride), as YOLOv5 stores them.
        self.register_buffer("anchors", pixel_anchors / stride.clamp(min=1e-9).view(-1, 1, 1))
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)

    def initialize_biases(self, class_frequency: torch.Tensor | None = None) -> None:
        """YOLOv5's priors: about 8 objects per 640×640 image; class prior 0.6/(nc-0.99999) or from frequencies."""
        for conv, s in zip(self.m, self.stride.tolist()):
            b = conv.bias.view(self.na, -1)
            with torch.no_grad():
                b[:, 4] += math.log(8 / (640 / s) ** 2)
                if class_frequency is None:
                    b[:, 5 : 5 + self.nc] += math.log(0.6 / (self.nc - 0.99999))
                else:
                    b[:, 5 : 5 + self.nc] += torch.log(class_frequency / class_frequency.sum())

    def make_grid(self, nx: int, ny: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell offsets (minus 0.5) and anchor sizes in pixels, both 1×na×ny×nx×2."""
        d, t = self.anchors.device, self.anchors.dtype
        shape = (1, self.na, ny, nx, 2)
        yv, xv = torch.meshgrid(torch.arange(ny, device=d, dtype=t), torch.arange(nx, device=d, dtype=t), indexing="ij")
        grid = torch.stack((xv, yv), 2).expand(shape) - 0.5
        anchor_grid = (self.anchors[i] * self.stride[i]).view(1, self.na, 1, 1, 2).expand(shape)
        return grid, anchor_grid

    def forward(self, x: list[torch.Tensor]):
        raw, decoded = [], []
        for i in range(self.nl):
            p = self.m[i](x[i])
            bs, _, ny, nx = p.shape
            p = p.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            raw.append(p)
            if not self.training:
                decoded.append(self.decode_level(p, i).view(bs, self.na * nx * ny, self.no))
        if self.training:
            return raw
        return torch.cat(decoded, 1) if self.export else (torch.cat(decoded, 1), raw)

    def decode_level(self, p: torch.Tensor, i: int) -> torch.Tensor:
        """Level i's raw B×na×H×W×no -> xywh in input pixels, objectness and class scores (sigmoid)."""
        grid, anchor_grid = self.make_grid(p.shape[3], p.shape[2], i)
        xy, wh, conf = p.sigmoid().split((2, 2, self.nc + 1), 4)
        xy = (xy * 2 + grid) * self.stride[i]
        wh = (wh * 2) ** 2 * anchor_grid
        return torch.cat((xy, wh, conf), 4)
