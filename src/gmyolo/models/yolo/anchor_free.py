"""The anchor-free detection head of YOLOv8 / YOLO11 / YOLO26, and its end-to-end (NMS-free) variant.

Per level, two decoupled branches read the neck's map: a box branch predicting, at every cell centre (the
*anchor point*), the distances to the box's left, top, right and bottom sides as a distribution over
``reg_max`` bins (DFL, Li et al., *Generalized Focal Loss*, 2020; ``reg_max`` 1: the distances directly, as
in YOLO26), and a class branch predicting ``nc`` logits (no objectness). Distances are in grid units of
the level (pixels / stride).

The end-to-end variant (YOLOv10, YOLO26) adds a one-to-one copy of both branches, trained on detached
features with a one-to-one assignment; in eval mode it returns the top ``max_det`` detections directly.

Anchor points and box conversions are pure functions, shared with the loss.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn

from .common import Conv, DWConv

__all__ = ["DFL", "AnchorFreeDetect", "make_anchor_points", "dist2bbox", "bbox2dist"]

Raw = dict  # {"boxes": B×4·reg_max×N, "scores": B×nc×N, "sizes": [(h, w) per level]}


def make_anchor_points(
    sizes: Sequence[tuple[int, int]], strides: Sequence[float] | torch.Tensor, like: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell centres of every level, level by level and row by row: N×2 (x, y) in grid units, and N×1 strides.

    ``sizes`` are the levels' (h, w); the point of cell (row i, column j) is (j + 0.5, i + 0.5). The tensors
    get the dtype and device of ``like`` (float32 on the CPU without it; taken from a tensor, not named, so
    that a traced model runs on any device).
    """
    like = torch.zeros(()) if like is None else like
    points, stride_column = [], []
    for (h, w), s in zip(sizes, strides):
        xs = torch.arange(w).type_as(like) + 0.5
        ys = torch.arange(h).type_as(like) + 0.5
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((xx, yy), -1).view(-1, 2))
        stride_column.append(torch.ones_like(xx).view(-1, 1) * s)
    return torch.cat(points), torch.cat(stride_column)


def dist2bbox(distance: torch.Tensor, points: torch.Tensor, xywh: bool = True, dim: int = -1) -> torch.Tensor:
    """(left, top, right, bottom) distances from ``points`` (x, y) -> boxes xyxy, or cx, cy, w, h if ``xywh``."""
    lt, rb = distance.chunk(2, dim)
    x1y1, x2y2 = points - lt, points + rb
    if xywh:
        return torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), dim)
    return torch.cat((x1y1, x2y2), dim)


def bbox2dist(points: torch.Tensor, boxes: torch.Tensor, limit: float | None = None) -> torch.Tensor:
    """xyxy ``boxes`` -> (left, top, right, bottom) distances from ``points``; clamped to [0, limit] if given."""
    x1y1, x2y2 = boxes.chunk(2, -1)
    dist = torch.cat((points - x1y1, x2y2 - points), -1)
    return dist.clamp(0, limit) if limit is not None else dist


