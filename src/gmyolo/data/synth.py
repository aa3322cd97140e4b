"""The built-in synthetic detection dataset: filled shapes on textured backgrounds, in YOLO format.

It is the default data of the quick start and of the end-to-end tests. Classes are shapes (``circle``,
``square``, ``triangle``, ``cross``); each class takes its colours from its own, overlapping hue band, so
colour hints at the class and shape settles it (with fully random colours a small detector needs far
more than a few CPU minutes to learn colour-invariant shape features). Sizes, positions, rotations and
backgrounds are random. Everything is drawn from ``seed``: every image has
its own generator seeded by ``(seed, split, index)``, so the same seed gives the same files.

Layout written under ``out_dir``::

    data.yaml                     path: ., train: images/train, val: images/val, nc, names
    images/train/00000.png ...    PNG, imgsz x imgsz or (about half of them) each side in [0.75, 1] x imgsz
    labels/train/00000.txt ...    "class cx cy w h" per object, normalised; empty for images without objects
    images/val/..., labels/val/...

With ``segments=True`` (``gmyolo data synth --segments``) each label line is instead the shape's exact outline,
``class x1 y1 x2 y2 ...`` (its vertices, normalised; a circle is drawn as the 64-gon it is labelled with), and
shapes never overlap, so that every outline is also the object's visible region.
"""

from __future__ import annotations

import logging
import math
import operator
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ..utils.files import atomic_write
from .opencv import cv2

__all__ = ["SYNTH_CLASSES", "make_synthetic_dataset"]

LOGGER = logging.getLogger("gmyolo")

SYNTH_CLASSES = ("circle", "square", "triangle", "cross")
SPLITS = ("train", "val")
# First line of every data.yaml we write: only a folder carrying it is ever overwritten.
MARKER = "# gmyolo synthetic dataset (gmyolo data synth): images/ and labels/ are rewritten by it"
EMPTY_FRACTION = 0.05  # images without objects
MIN_SIZE, MAX_SIZE = 0.08, 0.45  # longer box side, as a fraction of the shorter image side
MAX_BOX_IOU = 0.5  # placements overlapping an earlier box more than this are rejected
MIN_VISIBLE = 0.6  # ... and so are placements leaving less than this fraction of an earlier shape visible
PLACEMENT_TRIES = 30
MIN_CONTRAST = 70.0  # 10th percentile of the BGR distance between an object and the background it covers
COLOUR_TRIES = 20
HUE_SPREAD = 35.0  # each class draws colours from its own hue band (+-35 degrees, bands overlap): colour
# hints at the class, shape decides it where bands overlap or colours are pale — quick to learn, not trivial
_SHIFT = 4  # cv2 fixed-point bits: vertices at 1/16 px
_SS = 4  # supersampling factor of the shape masks
_NAME_RE = re.compile(r"^(\d+)\.(png|txt)$")


@dataclass
class _Shape:
    cls: int
    polygon: np.ndarray  # (k, 2) float vertices in pixels, pixel i spanning [i, i + 1)
    box: np.ndarray  # (4,) float x0 y0 x1 y1 in pixels
    alpha: np.ndarray  # (h, w) uint8 anti-aliased coverage, 0..255
    visible: np.ndarray  # (h, w) bool, solid pixels not covered by later shapes
    area: int  # solid pixels of the whole shape


