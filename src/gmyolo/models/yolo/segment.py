"""Instance segmentation heads: a detection head that also gives each detection ``nm`` mask coefficients, and
``Proto``, which makes ``nm`` prototype masks at 1/4 of the input size from the finest level. A detection's mask is
sigmoid(coefficients · prototypes), cropped to its box (YOLACT's scheme, as YOLOv5-seg and Ultralytics use it).

- :class:`AnchorSegment`: YOLOv5-seg's head (YOLOv5's ``Detect`` with the coefficients in each anchor's outputs;
  ``Segment, [nc, anchors, nm, npr]`` in a YOLOv5 YAML);
- :class:`AnchorFreeSegment`: YOLOv8-seg's and YOLO11-seg's (the anchor-free ``Detect`` with a third branch per
  level for the coefficients; ``Segment, [nc, nm, npr]`` in an Ultralytics YAML).

Both declare the head contract of :mod:`.head`; in eval mode they return ``((detections, prototypes), raw)``, or
``(detections, prototypes)`` with ``export`` (two ONNX outputs): see the ``*_masks`` formats of
:data:`~gmyolo.models.yolo.head.OUTPUT_FORMATS`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .anchor_free import AnchorFreeDetect
from .common import Conv
from .head import Detect

__all__ = ["Proto", "AnchorSegment", "AnchorFreeSegment"]


class Proto(nn.Module):
    """Prototype masks: 3×3 conv, 2× upsampling, 3×3 conv, 1×1 conv to ``c2`` maps.

    x: B×c1×H×W -> B×c2×2H×2W. ``transposed``: upsample with a learnt 2×2 stride-2 transposed convolution
    (Ultralytics), else nearest-neighbour (YOLOv5-seg).
    """

    def __init__(self, c1: int, c_: int = 256, c2: int = 32, transposed: bool = False):
        super().__init__()
        self.cv1 = Conv(c1, c_, k=3)
        self.upsample = (
            nn.ConvTranspose2d(c_, c_, 2, 2, 0, bias=True)
            if transposed
            else nn.Upsample(scale_factor=2, mode="nearest")
        )
        self.cv2 = Conv(c_, c_, k=3)
        self.cv3 = Conv(c_, c2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(self.cv2(self.upsample(self.cv1(x))))


class AnchorSegment(Detect):
    """YOLOv5-seg's head: YOLOv5's Detect whose anchors each also output ``nm`` mask coefficients, and a
    :class:`Proto` of ``npr`` channels on the finest level.

    Train mode returns ``(raw, prototypes)``: raw as Detect's, B×na×H×W×(5+nc+nm) per level; prototypes
    B×nm×(2·H0)×(2·W0) for the finest level's H0×W0. Eval mode decodes as Detect and passes the coefficients
    through (``xywh_obj_cls_masks``): ``((decoded, prototypes), (raw, prototypes))``.
    """

    task = "segment"
    output_format = "xywh_obj_cls_masks"
    criterion = "yolov5_seg"  # YOLOv5-seg's loss: YOLOv5's, plus the masks' per-pixel BCE inside each box
    loss_names = ("box_loss", "seg_loss", "obj_loss", "cls_loss")

    def __init__(
        self,
        nc: int = 80,
        anchors: Sequence[Sequence[float]] = (),
        nm: int = 32,
        npr: int = 256,
        ch: Sequence[int] = (),
        inplace: bool = True,
        strides: Sequence[float] | None = None,
    ):
        super().__init__(nc, anchors, ch, inplace, strides)
        self.nm, self.npr = nm, npr
        self.no = 5 + nc + nm
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self.proto = Proto(ch[0], npr, nm)

    def decode_level(self, p: torch.Tensor, i: int) -> torch.Tensor:
        boxes, coefficients = p.split((5 + self.nc, self.nm), 4)
        return torch.cat((super().decode_level(boxes, i), coefficients), 4)

    def forward(self, x: list[torch.Tensor]):
        prototypes = self.proto(x[0])
        out = super().forward(x)
        if self.training:
            return out, prototypes
        if self.export:
            return out, prototypes
        decoded, raw = out
        return (decoded, prototypes), (raw, prototypes)  # raw as in training (the loss reads both)


class AnchorFreeSegment(AnchorFreeDetect):
    """YOLOv8-seg's and YOLO11-seg's head: the anchor-free Detect with a coefficient branch per level (3×3 conv,
    3×3 conv, 1×1 conv to ``nm``; width max(ch[0] / 4, nm)) and a :class:`Proto` of ``npr`` channels upsampled by
    a transposed convolution.

    Train mode returns Detect's raw dict with ``"masks"`` (B×nm×N coefficients) and ``"prototypes"``
    (B×nm×(2·H0)×(2·W0)). Eval mode returns B×N×(4+nc+nm) (``xywh_cls_masks``) and the prototypes.
    """

    task = "segment"

    def __init__(
        self,
        nc: int = 80,
        nm: int = 32,
        npr: int = 256,
        reg_max: int = 16,
        end2end: bool = False,
        ch: Sequence[int] = (),
        strides: Sequence[float] | None = None,
        legacy: bool = False,
    ):
        if end2end:
            raise ValueError(
                "an end-to-end Segment head (YOLO26-seg) is not available in gmyolo; use a YOLOv8 or YOLO11 neck"
            )
        super().__init__(nc, reg_max, end2end, ch, strides, legacy)
        self.nm, self.npr = nm, npr
        self.proto = Proto(ch[0], npr, nm, transposed=True)
        c4 = max(ch[0] // 4, nm)
        self.cv4 = nn.ModuleList(nn.Sequential(Conv(c, c4, 3), Conv(c4, c4, 3), nn.Conv2d(c4, nm, 1)) for c in ch)

    @property
    def output_format(self) -> str:
        return "xywh_cls_masks"

    @property
    def criterion(self) -> str:
        """The anchor-free loss, plus the masks' per-pixel BCE inside each box (Ultralytics' v8SegmentationLoss)."""
        return "tal_seg"

    @property
    def loss_names(self) -> tuple[str, str, str, str]:
        return ("box_loss", "seg_loss", "cls_loss", "dfl_loss" if self.reg_max > 1 else "l1_loss")

    def forward(self, x: list[torch.Tensor]):
        b = x[0].shape[0]
        coefficients = torch.cat([self.cv4[i](x[i]).view(b, self.nm, -1) for i in range(self.nl)], 2)
        raw = {**self.run_branch(x, self.cv2, self.cv3), "masks": coefficients, "prototypes": self.proto(x[0])}
        if self.training:
            return raw
        detections = torch.cat((self.decode(raw, x), coefficients.permute(0, 2, 1)), 2)
        out = (detections, raw["prototypes"])
        return out if self.export else (out, raw)
