"""Detection training: ``train(TrainArgs(...))``, behind ``gmyolo train`` and ``YOLO(...).train()``.

The loop is :class:`gmyolo.engine.trainer.Trainer`'s; this file holds what is detection's own:
YOLOv5's warm-up of learning rate and momentum per iteration, linear or cosine decay per epoch, the
head's loss (YOLOv5's with gains scaled to the model and data; the anchor-free heads' TAL loss, and the
end-to-end heads' dual assignment with its one-to-many weight set per epoch) and its hyper-parameters,
AutoAnchor (YOLOv5's head only), the EMA model validated for mAP, mosaic closed for the last epochs, and
the batch and label pictures of a run folder.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from ...data.augment import stride_multiple
from ...data.config import DatasetConfig, load_dataset_config
from ...data.dataset import build_dataloader, collate_fn, create_dataset
from ...data.plots import plot_batch, plot_labels
from ...engine.distributed import get_rank, get_world_size, is_main_process, main_process_first
from ...engine.ema import make_ema
from ...engine.optim import param_groups, pretrained_parameters
from ...engine.trainer import Evaluation, Trainer
from ...models.groupmixformer import GroupMixFormer
from ...models.yolo import DetectionModel
from ...utils.files import atomic_write
from .autoanchor import check_anchors
from .checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from .hyp import resolve_hyp
from .loss import ComputeLoss, loss_gains, make_loss  # noqa: F401 (tests patch ComputeLoss here)
from .options import TrainArgs
from .plots import PredictionPictures
from .validator import Validator, format_table, save_validation_plots

__all__ = [
    "TrainArgs",
    "DetectionTrainer",
    "CSV_COLUMNS",
    "csv_columns",
    "train",
    "build_optimizer",
    "freeze_layers",
    "transfer_weights",
]

LOGGER = logging.getLogger("gmyolo")
LR_COLUMNS = (("weights", "decay"), ("norms", "no_decay"), ("biases", "bias"))  # x/lr_<name>: the group kind
METRIC_COLUMNS = ("metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95")


def csv_columns(losses=("box_loss", "obj_loss", "cls_loss")) -> list[str]:
    """The columns of results.csv for a head whose loss items are ``losses`` (its ``loss_names``)."""
    return [
        "epoch",
        *(f"train/{n}" for n in losses),
        *METRIC_COLUMNS,
        *(f"val/{n}" for n in losses),
        *(f"x/lr_{c}" for c, _ in LR_COLUMNS),
    ]


CSV_COLUMNS = csv_columns()  # results.csv of YOLOv5's head; the anchor-free heads': box_loss, cls_loss, dfl_loss


def train(args: TrainArgs) -> dict[str, Any]:
    """Train a detector; returns the final metrics and the paths of the run folder and best checkpoint.

    ``device='0,1,...'`` trains on those GPUs, one process each, through torchrun (see
    :mod:`gmyolo.engine.distributed`); under torchrun every process calls this and rank 0 reports.
    """
    return DetectionTrainer(args).train()


class DetectionTrainer(Trainer):
    """The detection hooks of :class:`~gmyolo.engine.trainer.Trainer` (YOLOv5's recipe; the head's own loss)."""

    args_type = TrainArgs
    command = "gmyolo train"
    loss_names = ("box_loss", "obj_loss", "cls_loss")  # the head's own (``head.loss_names``) once the model is built
    diverged_hint = "Try a lower learning rate (--hyp lr0=...) or --no-amp."

    validator = Validator  # scores the EMA model each epoch, and best.pt at the end
    segments = False  # the datasets carry the objects' outlines (and batches their masks)
    collate = staticmethod(collate_fn)  # a loader's batches
    pictures_type = PredictionPictures  # TensorBoard's validation images

    def __init__(self, args: TrainArgs):
        super().__init__(args)
        self.pictures: PredictionPictures | None = None  # TensorBoard's validation images

    def load_checkpoint(self, path: Path) -> dict[str, Any]:
        return load_checkpoint(path)

    def setup(self) -> None:
        # The hyper-parameters are resolved once, in build_model, for the model's head (its own loss keys); a resumed
        # run resolves the values its checkpoint saved.
        self.hyp_source = self.ckpt["hyp_overrides"] if self.ckpt is not None else self.args.hyp
        with main_process_first():  # rank 0 generates the synthetic data, once
            self.data = resolve_data(self.args, segments=self.segments)

    def build_model(self) -> DetectionModel:
        args, ckpt, data = self.args, self.ckpt, self.data
        if ckpt is not None:
            model = model_from_checkpoint(ckpt, use_ema=False)
            for name in ckpt.get("pretrained_modules", []):  # the same parameter groups as before the stop
                model.get_submodule(name).pretrained_loaded = True
        else:
            # The scale of a YAML with a scales block: from the name (yolo11s), or --scale once TrainArgs has it.
            model = DetectionModel(args.model, nc=data.nc, scale=getattr(args, "scale", None))
            if args.weights:
                transfer_weights(model, load_checkpoint(args.weights))
            if args.backbone_weights:
                gmf = [b for b in backbones(model) if isinstance(b, GroupMixFormer)]
                if not gmf:
                    raise ValueError(
                        f"--backbone-weights: model {args.model} has no GroupMixFormer backbone (a Timm or "
                        "TorchVision layer takes its weights file in its YAML args)"
                    )
                for b in gmf:
                    b.load_pretrained(args.backbone_weights)
        model.names = dict(enumerate(data.names))
        freeze_layers(model, args.freeze, args.freeze_stages)
        return model

    def configure(self, model: DetectionModel) -> None:
        args = self.args
        self.stride = int(model.stride.max())
        self.imgsz = stride_multiple(args.imgsz, self.stride)
        head = model.detect  # what the head declares: its hyper-parameter section, loss and loss items
        self.hyp_values = resolve_hyp(self.hyp_source, head=head.hyp_section, report=True)
        self.loss_names = head.loss_names
        self.hyp = loss_gains(self.hyp_values, head, self.data.nc, self.imgsz)
        self.accumulate = max(round(args.nbs / args.batch), 1)
        self.clip_norm = self.hyp["grad_clip"]

    def build_loaders(self):
        args, hyp, data = self.args, self.hyp, self.data
        with main_process_first():  # rank 0 checks the labels and writes their cache; the others read it
            self.train_set, _ = create_dataset(
                data,
                "train",
                self.imgsz,
                augment=True,
                hyp=hyp,
                batch_size=args.batch,
                stride=self.stride,
                cache_images=args.cache,
                seed=args.seed,
                segments=self.segments,
            )
        with main_process_first():
            val_set, _ = create_dataset(
                data,
                "val",
                self.imgsz,
                rect=True,
                batch_size=args.batch * 2,
                stride=self.stride,
                segments=self.segments,
            )
        pin = self.device.type == "cuda"
        train_loader = build_dataloader(
            self.train_set,
            self.rank_batch,
            args.workers,
            seed=args.seed,
            rank=get_rank(),
            world_size=get_world_size(),
            pin_memory=pin,
            collate=self.collate,
        )
        val_loader = build_dataloader(
            val_set, args.batch * 2, args.workers, shuffle=False, pin_memory=pin, collate=self.collate
        )
        return train_loader, val_loader

    def fit_to_data(self) -> None:
        if self.args.noautoanchor:
            return
        if hasattr(self.model.detect, "anchors"):
            check_anchors(self.train_set.records, self.model, self.hyp["anchor_t"], self.imgsz, seed=self.args.seed)
        else:
            LOGGER.info(
                "AutoAnchor: does not apply to the anchor-free %s head (it has no anchors)",
                type(self.model.detect).__name__,
            )

    def build_criterion(self, validation: bool = False):
        """The head's own loss (its ``criterion``), built after AutoAnchor has settled the anchors."""
        return make_loss(self.model.detect, self.hyp, distributed=not validation and get_world_size() > 1)

    def warmup_batches(self, batches_per_epoch: int) -> int:
        """YOLOv5's: warmup_epochs of batches, at least 100, and at most half the run."""
        warmup = self.hyp["warmup_epochs"]
        total = self.args.epochs * batches_per_epoch
        return min(max(round(warmup * batches_per_epoch), 100), total // 2) if warmup else 0

    def build_optimizer(self) -> torch.optim.Optimizer:
        return build_optimizer(
            self.model, self.args.optimizer, self.hyp, self.args.batch, self.accumulate, self.args.nbs
        )

    def build_scheduler(self):
        self.lf = learning_rate_factor(self.args.epochs, self.hyp["lrf"], self.args.cos_lr)
        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda=self.lf)

    def build_ema(self):
        return make_ema(self.model, self.hyp["ema_decay"], self.hyp["ema_tau"])

    def restore(self, ckpt: dict[str, Any]) -> None:
        self.scheduler.last_epoch = self.start  # as if stepped once per finished epoch

    def on_train_start(self) -> None:
        atomic_write(self.save_dir / "hyp.yaml", yaml.safe_dump(self.hyp_values, sort_keys=False))  # reusable as --hyp
        if self.args.plots:
            labels = np.concatenate([r.labels for r in self.train_set.records])
            plot_labels(labels, self.data.names, self.save_dir / "labels.jpg")

    def log_start(self) -> None:
        LOGGER.info(
            "training %s on %s for %d epochs: %d train / %d val images at %d px, batch %d (accumulate %d), device %s;"
            " results in %s",
            self.args.model,
            self.data.yaml_file or "dataset",
            self.args.epochs,
            len(self.train_loader.dataset),
            len(self.val_loader.dataset),
            self.imgsz,
            self.args.batch,
            self.accumulate,
            self.device,
            self.save_dir,
        )

    def start_epoch(self, epoch: int) -> None:
        args = self.args
        self.train_set.set_epoch(epoch)
        self.train_loader.sampler.set_epoch(epoch)  # the same order for an epoch, resumed or not
        if args.close_mosaic and epoch == max(args.epochs - args.close_mosaic, 0):
            LOGGER.info("closing mosaic for the last %d epochs", args.epochs - epoch)
        if args.close_mosaic and epoch >= args.epochs - args.close_mosaic:
            self.train_set.close_mosaic()
        for loss in (self.criterion, self.val_criterion):  # end-to-end heads: this epoch's one-to-many weight
            if hasattr(loss, "set_epoch"):
                loss.set_epoch(epoch, args.epochs)

    def preprocess(self, batch):
        images, targets, paths, _ = batch
        return images.to(self.device, non_blocking=True).float() / 255, targets.to(self.device), paths

    def adjust_lr(self, ni: int, epoch: int) -> None:
        """Warm-up: lr from 0 (biases with SGD: from warmup_bias_lr) and momentum from warmup_momentum."""
        if ni > self.warmup_iters:
            return
        hyp, xi = self.hyp, [0, self.warmup_iters]
        uses_sgd = isinstance(self.optimizer, torch.optim.SGD)
        for g in self.optimizer.param_groups:
            start = hyp["warmup_bias_lr"] * g["lr_scale"] if (g["kind"] == "bias" and uses_sgd) else 0.0
            g["lr"] = float(np.interp(ni, xi, [start, g["initial_lr"] * self.lf(epoch)]))
            momentum = float(np.interp(ni, xi, [hyp["warmup_momentum"], hyp["momentum"]]))
            if uses_sgd:
                g["momentum"] = momentum
            else:
                g["betas"] = (momentum, g["betas"][1])

    def step_epoch(self) -> None:
        self.scheduler.step()

    def loss(self, preds, targets):
        return self.criterion(preds, targets)

    def progress_text(self, mean_loss, images, targets) -> str:
        losses = " ".join(f"{n.removesuffix('_loss')} {v:.4f}" for n, v in zip(self.loss_names, mean_loss.tolist()))
        return f"{losses} inst {len(targets)} size {images.shape[-1]}"

    def on_batch_end(self, i, images, targets, paths) -> None:
        if self.epoch == self.start and i < 3 and self.args.plots and self.ckpt is None and is_main_process():
            self.plot_train_batch(i, images, targets, paths)

    def plot_train_batch(self, i, images, targets, paths, masks=None) -> None:
        """train_batch{i}.jpg (and TensorBoard's picture of it): the augmented images with their labels."""
        plotted = plot_batch(
            images.mul(255).byte().cpu(),
            targets.cpu(),
            self.data.names,
            self.save_dir / f"train_batch{i}.jpg",
            paths,
            masks=masks,
        )
        if self.tb is not None:
            self.tb.log_image(plotted.stem, plotted, self.epoch + 1)

    def validate(self) -> Evaluation:
        validator = self.validator(
            self.data.names, self.device, compute_loss=self.val_criterion, progress=self.args.progress
        )
        self.last_results = r = validator(self.ema.module, self.val_loader)
        m = r.metrics
        values = dict(zip(METRIC_COLUMNS, (m.mp, m.mr, m.map50, m.map)))
        values.update({f"val/{n}": v for n, v in zip(self.loss_names, r.loss.tolist())})
        text = f"P {m.mp:.3f} R {m.mr:.3f} mAP50 {m.map50:.3f} mAP50-95 {m.map:.3f}"
        return Evaluation(r.fitness, values, text, r.as_dict())

    def epoch_row(self, epoch, mean_loss, ev, lrs, seconds) -> dict[str, float]:
        row = super().epoch_row(epoch, mean_loss, ev, lrs, seconds)
        del row["lr"]
        by_kind = {g["kind"]: g["lr"] for g in lrs}
        first = lrs[0]["lr"]
        row.update({f"x/lr_{c}": by_kind.get(kind, first) for c, kind in LR_COLUMNS})
        return row

    def log_images(self, step: int) -> None:
        if self.pictures is None:
            self.pictures = self.pictures_type(self.val_loader, self.data.names)
        self.pictures.log(self.tb, self.ema.module, step)

    def checkpoint_fields(self) -> dict[str, Any]:
        pretrained = [name for name, m in self.model.named_modules() if getattr(m, "pretrained_loaded", False)]
        return dict(
            hyp=self.hyp, hyp_overrides=self.hyp_values, data=self.data.to_dict(), pretrained_modules=pretrained
        )

    def save_checkpoint(self, path: Path, **fields: Any) -> Path:
        return save_checkpoint(path, self.model, **fields)

    def final_eval(self, best: Path) -> dict[str, Any]:
        validator = self.validator(self.data.names, self.device, progress=self.args.progress)
        final = validator(model_from_checkpoint(load_checkpoint(best)).to(self.device).fuse(), self.val_loader)
        print(format_table(final))
        if self.args.plots:
            save_validation_plots(final, self.save_dir)
        return {**final.as_dict(), "fitness": final.fitness}


