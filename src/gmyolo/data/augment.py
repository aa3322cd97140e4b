"""Image augmentations as YOLOv5 does them, on HxWx3 uint8 BGR arrays with pixel xyxy boxes and, for
segmentation, the objects' outlines (polygons in pixels), which move with the image.

Randomness always comes from a ``numpy.random.Generator`` passed in, so a sample's augmentation is
a function of (seed, epoch, index) and does not depend on the number of loader workers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

from .opencv import cv2

__all__ = [
    "stride_multiple",
    "AUGMENT_DEFAULTS",
    "letterbox",
    "random_affine",
    "augment_hsv",
    "mixup",
    "box_candidates",
    "xyxy_to_xywhn",
    "xywhn_to_xyxy",
    "Instances",
    "clip_polygon",
    "polygons_to_masks",
]

# YOLOv5's "scratch-low" augmentation settings; each one can be set from the hyper-parameters.
AUGMENT_DEFAULTS: dict[str, float] = {
    "hsv_h": 0.015,  # hue gain (fraction)
    "hsv_s": 0.7,  # saturation gain
    "hsv_v": 0.4,  # value gain
    "degrees": 0.0,  # rotation (+/- deg)
    "translate": 0.1,  # translation (+/- fraction)
    "scale": 0.5,  # scale gain (+/-)
    "shear": 0.0,  # shear (+/- deg)
    "perspective": 0.0,  # perspective (+/- fraction), 0-0.001
    "flipud": 0.0,  # probability of an up-down flip
    "fliplr": 0.5,  # probability of a left-right flip
    "mosaic": 1.0,  # probability of a 4-image mosaic
    "mixup": 0.0,  # probability of mixup (of two mosaics)
}
PAD_VALUE = 114


def xywhn_to_xyxy(xywhn: np.ndarray, w: float, h: float, padw: float = 0.0, padh: float = 0.0) -> np.ndarray:
    """(n, 4) normalised cx, cy, w, h -> pixel x1, y1, x2, y2 on a w×h image placed at (padw, padh)."""
    out = np.empty_like(xywhn, dtype=np.float32)
    out[:, 0] = w * (xywhn[:, 0] - xywhn[:, 2] / 2) + padw
    out[:, 1] = h * (xywhn[:, 1] - xywhn[:, 3] / 2) + padh
    out[:, 2] = w * (xywhn[:, 0] + xywhn[:, 2] / 2) + padw
    out[:, 3] = h * (xywhn[:, 1] + xywhn[:, 3] / 2) + padh
    return out


def xyxy_to_xywhn(xyxy: np.ndarray, w: int, h: int) -> np.ndarray:
    """(n, 4) pixel boxes -> normalised cx, cy, w, h, clipped to the w×h image."""
    b = xyxy.copy()
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
    out = np.empty_like(b, dtype=np.float32)
    out[:, 0] = (b[:, 0] + b[:, 2]) / 2 / w
    out[:, 1] = (b[:, 1] + b[:, 3]) / 2 / h
    out[:, 2] = (b[:, 2] - b[:, 0]) / w
    out[:, 3] = (b[:, 3] - b[:, 1]) / h
    return out


@dataclass
class Instances:
    """The objects of one image as augmentation moves them: classes (n,), boxes (n, 4) pixel xyxy and, for
    segmentation, their outlines: n polygons (k, 2) in pixels ((0, 2) for an object labelled by its box only);
    ``segments`` None for detection."""

    cls: np.ndarray
    boxes: np.ndarray
    segments: list[np.ndarray] | None = None

    @classmethod
    def placed(
        cls, labels: np.ndarray, segments: list[np.ndarray] | None, w: float, h: float, padw: float, padh: float
    ) -> Instances:
        """A record's normalised labels (n, 5) and outlines drawn on a w×h image placed at (padw, padh)."""
        boxes = xywhn_to_xyxy(labels[:, 1:], w, h, padw, padh)
        if segments is not None:
            segments = [(p * (w, h) + (padw, padh)).astype(np.float32) for p in segments]
        return cls(labels[:, 0].astype(np.float32), boxes, segments)

    @classmethod
    def concat(cls, parts: Sequence[Instances]) -> Instances:
        segments = None if parts[0].segments is None else [p for part in parts for p in part.segments]
        return cls(np.concatenate([p.cls for p in parts]), np.concatenate([p.boxes for p in parts]), segments)

    def __len__(self) -> int:
        return len(self.cls)

    def select(self, keep: np.ndarray) -> Instances:
        segments = None if self.segments is None else [self.segments[i] for i in np.flatnonzero(keep)]
        return Instances(self.cls[keep], self.boxes[keep], segments)

    def clip(self, width: float, height: float) -> None:
        """Boxes clipped to the image; outlines cut at its border (:func:`clip_polygon`)."""
        self.boxes[:, [0, 2]] = self.boxes[:, [0, 2]].clip(0, width)
        self.boxes[:, [1, 3]] = self.boxes[:, [1, 3]].clip(0, height)
        if self.segments is not None:
            self.segments = [clip_polygon(p, width, height) if len(p) else p for p in self.segments]

    def flip(self, axis: int, size: float) -> None:
        """Mirror along x (axis 0, image width ``size``) or y (axis 1)."""
        lo, hi = (0, 2) if axis == 0 else (1, 3)
        self.boxes[:, [lo, hi]] = size - self.boxes[:, [hi, lo]]
        if self.segments is not None:
            for p in self.segments:
                p[:, axis] = size - p[:, axis]


