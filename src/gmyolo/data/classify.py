"""Classification data: folder-per-class datasets, the authors' transforms (from timm), loaders, generated data.

Layout (the torchvision / timm ``ImageFolder`` convention)::

    DIR/train/<class name>/**/*.jpg     class names are the sorted folder names of train/
    DIR/val/<class name>/**/*.jpg       val (and test) may hold a subset of those class folders

An image that cannot be decoded is not fatal: the sample comes back marked unreadable, the collate
function drops it, and the training loop reports it with its path once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data.auto_augment import AugmentOp
from torch.utils.data import DataLoader, Dataset

from .config import IMG_FORMATS
from .dataset import EpochState, build_dataloader

__all__ = [
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "ClassifyFolder",
    "ImageList",
    "read_image",
    "find_classes",
    "classify_train_transform",
    "classify_eval_transform",
    "collate_classify",
    "build_classify_loader",
    "make_classify_dataset",
]

LOGGER = logging.getLogger("gmyolo")
GENERATED_CLASSES = ("circle", "square", "triangle")


def find_classes(root: str | os.PathLike) -> list[str]:
    """Sorted names of the class folders directly under ``root`` (hidden folders are ignored)."""
    root = Path(root)
    if not root.is_dir():
        raise OSError(f"classification folder not found: {root} (expected {root}/<class name>/<images>)")
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise ValueError(f"{root}: no class folders (expected {root}/<class name>/<images>)")
    return names


class ClassifyFolder(Dataset):
    """Images of ``root/<class>/**`` with labels from ``names`` (default: the class folders found).

    ``dataset[i]`` is ``(image, label, path, error)``: image is what ``transform`` makes of the RGB PIL
    image (the PIL image itself without a transform); for an unreadable file image is None and error
    says why. With a ``seed``, every random draw of the transform (timm's crops, RandAugment, erasing)
    comes from generators seeded by (seed, epoch, index): the same image gets the same augmentation in
    any worker or process, so a resumed or multi-GPU run repeats a single uninterrupted one.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        names: Sequence[str] | None = None,
        transform: Callable | None = None,
        seed: int | None = None,
    ):
        self.root = Path(root)
        self.seed = seed
        self.state = EpochState(epoch=0)  # shared with persistent loader workers
        found = find_classes(self.root)
        self.names = list(names) if names is not None else found
        unknown = [c for c in found if c not in self.names]
        if unknown:
            raise ValueError(
                f"{self.root}: class folders {unknown[:5]} are not among the model's {len(self.names)} classes "
                f"({', '.join(self.names[:10])}{', ...' if len(self.names) > 10 else ''})"
            )
        index = {name: i for i, name in enumerate(self.names)}
        self.samples: list[tuple[Path, int]] = []
        for name in found:
            files = sorted(p for p in (self.root / name).rglob("*") if p.suffix.lower() in IMG_FORMATS and p.is_file())
            if not files:
                LOGGER.warning("%s: class folder %r holds no images (%s)", self.root, name, " ".join(IMG_FORMATS))
            self.samples += [(p, index[name]) for p in files]
        if not self.samples:
            raise ValueError(f"{self.root}: no images ({' '.join(IMG_FORMATS)}) in its class folders")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def counts(self) -> list[int]:
        """Images per class, in ``names`` order."""
        return np.bincount(self.targets, minlength=len(self.names)).tolist()

    @property
    def epoch(self) -> int:
        return self.state["epoch"]

    def set_epoch(self, epoch: int) -> None:
        """Augmentation of the next epoch (seeded datasets); reaches persistent workers (shared memory): call it
        before iterating the loader."""
        self.state["epoch"] = epoch

    def __getitem__(self, i: int) -> tuple[Any, int, str, str | None]:
        path, label = self.samples[i]
        image, error = read_image(path)
        if image is not None and self.transform is not None:
            if self.seed is None:
                image = self.transform(image)
            else:
                with seeded_random_state((self.seed, self.epoch, i)):
                    image = self.transform(image)
        return image, label, str(path), error


@contextlib.contextmanager
def seeded_random_state(key: Sequence[int]) -> Iterator[None]:
    """Python's, numpy's and torch's global generators seeded from ``key`` inside the block, restored after.

    timm's transforms draw from all three; seeding them per sample makes an augmentation depend only on
    ``key``, and restoring them leaves the caller's sequence (the training loop's) untouched.
    """
    seed = int(np.random.SeedSequence(list(key)).generate_state(1)[0])
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class ImageList(Dataset):
    """Image files for prediction, as ``(image, -1, path, error)`` samples like :class:`ClassifyFolder`."""

    def __init__(self, files: Sequence[str | os.PathLike], transform: Callable | None = None):
        self.files = [Path(f) for f in files]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Any, int, str, str | None]:
        image, error = read_image(self.files[i])
        if image is not None and self.transform is not None:
            image = self.transform(image)
        return image, -1, str(self.files[i]), error


def read_image(path: Path) -> tuple[Image.Image | None, str | None]:
    """RGB image upright as a viewer shows it (EXIF orientation), or None and why it cannot be read."""
    try:
        with Image.open(path) as im:
            return ImageOps.exif_transpose(im).convert("RGB"), None
    except Exception as e:  # PIL raises many types for broken files; none may stop a loader worker
        return None, f"{type(e).__name__}: {e}"


def collate_classify(batch: list[tuple[Any, int, str, str | None]]):
    """Samples -> (images B×3×H×W, labels B, paths, unreadable) with unreadable = ['path (reason)', ...]."""
    good = [s for s in batch if s[3] is None]
    unreadable = [f"{s[2]} ({s[3]})" for s in batch if s[3] is not None]
    images = torch.stack([s[0] for s in good]) if good else torch.empty(0)
    labels = torch.tensor([s[1] for s in good], dtype=torch.long)
    return images, labels, [s[2] for s in good], unreadable


def classify_train_transform(
    imgsz: int,
    auto_augment: str | None = "rand-m9-mstd0.5-inc1",
    color_jitter: float = 0.4,
    reprob: float = 0.25,
    hflip: float = 0.5,
    interpolation: str = "bicubic",
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> Callable:
    """The authors' training pipeline, built by timm: random resized crop, flip, RandAugment, normalise,
    random erasing (per-pixel noise). As in timm, colour jitter is skipped when RandAugment is on."""
    transform = create_transform(
        imgsz,
        is_training=True,
        auto_augment=auto_augment or None,
        color_jitter=color_jitter or None,
        hflip=hflip,
        interpolation=interpolation,
        mean=tuple(mean),
        std=tuple(std),
        re_prob=reprob,
        re_mode="pixel",
        re_count=1,
    )
    for op in augment_ops(transform):
        if op.name.startswith("Posterize"):
            op.aug_fn = posterize_keep_one_bit
    return transform


def augment_ops(transform: Callable) -> list[AugmentOp]:
    """The timm AugmentOps inside a Compose (RandAugment / AugMix ops, AutoAugment sub-policies)."""
    ops = []
    for t in getattr(transform, "transforms", []):
        ops += list(getattr(t, "ops", []))
        ops += [op for sub in getattr(t, "policy", []) for op in sub]
    return [op for op in ops if isinstance(op, AugmentOp)]


def posterize_keep_one_bit(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize, but keeping at least 1 bit: at the top magnitude timm asks for 0 bits (a black
    image), which Pillow >= 13 refuses with a ValueError that would stop training."""
    return img if bits_to_keep >= 8 else ImageOps.posterize(img, max(1, bits_to_keep))


def classify_eval_transform(
    imgsz: int,
    crop_pct: float = 0.875,
    interpolation: str = "bicubic",
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> Callable:
    """Resize the short side to imgsz/crop_pct (256 for 224), centre crop imgsz, normalise (the authors' test)."""
    return create_transform(
        imgsz, is_training=False, crop_pct=crop_pct, interpolation=interpolation, mean=tuple(mean), std=tuple(std)
    )


def build_classify_loader(
    dataset: Dataset,
    batch_size: int,
    workers: int | None = None,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool | None = None,
) -> DataLoader:
    """A loader of :func:`collate_classify` batches (unreadable images dropped and reported); workers, shuffling
    and the split between ranks as in detection (:func:`gmyolo.data.dataset.build_dataloader`)."""
    return build_dataloader(
        dataset, batch_size, workers, shuffle, seed, rank, world_size, pin_memory, collate_classify, drop_last
    )


# --------------------------------------------------------------------------------------------------
# A generated dataset for tests and demos
# --------------------------------------------------------------------------------------------------
def _draw_sample(rng: np.random.Generator, cls: int, imgsz: int) -> Image.Image:
    """One filled shape of class ``cls`` on a noisy background; the class sets shape and hue band."""
    background = rng.integers(60, 190, 3)
    noise = rng.normal(0, 12, (imgsz, imgsz, 3))
    pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    hue = (cls / len(GENERATED_CLASSES) + rng.uniform(-0.08, 0.08)) % 1.0
    colour = Image.new("HSV", (1, 1), (int(hue * 255), int(rng.integers(170, 256)), int(rng.integers(170, 256))))
    fill = colour.convert("RGB").getpixel((0, 0))
    r = imgsz * rng.uniform(0.2, 0.35)  # half of the shape's size
    cx, cy = rng.uniform(r, imgsz - r, 2)
    draw = ImageDraw.Draw(image)
    name = GENERATED_CLASSES[cls]
    if name == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif name == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return image


def make_classify_dataset(
    root: str | os.PathLike, n_train: int = 24, n_val: int = 12, imgsz: int = 48, seed: int = 0
) -> Path:
    """Write ``root/{train,val}/{circle,square,triangle}/NNNN.png`` (n per class and split); returns root.

    Shape and hue both tell the class, so a small model learns it in a few CPU steps. Each image has
    its own generator seeded by (seed, split, class, index): the same seed writes the same files.
    """
    if n_train < 1 or n_val < 1 or imgsz < 16:
        raise ValueError(
            f"make_classify_dataset needs n_train, n_val >= 1 and imgsz >= 16; got {n_train}, {n_val}, {imgsz}"
        )
    root = Path(root)
    for split_id, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        for cls, name in enumerate(GENERATED_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                rng = np.random.default_rng([seed, split_id, cls, i])
                _draw_sample(rng, cls, imgsz).save(folder / f"{i:04d}.png")
    return root
