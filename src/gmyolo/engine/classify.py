"""Image classification with GroupMixFormer: ``gmyolo classify train|val|predict`` and their functions.

Training defaults are the authors' ImageNet recipe: AdamW (betas 0.9/0.999, eps 1e-8) at lr
5e-4·batch/512, weight decay 0.05 except on norms, biases and position-encoding convs; per-iteration
cosine decay to 5e-6·batch/512 after a linear warm-up from 5e-7·batch/512; label smoothing 0.1; gradient
clipping at norm 5; the variant's stochastic depth; RandAugment rand-m9-mstd0.5-inc1, mixup 0.8, cutmix
1.0, random erasing 0.25 (timm); bicubic resizing to 224, ImageNet mean/std; evaluation resizes to 256
and centre-crops 224. Every one of them is a field of :class:`ClassifyTrainArgs`.

Run folders follow the detection trainer (``runs/classify/train/exp``, ``exp2``, ...: ``args.yaml``,
``results.csv``/``.png``, ``weights/last.pt`` and ``best.pt`` written atomically, ``--resume``). A
checkpoint is a plain dict with ``task: "classify"``, loadable with ``weights_only=True``.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import glob
import json
import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn
from tqdm import tqdm

from .. import __version__
from ..data.classify import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ClassifyFolder,
    ImageList,
    build_classify_loader,
    classify_eval_transform,
    classify_train_transform,
    collate_classify,
)
from ..data.config import IMG_FORMATS
from ..models.groupmixformer import (
    CheckpointError,
    GroupMixFormer,
    groupmixformer,
    infer_config_from_state_dict,
    load_checkpoint_state_dict,
    read_checkpoint,
)
from ..utils.files import atomic_open, atomic_write
from .checkpoint import atomic_save
from .device import select_device
from .faults import tidy_interrupted_run
from .plots import draw_confusion, plot_results
from .trainer import TrainingDiverged, find_last_checkpoint, increment_path, make_ema

__all__ = [
    "TASK",
    "ClassifyTrainArgs",
    "ClassifyValArgs",
    "ClassifyPredictArgs",
    "ClassifyMetrics",
    "classify_train",
    "classify_val",
    "classify_predict",
    "build_classifier",
    "evaluate",
    "save_classify_checkpoint",
    "load_classify_checkpoint",
    "load_classifier",
    "classifier_from_checkpoint",
    "plot_classify_confusion",
]

LOGGER = logging.getLogger("gmyolo")
TASK = "classify"  # the checkpoint key that tells a classifier from a detector
CSV_COLUMNS = [
    "epoch",
    "train/loss",
    "val/loss",
    "metrics/accuracy_top1",
    "metrics/accuracy_top5",
    "lr",
    "time/epoch_s",
]
EMA_TAU = 2000  # EMA decay ramps up over about this many updates (as in the detection trainer)
PREPROCESS_KEYS = ("imgsz", "crop_pct", "interpolation", "mean", "std")


# --------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------
@dataclass
class ClassifyTrainArgs:
    data: str = ""  # folder holding train/ and val/ (or test/), each with one folder per class
    model: str = "groupmixformer-t"  # variant: groupmixformer-m, -t, -s, -b, -l
    weights: str | None = None  # the authors' ImageNet checkpoint or a gmyolo classifier to start from
    epochs: int = 30
    imgsz: int = 224
    batch: int = 64
    device: str = ""
    workers: int = 8
    project: str = "runs/classify/train"
    name: str = "exp"
    exist_ok: bool = False
    resume: str | None = None  # last.pt of an interrupted run, or 'last' for the newest under project
    # The authors' recipe.
    lr: float = 5e-4  # for a batch of 512; the run uses lr·batch/512 (as do warmup_lr and min_lr)
    warmup_lr: float = 5e-7
    min_lr: float = 5e-6
    warmup_epochs: float = 5.0  # (the authors: 20 of 300 epochs from scratch); at most half of the run
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    clip_grad: float = 5.0  # max gradient norm; 0 turns clipping off
    drop_path: float | None = None  # stochastic depth; None: the variant's (m/t/l 0.1, s 0.2, b 0.5)
    auto_augment: str = "rand-m9-mstd0.5-inc1"  # timm RandAugment spec; '' for none
    color_jitter: float = 0.4  # only used without auto_augment (timm skips it under RandAugment)
    reprob: float = 0.25  # random erasing probability
    mixup: float = 0.8  # mixup alpha (0: off)
    cutmix: float = 1.0  # cutmix alpha (0: off)
    mixup_prob: float = 1.0  # probability of mixing a batch at all
    mixup_switch_prob: float = 0.5  # probability of cutmix instead of mixup
    hflip: float = 0.5
    interpolation: str = "bicubic"
    crop_pct: float = 0.875  # evaluation: resize to imgsz/crop_pct, centre crop imgsz
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_DEFAULT_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_DEFAULT_STD))
    ema: bool = False  # keep an EMA of the weights, validate and save it as the model
    ema_decay: float = 0.9998
    amp: bool = True  # mixed precision on CUDA
    patience: int = 0  # stop after this many epochs without a better top-1 (0: never)
    seed: int = 0
    plots: bool = True
    progress: bool = True

    def check(self) -> None:
        if not self.data:
            raise ValueError("--data is required: a folder with train/ and val/ sub-folders of class folders")
        for name in ("epochs", "imgsz", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("workers", "patience", "warmup_epochs", "lr", "warmup_lr", "min_lr", "weight_decay", "clip_grad"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        for name in ("label_smoothing", "reprob", "mixup_prob", "mixup_switch_prob", "hflip", "ema_decay"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"--{name.replace('_', '-')} must be between 0 and 1, got {getattr(self, name)}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"--crop-pct must be in (0, 1], got {self.crop_pct}")
        if self.drop_path is not None and not 0 <= self.drop_path < 1:
            raise ValueError(f"--drop-path must be in [0, 1), got {self.drop_path}")
        if self.mixup < 0 or self.cutmix < 0:
            raise ValueError(f"--mixup and --cutmix must not be negative, got {self.mixup} and {self.cutmix}")
        if self.mixing and self.batch % 2:
            raise ValueError(f"mixup/cutmix mix each batch with its reverse and need an even --batch, got {self.batch}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"--mean and --std need 3 values each (std positive), got {self.mean} and {self.std}")

    @property
    def mixing(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.mixup_prob > 0


@dataclass
class ClassifyValArgs:
    weights: str = "runs/classify/train/exp/weights/best.pt"  # a gmyolo classifier or an authors' checkpoint
    data: str | None = None  # default: the dataset the classifier was trained on
    split: str = "val"
    imgsz: int | None = None  # default: the training size (224 for an authors' checkpoint)
    batch: int = 64
    device: str = ""
    workers: int = 8
    project: str = "runs/classify/val"
    name: str = "exp"
    exist_ok: bool = False
    plots: bool = True
    progress: bool = True


@dataclass
class ClassifyPredictArgs:
    weights: str = "runs/classify/train/exp/weights/best.pt"
    source: str = ""  # an image, a folder (searched recursively) or a glob pattern
    imgsz: int | None = None  # default: the training size
    topk: int = 5
    batch: int = 32
    device: str = ""
    workers: int = 2
    save: str | None = None  # write the predictions to this .csv or .json file
    progress: bool = True


# --------------------------------------------------------------------------------------------------
# Model and checkpoints
# --------------------------------------------------------------------------------------------------
def build_classifier(
    model: str, num_classes: int, weights: str | os.PathLike | None = None, drop_path: float | None = None
) -> GroupMixFormer:
    """A GroupMixFormer variant for ``num_classes``, optionally starting from weights.

    ``weights``: the authors' checkpoint (any class count: a different head is re-initialised) or a
    gmyolo classifier (its EMA weights if it has them). A detection checkpoint is refused.
    """
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if drop_path is not None:
        kwargs["drop_path_rate"] = drop_path
    net = groupmixformer(model, **kwargs)
    if weights:
        ckpt = read_checkpoint(weights)
        if isinstance(ckpt, dict) and "model_yaml" in ckpt:
            raise CheckpointError(f"{weights}: a gmyolo detection checkpoint, not a classifier or an ImageNet backbone")
        if isinstance(ckpt, dict) and ckpt.get("task") == TASK:
            ckpt = ckpt.get("ema") or ckpt["model"]
        net.load_pretrained(ckpt)
    return net


def save_classify_checkpoint(
    path: str | os.PathLike, model: GroupMixFormer, names: Sequence[str], **fields: Any
) -> Path:
    """Atomically write a classifier: float32 weights, the model's config, class names and ``fields``."""
    state = {
        "task": TASK,
        "model": {k: v.detach().float() if v.is_floating_point() else v for k, v in model.state_dict().items()},
        "model_config": {**model.config, "num_classes": model.num_classes},
        "names": list(names),
        "nc": len(names),
        "version": __version__,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        **fields,
    }
    return atomic_save(state, path)


