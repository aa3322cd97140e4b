"""COCO instances JSON -> YOLO labels and a dataset YAML (``gmyolo data convert-coco``).

Reads ``instances_<split>.json`` (keys ``images``, ``annotations``, ``categories``; bbox ``[x_min, y_min, w, h]``
in pixels) and writes, under ``out_dir``::

    labels/<split>/<file_name stem>.txt   # "class cx cy w h", normalised; one per image, empty for background
                                          # (with segments: "class x1 y1 x2 y2 ...", the object's outline)
    images/<split> -> images_dir          # a symlink, so the images->labels rule finds the labels
    <split>.txt                           # instead of the symlink: absolute image paths, one a line
    data.yaml                             # path, train/val (or merged into an existing one), nc, names

COCO category ids (1..90 with gaps) become contiguous classes 0..n-1 in ascending id order. The user's images
are never modified or copied.

With ``segments`` (``--segments``, for instance segmentation) each object's ``segmentation`` becomes its outline:
a polygon list as it is, an object in several parts as one outline joining the parts by zero-width bridges at
their nearest points (so the filled outline is the union of the parts), and an RLE mask (crowd regions, with
``include_crowd``) as the outlines of its regions. An object without a usable segmentation keeps its box.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import yaml

from ..utils.files import atomic_write
from .config import label_path

__all__ = ["convert_coco", "convert_coco_annotations", "CocoConversion"]

LOGGER = logging.getLogger("gmyolo")
MAX_LISTED = 5  # missing images named in the warning; the rest are only counted

# Skip reasons, in the order they are checked and reported.
UNKNOWN_IMAGE = "unknown image_id"
UNKNOWN_CATEGORY = "unknown category_id"
CROWD = "iscrowd=1"
BAD_BBOX = "bbox not 4 finite numbers"
EMPTY_BOX = "zero size after clipping to the image"


@dataclass
class CocoConversion:
    yaml_file: Path
    images: int
    boxes: int
    classes: int
    skipped: Counter


def _load_json(annotations: Path) -> dict[str, Any]:
    if not annotations.is_file():
        raise FileNotFoundError(f"COCO annotations file not found: {annotations}")
    try:
        with open(annotations, encoding="utf-8") as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{annotations}: not a valid JSON file ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{annotations}: expected a COCO instances JSON object, got {type(d).__name__}")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(d.get(k), list)]
    if missing:
        raise ValueError(f"{annotations}: not a COCO instances file: no {', '.join(repr(k) for k in missing)} list")
    return d


def _categories(d: dict[str, Any], where: Path) -> tuple[dict[int, int], list[str]]:
    """COCO category id -> class 0..n-1 (ascending id), and the class names."""
    names_by_id: dict[int, str] = {}
    for c in d["categories"]:
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
            raise ValueError(f"{where}: every category needs an integer 'id' and a 'name', got {c!r}")
        if c["id"] in names_by_id:
            raise ValueError(f"{where}: category id {c['id']} appears twice")
        names_by_id[c["id"]] = str(c["name"])
    if not names_by_id:
        raise ValueError(f"{where}: 'categories' is empty: no classes to convert")
    ids = sorted(names_by_id)
    return {cid: i for i, cid in enumerate(ids)}, [names_by_id[cid] for cid in ids]


def _images(d: dict[str, Any], where: Path) -> dict[Any, tuple[PurePosixPath, float, float]]:
    """image id -> (file_name, width, height), checked: relative names, positive sizes, no two on one label."""
    images: dict[Any, tuple[PurePosixPath, float, float]] = {}
    label_of: dict[PurePosixPath, str] = {}
    for im in d["images"]:
        if not isinstance(im, dict) or any(k not in im for k in ("id", "file_name", "width", "height")):
            raise ValueError(f"{where}: every image needs 'id', 'file_name', 'width' and 'height', got {im!r}")
        iid, name, w, h = im["id"], im["file_name"], im["width"], im["height"]
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: image {iid}: 'file_name' must be a non-empty string, got {name!r}")
        rel = PurePosixPath(name.replace("\\", "/"))
        # A name leaving images_dir would also put its label outside labels/<split>.
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"{where}: image {iid}: 'file_name' must be relative to the images folder, got {name!r}")
        for v in (w, h):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{where}: image {iid} ({name}): width and height must be positive, got {w} x {h}")
        if iid in images:
            raise ValueError(f"{where}: image id {iid!r} appears twice")
        stem = rel.with_suffix("")
        if stem in label_of:
            raise ValueError(f"{where}: images {label_of[stem]!r} and {name!r} would share the label file {stem}.txt")
        label_of[stem] = name
        images[iid] = (rel, float(w), float(h))
    return images


def _yolo_line(ann: dict[str, Any], cls: int, w: float, h: float) -> str | None:
    """``"cls cx cy w h"`` for a COCO bbox clipped to a w x h image; None if the clipped box is empty."""
    x, y, bw, bh = (float(v) for v in ann["bbox"])
    x1, x2 = min(max(x, 0.0), w), min(max(x + bw, 0.0), w)
    y1, y2 = min(max(y, 0.0), h), min(max(y + bh, 0.0), h)
    size = f"{(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
    # Sub-pixel boxes that print as size 0 would only be rejected later by the label checker.
    if x2 - x1 <= 0 or y2 - y1 <= 0 or "0.000000" in size.split():
        return None
    return f"{cls} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {size}"


def _loop_from(points: np.ndarray, k: int) -> np.ndarray:
    """The closed outline ``points`` walked from point k round to point k again."""
    return np.concatenate([points[k:], points[: k + 1]])


def merge_parts(parts: list[np.ndarray]) -> np.ndarray:
    """One outline (k×2) for an object in several parts: each part (oriented alike) joined to the rest at their two
    nearest points by a bridge walked there and back, which adds no area, so filling it fills every part."""
    parts = [p if _signed_area(p) >= 0 else p[::-1] for p in parts]
    merged = parts[-1]
    for part in reversed(parts[:-1]):
        distance = ((part[:, None, :] - merged[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(distance.argmin()), distance.shape)
        merged = np.concatenate([_loop_from(part, i), _loop_from(merged, j)])  # closing edge: the bridge back
    return merged


def _signed_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def outline(segmentation: Any, w: float, h: float) -> np.ndarray | None:
    """An annotation's ``segmentation`` as one outline in pixels (k×2), or None when it has none usable: polygons
    (``[[x1, y1, x2, y2, ...], ...]``, parts of 3+ points) or an RLE mask (``{"size": [h, w], "counts": ...}``)."""
    parts: list[np.ndarray] = []
    if isinstance(segmentation, list):
        for poly in segmentation:
            if isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0:
                try:
                    points = np.array(poly, dtype=np.float64).reshape(-1, 2)
                except (TypeError, ValueError):
                    continue
                if np.isfinite(points).all() and abs(_signed_area(points)) > 0:
                    parts.append(points)
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        from pycocotools import mask as mask_utils

        from .opencv import cv2

        rle = segmentation
        if isinstance(rle["counts"], list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(rle, *rle["size"])
        mask = mask_utils.decode(rle).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        parts = [c.reshape(-1, 2).astype(np.float64) for c in contours if len(c) >= 3 and cv2.contourArea(c) > 0]
    if not parts:
        return None
    merged = merge_parts(parts)
    merged[:, 0] = merged[:, 0].clip(0, w)
    merged[:, 1] = merged[:, 1].clip(0, h)
    return merged


def _polygon_line(points: np.ndarray, cls: int, w: float, h: float) -> str:
    return f"{cls} " + " ".join(f"{v:.6f}" for v in (points / (w, h)).ravel())


def _known(key: Any, ids: dict[Any, Any]) -> bool:
    """``key in ids``, False for unhashable keys (a list where an id belongs)."""
    try:
        return key in ids
    except TypeError:
        return False


def _valid_bbox(b: Any) -> bool:
    return (
        isinstance(b, list)
        and len(b) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in b)
    )


def _link_images(images_dir: Path, link: Path) -> bool:
    """Make ``link`` a symlink to ``images_dir`` (or find it already is, or is that folder); False if impossible."""
    target = images_dir.resolve()
    if link.is_symlink():
        if link.resolve() == target:
            return True
        LOGGER.info(f"{link}: pointed to {os.readlink(link)}, now {images_dir}")
    elif link.exists():  # the images already live at <out_dir>/images/<split> (anything else is refused earlier)
        return True
    new_parent = not link.parent.exists()
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    try:
        if tmp.is_symlink():
            tmp.unlink()
        os.symlink(images_dir, tmp, target_is_directory=True)
        os.replace(tmp, link)  # replaces an old link itself, never the folder it points to
    except (OSError, NotImplementedError) as e:
        if tmp.is_symlink():
            tmp.unlink()
        if new_parent:  # leave no empty images/ folder that looks like a dataset
            link.parent.rmdir()
        LOGGER.warning(f"cannot make the symlink {link} -> {images_dir} ({e}); writing a list of images instead")
        return False
    return True


def _names_list(names: Any, where: Path) -> list[str]:
    if isinstance(names, list):
        return [str(n) for n in names]
    if isinstance(names, dict):
        try:
            return [str(names[k]) for k in sorted(names, key=int)]
        except (TypeError, ValueError):
            raise ValueError(f"{where}: 'names' keys must be class ids, got {list(names)}") from None
    raise ValueError(f"{where}: 'names' must be a list or an id -> name mapping, got {names!r}")


def _read_yaml(yaml_file: Path, names: list[str]) -> dict[str, Any] | None:
    """The existing data.yaml to merge into (None if there is none), checked to have these class names."""
    if not yaml_file.exists():
        return None
    try:
        d = yaml.safe_load(yaml_file.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{yaml_file}: not valid YAML, cannot merge into it ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{yaml_file}: expected a mapping with path, train, val and names, cannot merge into it")
    if "names" in d and (old := _names_list(d["names"], yaml_file)) != names:
        raise ValueError(
            f"{yaml_file}: its class names differ from the COCO categories being converted; "
            f"convert into another --out folder (existing: {old}, new: {names})"
        )
    return d


def _write_yaml(out_dir: Path, existing: dict[str, Any] | None, split: str, entry: str, names: list[str]) -> Path:
    """Write ``out_dir/data.yaml`` or merge into ``existing``; ``entry``: the split's images, relative to out_dir."""
    yaml_file = out_dir / "data.yaml"
    if existing is None:
        d: dict[str, Any] = {"path": str(out_dir), "train": entry, "val": entry, "nc": len(names), "names": names}
    else:
        d = dict(existing)
        root = Path(os.path.expanduser(str(d.get("path") or ".")))
        root = root if root.is_absolute() else out_dir / root
        if root.resolve() != out_dir.resolve():  # entries of this file are relative to another root
            entry = str(out_dir / entry)
        key = "val" if "val" in split else "train" if "train" in split else split
        d[key] = entry
        d.setdefault("path", str(out_dir))
        d["nc"], d["names"] = len(names), names
        # Keep the usual order: path, splits, nc, names.
        d = {k: d[k] for k in ["path", *[k for k in d if k not in ("path", "nc", "names")], "nc", "names"]}
    atomic_write(yaml_file, yaml.safe_dump(d, sort_keys=False, allow_unicode=True))
    return yaml_file