def _unit_polygon(rng: np.random.Generator, name: str) -> np.ndarray:
    """Vertices (k, 2) of a shape around the origin, rotated; the scale is set later from its box."""
    if name == "circle":
        a = np.linspace(0.0, 2.0 * np.pi, 64, endpoint=False)  # 64 = 4 * 16: extremes hit the axes exactly
        return np.stack([np.cos(a), np.sin(a)], axis=1)
    if name == "square":
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
        angle = rng.uniform(-30.0, 30.0)
    elif name == "triangle":
        # Roughly equilateral, apex up (image y grows downwards); small jitter so not all triangles are alike.
        a = np.deg2rad(-90.0 + 120.0 * np.arange(3) + rng.uniform(-6.0, 6.0, 3))
        r = rng.uniform(0.9, 1.1, 3)
        pts = np.stack([r * np.cos(a), r * np.sin(a)], axis=1)
        angle = rng.uniform(-40.0, 40.0)
    elif name == "cross":
        t = rng.uniform(0.25, 0.38)  # half bar thickness, relative to the half bar length
        arm = np.array([[-t, -1], [t, -1], [t, -t]], dtype=np.float64)  # top bar end and the inner corner
        quarters = [arm]
        for _ in range(3):
            quarters.append(quarters[-1][:, ::-1] * (-1.0, 1.0))  # rotate by 90 degrees: (x, y) -> (-y, x)
        pts = np.concatenate(quarters)
        angle = rng.uniform(-30.0, 30.0)
    else:
        raise ValueError(f"unknown synthetic shape {name!r}; known: {', '.join(SYNTH_CLASSES)}")
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return pts @ np.array([[c, s], [-s, c]])