def load_classify_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a gmyolo classifier (weights_only); any other checkpoint gets an error saying what it is."""
    return check_classify_checkpoint(read_checkpoint(path), path)


def check_classify_checkpoint(ckpt: Any, path: str | os.PathLike) -> dict[str, Any]:
    if isinstance(ckpt, dict) and ckpt.get("task") == TASK and "model" in ckpt and "model_config" in ckpt:
        return ckpt
    if isinstance(ckpt, dict) and "model_yaml" in ckpt:
        raise CheckpointError(
            f"{path}: a gmyolo detection checkpoint, not a classifier; evaluate it with `gmyolo val --weights {path}`"
        )
    raise CheckpointError(f"{path}: not a gmyolo classification checkpoint (it has no task: {TASK} entry)")


def classifier_from_checkpoint(ckpt: dict[str, Any], use_ema: bool = True) -> GroupMixFormer:
    """Rebuild the classifier from its recorded config; EMA weights when present and ``use_ema``."""
    model = GroupMixFormer(**ckpt["model_config"])
    state = ckpt["ema"] if use_ema and ckpt.get("ema") else ckpt["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint weights do not fit its own model config: {str(e).splitlines()[0]}") from None
    return model


def load_classifier(weights: str | os.PathLike) -> tuple[GroupMixFormer, dict[str, Any]]:
    """A classifier ready for evaluation from a gmyolo checkpoint or an authors' ImageNet checkpoint.

    Returns the model and what is known about it: ``names`` (None for an authors' file: the class
    folders in sorted order give them, as for ImageNet), ``data`` and the preprocessing it expects.
    """
    ckpt = read_checkpoint(weights)
    defaults = ClassifyTrainArgs()
    info: dict[str, Any] = {"names": None, "data": None, **{k: getattr(defaults, k) for k in PREPROCESS_KEYS}}
    if isinstance(ckpt, dict) and (ckpt.get("task") == TASK or "model_yaml" in ckpt):
        ckpt = check_classify_checkpoint(ckpt, weights)
        info.update(names=list(ckpt["names"]), data=ckpt.get("data"))
        info.update({k: ckpt["args"][k] for k in PREPROCESS_KEYS if k in ckpt.get("args", {})})
        return classifier_from_checkpoint(ckpt), info
    state = load_checkpoint_state_dict(ckpt) if isinstance(ckpt, dict) else None
    cfg = infer_config_from_state_dict(state) if state else None
    if cfg is None or cfg["num_classes"] is None or len(cfg["embedding_dims"]) != 4:
        raise CheckpointError(f"{weights}: neither a gmyolo classifier nor an authors' GroupMixFormer classifier")
    model = GroupMixFormer(**cfg)
    model.load_pretrained(state)
    return model, info


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------
@dataclass
class ClassifyMetrics:
    """Accuracy over a split. ``confusion[p, t]`` counts images of true class t predicted as p."""

    names: list[str]
    confusion: np.ndarray
    top1: float
    top5: float  # top-k accuracy with k = min(5, number of classes)
    loss: float  # mean cross-entropy (no smoothing)
    speed_ms: float = 0.0  # model time per image

    @property
    def images_per_class(self) -> np.ndarray:
        return self.confusion.sum(0)

    @property
    def per_class(self) -> np.ndarray:
        """Accuracy (recall) of each true class; NaN for a class without images."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.diag(self.confusion) / self.images_per_class

    def as_dict(self) -> dict[str, Any]:
        return {
            "top1": self.top1,
            "top5": self.top5,
            "loss": self.loss,
            "images": int(self.confusion.sum()),
            "per_class": {n: (None if np.isnan(a) else float(a)) for n, a in zip(self.names, self.per_class)},
        }


