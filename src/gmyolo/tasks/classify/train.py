"""Classification training: ``classify_train(ClassifyTrainArgs(...))``, behind ``gmyolo classify train``.

The loop is :class:`gmyolo.engine.trainer.Trainer`'s (resume, DDP, Ctrl-C, checkpoints, TensorBoard);
this file holds what is classification's own: folder datasets with timm's transforms, mixup/cutmix,
label-smoothed or soft-target cross-entropy, AdamW with the model's no-weight-decay set, timm's
per-step cosine schedule after a linear warm-up, and top-1 as the fitness (ties: the lower val loss).
The defaults come from a recipe (:mod:`gmyolo.tasks.classify.recipes`), resolved once in ``setup``.

Every random draw of the training augmentation is seeded per (seed, epoch, image), so a run repeats
exactly, resumed or not, with any number of workers or processes.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...data.classify import ClassifyFolder, build_classify_loader, classify_eval_transform, classify_train_transform
from ...engine.distributed import get_rank, get_world_size
from ...engine.ema import make_ema
from ...engine.optim import param_groups
from ...engine.trainer import Evaluation, Trainer
from .model import (
    build_classifier,
    classifier_from_checkpoint,
    drop_path_of,
    load_classify_checkpoint,
    save_classify_checkpoint,
)
from .options import ClassifyTrainArgs
from .val import evaluate, format_table, plot_classify_confusion, report_unreadable

__all__ = ["ClassifyTrainArgs", "ClassificationTrainer", "classify_train", "build_optimizer", "build_criterion"]

LOGGER = logging.getLogger("gmyolo")
EMA_TAU = 2000  # EMA decay ramps up over about this many updates (as in the detection trainer)


def classify_train(args: ClassifyTrainArgs) -> dict[str, Any]:
    """Train (or fine-tune) a GroupMixFormer classifier; returns the best checkpoint's metrics and paths."""
    return ClassificationTrainer(args).train()


