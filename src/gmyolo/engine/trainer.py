"""Training: ``train(TrainArgs(...))`` — the loop behind ``gmyolo train`` and ``YOLO(...).train()``.

One epoch = warm-up aware learning rate and momentum per iteration, AMP forward (CUDA), YOLOv5 loss,
gradient accumulation to a nominal batch of 64, gradient clipping, EMA update; then validation of the
EMA model, ``results.csv``, and atomic ``last.pt`` / ``best.pt``.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from ..data.config import DatasetConfig, load_dataset_config
from ..data.dataset import build_dataloader, create_dataset
from ..data.plots import plot_batch, plot_labels
from ..models.groupmixformer import GroupMixFormer
from ..models.yolo import DetectionModel
from .autoanchor import check_anchors
from .checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from .distributed import (
    broadcast_object,
    get_rank,
    get_world_size,
    is_main_process,
    launch,
    launch_needed,
    main_process_first,
    mean_over_ranks,
    per_rank_batch,
    setup_distributed,
    wrap_model,
)
from .faults import GracefulInterrupt, out_of_memory_hint, tidy_interrupted_run
from .hyp import resolve_hyp
from .loggers import tensorboard_logger
from .loss import ComputeLoss, scale_loss_gains
from .plots import plot_results
from .validator import ValResults, format_table, save_validation_plots, validate

__all__ = ["TrainArgs", "TrainingDiverged", "train", "build_optimizer", "increment_path"]

LOGGER = logging.getLogger("gmyolo")
CSV_COLUMNS = [
    "epoch",
    "train/box_loss",
    "train/obj_loss",
    "train/cls_loss",
    "metrics/precision",
    "metrics/recall",
    "metrics/mAP_0.5",
    "metrics/mAP_0.5:0.95",
    "val/box_loss",
    "val/obj_loss",
    "val/cls_loss",
    "x/lr_weights",
    "x/lr_norms",
    "x/lr_biases",
]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says where, and which checkpoint is still good."""