def report_unreadable(unreadable: list[str], seen: set[str]) -> None:
    """Warn once per file about images that could not be decoded (they are skipped)."""
    for item in unreadable:
        if item not in seen:
            seen.add(item)
            LOGGER.warning("skipped unreadable image %s", item)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    names: Sequence[str],
    device: torch.device,
    progress: bool = False,
    seen_unreadable: set[str] | None = None,
) -> ClassifyMetrics:
    """Top-1/top-k accuracy, loss and the confusion matrix of ``model`` (B×3×H×W -> B×nc logits)."""
    model.eval()
    nc = len(names)
    k = min(5, nc)
    confusion = torch.zeros(nc, nc, dtype=torch.long)
    hits1 = hitsk = n = 0
    loss_sum, model_time = 0.0, 0.0
    seen = seen_unreadable if seen_unreadable is not None else set()
    bar = tqdm(loader, desc="val", disable=not progress, leave=False, dynamic_ncols=True)
    for images, labels, _, unreadable in bar:
        report_unreadable(unreadable, seen)
        if not len(labels):
            continue
        t = time.perf_counter()
        logits = model(images.to(device, non_blocking=True)).float().cpu()
        model_time += time.perf_counter() - t
        if logits.shape[1] != nc:
            raise ValueError(f"the model predicts {logits.shape[1]} classes but the dataset has {nc}")
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        top = logits.topk(k, dim=1).indices
        hit = top == labels[:, None]
        hits1 += int(hit[:, 0].sum())
        hitsk += int(hit.any(1).sum())
        confusion.index_put_((top[:, 0], labels), torch.ones_like(labels), accumulate=True)
        n += len(labels)
    if n == 0:
        raise ValueError("no readable images to evaluate")
    return ClassifyMetrics(list(names), confusion.numpy(), hits1 / n, hitsk / n, loss_sum / n, 1000 * model_time / n)


