"""Dataset YAML files, as YOLOv5 and Ultralytics users write them, and finding images and labels.

```yaml
path: ../datasets/shapes   # dataset root; a relative path is relative to this YAML file's folder
train: images/train         # a folder of images, a .txt list of image paths, or a list of either
val: images/val
test:                       # optional
names: [circle, square]     # or {0: circle, 1: square}
nc: 2                       # optional; must equal the number of names
```

Labels follow the images→labels rule: ``.../images/<x>/<stem>.jpg`` → ``.../labels/<x>/<stem>.txt``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["DatasetError", "DatasetConfig", "IMG_FORMATS", "load_dataset_config", "list_images", "label_path"]

IMG_FORMATS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")


class DatasetError(ValueError):
    """A dataset that cannot be used as given; the message says which file and what is wrong."""


@dataclass
class DatasetConfig:
    """A loaded dataset YAML: the root, the image sources of each split and the class names."""

    root: Path
    names: list[str]
    splits: dict[str, list[Path]] = field(default_factory=dict)  # split -> folders / list files
    yaml_file: Path | None = None

    @property
    def nc(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for run folders and checkpoints."""
        return {
            "path": str(self.root),
            **{k: [str(p) for p in v] for k, v in self.splits.items()},
            "nc": self.nc,
            "names": list(self.names),
        }


def parse_names(names: Any, nc: Any, where: str) -> list[str]:
    if names is None:
        if not isinstance(nc, int) or nc < 1:
            raise DatasetError(f"{where}: give 'names' (a list of class names) or a positive 'nc'")
        return [str(i) for i in range(nc)]
    if isinstance(names, Mapping):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DatasetError(f"{where}: 'names' keys must be class ids 0..n-1, got {list(names)}") from None
        if ids != list(range(len(ids))):
            raise DatasetError(f"{where}: 'names' ids must be 0..{len(ids) - 1} without gaps, got {ids}")
        names = [names[k] if k in names else names[str(k)] for k in ids]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{where}: 'names' must be a non-empty list or an id -> name mapping")
    names = [str(n) for n in names]
    if nc is not None and nc != len(names):
        raise DatasetError(f"{where}: 'nc' is {nc} but 'names' has {len(names)} entries")
    return names


def load_dataset_config(data: str | os.PathLike | Mapping[str, Any], require: tuple[str, ...] = ()) -> DatasetConfig:
    """Read and check a dataset YAML (or an equivalent dict); ``require`` lists splits that must exist."""
    if isinstance(data, Mapping):
        d, where, base = dict(data), "dataset config", Path.cwd()
        yaml_file = None
    else:
        yaml_file = Path(data)
        if not yaml_file.is_file():
            raise DatasetError(f"dataset YAML not found: {yaml_file}")
        where, base = str(yaml_file), yaml_file.parent
        try:
            d = yaml.safe_load(yaml_file.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise DatasetError(
                f"{yaml_file}{f' line {mark.line + 1}' if mark else ''}: not valid YAML ({getattr(e, 'problem', e)})"
            ) from None
        if not isinstance(d, dict):
            raise DatasetError(f"{yaml_file}: expected a mapping with path, train, val and names")
    root = Path(os.path.expanduser(str(d.get("path") or ".")))
    root = Path(os.path.abspath(base / root))  # absolute (checkpoints record it), symlinks kept
    names = parse_names(d.get("names"), d.get("nc"), where)
    splits: dict[str, list[Path]] = {}
    for split in SPLITS:
        value = d.get(split)
        if value in (None, "", []):
            continue
        entries = value if isinstance(value, list) else [value]
        if not all(isinstance(e, str) for e in entries):
            raise DatasetError(f"{where}: '{split}' must be a path or a list of paths, got {value!r}")
        paths = [Path(os.path.expanduser(e)) for e in entries]
        paths = [p if p.is_absolute() else root / p for p in paths]
        for p in paths:
            if not p.exists():
                raise DatasetError(f"{where}: {split}: {p} does not exist (a folder of images or a .txt list)")
        splits[split] = paths
    for split in require:
        if split not in splits:
            raise DatasetError(f"{where}: no '{split}' split given")
    return DatasetConfig(root=root, names=names, splits=splits, yaml_file=yaml_file)


def list_images(sources: list[Path]) -> list[Path]:
    """All image files of the given folders (recursive) and list files, sorted, without duplicates.

    List-file lines are image paths; relative ones are relative to the list file's folder.
    """
    files: list[Path] = []
    for src in sources:
        if src.is_dir():
            files += [p for p in src.rglob("*") if p.suffix.lower() in IMG_FORMATS and p.is_file()]
        elif src.is_file():
            for line in src.read_text().splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                p = Path(os.path.expanduser(line))
                files.append(p if p.is_absolute() else src.parent / p)
        else:
            raise DatasetError(f"image source not found: {src}")
    # Absolute but not symlink-resolved: the images->labels rule must see the path the user gave.
    unique = {Path(os.path.abspath(p)): None for p in files if p.suffix.lower() in IMG_FORMATS}
    return sorted(unique)


def label_path(image: Path) -> Path:
    """``.../images/<x>/<stem>.jpg`` -> ``.../labels/<x>/<stem>.txt`` (the last 'images' folder)."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")