def clip_polygon(xy: np.ndarray, width: float, height: float) -> np.ndarray:
    """The part of polygon ``xy`` (k, 2) inside [0, width] × [0, height] (Sutherland–Hodgman, one image side at a
    time); (0, 2) when nothing is inside."""
    xy = np.asarray(xy, np.float64)
    for axis, limit, sign in ((0, 0.0, 1.0), (0, width, -1.0), (1, 0.0, 1.0), (1, height, -1.0)):
        if not len(xy):
            break
        d = sign * (xy[:, axis] - limit)  # >= 0 inside this side
        d_next = np.roll(d, -1)
        inside, crossing = d >= 0, (d >= 0) != (d_next >= 0)
        t = np.divide(d, d - d_next, out=np.zeros_like(d), where=crossing)
        cut = xy + (np.roll(xy, -1, axis=0) - xy) * t[:, None]
        cut[:, axis] = limit
        # Each edge p_i -> p_i+1 gives p_i if it is inside, then the crossing point if the edge crosses the side.
        xy = np.stack([xy, cut], 1)[np.stack([inside, crossing], 1)]
    return xy.astype(np.float32).reshape(-1, 2)


def polygons_to_masks(
    polygons: Sequence[np.ndarray], height: int, width: int, downsample: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """One mask for the objects of an image, at 1/``downsample`` of its size (Ultralytics' ``overlap_mask``).

    Pixel value j + 1 marks the object ranked j by area, largest first, so where outlines overlap the smaller
    object is on top. At ``downsample`` 1 (validation) the outlines are drawn by pycocotools, so that mask IoU is
    COCO's. Returns the mask (height/downsample, width/downsample) int32 and the ranking (the object
    index of each value).
    """
    h, w = height // downsample, width // downsample
    masks = np.zeros((len(polygons), h, w), np.uint8)
    full = np.zeros((h * downsample, w * downsample), np.uint8)
    for m, p in zip(masks, polygons):
        if len(p) >= 3 and downsample == 1:  # at full size, drawn as COCO draws outlines (pycocotools)
            m[:] = mask_utils.decode(mask_utils.frPyObjects([p.astype(np.float64).ravel().tolist()], h, w))[..., 0]
        elif len(p) >= 3:
            # Drawn at the image's size and area-averaged down, a mask pixel on when more than half covered (cv2
            # fills a polygon's boundary pixels too, a one-pixel bias at full size). cv2 puts integer coordinates
            # at pixel centres, ours at pixel edges: hence the - 0.5.
            full[:] = 0
            cv2.fillPoly(full, [np.round((p - 0.5) * 16).astype(np.int32)], 255, cv2.LINE_8, 4)
            m[:] = cv2.resize(full, (w, h), interpolation=cv2.INTER_AREA) > 127
    order = np.argsort(-masks.sum((1, 2)), kind="stable")
    out = np.zeros((h, w), np.int32)
    for rank, i in enumerate(order):
        out[masks[i] > 0] = rank + 1
    return out, order


def stride_multiple(imgsz: int, stride: int) -> int:
    """``imgsz`` rounded up to a multiple of the model's largest stride (with a warning when it changes)."""
    size = math.ceil(imgsz / stride) * stride
    if size != imgsz:
        logging.getLogger("gmyolo").warning(
            "--imgsz %d is not a multiple of the largest stride %d; using %d", imgsz, stride, size
        )
    return size


def letterbox(
    im: np.ndarray,
    new_shape: int | tuple[int, int] = 640,
    scaleup: bool = True,
    auto: bool = False,
    stride: int = 32,
) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize keeping the aspect ratio and pad to ``new_shape`` (h, w) with grey.

    Returns the image, the scale applied and the (left, top) padding in pixels. ``auto`` pads only
    to the next multiple of ``stride`` (minimum rectangle) instead of the full shape.
    """
    h0, w0 = im.shape[:2]
    nh, nw = (new_shape, new_shape) if isinstance(new_shape, int) else new_shape
    r = min(nh / h0, nw / w0)
    if not scaleup:
        r = min(r, 1.0)
    uh, uw = int(round(h0 * r)), int(round(w0 * r))
    dw, dh = nw - uw, nh - uh
    if auto:
        dw, dh = dw % stride, dh % stride
    dw, dh = dw / 2, dh / 2
    if (uh, uw) != (h0, w0):
        im = cv2.resize(im, (uw, uh), interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    im = cv2.copyMakeBorder(im, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    return im, r, (left, top)


def box_candidates(before: np.ndarray, after: np.ndarray, wh_thr=2.0, ar_thr=100.0, area_thr=0.1) -> np.ndarray:
    """Keep boxes (n, 4 xyxy) that stay > wh_thr px, keep > area_thr of their area and are not sliver-thin."""
    w1, h1 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w2, h2 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    ar = np.maximum(w2 / (h2 + 1e-16), h2 / (w2 + 1e-16))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + 1e-16) > area_thr) & (ar < ar_thr)


def random_affine(
    im: np.ndarray,
    objects: Instances,
    rng: np.random.Generator,
    degrees: float = 0.0,
    translate: float = 0.1,
    scale: float = 0.5,
    shear: float = 0.0,
    perspective: float = 0.0,
    border: tuple[int, int] = (0, 0),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random perspective/affine warp (YOLOv5's random_perspective).

    ``border`` (negative) crops: a 2s×2s mosaic with border (-s/2, -s/2) comes out s×s. Returns the image and
    the objects kept (those :func:`box_candidates` accepts), moved: a box becomes the box of its warped corners,
    an outline is warped and cut at the image border, and its box is the box of what is left (YOLOv5-seg keeps
    objects down to 1% of their area then, 10% otherwise).
    """
    height = im.shape[0] + border[0] * 2
    width = im.shape[1] + border[1] * 2

    C = np.eye(3)  # move the centre to the origin
    C[0, 2], C[1, 2] = -im.shape[1] / 2, -im.shape[0] / 2
    P = np.eye(3)
    P[2, 0], P[2, 1] = rng.uniform(-perspective, perspective), rng.uniform(-perspective, perspective)
    R = np.eye(3)
    s = rng.uniform(1 - scale, 1 + scale)
    R[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=rng.uniform(-degrees, degrees), scale=s)
    S = np.eye(3)
    S[0, 1] = math.tan(rng.uniform(-shear, shear) * math.pi / 180)
    S[1, 0] = math.tan(rng.uniform(-shear, shear) * math.pi / 180)
    T = np.eye(3)
    T[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * width
    T[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * height
    M = T @ S @ R @ P @ C  # right to left: centre, perspective, rotate+scale, shear, translate

    if border[0] != 0 or border[1] != 0 or (M != np.eye(3)).any():
        if perspective:
            im = cv2.warpPerspective(im, M, dsize=(width, height), borderValue=(PAD_VALUE,) * 3)
        else:
            im = cv2.warpAffine(im, M[:2], dsize=(width, height), borderValue=(PAD_VALUE,) * 3)

    n, boxes = len(objects), objects.boxes
    if not n:
        return im, objects

    def warp(points: np.ndarray) -> np.ndarray:
        h = np.ones((len(points), 3))
        h[:, :2] = points
        h = h @ M.T
        return h[:, :2] / h[:, 2:3] if perspective else h[:, :2]

    xy = warp(boxes[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(n * 4, 2)).reshape(n, 8)  # x1y1, x2y2, x1y2, x2y1
    x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
    new = np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], 1)
    new[:, [0, 2]] = new[:, [0, 2]].clip(0, width)
    new[:, [1, 3]] = new[:, [1, 3]].clip(0, height)
    segments = objects.segments
    if segments is not None:
        segments = [clip_polygon(warp(p), width, height) if len(p) else p for p in segments]
        for i, p in enumerate(segments):
            if len(objects.segments[i]):  # the box of what is left of the outline (none: an empty box)
                new[i] = [*p.min(0), *p.max(0)] if len(p) else 0.0
    keep = box_candidates(boxes * s, new, area_thr=0.1 if segments is None else 0.01)
    moved = Instances(objects.cls, new.astype(np.float32), segments)
    return im, moved.select(keep)


def augment_hsv(im: np.ndarray, rng: np.random.Generator, hgain=0.5, sgain=0.5, vgain=0.5) -> None:
    """Random hue, saturation and value gains, in place, through lookup tables."""
    if not (hgain or sgain or vgain):
        return
    r = rng.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    hue, sat, val = cv2.split(cv2.cvtColor(im, cv2.COLOR_BGR2HSV))
    x = np.arange(0, 256, dtype=r.dtype)
    lut_hue = ((x * r[0]) % 180).astype(np.uint8)
    lut_sat = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR, dst=im)


def mixup(im: np.ndarray, objects: Instances, im2: np.ndarray, objects2: Instances, rng: np.random.Generator):
    """Blend two images (ratio ~ Beta(32, 32)) and keep the objects of both."""
    r = rng.beta(32.0, 32.0)
    im = (im * r + im2 * (1 - r)).astype(np.uint8)
    return im, Instances.concat([objects, objects2])