@dataclass
class TrainArgs:
    data: str = "synth"  # dataset YAML, or 'synth' for the built-in synthetic dataset
    model: str = "yolov5n-gmf-nano"  # model YAML (packaged name or path)
    weights: str | None = None  # a gmyolo checkpoint to start from (weights copied where shapes fit)
    backbone_weights: str | None = None  # the authors' GroupMixFormer checkpoint for the backbone
    # Defaults: the quick start (`gmyolo train`: the nano detector on the synthetic data, ~8 CPU minutes).
    epochs: int = 25
    imgsz: int = 160
    batch: int = 16
    nbs: int = 16  # nominal batch: gradients accumulate over nbs/batch batches per step (YOLOv5: 64)
    device: str = ""
    workers: int = 2
    project: str = "runs/train"
    name: str = "exp"
    exist_ok: bool = False
    resume: str | None = None  # path of last.pt (or 'last' for the most recent run)
    optimizer: str = "auto"  # auto: AdamW for transformer backbones, SGD otherwise
    cos_lr: bool = False  # cosine instead of linear learning-rate decay
    patience: int = 50  # early stop after this many epochs without a better fitness
    freeze: int = 0  # freeze the first N layers
    freeze_stages: int = 0  # freeze the stem and first N GroupMixFormer stages
    close_mosaic: int = 5  # no mosaic for the last N epochs
    seed: int = 0
    amp: bool = True  # mixed precision on CUDA
    sync_bn: bool = False  # BatchNorm statistics over all GPUs (DDP)
    cache: bool = False  # keep decoded training images in RAM
    hyp: dict[str, float] | str = field(default_factory=dict)  # overrides, or a packaged set's name or a YAML path
    noautoanchor: bool = False  # keep the model's anchors even when they fit the labels badly
    tensorboard: bool = True  # also log to TensorBoard when it is installed
    synth_dir: str = "datasets/synth"  # where 'synth' data is generated if missing
    plots: bool = True
    progress: bool = True

    def check(self) -> None:
        for name in ("epochs", "imgsz", "batch", "nbs"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("workers", "patience", "freeze", "freeze_stages", "close_mosaic"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        if self.optimizer.lower() not in ("auto", "sgd", "adamw"):
            raise ValueError(f"--optimizer must be auto, SGD or AdamW, got {self.optimizer!r}")


def increment_path(path: Path, exist_ok: bool = False) -> Path:
    """runs/train/exp -> runs/train/exp2, exp3, ... unless exist_ok."""
    if exist_ok or not path.exists():
        return path
    for n in range(2, 10_000):
        candidate = path.with_name(f"{path.name}{n}")
        if not candidate.exists():
            return candidate
    raise RuntimeError(f"too many runs named {path}")


def resolve_data(args: TrainArgs) -> DatasetConfig:
    if args.data == "synth":
        from ..data.synth import make_synthetic_dataset

        yaml_file = Path(args.synth_dir) / "data.yaml"
        if not yaml_file.is_file():
            LOGGER.info("generating the built-in synthetic dataset in %s", args.synth_dir)
            yaml_file = make_synthetic_dataset(args.synth_dir, seed=0)
        return load_dataset_config(yaml_file, require=("train", "val"))
    return load_dataset_config(args.data, require=("train", "val"))


def backbones(model: DetectionModel) -> list[GroupMixFormer]:
    return [m for m in model.model if isinstance(m, GroupMixFormer)]


def build_optimizer(
    model: DetectionModel, name: str, hyp: dict[str, float], batch: int, accumulate: int, nbs: int = 64
) -> torch.optim.Optimizer:
    """Parameter groups as detectors need them.

    No weight decay on norm weights, biases and position-encoding convs (GroupMixFormer's cpe/crpe);
    biases in their own group (their own warm-up); a pretrained backbone at ``backbone_lr_ratio`` × lr.
    """
    use_adamw = name.lower() == "adamw" or (name.lower() == "auto" and backbones(model))
    lr0 = hyp["lr0_adamw"] if use_adamw else hyp["lr0"]
    weight_decay = hyp["weight_decay_adamw"] if use_adamw else hyp["weight_decay"] * batch * accumulate / nbs
    pretrained_ids = {id(p) for b in backbones(model) if getattr(b, "pretrained_loaded", False) for p in b.parameters()}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for pname, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if pname.endswith(".bias"):
            kind = "bias"
        elif p.ndim <= 1 or ".cpe." in pname or ".crpe." in pname:
            kind = "no_decay"
        else:
            kind = "decay"
        groups.setdefault((kind, id(p) in pretrained_ids), []).append(p)
    param_groups = []
    for (kind, pretrained), params in sorted(groups.items()):
        scale = hyp["backbone_lr_ratio"] if pretrained else 1.0
        param_groups.append(
            {
                "params": params,
                "lr": lr0 * scale,
                "initial_lr": lr0 * scale,
                "lr_scale": scale,
                "kind": kind,
                "weight_decay": weight_decay if kind == "decay" else 0.0,
            }
        )
    if use_adamw:
        opt = torch.optim.AdamW(param_groups, lr=lr0, betas=(hyp["momentum"], 0.999))
    else:
        opt = torch.optim.SGD(param_groups, lr=lr0, momentum=hyp["momentum"], nesterov=True)
    n = {k: sum(len(g["params"]) for g in param_groups if g["kind"] == k) for k in ("decay", "no_decay", "bias")}
    LOGGER.info(
        "optimizer: %s(lr=%g) with parameter groups %d weight (decay=%.2g), %d norm/position (no decay), "
        "%d bias (no decay)%s",
        type(opt).__name__,
        lr0,
        n["decay"],
        weight_decay,
        n["no_decay"],
        n["bias"],
        f"; pretrained backbone at {hyp['backbone_lr_ratio']:g}x lr" if pretrained_ids else "",
    )
    return opt


def make_ema(model: nn.Module, decay: float, tau: float) -> AveragedModel:
    """EMA of weights and buffers; the decay ramps up as decay·(1 − exp(−updates/tau)) (YOLOv5)."""

    def ema_avg(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        if not averaged.is_floating_point():
            return current
        d = decay * (1 - math.exp(-float(num_averaged) / tau))
        return averaged * d + current * (1 - d)

    return AveragedModel(model, avg_fn=ema_avg, use_buffers=True)


def learning_rate_factor(args: TrainArgs, hyp: dict[str, float]):
    lrf = hyp["lrf"]
    if args.cos_lr:
        return lambda e: ((1 - math.cos(e * math.pi / args.epochs)) / 2) * (lrf - 1) + 1
    return lambda e: (1 - e / args.epochs) * (1.0 - lrf) + lrf


def stride_multiple(imgsz: int, stride: int) -> int:
    size = math.ceil(imgsz / stride) * stride
    if size != imgsz:
        LOGGER.warning("--imgsz %d is not a multiple of the largest stride %d; using %d", imgsz, stride, size)
    return size


def train(args: TrainArgs) -> dict[str, Any]:
    """Train a detector; returns the final metrics and the paths of the run folder and best checkpoint.

    ``device='0,1,...'`` trains on those GPUs, one process each, through torchrun (see
    :mod:`gmyolo.engine.distributed`); under torchrun every process calls this and rank 0 reports.
    """
    if launch_needed(args.device):
        args.check()  # fail here rather than in every process
        return launch(args)
    with GracefulInterrupt() as interrupt:
        return run_training(args, interrupt)


def run_training(args: TrainArgs, interrupt: GracefulInterrupt) -> dict[str, Any]:
    ckpt = None
    if args.resume:
        last = find_last_checkpoint(args.project) if args.resume == "last" else Path(args.resume)
        ckpt = load_checkpoint(last)
        saved = {k: v for k, v in ckpt["args"].items() if k in {f.name for f in dataclasses.fields(TrainArgs)}}
        keep = {"device": args.device, "workers": args.workers, "progress": args.progress}
        args = TrainArgs(**{**saved, **{k: v for k, v in keep.items() if v is not None}})
        args.resume = str(last)
        save_dir = last.parent.parent
        LOGGER.info("resuming %s from epoch %d", save_dir, ckpt["epoch"] + 2)
    args.check()
    hyp_values = resolve_hyp(ckpt["hyp_overrides"] if ckpt is not None else args.hyp)  # bad keys fail before work
    device = setup_distributed(args.device, args.sync_bn)
    rank_batch = per_rank_batch(args.batch)  # this process's share of each batch
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    with main_process_first():  # rank 0 generates the synthetic data, once
        data = resolve_data(args)

    # ---- model -----------------------------------------------------------------------------------
    if ckpt is not None:
        model = model_from_checkpoint(ckpt, use_ema=False)
    else:
        model = DetectionModel(args.model, nc=data.nc)
        if args.weights:
            transfer_weights(model, load_checkpoint(args.weights))
        if args.backbone_weights:
            if not backbones(model):
                raise ValueError(f"--backbone-weights: model {args.model} has no GroupMixFormer backbone")
            for b in backbones(model):
                b.load_pretrained(args.backbone_weights)
    model.names = dict(enumerate(data.names))
    freeze_layers(model, args.freeze, args.freeze_stages)
    model.to(device)
    stride = int(model.stride.max())
    imgsz = stride_multiple(args.imgsz, stride)

    hyp = scale_loss_gains(hyp_values, data.nc, model.detect.nl, imgsz)
    accumulate = max(round(args.nbs / args.batch), 1)
    optimizer = build_optimizer(model, args.optimizer, hyp, args.batch, accumulate, args.nbs)
    lf = learning_rate_factor(args, hyp)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)
    ema = make_ema(model, hyp["ema_decay"], hyp["ema_tau"])
    start_epoch, best_fitness = 0, -1.0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        ema.module.load_state_dict(ckpt["ema"])
        ema.n_averaged.fill_(ckpt["updates"])
        start_epoch, best_fitness = ckpt["epoch"] + 1, ckpt["best_fitness"]
        scheduler.last_epoch = start_epoch  # as if stepped once per finished epoch
        torch.set_rng_state(ckpt["rng_state"])  # stochastic depth / dropout continue as if never stopped
        if start_epoch >= args.epochs:
            raise ValueError(f"{args.resume}: that run already finished its {args.epochs} epochs")
    else:
        save_dir = broadcast_object(increment_path(Path(args.project) / args.name, args.exist_ok))  # rank 0's
    weights_dir = save_dir / "weights"
    weights_dir.mkdir(parents=True, exist_ok=True)

    # ---- data ------------------------------------------------------------------------------------
    with main_process_first():  # rank 0 checks the labels and writes their cache; the others read it
        train_set, _ = create_dataset(
            data,
            "train",
            imgsz,
            augment=True,
            hyp=hyp,
            batch_size=args.batch,
            stride=stride,
            cache_images=args.cache,
            seed=args.seed,
        )
    if ckpt is None and not args.noautoanchor:  # a resumed run keeps the anchors it was trained with
        check_anchors(train_set.records, model, hyp["anchor_t"], imgsz, seed=args.seed)
        ema.module.detect.anchors.copy_(model.detect.anchors)  # the EMA copy was made before the check
    with main_process_first():
        val_set, _ = create_dataset(data, "val", imgsz, rect=True, batch_size=args.batch * 2, stride=stride)
    pin = device.type == "cuda"
    train_loader = build_dataloader(
        train_set,
        rank_batch,
        args.workers,
        seed=args.seed,
        rank=get_rank(),
        world_size=get_world_size(),
        pin_memory=pin,
    )
    val_loader = build_dataloader(val_set, args.batch * 2, args.workers, shuffle=False, pin_memory=pin)
    compute_loss = ComputeLoss(model.detect, hyp, distributed=get_world_size() > 1)
    val_loss = ComputeLoss(model.detect, hyp)  # rank 0 alone validates: no collectives
    train_model = wrap_model(model, device, args.sync_bn)  # DDP runs the forward; `model` is what is saved

    if ckpt is None and is_main_process():
        (save_dir / "args.yaml").write_text(yaml.safe_dump(dataclasses.asdict(args), sort_keys=False))
        (save_dir / "hyp.yaml").write_text(yaml.safe_dump(hyp_values, sort_keys=False))  # reusable as --hyp
        if args.plots:
            plot_labels(np.concatenate([r.labels for r in train_set.records]), data.names, save_dir / "labels.jpg")

    tb = tensorboard_logger(save_dir, args.tensorboard and is_main_process())
    nb = len(train_loader)
    total_iters = args.epochs * nb
    warmup_iters = min(max(round(hyp["warmup_epochs"] * nb), 100), total_iters // 2) if hyp["warmup_epochs"] else 0
    use_amp = args.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    uses_sgd = isinstance(optimizer, torch.optim.SGD)
    csv_file = save_dir / "results.csv"
    if ckpt is not None and is_main_process():
        tidy_interrupted_run(save_dir, start_epoch)
    stopper_best_epoch = start_epoch - 1
    LOGGER.info(
        "training %s on %s for %d epochs: %d train / %d val images at %d px, batch %d (accumulate %d), device %s;"
        " results in %s",
        args.model,
        data.yaml_file or "dataset",
        args.epochs,
        len(train_set),
        len(val_set),
        imgsz,
        args.batch,
        accumulate,
        device,
        save_dir,
    )
    t_start = time.time()
    last_results: ValResults | None = None
    epoch = start_epoch
    for epoch in range(start_epoch, args.epochs):
        model.train()
        train_set.set_epoch(epoch)
        train_loader.sampler.set_epoch(epoch)  # the same order for an epoch, resumed or not
        if args.close_mosaic and epoch == max(args.epochs - args.close_mosaic, 0):
            LOGGER.info("closing mosaic for the last %d epochs", args.epochs - epoch)
        if args.close_mosaic and epoch >= args.epochs - args.close_mosaic:
            train_set.close_mosaic()
        mean_loss = torch.zeros(3)
        optimizer.zero_grad()
        bar = tqdm(
            train_loader,
            total=nb,
            disable=not (args.progress and is_main_process()),
            dynamic_ncols=True,
            bar_format="{l_bar}{bar:10}{r_bar}",
        )
        for i, (images, targets, paths, _) in enumerate(bar):
            ni = i + nb * epoch
            images = images.to(device, non_blocking=True).float() / 255
            targets = targets.to(device)
            if ni <= warmup_iters:
                xi = [0, warmup_iters]
                for g in optimizer.param_groups:
                    start = hyp["warmup_bias_lr"] * g["lr_scale"] if (g["kind"] == "bias" and uses_sgd) else 0.0
                    g["lr"] = float(np.interp(ni, xi, [start, g["initial_lr"] * lf(epoch)]))
                    momentum = float(np.interp(ni, xi, [hyp["warmup_momentum"], hyp["momentum"]]))
                    if uses_sgd:
                        g["momentum"] = momentum
                    else:
                        g["betas"] = (momentum, g["betas"][1])
            with torch.autocast(device.type, enabled=use_amp), out_of_memory_hint(args.batch, rank_batch, images):
                preds = train_model(images)
                loss, loss_items = compute_loss(preds, targets)
            loss_all = mean_over_ranks(loss)  # a NaN on any rank stops them all
            if not torch.isfinite(loss_all):
                raise TrainingDiverged(
                    f"the loss became {loss_all.item()} at epoch {epoch + 1}, batch {i + 1} ({paths[0]} ...); stopped. "
                    f"The last good checkpoint is {weights_dir / 'last.pt'}"
                    + ("" if (weights_dir / "last.pt").exists() else " (none saved yet)")
                    + ". Try a lower learning rate (--hyp lr0=...) or --no-amp."
                )
            with out_of_memory_hint(args.batch, rank_batch, images):
                scaler.scale(loss).backward()
            if (ni + 1) % accumulate == 0 or i == nb - 1:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=hyp["grad_clip"])
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad()
                ema.update_parameters(model)
            mean_loss = (mean_loss * i + loss_items.cpu()) / (i + 1)
            if args.progress:
                mem = f"{torch.cuda.memory_reserved(device) / 1e9:.1f}G" if device.type == "cuda" else "cpu"
                bar.set_description(
                    f"{epoch + 1}/{args.epochs} {mem} box {mean_loss[0]:.4f} obj {mean_loss[1]:.4f} "
                    f"cls {mean_loss[2]:.4f} inst {len(targets)} size {images.shape[-1]}"
                )
            if epoch == start_epoch and i < 3 and args.plots and ckpt is None and is_main_process():
                plotted = plot_batch(
                    images.mul(255).byte().cpu(), targets.cpu(), data.names, save_dir / f"train_batch{i}.jpg", paths
                )
                if tb is not None:
                    tb.log_image(plotted.stem, plotted, epoch + 1)
        bar.close()
        lrs = [g["lr"] for g in optimizer.param_groups]
        lr_by_kind = {g["kind"]: g["lr"] for g in optimizer.param_groups}
        scheduler.step()
        if not is_main_process():  # rank 0 validates and saves; the others wait for whether to go on
            if broadcast_object(None):
                break
            continue

        last_results = validate(
            ema.module, val_loader, data.names, device, compute_loss=val_loss, progress=args.progress
        )
        fit = last_results.fitness
        m = last_results.metrics
        row = [
            epoch + 1,
            *mean_loss.tolist(),
            m.mp,
            m.mr,
            m.map50,
            m.map,
            *last_results.loss.tolist(),
            lr_by_kind.get("decay", lrs[0]),
            lr_by_kind.get("no_decay", lrs[0]),
            lr_by_kind.get("bias", lrs[0]),
        ]
        write_csv_row(csv_file, row)
        if tb is not None:
            tb.log_epoch(epoch + 1, dict(zip(CSV_COLUMNS[1:], row[1:])), ema.module, val_loader, data.names)
        LOGGER.info(
            "epoch %d/%d: loss box %.4f obj %.4f cls %.4f | P %.3f R %.3f mAP50 %.3f mAP50-95 %.3f",
            epoch + 1,
            args.epochs,
            *mean_loss.tolist(),
            m.mp,
            m.mr,
            m.map50,
            m.map,
        )
        improved = fit > best_fitness
        if improved:
            best_fitness, stopper_best_epoch = fit, epoch
        state = dict(
            epoch=epoch,
            best_fitness=best_fitness,
            ema=ema.module.state_dict(),
            updates=int(ema.n_averaged),
            optimizer=optimizer.state_dict(),
            hyp=hyp,
            hyp_overrides=hyp_values,  # all values, before the gain scaling: resume resolves them again
            args=dataclasses.asdict(args),
            metrics=last_results.as_dict(),
            data=data.to_dict(),
            rng_state=torch.get_rng_state(),
        )
        with interrupt.deferred():  # Ctrl-C waits for the checkpoints; best.pt first, so last.pt is never ahead
            if improved:
                save_checkpoint(weights_dir / "best.pt", model, **state)
            save_checkpoint(weights_dir / "last.pt", model, **state)
            interrupt.saved(weights_dir / "last.pt", epoch)
        if broadcast_object(bool(args.patience and epoch - stopper_best_epoch >= args.patience)):  # all ranks stop
            LOGGER.info(
                "early stop: no improvement in the last %d epochs (best: epoch %d)",
                args.patience,
                stopper_best_epoch + 1,
            )
            break

    if not is_main_process():
        return {"save_dir": str(save_dir), "rank": get_rank(), "epochs_trained": epoch + 1}
    if tb is not None:
        tb.close()
    hours = (time.time() - t_start) / 3600
    LOGGER.info("%d epochs completed in %.3f hours", epoch - start_epoch + 1, hours)
    best = weights_dir / "best.pt"
    final = validate(
        model_from_checkpoint(load_checkpoint(best)).to(device).fuse(),
        val_loader,
        data.names,
        device,
        progress=args.progress,
    )
    print(format_table(final))
    if args.plots:
        plot_results(csv_file)
        save_validation_plots(final, save_dir)
    LOGGER.info("results saved to %s", save_dir)
    return {
        "save_dir": str(save_dir),
        "best": str(best),
        "last": str(weights_dir / "last.pt"),
        **final.as_dict(),
        "fitness": final.fitness,
        "epochs_trained": epoch + 1,
    }


def write_csv_row(path: Path, row: list[float]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(CSV_COLUMNS)
        w.writerow([row[0], *(f"{v:.6g}" for v in row[1:])])


def find_last_checkpoint(project: str) -> Path:
    runs = sorted(Path(project).glob("*/weights/last.pt"), key=os.path.getmtime)
    if not runs:
        raise ValueError(f"--resume: no last.pt found under {project}/*/weights/")
    return runs[-1]


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
        if isinstance(m, GroupMixFormer):
            m.freeze_stages(m.num_stages)
    if n_stages:
        for b in backbones(model):
            b.freeze_stages(n_stages)
    if n_layers or n_stages:
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        LOGGER.info("frozen: %d parameters", frozen)
