"""Training on several GPUs or machines with PyTorch DDP, one process per GPU, started by torchrun.

``torchrun --nproc_per_node N -m gmyolo train ...`` (or ``classify train``) sets RANK, LOCAL_RANK and
WORLD_SIZE in each process; :func:`setup_distributed` turns them into a process group (NCCL on GPUs,
gloo on the CPU) and this process's device. ``gmyolo train --device 0,1,2,3`` is a shortcut that runs
torchrun itself (:func:`launch`), for every task's trainer. Every rank trains on its own share of
each batch (``DistributedSampler``); DDP averages the gradients, so all ranks hold the same weights;
rank 0 alone validates and writes logs, plots and checkpoints, and tells the others when to stop.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import LaunchError
from ..plugins import ENV_VAR, loaded_plugins
from .device import check_gpus, parse_gpus, select_device

__all__ = [
    "LaunchError",
    "is_distributed",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "setup_distributed",
    "per_rank_batch",
    "wrap_model",
    "main_process_first",
    "broadcast_object",
    "mean_over_ranks",
    "launch_needed",
    "launch",
    "run_torchrun",
]

LOGGER = logging.getLogger("gmyolo")
# Rank 0 validates and saves while the other ranks wait at their next collective: allow for long validations.
TIMEOUT = timedelta(hours=3)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def setup_distributed(device: str, sync_bn: bool = False) -> torch.device:
    """This process's device; under torchrun also the process group (joined once per process).

    Outside torchrun this is :func:`select_device`. Processes on non-zero ranks log errors only.
    """
    if "LOCAL_RANK" not in os.environ:
        if sync_bn:
            LOGGER.warning("--sync-bn only matters when training on several GPUs; ignored")
        return select_device(device)
    local_rank = int(os.environ["LOCAL_RANK"])
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))
    device_ = select_device(device, local_rank, local_world_size)
    if sync_bn and device_.type != "cuda":
        raise ValueError("--sync-bn needs GPUs: SyncBatchNorm runs on CUDA only")
    if not is_distributed():
        if device_.type == "cuda":
            torch.cuda.set_device(device_)
        backend = "nccl" if device_.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT, device_id=device_ if device_.type == "cuda" else None)
        atexit.register(shutdown)
    if not is_main_process():
        LOGGER.setLevel(logging.ERROR)  # rank 0 reports; the others would only repeat it
    LOGGER.info("DDP: %d processes (%s backend), rank 0 on %s", get_world_size(), dist.get_backend(), device_)
    return device_


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def per_rank_batch(batch: int) -> int:
    """Each rank's share of the global ``--batch``."""
    world = get_world_size()
    if batch % world:
        raise ValueError(f"--batch {batch} must be a multiple of the number of processes ({world})")
    return batch // world