def _place(rng: np.random.Generator, name: str, size: float, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A shape whose box has longer side ``size`` px, at a random position fully inside the image.

    Returns the polygon (k, 2) and its box (4,) x0 y0 x1 y1, in pixel-edge coordinates.
    """
    pts = _unit_polygon(rng, name)
    lo = pts.min(axis=0)
    span = pts.max(axis=0) - lo
    pts = (pts - lo) * (size / span.max())
    bw, bh = span * (size / span.max())
    offset = np.array([rng.uniform(0.0, max(w - bw, 0.0)), rng.uniform(0.0, max(h - bh, 0.0))])
    pts = pts + offset
    box = np.array([offset[0], offset[1], offset[0] + bw, offset[1] + bh])
    box = np.clip(box, 0.0, [w, h, w, h])
    return pts, box


def _rasterize(poly: np.ndarray, h: int, w: int) -> np.ndarray:
    """Anti-aliased coverage (h, w) uint8 of a filled polygon given in pixel-edge coordinates.

    Drawn 4x supersampled and area-averaged: cv2's own LINE_AA polygon fill spills up to a pixel or more
    past the true edges, which would make the labelled boxes loose.
    """
    mask = np.zeros((h, w), dtype=np.uint8)
    x0, y0 = (max(int(math.floor(v)), 0) for v in poly.min(axis=0))
    x1, y1 = math.ceil(poly[:, 0].max()), math.ceil(poly[:, 1].max())
    x1, y1 = min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return mask
    # cv2 puts integer coordinates at pixel centres; ours put them at pixel edges, hence the -0.5.
    local = (poly - (x0, y0)) * _SS - 0.5
    fine = np.zeros(((y1 - y0) * _SS, (x1 - x0) * _SS), dtype=np.uint8)
    cv2.fillPoly(fine, [np.round(local * (1 << _SHIFT)).astype(np.int32)], 255, cv2.LINE_8, _SHIFT)
    mask[y0:y1, x0:x1] = cv2.resize(fine, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    return mask


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def _background(rng: np.random.Generator, h: int, w: int, plain: bool) -> np.ndarray:
    """A background (h, w, 3) float32 BGR in [0, 255]: gradients, low-frequency blobs, stripes, faint lines."""
    if plain:
        return np.broadcast_to(rng.uniform(0.0, 255.0, 3).astype(np.float32), (h, w, 3)).copy()
    yy, xx = np.ogrid[0:h, 0:w]
    xx, yy = xx.astype(np.float32), yy.astype(np.float32)

    def gradient() -> np.ndarray:
        c0, c1 = rng.uniform(0.0, 255.0, (2, 3)).astype(np.float32)
        a = rng.uniform(0.0, 2.0 * np.pi)
        t = xx * math.cos(a) + yy * math.sin(a)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        return c0 + (c1 - c0) * t[..., None]

    def blobs() -> np.ndarray:
        gy, gx = rng.integers(2, 7, size=2)
        small = rng.uniform(0.0, 255.0, (gy, gx, 3)).astype(np.float32)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)

    first, second = (gradient, blobs) if rng.random() < 0.5 else (blobs, gradient)
    img = first()
    if rng.random() < 0.3:
        img = 0.5 * (img + second())
    if rng.random() < 0.4:
        period, a, phase = rng.uniform(6.0, 40.0), rng.uniform(0.0, np.pi), rng.uniform(0.0, 2.0 * np.pi)
        wave = np.sin((xx * math.cos(a) + yy * math.sin(a)) * (2.0 * np.pi / period) + phase)
        tint = rng.uniform(0.3, 1.0, 3).astype(np.float32)
        img = img + rng.uniform(8.0, 30.0) * wave[..., None] * tint
    if rng.random() < 0.3:
        # Thin faint lines: clutter with edges that are not objects.
        layer = np.array(img, dtype=np.float32)  # a copy: the lines are blended in faintly below
        for _ in range(int(rng.integers(1, 5))):
            p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            colour = tuple(float(c) for c in rng.uniform(0.0, 255.0, 3))
            cv2.line(layer, p1, p2, colour, int(rng.integers(1, 3)), cv2.LINE_AA)
        a = rng.uniform(0.2, 0.5)
        img = img * (1.0 - a) + layer * a
    return np.clip(img, 0.0, 255.0).astype(np.float32)


def _class_colour(rng: np.random.Generator, hue: float) -> np.ndarray:
    """A BGR colour whose hue lies within +-HUE_SPREAD degrees of ``hue`` (0..360), any saturation and value."""
    h = ((hue + rng.uniform(-HUE_SPREAD, HUE_SPREAD)) % 360.0) / 2.0  # OpenCV hue is 0..180
    hsv = np.uint8([[[round(h) % 180, round(rng.uniform(90, 255)), round(rng.uniform(70, 255))]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _pick_colour(rng: np.random.Generator, under: np.ndarray, hue: float) -> np.ndarray:
    """A BGR colour (3,) near the class hue, standing out from the background pixels ``under`` (k, 3)."""
    best, best_score = None, -1.0
    for _ in range(COLOUR_TRIES):
        colour = _class_colour(rng, hue)
        score = float(np.percentile(np.linalg.norm(under - colour, axis=1), 10)) if len(under) else MIN_CONTRAST
        if score >= MIN_CONTRAST:
            return colour
        if score > best_score:
            best, best_score = colour, score
    return best


def _render_image(
    rng: np.random.Generator,
    h: int,
    w: int,
    shapes: Sequence[str],
    n_objects: int,
    *,
    plain: bool = False,
    apart: bool = False,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Draw one image with up to ``n_objects`` shapes (fewer when no placement fits).

    Returns the image (h, w, 3) uint8 BGR, labels (n, 5) float64 [cls, cx, cy, w, h] normalised, each
    object's coverage mask (h, w) uint8 (for checks) and its outline (k, 2) in pixels. ``plain``: a flat
    background, no noise and no blur. ``apart``: no shape touches another (outlines are the visible regions).
    """
    img = _background(rng, h, w, plain)
    side = min(h, w)
    placed: list[_Shape] = []
    for _ in range(n_objects):
        for _ in range(PLACEMENT_TRIES):
            cls = int(rng.integers(len(shapes)))
            size = side * math.exp(rng.uniform(math.log(MIN_SIZE), math.log(MAX_SIZE)))
            poly, box = _place(rng, shapes[cls], size, h, w)
            if any(_box_iou(box, p.box) > MAX_BOX_IOU for p in placed):
                continue
            alpha = _rasterize(poly, h, w)
            solid = alpha > 127
            area = int(np.count_nonzero(solid))
            if area == 0:
                continue
            if any(np.count_nonzero(p.visible & ~solid) < MIN_VISIBLE * p.area for p in placed):
                continue  # it would hide most of an earlier shape
            if apart and any(((p.alpha > 0) & (alpha > 0)).any() for p in placed):
                continue
            for p in placed:
                p.visible &= ~solid
            placed.append(_Shape(cls, poly, box, alpha, solid.copy(), area))
            break

    for p in placed:
        x0, y0 = max(int(p.box[0]) - 1, 0), max(int(p.box[1]) - 1, 0)
        x1, y1 = min(math.ceil(p.box[2]) + 1, w), min(math.ceil(p.box[3]) + 1, h)
        roi = img[y0:y1, x0:x1]
        a = p.alpha[y0:y1, x0:x1].astype(np.float32)[..., None] * (1.0 / 255.0)
        colour = _pick_colour(rng, roi[a[..., 0] > 0.5], hue=360.0 * p.cls / len(shapes))
        # A soft linear shading across the object, so objects are not perfectly flat patches.
        yy, xx = np.ogrid[y0:y1, x0:x1]
        d = rng.uniform(0.0, 2.0 * np.pi)
        scale = rng.uniform(0.0, 25.0) / max(float(p.box[2] - p.box[0]), 1.0)
        shade = ((xx - (x0 + x1) / 2.0) * math.cos(d) + (yy - (y0 + y1) / 2.0) * math.sin(d)) * scale
        obj = colour + shade[..., None].astype(np.float32)
        img[y0:y1, x0:x1] = roi * (1.0 - a) + obj * a

    if not plain:
        if rng.random() < 0.25:
            img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.0))
        img = img + rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(rng.uniform(0.0, 10.0))
    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    labels = np.zeros((len(placed), 5), dtype=np.float64)
    for i, p in enumerate(placed):
        x0, y0, x1, y1 = p.box
        labels[i] = (p.cls, (x0 + x1) / (2 * w), (y0 + y1) / (2 * h), (x1 - x0) / w, (y1 - y0) / h)
    return out, labels, [p.alpha for p in placed], [p.polygon for p in placed]