class DFL(nn.Module):
    """The expected value of each side's distribution: B×4·reg_max×N logits -> B×4×N distances (grid units).

    A fixed 1×1 conv holds the bin values 0 .. reg_max-1 (a parameter that is never trained, as published).
    """

    def __init__(self, reg_max: int = 16):
        super().__init__()
        self.reg_max = reg_max
        self.conv = nn.Conv2d(reg_max, 1, 1, bias=False).requires_grad_(False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(reg_max, dtype=torch.float32).view(1, reg_max, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, n = x.shape
        probabilities = x.view(b, 4, self.reg_max, n).transpose(2, 1).softmax(1)  # B×reg_max×4×N
        return self.conv(probabilities).view(b, 4, n)


class AnchorFreeDetect(nn.Module):
    """Anchor-free decoupled Detect head.

    Args: ``nc`` classes, ``reg_max`` bins per box side (1: no DFL), ``end2end`` (add the one-to-one branches),
    ``ch`` input widths, ``strides`` of the levels (known to the builder), ``legacy`` (YOLOv8's class branch of
    two 3×3 convs; YOLO11 and later use depthwise-separable ones — set by the builder from the model's blocks).

    Train mode returns the raw outputs ``{"boxes": B×4·reg_max×N, "scores": B×nc×N, "sizes": [(h, w)]}``
    (end-to-end: ``{"one2many": ..., "one2one": ...}``). Eval mode returns ``(decoded, raw)``; decoded is
    B×N×(4+nc) (``xywh_cls``: cx, cy, w, h in input pixels, class scores after sigmoid), or for end-to-end
    B×K×6 (``xyxy_score_class``: the top ``max_det`` detections of the one-to-one branch, best first).
    """

    export = False  # when True, eval mode returns only the decoded tensor (for ONNX)
    task = "detect"
    max_det = 300  # detections an end-to-end head returns per image
    hyp_section = "anchor_free"

    def __init__(
        self,
        nc: int = 80,
        reg_max: int = 16,
        end2end: bool = False,
        ch: Sequence[int] = (),
        strides: Sequence[float] | None = None,
        legacy: bool = False,
    ):
        super().__init__()
        if not ch:
            raise ValueError("Detect needs at least one input level")
        if reg_max < 1:
            raise ValueError(f"reg_max must be a positive integer, got {reg_max}")
        self.nc, self.nl, self.reg_max, self.end2end = nc, len(ch), reg_max, end2end
        self.no = nc + 4 * reg_max  # outputs per anchor point
        stride = torch.tensor(strides if strides is not None else [0.0] * self.nl, dtype=torch.float32)
        self.register_buffer("stride", stride, persistent=False)
        c2, c3 = max(16, ch[0] // 4, 4 * reg_max), max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(
            nn.Sequential(Conv(c, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1)) for c in ch
        )
        if legacy:
            self.cv3 = nn.ModuleList(nn.Sequential(Conv(c, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for c in ch)
        else:
            self.cv3 = nn.ModuleList(
                nn.Sequential(
                    nn.Sequential(DWConv(c, c, 3), Conv(c, c3, 1)),
                    nn.Sequential(DWConv(c3, c3, 3), Conv(c3, c3, 1)),
                    nn.Conv2d(c3, nc, 1),
                )
                for c in ch
            )
        self.dfl = DFL(reg_max) if reg_max > 1 else nn.Identity()
        if end2end:  # the one-to-one branches start as copies of the one-to-many ones
            self.one2one_cv2 = copy.deepcopy(self.cv2)
            self.one2one_cv3 = copy.deepcopy(self.cv3)

    @property
    def output_format(self) -> str:
        return "xyxy_score_class" if self.end2end else "xywh_cls"

    @property
    def criterion(self) -> str:
        """Task-aligned assignment with CIoU + DFL + BCE; end-to-end: with the one-to-one branch's dual loss."""
        return "end2end" if self.end2end else "tal"

    @property
    def loss_names(self) -> tuple[str, str, str]:
        return ("box_loss", "cls_loss", "dfl_loss" if self.reg_max > 1 else "l1_loss")

    def branches(self) -> list[tuple[nn.ModuleList, nn.ModuleList]]:
        pairs = [(self.cv2, self.cv3)] if self.cv2 is not None else []
        return pairs + ([(self.one2one_cv2, self.one2one_cv3)] if self.end2end else [])

    def initialize_biases(self, class_frequency: torch.Tensor | None = None) -> None:
        """The published priors: box logits 2.0; class logits log(5 / nc / (640 / stride)²), i.e. about 5
        objects of any class per 640×640 image (``class_frequency`` splits them by frequency instead)."""
        with torch.no_grad():
            for box_head, cls_head in self.branches():
                for box, cls, s in zip(box_head, cls_head, self.stride.tolist()):
                    box[-1].bias.fill_(2.0)
                    if class_frequency is None:
                        cls[-1].bias[: self.nc] = math.log(5 / self.nc / (640 / s) ** 2)
                    else:
                        share = class_frequency / class_frequency.sum()
                        cls[-1].bias[: self.nc] = torch.log(5 * share / (640 / s) ** 2)

    def run_branch(self, x: list[torch.Tensor], box_head: nn.ModuleList | None, cls_head: nn.ModuleList | None):
        if box_head is None:  # removed by fuse()
            return None
        b = x[0].shape[0]
        boxes = torch.cat([box_head[i](x[i]).view(b, 4 * self.reg_max, -1) for i in range(self.nl)], -1)
        scores = torch.cat([cls_head[i](x[i]).view(b, self.nc, -1) for i in range(self.nl)], -1)
        return {"boxes": boxes, "scores": scores, "sizes": [tuple(xi.shape[2:4]) for xi in x]}

    def forward(self, x: list[torch.Tensor]):
        raw = self.run_branch(x, self.cv2, self.cv3)
        if self.end2end:
            features = [xi.detach() for xi in x] if self.training else x  # one-to-one: the head only
            raw = {"one2many": raw, "one2one": self.run_branch(features, self.one2one_cv2, self.one2one_cv3)}
        if self.training:
            return raw
        decoded = self.decode(raw["one2one"] if self.end2end else raw, x)
        return decoded if self.export else (decoded, raw)

    def decode(self, raw: Raw, x: list[torch.Tensor]) -> torch.Tensor:
        """Raw outputs -> the decoded tensor of ``output_format``."""
        sizes = [xi.shape[2:4] for xi in x]
        points, strides = make_anchor_points(sizes, self.stride.to(raw["boxes"].dtype), raw["boxes"])
        distances = self.dfl(raw["boxes"])  # B×4×N, grid units
        boxes = dist2bbox(distances, points.T.unsqueeze(0), xywh=not self.end2end, dim=1) * strides.T
        decoded = torch.cat((boxes, raw["scores"].sigmoid()), 1).permute(0, 2, 1)  # B×N×(4+nc)
        return self.top_k(decoded) if self.end2end else decoded

    def top_k(self, decoded: torch.Tensor) -> torch.Tensor:
        """B×N×(4+nc) xyxy + class scores -> B×K×6 (x1, y1, x2, y2, score, class), K = min(max_det, N).

        First the K anchor points whose best class scores highest, then the K best (point, class) pairs among
        those: a point may appear once per class, as the published end-to-end heads do.
        """
        boxes, scores = decoded.split((4, self.nc), -1)
        k = min(self.max_det, decoded.shape[1])
        points = scores.amax(-1).topk(k, dim=1).indices  # B×K
        scores = scores.gather(1, points.unsqueeze(-1).expand(-1, -1, self.nc))  # B×K×nc
        values, flat = scores.flatten(1).topk(k, dim=1)
        chosen = points.gather(1, flat // self.nc)
        boxes = boxes.gather(1, chosen.unsqueeze(-1).expand(-1, -1, 4))
        return torch.cat((boxes, values.unsqueeze(-1), (flat % self.nc).unsqueeze(-1).to(boxes.dtype)), -1)

    def fuse(self) -> None:
        """For inference: an end-to-end head drops its one-to-many branches (eval mode uses the one-to-one)."""
        if self.end2end:
            self.cv2 = self.cv3 = None