def format_table(metrics: ClassifyMetrics, max_rows: int = 50) -> str:
    """The per-class accuracy table with the overall top-1/top-k line first."""
    k = min(5, len(metrics.names))
    width = max(12, *(len(n) + 2 for n in metrics.names[:max_rows]))
    lines = [
        f"{'class':>{width}} {'images':>8} {'top1':>7} {f'top{k}':>7}",
        f"{'all':>{width}} {int(metrics.confusion.sum()):>8} {metrics.top1:>7.3f} {metrics.top5:>7.3f}",
    ]
    counts, accs = metrics.images_per_class, metrics.per_class
    for name, count, acc in list(zip(metrics.names, counts, accs))[:max_rows]:
        lines.append(f"{name:>{width}} {int(count):>8} {'-' if np.isnan(acc) else f'{acc:.3f}':>7}")
    if len(metrics.names) > max_rows:
        lines.append(f"{'...':>{width}} ({len(metrics.names) - max_rows} more classes)")
    return "\n".join(lines)


def plot_classify_confusion(metrics: ClassifyMetrics, save_dir: str | os.PathLike) -> Path:
    """confusion_matrix.png: columns are true classes, normalised to sum to 1; counts in the title."""
    title = f"Confusion matrix ({int(metrics.confusion.sum())} images, top-1 {metrics.top1:.3f})"
    return draw_confusion(metrics.confusion, metrics.names, title, Path(save_dir) / "confusion_matrix.png")


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------
def build_optimizer(model: GroupMixFormer, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with two groups: decayed weights, and the model's ``no_weight_decay()`` set undecayed."""
    skip = model.no_weight_decay()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name in skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)