def resolve_data(args: TrainArgs, segments: bool = False) -> DatasetConfig:
    """The dataset YAML of ``--data``; 'synth' generates the built-in dataset first when it is missing (with
    ``segments``, the shapes' outlines, in ``<synth_dir>-seg``)."""
    if args.data == "synth":
        from ...data.synth import make_synthetic_dataset

        folder = args.synth_dir + ("-seg" if segments else "")
        yaml_file = Path(folder) / "data.yaml"
        if not yaml_file.is_file():
            LOGGER.info("generating the built-in synthetic dataset in %s", folder)
            yaml_file = make_synthetic_dataset(folder, seed=0, segments=segments)
        return load_dataset_config(yaml_file, require=("train", "val"))
    return load_dataset_config(args.data, require=("train", "val"))


def backbones(model: DetectionModel) -> list[nn.Module]:
    """The layers that are backbones with stages: GroupMixFormer, Timm, TorchVision (anything with freeze_stages)."""
    return [m for m in model.model if callable(getattr(m, "freeze_stages", None))]


def has_attention(module: nn.Module) -> bool:
    """Whether a backbone is a transformer: GroupMixFormer, or attention blocks inside (timm's and torchvision's
    class names say Attention: pvt_v2's Attention, Swin's WindowAttention, MobileNetV4's MultiQueryAttention2d)."""
    return isinstance(module, GroupMixFormer) or any("Attention" in type(m).__name__ for m in module.modules())