class ClassificationTrainer(Trainer):
    """The classification hooks of :class:`~gmyolo.engine.trainer.Trainer`."""

    args_type = ClassifyTrainArgs
    command = "gmyolo classify train"
    loss_names = ("loss",)
    diverged_hint = "Try a lower --lr or --no-amp."

    def load_checkpoint(self, path: Path) -> dict[str, Any]:
        return load_classify_checkpoint(path)

    def seed(self) -> None:
        seed_everything(self.args.seed)

    def resume_args(self) -> None:
        super().resume_args()
        if "recipe" not in self.ckpt["args"]:  # a run from before the recipes: the authors' was the only one
            self.args.recipe = "imagenet"

    def setup(self) -> None:
        args, ckpt = self.args, self.ckpt
        # In place: args.yaml and every checkpoint hold the values the run trains with, and --resume reuses them.
        LOGGER.info(args.apply_recipe().describe(args.batch))
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
        self.train_set = ClassifyFolder(train_dir, ckpt["names"] if ckpt else None, train_tf, seed=args.seed)
        self.names = self.train_set.names
        self.val_set = ClassifyFolder(val_dir, self.names, eval_tf)
        if len(self.train_set) < args.batch:
            raise ValueError(
                f"--batch {args.batch} is larger than the {len(self.train_set)} training images in {train_dir}"
            )
        self.data_dir = str(Path(args.data).resolve())
        self.unreadable_seen: set[str] = set()

    def build_model(self) -> nn.Module:
        args, ckpt = self.args, self.ckpt
        if ckpt is not None:
            model = classifier_from_checkpoint(ckpt, use_ema=False, drop_path_rate=ckpt["drop_path_rate"])
        else:
            model = build_classifier(args.model, len(self.names), args.weights, args.drop_path)
        return model

    def configure(self, model: nn.Module) -> None:
        args = self.args
        self.drop_path_rate = args.drop_path if args.drop_path is not None else drop_path_of(model)
        self.clip_norm = args.clip_grad
        self.lr_scale = args.batch / 512  # the authors' linear scaling rule

    def build_loaders(self):
        args = self.args
        # drop_last: every step sees a full batch (the authors' loader; mixup needs even batches).
        train_loader = build_classify_loader(
            self.train_set,
            self.rank_batch,
            args.workers,
            shuffle=True,
            seed=args.seed,
            drop_last=True,
            rank=get_rank(),
            world_size=get_world_size(),
            pin_memory=self.device.type == "cuda",
        )
        val_loader = build_classify_loader(
            self.val_set, args.batch, args.workers, pin_memory=self.device.type == "cuda"
        )
        self.mixup = make_mixup(args, len(self.names))
        return train_loader, val_loader

    def build_criterion(self, validation: bool = False) -> nn.Module | None:
        # Validation scores accuracy (and its cross-entropy) itself.
        return None if validation else build_criterion(self.args)

    def build_optimizer(self) -> torch.optim.Optimizer:
        return build_optimizer(self.model, self.args.lr * self.lr_scale, self.args.weight_decay)

    def build_scheduler(self):
        from timm.scheduler import CosineLRScheduler  # only needed for training

        args, s = self.args, self.lr_scale
        nb = len(self.train_loader)
        total_steps = args.epochs * nb
        warmup_steps = min(round(args.warmup_epochs * nb), total_steps // 2)
        if warmup_steps < round(args.warmup_epochs * nb):
            LOGGER.warning(
                "warm-up shortened to %d of the %d steps (at most half of the run)", warmup_steps, total_steps
            )
        return CosineLRScheduler(
            self.optimizer,
            t_initial=total_steps - warmup_steps,
            lr_min=args.min_lr * s,
            warmup_t=warmup_steps,
            warmup_lr_init=args.warmup_lr * s,
            warmup_prefix=True,
            t_in_epochs=False,
        )

    def build_ema(self):
        return make_ema(self.model, self.args.ema_decay, EMA_TAU) if self.args.ema else None

    def log_start(self) -> None:
        args = self.args
        LOGGER.info(
            "training %s on %s: %d classes, %d train / %d val images at %d px, batch %d, lr %.3g, %d epochs, "
            "device %s; results in %s",
            args.model,
            self.data_dir,
            len(self.names),
            len(self.train_set),
            len(self.val_set),
            args.imgsz,
            args.batch,
            args.lr * self.lr_scale,
            args.epochs,
            self.device,
            self.save_dir,
        )

    def start_epoch(self, epoch: int) -> None:
        seed_everything(self.args.seed + epoch)  # mixup and stochastic depth: as in an uninterrupted run
        self.train_set.set_epoch(epoch)
        self.train_loader.sampler.set_epoch(epoch)

    def adjust_lr(self, ni: int, epoch: int) -> None:
        self.scheduler.step_update(ni)

    def preprocess(self, batch):
        images, labels, paths, unreadable = batch
        report_unreadable(unreadable, self.unreadable_seen)
        if self.mixup is not None:
            keep = len(labels) // 2 * 2  # a skipped image can leave an odd batch
            images, labels, paths = images[:keep], labels[:keep], paths[:keep]
        if not len(labels):
            return None
        images = images.to(self.device, non_blocking=True)
        targets = labels.to(self.device, non_blocking=True)
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)
        return images, targets, paths

    def loss(self, preds, targets):
        loss = self.criterion(preds, targets)
        return loss, loss.detach()[None]

    def progress_text(self, mean_loss, images, targets) -> str:
        return f"loss {mean_loss[0]:.4f} lr {self.optimizer.param_groups[0]['lr']:.3g}"

    def loss_text(self, mean_loss) -> str:
        return f"train loss {mean_loss[0]:.4f}"

    def validate(self) -> Evaluation:
        model = self.ema.module if self.ema is not None else self.model
        m = evaluate(model, self.val_loader, self.names, self.device, self.args.progress, self.unreadable_seen)
        values = {"val/loss": m.loss, "metrics/accuracy_top1": m.top1, "metrics/accuracy_top5": m.top5}
        text = f"val loss {m.loss:.4f} top1 {m.top1:.4f} top{min(5, len(self.names))} {m.top5:.4f}"
        return Evaluation((m.top1, -m.loss), values, text, m.as_dict())  # higher top-1, then lower loss

    def epoch_row(self, epoch, mean_loss, ev, lrs, seconds) -> dict[str, float]:
        return {**super().epoch_row(epoch, mean_loss, ev, lrs, seconds), "time/epoch_s": seconds}

    def checkpoint_fields(self) -> dict[str, Any]:
        return dict(data=self.data_dir, drop_path_rate=self.drop_path_rate)

    def save_checkpoint(self, path: Path, **fields: Any) -> Path:
        return save_classify_checkpoint(path, self.model, self.names, **fields)

    def final_eval(self, best: Path) -> dict[str, Any]:
        final = evaluate(
            classifier_from_checkpoint(load_classify_checkpoint(best)).to(self.device),
            self.val_loader,
            self.names,
            self.device,
            self.args.progress,
        )
        print(format_table(final))
        if self.args.plots:
            plot_classify_confusion(final, self.save_dir)
        times = self.epoch_seconds
        return {**final.as_dict(), "epoch_time_s": float(np.mean(times)) if times else 0.0}


def make_mixup(args: ClassifyTrainArgs, num_classes: int):
    """timm's Mixup/CutMix (label smoothing folded into its soft targets), or None when off."""
    if not args.mixing:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=args.mixup,
        cutmix_alpha=args.cutmix,
        prob=args.mixup_prob,
        switch_prob=args.mixup_switch_prob,
        label_smoothing=args.label_smoothing,
        num_classes=num_classes,
    )


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with two groups: decayed weights, and the model's ``no_weight_decay()`` set undecayed."""
    return torch.optim.AdamW(param_groups(model, lr, weight_decay), lr=lr, betas=(0.9, 0.999), eps=1e-8)


def build_criterion(args: ClassifyTrainArgs) -> nn.Module:
    """Soft-target CE after mixup/cutmix (smoothing is in the mixed targets), else smoothed CE."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if args.mixing:
        return SoftTargetCrossEntropy()
    if args.label_smoothing > 0:
        return LabelSmoothingCrossEntropy(args.label_smoothing)
    return nn.CrossEntropyLoss()


def seed_everything(seed: int) -> None:
    """torch, numpy and random: mixup and stochastic depth draw from these."""
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
