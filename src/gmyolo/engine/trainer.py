"""The training loop every task shares: :class:`Trainer`, with small per-task hooks.

The base class owns, once for every task: resuming, the run folder, Ctrl-C/SIGTERM and out-of-memory
handling, tidying an interrupted run, the epoch loop (autocast, GradScaler, gradient accumulation,
clipping, the NaN stop, EMA), mixed precision (``--amp``: bf16, or fp16 with a GradScaler), cuDNN autotuning,
``torch.compile`` of the model (``--compile``), the order in which an epoch's results land (the ``results.csv`` row,
then ``best.pt``, then ``last.pt``, each written atomically, so ``last.pt`` is never ahead of the
CSV and a killed run loses at most its unfinished epoch), early stopping agreed by all ranks, DDP and
TensorBoard scalars.

A task (``gmyolo.tasks.detect.train``, ``gmyolo.tasks.classify.train``) subclasses it and supplies:

=========================  ======================================================================
``load_checkpoint``        read and check one of its checkpoints (resume)
``setup``                  what the model needs first (dataset config, hyper-parameters, classes)
``build_model``            the model (new, from weights, or from the resumed checkpoint)
``configure``              what the built model decides: hyper-parameters, loss names, accumulation, clipping
``build_loaders``          the training and validation loaders
``fit_to_data``            the model adapted to the training set once it is read (e.g. AutoAnchor)
``build_criterion``        the loss the model trains with (and the one validation uses alone)
``warmup_batches``         how many batches the warm-up lasts (the batches per step rise over it)
``build_optimizer``        the optimizer with its parameter groups (no decay: ``no_weight_decay()``)
``build_scheduler``        the learning-rate schedule; ``adjust_lr`` / ``step_epoch`` drive it
``build_ema``              an EMA of the weights (:func:`gmyolo.engine.ema.make_ema`) or None
``preprocess``             a loader batch -> images, targets, paths on the device
``loss``                   model outputs, targets -> (loss to backpropagate, items to report)
``validate``               -> :class:`Evaluation` (fitness, results.csv values, a summary line)
``epoch_row``              the results.csv row of an epoch
``checkpoint_fields``      what a checkpoint holds besides the common training state
``save_checkpoint``        write one (atomically)
``final_eval``             evaluate ``best.pt`` once training ends; the results returned
=========================  ======================================================================
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

from ..errors import USER_ERRORS, TrainingDiverged
from ..plugins import load_plugins
from ..utils.files import atomic_write
from .distributed import (
    broadcast_object,
    get_rank,
    get_world_size,
    is_main_process,
    launch,
    launch_needed,
    mean_over_ranks,
    per_rank_batch,
    setup_distributed,
    wrap_model,
)
from .faults import GracefulInterrupt, out_of_memory_hint, shut_down_loader_workers, tidy_interrupted_run
from .loggers import tensorboard_logger
from .options import TrainOptions, compile_mode
from .plots import plot_results
from .precision import Precision, compile_model, cudnn_benchmark, resolve_precision, to_float32
from .runs import find_last_checkpoint, increment_path, write_csv_row

__all__ = ["Trainer", "Evaluation", "TrainingDiverged", "run_worker"]

LOGGER = logging.getLogger("gmyolo")
MACHINE_OPTIONS = ("device", "workers", "progress", "compile")  # what --resume may change: how it runs, not what
INTERRUPTED = "interrupted"  # DDP: rank 0's word to the other ranks at the end of an epoch, besides stop / go on


@dataclass
class Evaluation:
    """One validation: ``fitness`` decides the best epoch (higher is better; tuples compare in order),
    ``values`` are its results.csv columns, ``text`` its part of the epoch's log line."""

    fitness: float | tuple[float, ...]
    values: dict[str, float]
    text: str
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)  # saved in the checkpoint