def _image_size(rng: np.random.Generator, imgsz: int) -> tuple[int, int]:
    """(h, w): imgsz x imgsz for about half the images, else each side in [0.75 * imgsz, imgsz]."""
    if rng.random() < 0.5:
        return imgsz, imgsz
    lo = math.ceil(0.75 * imgsz)
    return int(rng.integers(lo, imgsz + 1)), int(rng.integers(lo, imgsz + 1))


def _label_text(labels: np.ndarray) -> str:
    return "".join(f"{int(c)} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}\n" for c, cx, cy, bw, bh in labels)


def _polygon_text(labels: np.ndarray, polygons: list[np.ndarray], h: int, w: int) -> str:
    """One ``class x1 y1 x2 y2 ...`` line per object: its vertices normalised by the image size."""
    lines = []
    for cls, poly in zip(labels[:, 0], polygons):
        xy = (poly / (w, h)).clip(0.0, 1.0)
        lines.append(f"{int(cls)} " + " ".join(f"{v:.6f}" for v in xy.ravel()) + "\n")
    return "".join(lines)


def _check_int(name: str, value: object, minimum: int) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"make_synthetic_dataset: {name} must be an integer >= {minimum}, got {value!r}") from None
    if v < minimum:
        raise ValueError(f"make_synthetic_dataset: {name} must be >= {minimum}, got {v}")
    return v


