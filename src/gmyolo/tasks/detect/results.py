"""What a prediction returns: boxes, scores and classes of one image, with ways to draw, save and serialise them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ...data.plots import class_colour, draw_masks
from ...utils.files import atomic_write
from .coco_eval import mask_rle

__all__ = ["Results", "draw_detections"]


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    names: dict[int, str],
    line_width: int | None = None,
    labels: bool = True,
    show_conf: bool = True,
) -> np.ndarray:
    """A copy of the BGR ``image`` with n×4 xyxy ``boxes`` drawn, labelled 'name score' in the class colour."""
    out = image.copy()
    lw = line_width or max(round(sum(out.shape[:2]) / 2 * 0.003), 2)
    font_scale = lw / 3
    thickness = max(lw - 1, 1)
    for box, score, c in zip(boxes, scores, classes):
        colour = class_colour(int(c))
        p1, p2 = (int(box[0]), int(box[1])), (int(box[2]), int(box[3]))
        cv2.rectangle(out, p1, p2, colour, lw, cv2.LINE_AA)
        if not labels:
            continue
        text = names.get(int(c), str(int(c))) + (f" {score:.2f}" if show_conf else "")
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        above = p1[1] - th - 3 >= 0  # label above the box when it fits, else inside it
        top = p1[1] - th - 3 if above else p1[1]
        cv2.rectangle(out, (p1[0], top), (p1[0] + tw, top + th + 3), colour, -1, cv2.LINE_AA)
        brightness = 0.114 * colour[0] + 0.587 * colour[1] + 0.299 * colour[2]
        ink = (0, 0, 0) if brightness > 140 else (255, 255, 255)
        cv2.putText(out, text, (p1[0], top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, ink, thickness, cv2.LINE_AA)
    return out


@dataclass
class Results:
    """Detections of one image (or video frame), in original image pixels.

    ``boxes`` n×4 xyxy, ``scores`` n, ``classes`` n (int64), best first. ``image`` is the original BGR
    image (kept so that :meth:`plot` works; None when predict was asked not to keep it). ``masks``: a
    segmentation model's n×H×W bool masks at the image's size (None for detection).
    """

    path: str
    orig_shape: tuple[int, int]  # (height, width)
    boxes: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor
    names: dict[int, str]
    image: np.ndarray | None = None
    frame: int | None = None  # frame index for videos
    speed: dict[str, float] = field(default_factory=dict)  # ms: preprocess, inference, nms
    masks: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def xywhn(self) -> torch.Tensor:
        """n×4 normalised centre x, centre y, width, height (the YOLO label format)."""
        h, w = self.orig_shape
        b = self.boxes
        return torch.stack(((b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h, (b[:, 2] - b[:, 0]) / w,
                            (b[:, 3] - b[:, 1]) / h), 1)  # fmt: skip

    def summary(self) -> str:
        """'2 circles, 1 square' (counts per class, most frequent first), or 'no detections'."""
        if not len(self):
            return "no detections"
        counts = torch.bincount(self.classes)
        order = sorted(counts.nonzero().flatten().tolist(), key=lambda c: -int(counts[c]))
        return ", ".join(f"{int(counts[c])} {self.names.get(c, str(c))}" for c in order)

    def plot(self, line_width: int | None = None, labels: bool = True, conf: bool = True) -> np.ndarray:
        """The original image (BGR) with the detections drawn on a copy."""
        if self.image is None:
            raise ValueError(f"{self.path}: the image was not kept; predict with keep_images=True to plot")
        image = self.image if self.masks is None else draw_masks(self.image, self.masks.numpy(), self.classes.numpy())
        return draw_detections(
            image, self.boxes.numpy(), self.scores.numpy(), self.classes.numpy(), self.names, line_width, labels, conf
        )

    def save(self, path: str | os.PathLike, **plot_kwargs: Any) -> Path:
        """Write the annotated image (format from the suffix), atomically."""
        path = Path(path)
        ok, buf = cv2.imencode(path.suffix or ".jpg", self.plot(**plot_kwargs))
        if not ok:
            raise ValueError(f"cannot encode an image as {path.suffix!r}: {path}")
        atomic_write(path, buf.tobytes())
        return path

    def txt_lines(self, save_conf: bool = False) -> list[str]:
        """YOLO-format lines 'class cx cy w h [score]', normalised to the original image; with masks the
        segmentation format 'class x1 y1 x2 y2 ... [score]' (each mask's outer outline, :meth:`polygons`)."""
        rows = []
        shapes = self.polygons() if self.masks is not None else [[*xywh] for xywh in self.xywhn.tolist()]
        for c, values, s in zip(self.classes.tolist(), shapes, self.scores.tolist()):
            rows.append(" ".join([str(c), *(f"{v:.6f}" for v in values), *([f"{s:.5f}"] if save_conf else [])]))
        return rows

    def polygons(self) -> list[list[float]]:
        """Each mask's outline, normalised x1 y1 x2 y2 ...: its largest outer contour (an empty mask: no points)."""
        h, w = self.orig_shape
        out = []
        for m in self.masks.numpy().astype(np.uint8):
            contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            points = max(contours, key=cv2.contourArea).reshape(-1, 2) if contours else np.zeros((0, 2))
            out.append((points / (w, h)).ravel().tolist())
        return out

    def save_txt(self, path: str | os.PathLike, save_conf: bool = False) -> Path:
        """The labels file; with masks also ``masks/<stem>.png`` beside ``labels/`` (pixel value i + 1: the i-th
        line's object, 0 background; 16-bit when there are more than 255)."""
        lines = self.txt_lines(save_conf)
        atomic_write(path, "".join(f"{line}\n" for line in lines))
        if self.masks is not None:
            png = Path(path).parent.parent / "masks" / (Path(path).stem + ".png")
            png.parent.mkdir(exist_ok=True)
            index = np.zeros(self.orig_shape, np.uint16 if len(self.masks) > 255 else np.uint8)
            for i, m in enumerate(self.masks.numpy()):
                index[m] = i + 1
            ok, buf = cv2.imencode(".png", index)
            if not ok:
                raise ValueError(f"cannot encode the mask image {png}")
            atomic_write(png, buf.tobytes())
        return Path(path)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the image, its size, and one entry per detection with class, name, score, box (xyxy px);
        with masks also each one's ``mask`` as COCO run-length encoding (``{"size": [h, w], "counts": str}``)."""
        detections = [
            {"class": c, "name": self.names.get(c, str(c)), "score": round(s, 5), "box": [round(v, 2) for v in b]}
            for b, s, c in zip(self.boxes.tolist(), self.scores.tolist(), self.classes.tolist())
        ]
        if self.masks is not None:
            for detection, rle in zip(detections, mask_rle(self.masks)):
                detection["mask"] = rle
        return {
            "image": self.path,
            **({"frame": self.frame} if self.frame is not None else {}),
            "height": self.orig_shape[0],
            "width": self.orig_shape[1],
            "detections": detections,
        }

    def __repr__(self) -> str:
        where = f"{self.path}" + (f" frame {self.frame}" if self.frame is not None else "")
        return f"Results({where}: {self.summary()})"