class Trainer:
    """Trains ``args`` (the task's options: a :class:`~gmyolo.engine.options.TrainOptions`); ``train()`` runs it and
    returns the final results.

    Attributes a hook may use once set: ``args``, ``device``, ``rank_batch`` (this process's share of each
    batch), ``model`` (what is saved), ``train_model`` (what runs the forward: DDP or ``model``),
    ``optimizer``, ``scheduler``, ``ema``, ``train_loader``, ``val_loader``, ``save_dir``, ``epoch``.
    """

    args_type: type[TrainOptions]  # the task's options dataclass
    command = "gmyolo train"  # how the user starts it (messages, resume hints)
    loss_names: Sequence[str] = ("loss",)  # the items ``loss`` returns, in order
    diverged_hint = "Try a lower learning rate or --no-amp."

    def __init__(self, args: TrainOptions):
        self.args = args
        self.ckpt: dict[str, Any] | None = None  # the checkpoint resumed from
        self.ema: nn.Module | None = None
        self.scheduler: Any = None
        self.accumulate = 1  # batches per optimizer step (after the warm-up: see batches_per_step)
        self.warmup_iters = 0  # batches of warm-up, during which the batches per step rise from 1 to accumulate
        self.criterion: Any = None  # the training loss (build_criterion)
        self.val_criterion: Any = None  # validation's, on rank 0 alone
        self.clip_norm = 0.0  # max gradient norm (0: no clipping)
        self.tb = None
        self.precision = Precision("cpu")  # fp32 until run() resolves --amp on the device
        self.epoch_seconds: list[float] = []  # wall time of each epoch trained in this process
        self.interrupt = GracefulInterrupt(self.command)  # train() installs its handlers for the run
        self.stop_after_step = False  # DDP: the ranks agreed to stop at the end of the step in hand

    # ---- hooks ----------------------------------------------------------------------------------
    def load_checkpoint(self, path: Path) -> dict[str, Any]:
        raise NotImplementedError

    def setup(self) -> None:
        """Before the model (device and process group set up): resolve data and settings (``self.ckpt``
        is set when resuming)."""

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def configure(self, model: nn.Module) -> None:
        """What the built model decides for the run: hyper-parameters resolved for its head, ``loss_names``,
        ``accumulate``, ``clip_norm``."""

    def build_loaders(self) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
        raise NotImplementedError

    def fit_to_data(self) -> None:
        """A new run, once the training set is read: adapt the model to it (YOLOv5's AutoAnchor)."""

    def build_criterion(self, validation: bool = False) -> Any:
        """The loss (``loss`` calls it). ``validation``: the one rank 0 uses alone, with no collectives."""
        return None

    def warmup_batches(self, batches_per_epoch: int) -> int:
        """The warm-up's length in batches (0: none), over which :meth:`batches_per_step` rises to ``accumulate``."""
        return 0

    def build_optimizer(self) -> torch.optim.Optimizer:
        raise NotImplementedError

    def build_scheduler(self) -> Any:
        return None

    def build_ema(self) -> nn.Module | None:
        return None

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Resuming: task state beyond the optimizer, EMA, epoch and RNG (e.g. the schedule's position)."""

    def on_train_start(self) -> None:
        """Once, before the first epoch of a new run (rank 0): files describing the run."""

    def start_epoch(self, epoch: int) -> None:
        """Before each epoch's batches (per-epoch data state, seeds)."""

    def preprocess(self, batch: Any) -> tuple[Any, Any, Sequence[str]] | None:
        """A loader batch -> (images, targets, paths) on the device; None skips the batch."""
        raise NotImplementedError

    def adjust_lr(self, ni: int, epoch: int) -> None:
        """Before every batch: ``ni`` counts batches from the start of the run (warm-up, per-step schedules)."""

    def step_epoch(self) -> None:
        """After an epoch's batches (their learning rates are recorded first): per-epoch schedules."""

    def loss(self, preds: Any, targets: Any) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def progress_text(self, mean_loss: torch.Tensor, images: torch.Tensor, targets: Any) -> str:
        return " ".join(f"{n} {v:.4f}" for n, v in zip(self.loss_names, mean_loss.tolist()))

    def on_batch_end(self, i: int, images: torch.Tensor, targets: Any, paths: Sequence[str]) -> None:
        """After each training batch (rank 0 and other ranks alike)."""

    def validate(self) -> Evaluation:
        raise NotImplementedError

    def epoch_row(self, epoch: int, mean_loss: torch.Tensor, ev: Evaluation, lrs: list[dict], seconds: float) -> dict:
        """The results.csv row of ``epoch`` (0-based): column -> value; ``lrs`` are the param groups' lr and kind."""
        row = {"epoch": epoch + 1}
        row.update({f"train/{n}": v for n, v in zip(self.loss_names, mean_loss.tolist())})
        row.update(ev.values)
        row["lr"] = lrs[0]["lr"]
        return row

    def log_images(self, epoch: int) -> None:
        """TensorBoard pictures of an epoch (``self.tb`` is set)."""

    def checkpoint_fields(self) -> dict[str, Any]:
        return {}

    def save_checkpoint(self, path: Path, **fields: Any) -> Path:
        raise NotImplementedError

    def final_eval(self, best: Path) -> dict[str, Any]:
        return {}

    # ---- the run --------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Train; with several GPUs named and outside torchrun, start torchrun and return rank 0's results."""
        if launch_needed(self.args.device):
            self.args.check()  # fail here rather than in every process
            return launch(self.args, type(self))
        with GracefulInterrupt(self.command) as interrupt:
            self.interrupt = interrupt
            try:
                return self.run()
            except Exception as e:
                if interrupt.requested is None:
                    raise
                # Stopping already: what failed on the way out (a rank that left a collective, say) is its
                # consequence; one line, then the interrupt and its resume hint.
                LOGGER.warning("while stopping: %s: %s", type(e).__name__, e)
                raise interrupt.stop() from None
            finally:
                # Their workers end now, before the signal handlers are restored (quietly: no worker-death errors
                # from torch's SIGCHLD handler, nor "Exception ignored in __del__" at interpreter exit).
                shut_down_loader_workers(getattr(self, "train_loader", None), getattr(self, "val_loader", None))

    def resume_args(self) -> None:
        """Resuming: read the checkpoint; the run's own options, except where this machine differs."""
        args = self.args
        last = find_last_checkpoint(args.project) if args.resume == "last" else Path(args.resume)
        self.ckpt = self.load_checkpoint(last)
        fields = {f.name: f for f in dataclasses.fields(type(args))}
        saved = {k: v for k, v in self.ckpt["args"].items() if k in fields}
        # This machine's settings where the caller gave them; otherwise the run's own (its device, workers).
        defaults = type(args)()
        keep = {k: getattr(args, k) for k in MACHINE_OPTIONS if getattr(args, k) != getattr(defaults, k)}
        self.args = type(args)(**{**saved, **keep, "resume": str(last)})
        self.save_dir = last.parent.parent
        LOGGER.info("resuming %s from epoch %d", self.save_dir, self.ckpt["epoch"] + 2)

    def run(self) -> dict[str, Any]:
        if self.args.resume:
            self.resume_args()
        args, ckpt = self.args, self.ckpt
        args.check()
        self.device = setup_distributed(args.device, args.sync_bn)
        self.precision = resolve_precision(args.amp, self.device)
        self.rank_batch = per_rank_batch(args.batch)
        self.seed()
        self.setup()
        self.model = self.build_model().to(self.device)
        self.configure(self.model)
        self.train_loader, self.val_loader = self.build_loaders()
        if ckpt is None:  # a resumed run keeps what it was fitted with
            self.fit_to_data()
        self.criterion = self.build_criterion()
        self.val_criterion = self.build_criterion(validation=True)
        self.warmup_iters = self.warmup_batches(len(self.train_loader))
        self.optimizer = self.build_optimizer()
        self.scheduler = self.build_scheduler()
        self.ema = self.build_ema()
        self.start, self.best_fitness = 0, None
        if ckpt is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if self.ema is not None and ckpt.get("ema"):
                self.ema.module.load_state_dict(ckpt["ema"])
                self.ema.n_averaged.fill_(ckpt["updates"])
            self.start, self.best_fitness = ckpt["epoch"] + 1, as_fitness(ckpt["best_fitness"])
            if ckpt.get("rng_state") is not None:
                torch.set_rng_state(ckpt["rng_state"])  # stochastic depth / dropout continue as if never stopped
            self.restore(ckpt)
            if self.start >= args.epochs:
                raise ValueError(f"{args.resume}: that run already finished its {args.epochs} epochs")
        else:
            self.save_dir = broadcast_object(increment_path(Path(args.project) / args.name, args.exist_ok))
        self.weights_dir = self.save_dir / "weights"
        self.weights_dir.mkdir(parents=True, exist_ok=True)
        self.train_model = wrap_model(self.model, self.device, args.sync_bn)
        # The forward only: the loss, EMA and checkpoints use self.model (regional compilation compiles its blocks in
        # place, which leaves its state dict and the EMA's copy as they are).
        self.train_model = compile_model(self.train_model, self.device, args.compile)
        if ckpt is None and is_main_process():
            atomic_write(self.save_dir / "args.yaml", yaml.safe_dump(dataclasses.asdict(args), sort_keys=False))
            self.on_train_start()
        self.tb = tensorboard_logger(self.save_dir, args.tensorboard and is_main_process())
        self.csv_file = self.save_dir / "results.csv"
        if ckpt is not None and is_main_process():
            tidy_interrupted_run(self.save_dir, self.start)
        self.log_start()
        self.log_speed()
        try:
            # Training batches have one size: cuDNN's autotuning pays for itself after the first batches.
            with cudnn_benchmark(self.device.type == "cuda"):
                last_epoch = self.train_epochs()
        finally:
            if self.tb is not None:
                self.tb.close()
        if not is_main_process():
            return {"save_dir": str(self.save_dir), "rank": get_rank(), "epochs_trained": last_epoch + 1}
        best = self.weights_dir / "best.pt"
        results = self.final_eval(best)
        if args.plots:
            plot_results(self.csv_file)
        LOGGER.info("results saved to %s", self.save_dir)
        return {
            "save_dir": str(self.save_dir),
            "best": str(best),
            "last": str(self.weights_dir / "last.pt"),
            **results,
            "epochs_trained": last_epoch + 1,
        }

    def seed(self) -> None:
        """The run's seed, for what draws from the global generators (initial weights, stochastic depth)."""
        torch.manual_seed(self.args.seed)
        np.random.seed(self.args.seed % 2**32)

    def log_start(self) -> None:
        LOGGER.info(
            "training %s for %d epochs: %d train / %d val images, batch %d (accumulate %d), device %s; results in %s",
            self.args.model,
            self.args.epochs,
            len(self.train_loader.dataset),
            len(self.val_loader.dataset),
            self.args.batch,
            self.accumulate,
            self.device,
            self.save_dir,
        )

    def log_speed(self) -> None:
        """One line: precision, compile, loader workers and pinned memory (what decides the speed)."""
        loader = self.train_loader
        workers = loader.num_workers
        LOGGER.info(
            "speed: %s%s, torch.compile %s, %d loader worker(s)%s%s",
            self.precision.name,
            " autocast" + (" + GradScaler" if self.precision.scaled else "") if self.precision.enabled else "",
            compile_mode(self.args.compile),
            workers,
            " (persistent)" if workers and loader.persistent_workers else "",
            ", pinned memory" if loader.pin_memory else "",
        )

    @property
    def amp(self) -> bool:
        """Whether the forward runs under autocast (``self.precision`` says in which dtype)."""
        return self.precision.enabled

    def train_epochs(self) -> int:
        """The epoch loop; returns the last epoch run (0-based).

        DDP: Ctrl-C / SIGTERM are held throughout. A rank cannot stop alone (the others would wait for it at their
        next collective, or until the time-out): the ranks agree where they all meet, each step's loss average and
        rank 0's word at the end of an epoch, and stop there together. One process: the step and the checkpoint in
        hand are finished first; elsewhere (loading a batch, validating) the signal stops the run at once.
        """
        if self.world_size == 1:
            return self.epoch_loop()
        with self.interrupt.deferred("the step, validation or checkpoint in hand (all ranks)", raise_at_end=False):
            return self.epoch_loop()

    def epoch_loop(self) -> int:
        """Train, validate and save each epoch; returns the last epoch run (0-based)."""
        args = self.args
        scaler = self.precision.scaler()
        best_epoch = self.start - 1
        t_start = time.time()
        epoch = self.start
        for epoch in range(self.start, args.epochs):
            self.epoch = epoch
            t_epoch = time.time()
            mean_loss = mean_over_ranks(self.train_one_epoch(epoch, scaler))  # the global batch's, as logged
            lrs = [{"lr": g["lr"], "kind": g.get("kind")} for g in self.optimizer.param_groups]
            self.step_epoch()
            if not is_main_process():  # rank 0 validates and saves; the others wait for whether to go on
                decision = broadcast_object(None)
                if decision == INTERRUPTED:  # rank 0 was stopped (or learnt another rank was): all stop now
                    raise self.interrupt.stop()
                if decision:
                    break
                continue

            with cudnn_benchmark(False):  # validation's rectangular batches: shapes that come once an epoch
                ev = self.validate()
            seconds = time.time() - t_epoch
            self.epoch_seconds.append(seconds)
            row = self.epoch_row(epoch, mean_loss, ev, lrs, seconds)
            write_csv_row(self.csv_file, row)
            if self.tb is not None:
                self.tb.log_scalars({k: v for k, v in row.items() if k != "epoch"}, epoch + 1)
                self.log_images(epoch + 1)
                self.tb.flush()  # an interrupted run keeps every finished epoch
            LOGGER.info(
                "epoch %d/%d: %s | %s | %.1f s", epoch + 1, args.epochs, self.loss_text(mean_loss), ev.text, seconds
            )
            improved = self.best_fitness is None or ev.fitness > self.best_fitness
            if improved:
                self.best_fitness, best_epoch = ev.fitness, epoch
            state = dict(
                epoch=epoch,
                best_fitness=list(self.best_fitness) if isinstance(self.best_fitness, tuple) else self.best_fitness,
                ema=self.ema.module.state_dict() if self.ema is not None else None,
                updates=int(self.ema.n_averaged) if self.ema is not None else 0,
                optimizer=self.optimizer.state_dict(),
                args=dataclasses.asdict(args),
                metrics=ev.metrics,
                rng_state=torch.get_rng_state(),
                **self.checkpoint_fields(),
            )
            last = self.weights_dir / "last.pt"
            with (
                self.interrupt.deferred()
            ):  # Ctrl-C waits for the checkpoints; best.pt first, so last.pt is never ahead
                if improved:
                    self.save_checkpoint(self.weights_dir / "best.pt", **state)
                self.save_checkpoint(last, **state)
                self.interrupt.saved(last, epoch)
            stop = bool(args.patience and epoch - best_epoch >= args.patience)
            if self.world_size > 1 and self.interrupt.requested is not None:
                broadcast_object(INTERRUPTED)  # DDP: signals were held for this word; every rank stops now
                raise self.interrupt.stop()
            if broadcast_object(stop):  # every rank stops with rank 0
                LOGGER.info(
                    "early stop: no improvement in the last %d epochs (best: epoch %d)", args.patience, best_epoch + 1
                )
                break
        if is_main_process():
            LOGGER.info("%d epochs completed in %.3f hours", epoch - self.start + 1, (time.time() - t_start) / 3600)
        return epoch

    def loss_text(self, mean_loss: torch.Tensor) -> str:
        return "loss " + " ".join(f"{n} {v:.4f}" for n, v in zip(self.loss_names, mean_loss.tolist()))

    def train_one_epoch(self, epoch: int, scaler: torch.amp.GradScaler) -> torch.Tensor:
        """One pass over the training loader; returns the mean of each loss item."""
        args, model, optimizer = self.args, self.model, self.optimizer
        model.train()
        self.start_epoch(epoch)
        nb = len(self.train_loader)
        # On the device: reading it back each batch would wait for the step just queued (a host sync per batch).
        mean_loss = torch.zeros(len(self.loss_names), device=self.device)
        on_gpu = self.device.type == "cuda"
        shown = 0.0  # when the progress bar's text was last set (on a GPU at most twice a second: it syncs)
        optimizer.zero_grad()
        bar = tqdm(
            self.train_loader,
            total=nb,
            disable=not (args.progress and is_main_process()),
            dynamic_ncols=True,
            bar_format="{l_bar}{bar:10}{r_bar}",
        )
        n_done = 0
        last_step = nb * epoch - 1  # the batch of the last optimizer step (every epoch ends with one)
        for i, batch in self.training_steps(bar):
            ni = i + nb * epoch
            self.adjust_lr(ni, epoch)
            prepared = self.preprocess(batch)
            if prepared is None:
                continue
            images, targets, paths = prepared
            with self.memory_hint(images):
                with self.precision.autocast():
                    preds = self.train_model(images)
                # The loss in fp32 whatever the forward ran in (bf16 keeps 8 bits of mantissa: too few for IoUs).
                loss, loss_items = self.loss(to_float32(preds) if self.precision.enabled else preds, targets)
            loss_all = self.loss_over_ranks(loss)  # a NaN on any rank stops them all
            if not torch.isfinite(loss_all):
                last = self.weights_dir / "last.pt"
                raise TrainingDiverged(
                    f"the loss became {loss_all.item()} at epoch {epoch + 1}, batch {i + 1} ({paths[0]} ...); stopped. "
                    f"The last good checkpoint is {last}"
                    + ("" if last.exists() else " (none saved yet)")
                    + f". {self.diverged_hint}"
                )
            with self.memory_hint(images):
                scaler.scale(loss).backward()
            if ni - last_step >= self.batches_per_step(ni) or i == nb - 1:
                last_step = ni
                if self.clip_norm:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), max_norm=self.clip_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad()
                if self.ema is not None:
                    self.ema.update_parameters(model)
            mean_loss = (mean_loss * n_done + loss_items.detach().float().to(self.device)) / (n_done + 1)
            n_done += 1
            if args.progress and (not on_gpu or i == nb - 1 or time.monotonic() - shown > 0.5):
                shown = time.monotonic()
                mem = f"{torch.cuda.memory_reserved(self.device) / 1e9:.1f}G" if on_gpu else "cpu"
                text = self.progress_text(mean_loss.cpu(), images, targets)
                bar.set_description(f"{epoch + 1}/{args.epochs} {mem} {text}")
            self.on_batch_end(i, images, targets, paths)
        bar.close()
        return mean_loss.cpu()

    def batches_per_step(self, ni: int) -> int:
        """How many batches' gradients make the optimizer step taken at batch ``ni`` of the run: ``accumulate``,
        rising from 1 over the warm-up as YOLOv5 and Ultralytics do (more, smaller steps while the learning rate
        is low). Unlike theirs, gradients never carry over an epoch's end, so a resumed run steps as the
        uninterrupted one did."""
        if ni >= self.warmup_iters:
            return self.accumulate
        return max(1, round(float(np.interp(ni, [0, self.warmup_iters], [1, self.accumulate]))))

    def training_steps(self, batches: Any) -> Iterator[tuple[int, Any]]:
        """``enumerate(batches)``, each step run whole: Ctrl-C / SIGTERM during a step stops the run once the step
        has ended (DDP: once the step where the ranks agreed to stop has ended, :meth:`loss_over_ranks`)."""
        self.stop_after_step = False
        for i, batch in enumerate(batches):
            with self.interrupt.deferred("the training step"):
                yield i, batch  # the loop's body runs here
            if self.stop_after_step:
                raise self.interrupt.stop()

    def loss_over_ranks(self, loss: torch.Tensor) -> torch.Tensor:
        """The step's loss averaged over the ranks. DDP: the same all-reduce carries whether any rank has been sent
        Ctrl-C / SIGTERM; if so, every rank stops at the end of this step (``stop_after_step``)."""
        if self.world_size == 1:
            return mean_over_ranks(loss)
        stopping = torch.tensor(float(self.interrupt.requested is not None), device=loss.device)
        both = mean_over_ranks(torch.stack([loss.detach().float().sum(), stopping]))
        self.stop_after_step = bool(both[1] > 0)
        return both[0]

    def memory_hint(self, images: torch.Tensor):
        return out_of_memory_hint(self.args.batch, self.rank_batch, images)

    @property
    def world_size(self) -> int:
        return get_world_size()


