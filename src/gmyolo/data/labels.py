"""Checking every image and label file once, and caching the result.

Each image is opened and verified; each label line is parsed and checked (column count, numbers,
finite values, class ids inside ``names``, box inside the image, positive size, duplicates). A line is a box
``class cx cy w h`` or a segmentation polygon ``class x1 y1 x2 y2 x3 y3 ...`` (normalised, 3 points or more),
which keeps its outline beside its bounding box. Bad lines are dropped or fixed as a user would want — never
the whole image for one bad line — and every problem is reported with its file and line. Source files are never
modified. The result is cached beside the labels (``labels/<split>.cache``, JSON) and rebuilt when any file
changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..utils.files import atomic_write
from .config import DatasetError, label_path

__all__ = ["ImageRecord", "Problem", "LabelSummary", "verify_image", "parse_label_file", "load_labels"]

LOGGER = logging.getLogger("gmyolo")
CACHE_VERSION = 3  # bump whenever the checking rules change
MAX_SHOWN_PROBLEMS = 20
MAX_LABEL_BYTES = 16 * 1024 * 1024  # a label file larger than this is not a label file
BORDER_TOLERANCE = 1e-3  # boxes overhanging the border by less are clipped silently (rounding in label tools)


@dataclass
class Problem:
    file: str
    line: int | None  # 1-based; None for a whole-file problem
    message: str
    action: str  # "skipped image", "dropped line", "fixed", "removed duplicates", "used"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message} ({self.action})"


@dataclass
class ImageRecord:
    """One usable image: its size after EXIF rotation and its boxes, (n, 5) float32 [cls, cx, cy, w, h] normalised.

    ``segments``: when the label file has polygons, one (k, 2) float32 array of normalised x, y per box (a box line
    has none: (0, 2)); empty when it has only boxes.
    """

    image: Path
    height: int
    width: int
    labels: np.ndarray
    segments: list[np.ndarray] = field(default_factory=list)


@dataclass
class LabelSummary:
    images: int = 0  # usable images
    with_labels: int = 0
    empty: int = 0  # usable images without objects (background)
    missing_labels: int = 0  # images without a label file (counted as background)
    skipped_images: int = 0
    instances: int = 0
    problems: list[Problem] = field(default_factory=list)

    def line(self, prefix: str) -> str:
        actions = Counter(p.action for p in self.problems)
        detail = ", ".join(f"{n} {a}" for a, n in actions.items())
        return (
            f"{prefix}: {self.images} images, {self.instances} boxes, {self.with_labels} labelled, "
            f"{self.empty} background ({self.missing_labels} without a label file), "
            f"{len(self.problems)} problems" + (f" ({detail})" if detail else "")
        )


def verify_image(path: Path) -> tuple[tuple[int, int] | None, Problem | None]:
    """(height, width) after EXIF rotation, or None with the reason the image cannot be used."""
    try:
        with Image.open(path) as im:
            im.verify()  # structure check without decoding everything
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im) if im.getexif().get(0x0112, 1) != 1 else im
            width, height = im.size
            fmt = (im.format or "").lower()
    except Exception as e:  # PIL raises many types for broken files
        return None, Problem(str(path), None, f"unreadable image ({type(e).__name__}: {e})", "skipped image")
    if width < 10 or height < 10:
        return None, Problem(str(path), None, f"image too small ({width}x{height})", "skipped image")
    if fmt == "jpeg":
        with open(path, "rb") as f:
            f.seek(-2, os.SEEK_END)
            if f.read() != b"\xff\xd9":
                return (height, width), Problem(
                    str(path), None, "truncated JPEG (no end marker); the decodable part is used", "used"
                )
    return (height, width), None


def column_problem(count: int) -> str | None:
    """Why a line of ``count`` values is neither a box (5) nor a polygon (class and 3+ x, y pairs), or None."""
    if count == 5 or (count >= 7 and count % 2 == 1):
        return None
    if count % 2 == 0 and count > 5:
        return f"polygon with an odd number of coordinates ({count - 1})"
    if count == 3:
        return "polygon of 1 point (at least 3 needed)"
    return f"expected 5 values 'class cx cy w h' or a polygon 'class x1 y1 x2 y2 x3 y3 ...', found {count}"


def polygon_area(xy: np.ndarray) -> float:
    """The area enclosed by a (k, 2) polygon (shoelace formula)."""
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def parse_label_file(path: Path, nc: int) -> tuple[np.ndarray, list[np.ndarray], list[Problem]]:
    """Parse and check a YOLO label file: (n, 5) float32 rows [cls, cx, cy, w, h], the polygons and the problems.

    A polygon line ``class x1 y1 x2 y2 x3 y3 ...`` gives its bounding box as the row, and its points (clipped to the
    image) as a (k, 2) array; the polygons list is empty when the file has none, else one entry per row (a box line:
    (0, 2)).
    """
    problems: list[Problem] = []
    nothing = np.zeros((0, 5), np.float32)
    if not path.is_file():
        return nothing, [], problems
    if path.stat().st_size > MAX_LABEL_BYTES:
        return (
            nothing,
            [],
            [Problem(str(path), None, f"label file is {path.stat().st_size} bytes, over the limit", "skipped labels")],
        )
    try:
        text = path.read_text()
    except (UnicodeDecodeError, OSError) as e:
        return nothing, [], [Problem(str(path), None, f"unreadable label file ({type(e).__name__})", "skipped labels")]

    def drop(n: int, msg: str) -> None:
        problems.append(Problem(str(path), n, msg, "dropped line"))

    rows: list[list[float]] = []
    polygons: list[np.ndarray] = []
    for n, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if (why := column_problem(len(fields))) is not None:
            drop(n, why)
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            drop(n, f"not a number in {line.strip()[:60]!r}")
            continue
        if not all(math.isfinite(v) for v in values):
            drop(n, "NaN or infinite value")
            continue
        cls = values[0]
        if not cls.is_integer() or not 0 <= cls < nc:
            drop(n, f"class id {fields[0]} is not one of the {nc} classes (0..{nc - 1})")
            continue
        polygon = np.zeros((0, 2), np.float32)
        if len(values) == 5:
            cx, cy, w, h = values[1:]
            if w <= 0 or h <= 0:
                drop(n, f"box of zero or negative size (w={w:g}, h={h:g})")
                continue
            x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
            overhang = max(-x1, -y1, x2 - 1.0, y2 - 1.0)
        else:
            points = np.array(values[1:], np.float64).reshape(-1, 2)
            overhang = max(float(-points.min()), float(points.max() - 1.0))
            points = points.clip(0.0, 1.0)
            if polygon_area(points) <= 0:
                drop(n, "polygon encloses no area" + (" inside the image" if overhang > 0 else ""))
                continue
            polygon = points.astype(np.float32)
            (x1, y1), (x2, y2) = points.min(0), points.max(0)
        cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, 1.0), min(y2, 1.0)
        if cx2 - cx1 <= 0 or cy2 - cy1 <= 0:
            drop(n, "box lies outside the image")
            continue
        if overhang > BORDER_TOLERANCE:
            kind = "box" if len(values) == 5 else "polygon"
            problems.append(Problem(str(path), n, f"{kind} extends past the image border; clipped", "fixed"))
        rows.append([cls, (cx1 + cx2) / 2, (cy1 + cy2) / 2, cx2 - cx1, cy2 - cy1])
        polygons.append(polygon)
    labels = np.array(rows, np.float32).reshape(-1, 5)
    if len(labels):
        # Duplicates: the same row (and, for polygons, the same outline) given twice.
        keys = [(tuple(r), p.tobytes()) for r, p in zip(labels.tolist(), polygons)]
        first = sorted({k: i for i, k in reversed(list(enumerate(keys)))}.values())
        if len(first) < len(labels):
            problems.append(
                Problem(str(path), None, f"{len(labels) - len(first)} duplicate rows", "removed duplicates")
            )
            labels, polygons = labels[first], [polygons[i] for i in first]
    if not any(len(p) for p in polygons):
        polygons = []
    return labels, polygons, problems


def files_hash(images: list[Path], labels: list[Path]) -> str:
    """Changes whenever an image or label file is added, removed, resized or touched."""
    h = hashlib.sha256()
    for p in [*images, *labels]:
        try:
            st = p.stat()
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}|missing\n".encode())
    return h.hexdigest()


def cache_path(labels: list[Path]) -> Path:
    """``<dataset>/labels/train/x.txt`` -> ``<dataset>/labels/train.cache``."""
    return labels[0].parent.with_suffix(".cache")


def check_one(image: Path, lbl: Path, nc: int) -> tuple[ImageRecord | None, list[Problem], bool]:
    shape, problem = verify_image(image)
    problems = [problem] if problem else []
    if shape is None:
        return None, problems, lbl.is_file()
    labels, segments, label_problems = parse_label_file(lbl, nc)
    return ImageRecord(image, shape[0], shape[1], labels, segments), problems + label_problems, lbl.is_file()


def load_labels(
    images: list[Path], nc: int, prefix: str = "", use_cache: bool = True
) -> tuple[list[ImageRecord], LabelSummary]:
    """Check (or read from the cache) every image and its label file; log a summary and the problems."""
    if not images:
        raise DatasetError(f"{prefix or 'dataset'}: no images found")
    labels = [label_path(p) for p in images]
    cache_file = cache_path(labels)
    digest = files_hash(images, labels)
    cached = read_cache(cache_file, digest, nc) if use_cache else None
    if cached is not None:
        records, summary = cached
        LOGGER.info("%s (from cache %s)", summary.line(prefix or "labels"), cache_file)
    else:
        records, summary = [], LabelSummary()
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1) + 2) as pool:
            for record, problems, has_label in pool.map(lambda a: check_one(a[0], a[1], nc), zip(images, labels)):
                summary.problems += problems
                if record is None:
                    summary.skipped_images += 1
                    continue
                records.append(record)
                summary.missing_labels += not has_label
        finish_summary(records, summary)
        LOGGER.info(summary.line(prefix or "labels"))
        if use_cache:
            write_cache(cache_file, digest, nc, records, summary)
    for p in summary.problems[:MAX_SHOWN_PROBLEMS]:
        LOGGER.warning("  %s", p)
    if len(summary.problems) > MAX_SHOWN_PROBLEMS:
        LOGGER.warning(
            "  ... and %d more problems (all listed in %s)", len(summary.problems) - MAX_SHOWN_PROBLEMS, cache_file
        )
    if not records:
        raise DatasetError(f"{prefix or 'dataset'}: none of the {len(images)} images could be used")
    return records, summary


def finish_summary(records: list[ImageRecord], summary: LabelSummary) -> None:
    summary.images = len(records)
    summary.with_labels = sum(len(r.labels) > 0 for r in records)
    summary.empty = summary.images - summary.with_labels
    summary.instances = sum(len(r.labels) for r in records)


def read_cache(path: Path, digest: str, nc: int) -> tuple[list[ImageRecord], LabelSummary] | None:
    try:
        d = json.loads(path.read_text())
        if d.get("version") != CACHE_VERSION or d.get("hash") != digest or d.get("nc") != nc:
            return None
        records = [
            ImageRecord(
                Path(r["image"]),
                r["height"],
                r["width"],
                np.array(r["labels"], np.float32).reshape(-1, 5),
                [np.array(p, np.float32).reshape(-1, 2) for p in r.get("segments", [])],
            )
            for r in d["records"]
        ]
        summary = LabelSummary(
            skipped_images=d["skipped_images"],
            missing_labels=d["missing_labels"],
            problems=[Problem(**p) for p in d["problems"]],
        )
        finish_summary(records, summary)
        return records, summary
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no cache, an old one, or a damaged one: rebuild


def write_cache(path: Path, digest: str, nc: int, records: list[ImageRecord], summary: LabelSummary) -> None:
    """Write atomically; a read-only dataset folder only costs a warning."""
    d = {
        "version": CACHE_VERSION,
        "hash": digest,
        "nc": nc,
        "skipped_images": summary.skipped_images,
        "missing_labels": summary.missing_labels,
        "problems": [vars(p) for p in summary.problems],
        "records": [
            {
                "image": str(r.image),
                "height": r.height,
                "width": r.width,
                # Exact (float32 values as JSON numbers): a run reading the cache sees the labels a fresh check
                # gives (boxes derived from polygons have more digits than the files).
                "labels": r.labels.tolist(),
                **({"segments": [p.ravel().tolist() for p in r.segments]} if r.segments else {}),
            }
            for r in records
        ],
    }
    if not path.parent.is_dir():
        return  # no labels folder at all: create nothing in the user's dataset
    try:
        atomic_write(path, json.dumps(d))
    except OSError as e:
        LOGGER.warning("could not write the label cache %s (%s); labels will be checked again next time", path, e)