def build_optimizer(
    model: DetectionModel, name: str, hyp: dict[str, float], batch: int, accumulate: int, nbs: int = 64
) -> torch.optim.Optimizer:
    """Parameter groups as detectors need them.

    No weight decay on the model's ``no_weight_decay()`` set (norm weights, biases, GroupMixFormer's
    position-encoding convs); biases in their own group (their own warm-up); a module that loaded
    pretrained weights at ``backbone_lr_ratio`` × lr. ``auto``: AdamW for transformer backbones, else SGD.
    """
    use_adamw = name.lower() == "adamw" or (name.lower() == "auto" and any(map(has_attention, backbones(model))))
    lr0 = hyp["lr0_adamw"] if use_adamw else hyp["lr0"]
    weight_decay = hyp["weight_decay_adamw"] if use_adamw else hyp["weight_decay"] * batch * accumulate / nbs
    pretrained = pretrained_parameters(model)
    groups = param_groups(model, lr0, weight_decay, True, hyp["backbone_lr_ratio"], pretrained)
    if use_adamw:
        opt = torch.optim.AdamW(groups, lr=lr0, betas=(hyp["momentum"], 0.999))
    else:
        opt = torch.optim.SGD(groups, lr=lr0, momentum=hyp["momentum"], nesterov=True)
    n = {k: sum(len(g["params"]) for g in groups if g["kind"] == k) for k in ("decay", "no_decay", "bias")}
    LOGGER.info(
        "optimizer: %s(lr=%g) with parameter groups %d weight (decay=%.2g), %d norm/position (no decay), "
        "%d bias (no decay)%s",
        type(opt).__name__,
        lr0,
        n["decay"],
        weight_decay,
        n["no_decay"],
        n["bias"],
        f"; pretrained backbone at {hyp['backbone_lr_ratio']:g}x lr" if pretrained else "",
    )
    return opt