def build_criterion(args: ClassifyTrainArgs) -> nn.Module:
    """Soft-target CE after mixup/cutmix (smoothing is in the mixed targets), else smoothed CE."""
    if args.mixing:
        return SoftTargetCrossEntropy()
    if args.label_smoothing > 0:
        return LabelSmoothingCrossEntropy(args.label_smoothing)
    return nn.CrossEntropyLoss()


def seed_everything(seed: int) -> None:
    """torch, numpy and random: augmentations, mixup and stochastic depth all draw from these."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def split_folders(data: str | os.PathLike) -> tuple[Path, Path]:
    """DIR -> (DIR/train, DIR/val), falling back to DIR/test when there is no val/."""
    root = Path(data)
    if not root.is_dir():
        raise OSError(f"--data: folder not found: {root}")
    train_dir, val_dir = root / "train", root / "val"
    if not val_dir.is_dir() and (root / "test").is_dir():
        val_dir = root / "test"
    missing = [p.name for p in (train_dir, val_dir) if not p.is_dir()]
    if missing:
        raise OSError(f"--data {root}: no {' or '.join(missing)} folder (expected train/ and val/ of class folders)")
    return train_dir, val_dir


def write_csv_row(path: Path, row: list[float]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(CSV_COLUMNS)
        w.writerow([row[0], *(f"{v:.6g}" for v in row[1:])])


def classify_train(args: ClassifyTrainArgs) -> dict[str, Any]:
    """Train (or fine-tune) a GroupMixFormer classifier; returns the best checkpoint's metrics and paths."""
    ckpt = None
    if args.resume:
        last = find_last_checkpoint(args.project) if args.resume == "last" else Path(args.resume)
        ckpt = load_classify_checkpoint(last)
        saved = {k: v for k, v in ckpt["args"].items() if k in {f.name for f in dataclasses.fields(ClassifyTrainArgs)}}
        keep = {"device": args.device, "workers": args.workers, "progress": args.progress}
        args = ClassifyTrainArgs(**{**saved, **keep, "resume": str(last)})
        save_dir = last.parent.parent
        LOGGER.info("resuming %s from epoch %d", save_dir, ckpt["epoch"] + 2)
    args.check()
    device = select_device(args.device)
    seed_everything(args.seed)

    # ---- data ------------------------------------------------------------------------------------
    train_dir, val_dir = split_folders(args.data)
    train_tf = classify_train_transform(
        args.imgsz,
        args.auto_augment,
        args.color_jitter,
        args.reprob,
        args.hflip,
        args.interpolation,
        args.mean,
        args.std,
    )
    eval_tf = classify_eval_transform(args.imgsz, args.crop_pct, args.interpolation, args.mean, args.std)
    train_set = ClassifyFolder(train_dir, ckpt["names"] if ckpt else None, train_tf)
    names = train_set.names
    val_set = ClassifyFolder(val_dir, names, eval_tf)
    if len(train_set) < args.batch:
        raise ValueError(f"--batch {args.batch} is larger than the {len(train_set)} training images in {train_dir}")
    # drop_last: every step sees a full batch (the authors' loader; mixup needs even batches).
    train_loader = build_classify_loader(
        train_set, args.batch, args.workers, shuffle=True, seed=args.seed, drop_last=True
    )
    val_loader = build_classify_loader(val_set, args.batch, args.workers)

    # ---- model, optimizer, schedule --------------------------------------------------------------
    if ckpt is not None:
        model = GroupMixFormer(**ckpt["model_config"], drop_path_rate=ckpt["drop_path_rate"])
        model.load_state_dict(ckpt["model"])
    else:
        model = build_classifier(args.model, len(names), args.weights, args.drop_path)
    drop_path_rate = args.drop_path if args.drop_path is not None else drop_path_of(model)
    model.to(device)
    scale = args.batch / 512  # the authors' linear scaling rule
    optimizer = build_optimizer(model, args.lr * scale, args.weight_decay)
    nb = len(train_loader)
    total_steps = args.epochs * nb
    warmup_steps = min(round(args.warmup_epochs * nb), total_steps // 2)
    if warmup_steps < round(args.warmup_epochs * nb):
        LOGGER.warning("warm-up shortened to %d of the %d steps (at most half of the run)", warmup_steps, total_steps)
    from timm.scheduler import CosineLRScheduler  # timm.scheduler is only needed for training

    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=total_steps - warmup_steps,
        lr_min=args.min_lr * scale,
        warmup_t=warmup_steps,
        warmup_lr_init=args.warmup_lr * scale,
        warmup_prefix=True,
        t_in_epochs=False,
    )
    ema = make_ema(model, args.ema_decay, EMA_TAU) if args.ema else None
    mixup = (
        Mixup(
            mixup_alpha=args.mixup,
            cutmix_alpha=args.cutmix,
            prob=args.mixup_prob,
            switch_prob=args.mixup_switch_prob,
            label_smoothing=args.label_smoothing,
            num_classes=len(names),
        )
        if args.mixing
        else None
    )
    criterion = build_criterion(args)
    start_epoch, best = 0, (-1.0, float("inf"))  # best (top-1, val loss): higher top-1, then lower loss
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        if ema is not None:
            ema.module.load_state_dict(ckpt["ema"])
            ema.n_averaged.fill_(ckpt["updates"])
        start_epoch, best = ckpt["epoch"] + 1, tuple(ckpt["best"])
        if start_epoch >= args.epochs:
            raise ValueError(f"{args.resume}: that run already finished its {args.epochs} epochs")
    else:
        save_dir = increment_path(Path(args.project) / args.name, args.exist_ok)
    weights_dir = save_dir / "weights"
    weights_dir.mkdir(parents=True, exist_ok=True)
    if ckpt is None:
        atomic_write(save_dir / "args.yaml", yaml.safe_dump(dataclasses.asdict(args), sort_keys=False))

    use_amp = args.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    csv_file = save_dir / "results.csv"
    if ckpt is not None:  # rows of epochs last.pt does not hold (killed between the row and the checkpoint)
        tidy_interrupted_run(save_dir, start_epoch)
    data_dir = str(Path(args.data).resolve())
    LOGGER.info(
        "training %s on %s: %d classes, %d train / %d val images at %d px, batch %d, lr %.3g, %d epochs, device %s;"
        " results in %s",
        args.model,
        data_dir,
        len(names),
        len(train_set),
        len(val_set),
        args.imgsz,
        args.batch,
        args.lr * scale,
        args.epochs,
        device,
        save_dir,
    )
    unreadable_seen: set[str] = set()
    best_epoch = start_epoch - 1
    epoch = start_epoch
    epoch_times = []
    for epoch in range(start_epoch, args.epochs):
        t_epoch = time.time()
        model.train()
        seed_everything(args.seed + epoch)  # a resumed run continues exactly as an uninterrupted one
        train_loader.generator.manual_seed(args.seed + epoch)
        mean_loss = 0.0
        bar = tqdm(train_loader, disable=not args.progress, dynamic_ncols=True, bar_format="{l_bar}{bar:10}{r_bar}")
        for i, (images, labels, paths, unreadable) in enumerate(bar):
            report_unreadable(unreadable, unreadable_seen)
            if mixup is not None:
                keep = len(labels) // 2 * 2  # a skipped image can leave an odd batch
                images, labels = images[:keep], labels[:keep]
            if not len(labels):
                continue
            step = epoch * nb + i
            scheduler.step_update(step)
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            targets = labels
            if mixup is not None:
                images, targets = mixup(images, labels)
            with torch.autocast(device.type, enabled=use_amp):
                loss = criterion(model(images), targets)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"the loss became {loss.item()} at epoch {epoch + 1}, batch {i + 1} ({paths[0]} ...); stopped. "
                    f"The last good checkpoint is {weights_dir / 'last.pt'}"
                    + ("" if (weights_dir / "last.pt").exists() else " (none saved yet)")
                    + ". Try a lower --lr or --no-amp."
                )
            scaler.scale(loss).backward()
            if args.clip_grad:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update_parameters(model)
            mean_loss = (mean_loss * i + loss.item()) / (i + 1)
            if args.progress:
                mem = f"{torch.cuda.memory_reserved(device) / 1e9:.1f}G" if device.type == "cuda" else "cpu"
                lr = optimizer.param_groups[0]["lr"]
                bar.set_description(f"{epoch + 1}/{args.epochs} {mem} loss {mean_loss:.4f} lr {lr:.3g}")
        bar.close()
        lr = optimizer.param_groups[0]["lr"]
        eval_model = ema.module if ema is not None else model
        metrics = evaluate(eval_model, val_loader, names, device, args.progress, unreadable_seen)
        epoch_times.append(time.time() - t_epoch)
        write_csv_row(csv_file, [epoch + 1, mean_loss, metrics.loss, metrics.top1, metrics.top5, lr, epoch_times[-1]])
        LOGGER.info(
            "epoch %d/%d: train loss %.4f | val loss %.4f top1 %.4f top%d %.4f | %.1f s",
            epoch + 1,
            args.epochs,
            mean_loss,
            metrics.loss,
            metrics.top1,
            min(5, len(names)),
            metrics.top5,
            epoch_times[-1],
        )
        improved = metrics.top1 > best[0] or (metrics.top1 == best[0] and metrics.loss < best[1])
        if improved:
            best, best_epoch = (metrics.top1, metrics.loss), epoch
        state = dict(
            epoch=epoch,
            best=list(best),
            ema=ema.module.state_dict() if ema is not None else None,
            updates=int(ema.n_averaged) if ema is not None else 0,
            optimizer=optimizer.state_dict(),
            args=dataclasses.asdict(args),
            metrics=metrics.as_dict(),
            data=data_dir,
            drop_path_rate=drop_path_rate,
        )
        save_classify_checkpoint(weights_dir / "last.pt", model, names, **state)
        if improved:
            save_classify_checkpoint(weights_dir / "best.pt", model, names, **state)
        if args.patience and epoch - best_epoch >= args.patience:
            LOGGER.info(
                "early stop: no better top-1 in the last %d epochs (best: epoch %d)", args.patience, best_epoch + 1
            )
            break

    best_pt = weights_dir / "best.pt"
    final = evaluate(
        classifier_from_checkpoint(load_classify_checkpoint(best_pt)).to(device),
        val_loader,
        names,
        device,
        args.progress,
    )
    print(format_table(final))
    if args.plots:
        plot_results(csv_file)
        plot_classify_confusion(final, save_dir)
    LOGGER.info("results saved to %s", save_dir)
    return {
        "save_dir": str(save_dir),
        "best": str(best_pt),
        "last": str(weights_dir / "last.pt"),
        **final.as_dict(),
        "epochs_trained": epoch + 1,
        "epoch_time_s": float(np.mean(epoch_times)) if epoch_times else 0.0,
    }