def _check_classes(classes: object) -> tuple[str, ...]:
    if isinstance(classes, str) or not isinstance(classes, Sequence):
        raise ValueError(f"make_synthetic_dataset: classes must be a sequence of shape names, got {classes!r}")
    names = tuple(classes)
    if not names:
        raise ValueError(f"make_synthetic_dataset: classes is empty; choose from {', '.join(SYNTH_CLASSES)}")
    unknown = [n for n in names if n not in SYNTH_CLASSES]
    if unknown:
        raise ValueError(
            f"make_synthetic_dataset: unknown classes {unknown}; the synthetic shapes are {', '.join(SYNTH_CLASSES)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"make_synthetic_dataset: classes has duplicates: {list(names)}")
    return names


def _check_out_dir(out: Path) -> None:
    """Refuse folders holding data we did not write: only our own dataset is ever overwritten."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    yaml_path = out / "data.yaml"
    if yaml_path.exists():
        try:
            first = yaml_path.read_text(errors="replace").split("\n", 1)[0]
        except OSError as e:
            raise ValueError(f"{yaml_path}: cannot be read ({e})") from None
        if first.strip() != MARKER:
            raise ValueError(
                f"{yaml_path}: not a gmyolo synthetic dataset; refusing to overwrite it (choose another output folder)"
            )
        return
    for sub in ("images", "labels"):
        for split in SPLITS:
            d = out / sub / split
            if d.is_dir() and any(d.iterdir()):
                raise ValueError(
                    f"{d}: holds files but {out} has no synthetic data.yaml; refusing to write into it "
                    "(choose an empty or new output folder)"
                )


def _remove_stale(folder: Path, suffix: str, n: int, digits: int) -> None:
    """Delete files of an earlier, larger (or differently numbered) run; other files are left alone."""
    for f in folder.iterdir():
        m = _NAME_RE.match(f.name)
        if m and f.suffix == suffix and f.is_file():
            i = int(m.group(1))
            if i >= n or f.name != f"{i:0{digits}d}{suffix}":
                f.unlink()


def make_synthetic_dataset(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    n_train: int = 256,
    n_val: int = 64,
    imgsz: int = 256,
    max_objects: int = 4,
    classes: Sequence[str] = SYNTH_CLASSES,
    segments: bool = False,
) -> Path:
    """Write the synthetic shapes dataset under ``out_dir`` and return the path of its ``data.yaml``.

    ``n_train``/``n_val`` images per split, about ``imgsz`` px each, 1..``max_objects`` objects per image
    (about 5% of the images have none), class ids in the order of ``classes`` (a subset of SYNTH_CLASSES).
    The same arguments give the same files. An existing synthetic dataset in ``out_dir`` is overwritten;
    a folder holding other image or label data is refused (ValueError). ``segments``: polygon labels (each shape's
    exact outline) and no overlapping shapes, for instance segmentation.
    """
    seed = _check_int("seed", seed, 0)
    n_train = _check_int("n_train", n_train, 1)
    n_val = _check_int("n_val", n_val, 1)
    imgsz = _check_int("imgsz", imgsz, 32)
    max_objects = _check_int("max_objects", max_objects, 1)
    names = _check_classes(classes)
    out = Path(out_dir)
    _check_out_dir(out)
    t0 = time.perf_counter()

    out.mkdir(parents=True, exist_ok=True)
    yaml_path = out / "data.yaml"
    spec = {"path": ".", "train": "images/train", "val": "images/val", "nc": len(names), "names": list(names)}
    # Written first, so that an interrupted run leaves a folder a rerun recognises and overwrites.
    atomic_write(yaml_path, (MARKER + "\n" + yaml.safe_dump(spec, sort_keys=False)).encode())

    png_params = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # fast; the files stay lossless
    for code, (split, n) in enumerate(zip(SPLITS, (n_train, n_val))):
        img_dir, lbl_dir = out / "images" / split, out / "labels" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        lbl_dir.mkdir(parents=True, exist_ok=True)
        digits = max(5, len(str(n - 1)))
        for i in range(n):
            rng = np.random.default_rng([seed, code, i])
            h, w = _image_size(rng, imgsz)
            k = 0 if rng.random() < EMPTY_FRACTION else int(rng.integers(1, max_objects + 1))
            img, labels, _, polygons = _render_image(rng, h, w, names, k, apart=segments)
            stem = f"{i:0{digits}d}"
            ok, buf = cv2.imencode(".png", img, png_params)
            if not ok:
                raise OSError(f"{img_dir / (stem + '.png')}: PNG encoding failed")
            atomic_write(img_dir / f"{stem}.png", buf.tobytes())
            text = _polygon_text(labels, polygons, h, w) if segments else _label_text(labels)
            atomic_write(lbl_dir / f"{stem}.txt", text.encode())
        _remove_stale(img_dir, ".png", n, digits)
        _remove_stale(lbl_dir, ".txt", n, digits)
    LOGGER.debug("synth: wrote %d + %d images to %s in %.1fs", n_train, n_val, out, time.perf_counter() - t0)
    return yaml_path