def convert_coco_annotations(
    annotations: str | os.PathLike,
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    split: str | None,
    include_crowd: bool,
    link_images: bool,
    segments: bool = False,
) -> CocoConversion:
    annotations, images_dir, out_dir = Path(annotations), Path(images_dir), Path(out_dir)
    d = _load_json(annotations)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"images folder not found: {images_dir}")
    images_dir, out_dir = Path(os.path.abspath(images_dir)), Path(os.path.abspath(out_dir))
    if split is None:
        split = annotations.stem.removeprefix("instances_")
    if not split or split in (".", "..") or "/" in split or "\\" in split:
        raise ValueError(f"split name must be a plain folder name, got {split!r} (from {annotations})")
    class_of, names = _categories(d, annotations)
    images = _images(d, annotations)
    # Refuse before any label is written: a data.yaml with other classes, a folder where the link must go.
    existing = _read_yaml(out_dir / "data.yaml", names)
    link = out_dir / "images" / split
    if link_images and link.exists() and not link.is_symlink() and link.resolve() != images_dir.resolve():
        raise ValueError(f"{link} already exists and is not a link to {images_dir}: remove it or choose another --out")

    lines: dict[Any, list[str]] = {iid: [] for iid in images}
    skipped: Counter = Counter()
    box_only = 0
    for ann in d["annotations"]:
        if not isinstance(ann, dict) or not _known(ann.get("image_id"), images):
            skipped[UNKNOWN_IMAGE] += 1
        elif not _known(ann.get("category_id"), class_of):
            skipped[UNKNOWN_CATEGORY] += 1
        elif ann.get("iscrowd", 0) and not include_crowd:
            skipped[CROWD] += 1
        elif not _valid_bbox(ann.get("bbox")):
            skipped[BAD_BBOX] += 1
        else:
            _, w, h = images[ann["image_id"]]
            line = _yolo_line(ann, class_of[ann["category_id"]], w, h)
            if line is None:
                skipped[EMPTY_BOX] += 1
                continue
            if segments:
                points = outline(ann.get("segmentation"), w, h)
                if points is None:
                    box_only += 1  # kept as its box: segmentation training leaves it out, with a warning
                else:
                    line = _polygon_line(points, class_of[ann["category_id"]], w, h)
            lines[ann["image_id"]].append(line)

    labels_dir = out_dir / "labels" / split
    made: set[Path] = set()
    for iid, (rel, _, _) in images.items():
        lbl = labels_dir / rel.with_suffix(".txt")
        if lbl.parent not in made:
            lbl.parent.mkdir(parents=True, exist_ok=True)
            made.add(lbl.parent)
        atomic_write(lbl, "".join(f"{s}\n" for s in lines[iid]))

    found, missing = [], []
    for rel, _, _ in images.values():
        (found if (images_dir / rel).is_file() else missing).append(rel)
    if missing:
        shown = ", ".join(str(r) for r in sorted(missing)[:MAX_LISTED]) + (", ..." if len(missing) > MAX_LISTED else "")
        LOGGER.warning(f"{len(missing)} of {len(images)} images in {annotations} not found in {images_dir}: {shown}")

    if link_images and _link_images(images_dir, link):
        entry, seen_dir = f"images/{split}", link
    else:
        paths = sorted(images_dir / rel for rel in found)  # missing images would only fail in the loader
        list_file = out_dir / f"{split}.txt"
        atomic_write(list_file, "".join(f"{p}\n" for p in paths))
        entry, seen_dir = list_file.name, images_dir
    # The loader finds labels from image paths (.../images/<x>/a.jpg -> .../labels/<x>/a.txt): say if that misses.
    lost = [rel for rel in found if label_path(seen_dir / rel) != labels_dir / rel.with_suffix(".txt")]
    if lost:
        LOGGER.warning(
            f"the images->labels path rule does not lead from {len(lost)} images under {seen_dir} (e.g. {lost[0]}) "
            f"to their labels in {labels_dir}: "
            + (
                "use the symlink layout (no --copy-list) where the system allows one"
                if seen_dir == images_dir
                else "their file_name has an 'images' folder; rename it"
            )
        )

    yaml_file = _write_yaml(out_dir, existing, split, entry, names)
    boxes = sum(len(v) for v in lines.values())
    for reason in (UNKNOWN_IMAGE, UNKNOWN_CATEGORY, CROWD, BAD_BBOX, EMPTY_BOX):
        if skipped[reason]:
            log = LOGGER.info if reason == CROWD else LOGGER.warning  # crowd regions are skipped by design
            log(f"{annotations}: skipped {skipped[reason]} annotations: {reason}")
    if box_only:
        LOGGER.warning(f"{annotations}: {box_only} annotations have no usable segmentation: written as boxes")
    what = "objects (outlines)" if segments else "boxes"
    LOGGER.info(f"{annotations}: {len(images)} images, {boxes} {what}, {len(names)} classes -> {labels_dir}")
    return CocoConversion(yaml_file, len(images), boxes, len(names), skipped)