def drop_path_of(model: GroupMixFormer) -> float:
    """The stochastic-depth rate the model was built with (that of its last block)."""
    return float(model.groupmixformer_backbone[-1].gma_stage[-1].drop_path.p)


# --------------------------------------------------------------------------------------------------
# Validation and prediction
# --------------------------------------------------------------------------------------------------
def classify_val(args: ClassifyValArgs) -> dict[str, Any]:
    """Evaluate a classifier on a split: top-1/top-k, per-class accuracy, confusion matrix."""
    if args.batch < 1:
        raise ValueError(f"--batch must be positive, got {args.batch}")
    device = select_device(args.device)
    model, info = load_classifier(args.weights)
    data = args.data or info["data"]
    if not data:
        raise ValueError("--data is required for a checkpoint that does not record its dataset")
    split_dir = Path(data) / args.split
    imgsz = args.imgsz or info["imgsz"]
    transform = classify_eval_transform(imgsz, info["crop_pct"], info["interpolation"], info["mean"], info["std"])
    dataset = ClassifyFolder(split_dir, info["names"], transform)  # no names (authors' file): sorted folders
    names = dataset.names
    if len(names) != model.num_classes:
        raise ValueError(f"{split_dir} has {len(names)} class folders but {args.weights} predicts {model.num_classes}")
    loader = build_classify_loader(dataset, args.batch, args.workers)
    metrics = evaluate(model.to(device), loader, names, device, args.progress)
    save_dir = increment_path(Path(args.project) / args.name, args.exist_ok)
    save_dir.mkdir(parents=True, exist_ok=True)
    print(format_table(metrics))
    print(f"speed: {metrics.speed_ms:.1f} ms per image at {imgsz}px on {device}")
    if args.plots:
        plot_classify_confusion(metrics, save_dir)
    LOGGER.info("results saved to %s", save_dir)
    return {**metrics.as_dict(), "save_dir": str(save_dir), "speed_ms": metrics.speed_ms}