def as_fitness(value: float | Sequence[float] | None) -> float | tuple[float, ...] | None:
    """A checkpoint's best fitness: a number, or a list read back as the tuple it was."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


def run_worker() -> None:
    """One torchrun process started by :func:`gmyolo.engine.distributed.launch`.

    Its command line: ``MODULE:TRAINER ARGS_YAML RESULT_JSON``; the trainer must be a gmyolo :class:`Trainer`.
    """
    entry, args_file, result_file = sys.argv[1:4]
    module, _, name = entry.partition(":")
    trainer = getattr(importlib.import_module(module), name, None) if module.startswith("gmyolo.") else None
    if not (isinstance(trainer, type) and issubclass(trainer, Trainer)):
        raise SystemExit(f"gmyolo: not a gmyolo trainer: {entry}")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        # A fresh interpreter: the parent's --plugin files come through GMYOLO_PLUGINS, before any model is built.
        load_plugins()
        result = trainer(trainer.args_type(**yaml.safe_load(Path(args_file).read_text()))).train()
    except KeyboardInterrupt as e:  # the launcher says so, with rank 0's word on where to resume
        if is_main_process():
            Path(result_file).write_text(json.dumps({"interrupted": str(e)}))
        sys.exit(130)
    except USER_ERRORS as e:
        print(f"{trainer.command}: error: {e}", file=sys.stderr)
        sys.exit(2)
    if is_main_process():
        Path(result_file).write_text(json.dumps(result, default=float))