def convert_coco(
    annotations: str | os.PathLike,
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    split: str | None = None,
    include_crowd: bool = False,
    link_images: bool = True,
    segments: bool = False,
) -> Path:
    """Convert a COCO instances JSON to YOLO labels under ``out_dir``; returns the written ``out_dir/data.yaml``.

    Args:
        annotations: COCO JSON with ``images`` (id, file_name, width, height), ``annotations`` (image_id,
            category_id, bbox ``[x_min, y_min, w, h]`` pixels, iscrowd) and ``categories`` (id, name).
        images_dir: folder that ``file_name`` is relative to (sub-folders are mirrored under ``labels/<split>``).
        out_dir: output root; created if needed. An existing ``data.yaml`` there is merged into.
        split: split name; default the JSON stem without ``instances_`` (``instances_val2017.json`` -> ``val2017``).
        include_crowd: keep ``iscrowd=1`` annotations (skipped by default, as crowd regions are not objects).
        link_images: link ``out_dir/images/<split>`` to ``images_dir``; if False (or linking fails) write
            ``out_dir/<split>.txt`` with absolute image paths instead.
        segments: write each object's outline (its ``segmentation``) instead of its box.
    """
    return convert_coco_annotations(
        annotations, images_dir, out_dir, split, include_crowd, link_images, segments
    ).yaml_file