def learning_rate_factor(epochs: int, lrf: float, cosine: bool):
    """Epoch -> lr factor: linear from 1 to ``lrf`` (YOLOv5's default) or a cosine of the same range."""
    if cosine:
        return lambda e: ((1 - math.cos(e * math.pi / epochs)) / 2) * (lrf - 1) + 1
    return lambda e: (1 - e / epochs) * (1.0 - lrf) + lrf


def transfer_weights(model: DetectionModel, ckpt: dict[str, Any]) -> None:
    """Copy every tensor whose name and shape fit (e.g. all but the head when the class count changes)."""
    source = ckpt.get("ema") or ckpt["model"]
    target = model.state_dict()
    fitting = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    model.load_state_dict(fitting, strict=False)
    LOGGER.info("transferred %d/%d tensors from the checkpoint", len(fitting), len(target))


def freeze_layers(model: DetectionModel, n_layers: int, n_stages: int) -> None:
    for m in list(model.model)[:n_layers]:
        for p in m.parameters():
            p.requires_grad_(False)
        if callable(getattr(m, "freeze_stages", None)):
            m.freeze_stages(m.num_stages)  # also keeps its BatchNorm statistics
    if n_stages:
        if not backbones(model):
            LOGGER.warning(
                "--freeze-stages %d: the model has no backbone with stages (GroupMixFormer, Timm, TorchVision by "
                "name); --freeze N freezes its first N layers",
                n_stages,
            )
        for b in backbones(model):
            b.freeze_stages(n_stages)
    if n_layers or n_stages:
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        LOGGER.info("frozen: %d parameters", frozen)