def list_sources(source: str) -> list[Path]:
    """An image file, a folder (recursive) or a glob pattern -> sorted image paths."""
    path = Path(source)
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.suffix.lower() in IMG_FORMATS and p.is_file()]
    elif path.is_file():
        files = [path]
    else:
        files = [Path(p) for p in glob.glob(source, recursive=True)]
        files = [p for p in files if p.suffix.lower() in IMG_FORMATS and p.is_file()]
    if not files:
        raise OSError(f"--source {source}: no images found ({' '.join(IMG_FORMATS)})")
    return sorted(files)


@torch.no_grad()
def classify_predict(args: ClassifyPredictArgs) -> list[dict[str, Any]]:
    """Print the top-k classes of each image; returns ``[{path, top: [{class, index, prob}, ...]}, ...]``."""
    if args.topk < 1 or args.batch < 1:
        raise ValueError(f"--topk and --batch must be positive, got {args.topk} and {args.batch}")
    if args.save and Path(args.save).suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"--save {args.save}: the file must end in .csv or .json")
    device = select_device(args.device)
    model, info = load_classifier(args.weights)
    model.to(device).eval()
    names = info["names"] or [str(i) for i in range(model.num_classes)]
    imgsz = args.imgsz or info["imgsz"]
    transform = classify_eval_transform(imgsz, info["crop_pct"], info["interpolation"], info["mean"], info["std"])
    loader = torch.utils.data.DataLoader(
        ImageList(list_sources(args.source), transform),
        batch_size=args.batch,
        num_workers=max(0, min(args.workers, os.cpu_count() or 1)),
        collate_fn=collate_classify,
    )
    k = min(args.topk, len(names))
    results, seen = [], set()
    for images, _, paths, unreadable in tqdm(loader, desc="predict", disable=not args.progress, leave=False):
        report_unreadable(unreadable, seen)
        if not paths:
            continue
        probs = model(images.to(device)).float().softmax(1).cpu()
        values, indices = probs.topk(k, dim=1)
        for path, vs, ids in zip(paths, values.tolist(), indices.tolist()):
            top = [{"class": names[c], "index": c, "prob": round(v, 6)} for v, c in zip(vs, ids)]
            results.append({"path": path, "top": top})
            print(f"{path}: " + ", ".join(f"{t['class']} {t['prob']:.3f}" for t in top))
    if args.save:
        save_predictions(results, Path(args.save))
        LOGGER.info("predictions of %d images saved to %s", len(results), args.save)
    return results


def save_predictions(results: list[dict[str, Any]], path: Path) -> None:
    """JSON as returned by :func:`classify_predict`; CSV with one row per image (path, top1, prob1, ...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        atomic_write(path, json.dumps(results, indent=1))
        return
    k = max((len(r["top"]) for r in results), default=0)
    with atomic_open(path, "w", fsync=False) as f:
        w = csv.writer(f)
        w.writerow(["path", *(c for j in range(1, k + 1) for c in (f"top{j}", f"prob{j}"))])
        for r in results:
            w.writerow([r["path"], *(v for t in r["top"] for v in (t["class"], f"{t['prob']:.6f}"))])