def wrap_model(model: nn.Module, device: torch.device, sync_bn: bool = False) -> nn.Module:
    """The module to run the training forward through: DDP (optionally with SyncBatchNorm) or ``model`` itself.

    SyncBatchNorm replaces the BatchNorm layers in place, keeping their parameters and buffers, so
    ``model`` (its EMA, optimizer and checkpoints) stays the one to save.
    """
    if not is_distributed():
        return model
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        LOGGER.info("SyncBatchNorm: BatchNorm statistics over the global batch")
    # Depthwise kernels' gradients differ from their buckets only in the stride of a size-1 dimension (the same
    # memory layout); DDP's warning about it says nothing useful here.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides", category=UserWarning)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (generating or caching data), the other ranks once it has finished."""
    if is_distributed() and not is_main_process():
        dist.barrier()
    yield
    if is_distributed() and is_main_process():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable Python objects; from rank 0 only, a trusted source)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over all ranks (a new tensor on ``x``'s device; ``x`` itself when not distributed).

    NCCL reduces CUDA tensors only: a CPU tensor (the epoch's mean losses) goes through this process's GPU.
    """
    if not is_distributed():
        return x
    y = x.detach().clone()
    if y.device.type != "cuda" and dist.get_backend() == "nccl":
        y = y.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(y)
    return (y / get_world_size()).to(x.device)


# --------------------------------------------------------------------------------------------------
# ``--device 0,1,...``: run torchrun for the user
# --------------------------------------------------------------------------------------------------
def launch_needed(device: str) -> bool:
    """Several GPUs named, and not already inside a torchrun process."""
    return "LOCAL_RANK" not in os.environ and len(parse_gpus(device)) > 1


def launch(args: Any, trainer: type, nproc: int | None = None) -> dict[str, Any]:
    """Train ``args`` with ``trainer`` (a :class:`gmyolo.engine.trainer.Trainer` subclass) in ``nproc``
    processes under torchrun on this machine; returns rank 0's results.

    ``nproc`` defaults to the number of GPUs in ``args.device`` (which must exist). The arguments go
    to the workers as a YAML file, the results come back as JSON.

    Ctrl-C or SIGTERM (to this process, or to the whole job as SLURM and ``timeout`` send it): torchrun is told
    (:func:`run_torchrun`), each rank ends the step or checkpoint in hand, and this raises KeyboardInterrupt with
    rank 0's word on where to resume.
    """
    if nproc is None:
        gpus = parse_gpus(args.device)
        check_gpus(gpus, args.device)
        nproc = len(gpus)
    with tempfile.TemporaryDirectory(prefix="gmyolo-ddp-") as tmp:
        args_file, result_file = Path(tmp) / "args.yaml", Path(tmp) / "result.json"
        args_file.write_text(yaml.safe_dump(dataclasses.asdict(args), sort_keys=False))
        worker = "from gmyolo.engine.trainer import run_worker; run_worker()"
        entry = f"{trainer.__module__}:{trainer.__qualname__}"
        torchrun = "from gmyolo.engine.distributed import run_torchrun; run_torchrun()"  # torchrun, stopping quietly
        cmd = [sys.executable, "-c", torchrun, "--standalone", f"--nproc_per_node={nproc}"]
        cmd += ["--no-python", sys.executable, "-c", worker, entry, str(args_file), str(result_file)]
        LOGGER.info("DDP: starting %d processes: %s", nproc, " ".join(cmd))
        # The workers are fresh interpreters: the modules this process registered from plugin files reach them
        # as those files (run_worker loads them), whoever loaded them here (--plugin, a YAML, load_plugins).
        plugins = loaded_plugins()
        env = {**os.environ, ENV_VAR: os.pathsep.join(plugins)} if plugins else None
        proc = subprocess.Popen(cmd, env=env)
        with stop_signals_passed_on(proc) as received:
            code = proc.wait()  # after a stop signal too: the ranks finish their step or checkpoint first
        result = json.loads(result_file.read_text()) if result_file.is_file() else {}
        if "interrupted" in result or received:
            raise KeyboardInterrupt(result.get("interrupted", ""))  # rank 0's: where to resume
        if code != 0:
            raise LaunchError(f"distributed training failed (torchrun exit code {code}); the workers' errors are above")
        return result


@contextlib.contextmanager
def stop_signals_passed_on(proc: subprocess.Popen) -> Iterator[list[int]]:
    """While this process waits for torchrun: the first SIGINT / SIGTERM is passed on to it (it stops its workers;
    sent to the whole job, it reached torchrun already, which lets the second go) and noted in the list yielded;
    later ones are let go while the ranks finish. The handlers found are put back afterwards."""
    received: list[int] = []

    def handle(signum: int, frame) -> None:
        if not received:
            received.append(signum)
            with contextlib.suppress(OSError):
                proc.send_signal(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_torchrun() -> None:
    """torchrun (``python -m torch.distributed.run``, its arguments in ``sys.argv[1:]``) as :func:`launch` runs it.

    Stopped by SIGINT or SIGTERM, torchrun sends its workers the signal and waits for them (30 s, then SIGKILL),
    then raises its SignalException. Here a second signal while it waits is let go (the same stop reaching it from
    the whole job and from the launcher; torchrun would otherwise stop waiting for the ranks finishing their step or
    checkpoint), and the SignalException ends torchrun with 130, as the ranks do, not with a traceback.
    """
    from torch.distributed.elastic.multiprocessing import api
    from torch.distributed.run import main

    real_handler = getattr(api, "_terminate_process_handler", None)  # what torchrun installs (torch 2.x)
    received: list[int] = []

    def once(signum: int, frame) -> None:
        if not received:
            received.append(signum)
            real_handler(signum, frame)

    if real_handler is not None:
        api._terminate_process_handler = once
    try:
        main()
    except api.SignalException:
        sys.exit(130)
