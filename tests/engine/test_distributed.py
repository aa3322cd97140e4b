"""DDP on the CPU: 2 gloo processes train exactly like 1 process with the same global batch; rank 0 writes
the run; the ranks stop together (early stop, NaN); device strings under torchrun; the sampler's split."""

from __future__ import annotations

import csv
import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from gmyolo.data.dataset import build_dataloader, create_dataset
from gmyolo.data.synth import make_synthetic_dataset
from gmyolo.engine import distributed as distributed_module
from gmyolo.engine import trainer as base_trainer_module
from gmyolo.engine.device import select_device
from gmyolo.engine.distributed import launch_needed, setup_distributed
from gmyolo.errors import TrainingDiverged
from gmyolo.models.yolo import DetectionModel
from gmyolo.tasks.detect import train as trainer_module
from gmyolo.tasks.detect.train import TrainArgs, train

# 16 images, global batch 8: 2 steps per epoch (4 images per rank and step with 2 ranks). SGD unless a test
# says otherwise.
RUN = dict(
    model="yolov5n-gmf-nano",
    imgsz=64,
    batch=8,
    nbs=8,
    workers=0,
    device="cpu",
    optimizer="SGD",
    progress=False,
    plots=False,
    tensorboard=False,
)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return str(make_synthetic_dataset(tmp_path_factory.mktemp("synth"), seed=0, n_train=16, n_val=8, imgsz=96))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frozen_batchnorm_train(self: DetectionModel, mode: bool = True) -> DetectionModel:
    """model.train(), but BatchNorm normalises with its running statistics. On the CPU there is no
    SyncBatchNorm, and per-rank batch statistics differ from the global batch's; this test is about
    everything else (batch split, sampler, loss scaling, gradient averaging, stopping)."""
    nn.Module.train(self, mode)
    for m in self.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    return self


def worker(rank: int, world: int, port: int, out: str, args: dict, options: dict) -> None:
    """One rank (or, with world 1, a plain single process): train, then save the weights it ended with."""
    if world > 1:  # what torchrun sets
        os.environ.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_WORLD_SIZE=str(world),
        )
    torch.set_num_threads(1)
    DetectionModel.train = frozen_batchnorm_train  # a forked process: the test process keeps the original
    models = []
    real_wrap = base_trainer_module.wrap_model
    base_trainer_module.wrap_model = lambda model, *a: (models.append(model), real_wrap(model, *a))[1]
    if options.get("never_better"):  # real validation (rank 0), but no improvement after epoch 1

        class NeverBetter(trainer_module.Validator):
            def __call__(self, model, loader):
                results = super().__call__(model, loader)
                results.metrics.ap[:] = 0.0
                return results

        trainer_module.DetectionTrainer.validator = NeverBetter
    if options.get("nan_rank") == rank:  # this rank alone gets a NaN loss in its 3rd step (epoch 2)
        real_call, calls = trainer_module.ComputeLoss.__call__, [0]

        def nan_in_step_3(self, preds, targets):
            total, items = real_call(self, preds, targets)
            calls[0] += 1
            return (total * float("nan"), items) if calls[0] == 3 else (total, items)

        trainer_module.ComputeLoss.__call__ = nan_in_step_3
    try:
        result = train(TrainArgs(**args))
    except TrainingDiverged as e:
        result = {"diverged": str(e)}
    torch.save({"result": result, "model": models[0].state_dict()}, os.path.join(out, f"rank{rank}.pt"))


def run_processes(world: int, out, args: dict, **options) -> list[dict]:
    """Fork ``world`` processes (forked, so they skip the imports) and return what each saved."""
    out.mkdir(parents=True, exist_ok=True)
    ctx = mp.start_processes(
        worker, (world, free_port(), str(out), args, options), nprocs=world, join=False, start_method="fork"
    )
    deadline = time.monotonic() + 300  # a rank left waiting for the others would hang: fail instead
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the ranks did not finish together")
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world)]


def read_epochs(path) -> list[str]:
    with open(path, newline="") as f:
        return [row["epoch"] for row in csv.DictReader(f)]


@pytest.mark.parametrize(
    ("optimizer", "batch", "nbs", "atol", "updates"),
    [
        # Measured largest differences: SGD 3.7e-9; AdamW with accumulation 1.19e-7, one float32 ulp of a BatchNorm
        # weight near 1 (the rounding the gradient all-reduce brings; Adam could turn a rounding-level gradient of the
        # opposite sign into a full step, but none happened). 1e-6 is ~8x that, and far below what a real difference
        # makes: one AdamW step here is >= 3e-4 (lr at the first step of the warm-up), and normalising the loss by each
        # rank's own matches instead of the global count gives 5e-3 (SGD) and 8e-3 (AdamW).
        # Optimizer steps in 2 epochs of 2 batches of 8: 4. Of 4 batches of 4 accumulated in 2s: 6, as the
        # warm-up (6 batches) takes the first 3 alone and the epoch's last batch always steps: 1, 1, 1, 1 | 2, 2.
        pytest.param("SGD", 8, 8, 1e-6, 4, id="sgd"),
        # GroupMixFormer's default optimizer, and gradients accumulated over 2 batches of 4 (2 per rank) per step.
        pytest.param("AdamW", 4, 8, 1e-6, 6, id="adamw-accumulate"),
    ],
)
def test_two_ranks_train_like_one_process(synth, tmp_path, optimizer, batch, nbs, atol, updates):
    # Early stop after epoch 2 of 3 (patience 1, never better): rank 0 decides, rank 1 must stop with it.
    args = dict(data=synth, epochs=3, patience=1, **{**RUN, "optimizer": optimizer, "batch": batch, "nbs": nbs})
    ddp = run_processes(2, tmp_path / "ddp", {**args, "project": str(tmp_path / "ddp/runs")}, never_better=True)
    single = run_processes(1, tmp_path / "one", {**args, "project": str(tmp_path / "one/runs")}, never_better=True)
    assert ddp[0]["result"]["epochs_trained"] == ddp[1]["result"]["epochs_trained"] == 2
    assert single[0]["result"]["epochs_trained"] == 2
    worst, worst_key = 0.0, ""
    for k, v in single[0]["model"].items():
        assert torch.equal(ddp[0]["model"][k], ddp[1]["model"][k]), k  # DDP keeps the ranks identical
        if v.is_floating_point():
            difference = (ddp[0]["model"][k] - v).abs().max().item()
            worst, worst_key = max((worst, worst_key), (difference, k))
    print(f"{optimizer}, batch {batch}, nbs {nbs}: largest weight difference {worst:.3g} ({worst_key})")
    assert worst <= atol, (worst, worst_key)
    # Rank 0 alone wrote the run: one folder, each epoch once, its checkpoint holds the ranks' weights.
    runs = tmp_path / "ddp/runs"
    assert [p.name for p in runs.iterdir()] == ["exp"]
    assert read_epochs(runs / "exp/results.csv") == ["1", "2"]
    last = torch.load(runs / "exp/weights/last.pt", weights_only=True)
    assert last["epoch"] == 1
    assert last["updates"] == updates
    assert ("betas" in last["optimizer"]["param_groups"][0]) == (optimizer == "AdamW")
    for k, v in last["model"].items():
        assert torch.equal(v, ddp[0]["model"][k]), k


def test_nan_on_one_rank_stops_all(synth, tmp_path):
    args = dict(data=synth, epochs=3, project=str(tmp_path / "runs"), **RUN)
    ranks = run_processes(2, tmp_path, args, nan_rank=1)
    for r in ranks:
        assert "loss became nan at epoch 2" in r["result"]["diverged"]
    assert torch.load(tmp_path / "runs/exp/weights/last.pt", weights_only=True)["epoch"] == 0


def test_rank_batches_make_up_the_single_process_batches(synth):
    from gmyolo.data.config import load_dataset_config

    dataset, _ = create_dataset(load_dataset_config(synth), "train", 64)
    single = build_dataloader(dataset, 8, workers=0, seed=3)
    ranks = [build_dataloader(dataset, 4, workers=0, seed=3, rank=r, world_size=2) for r in range(2)]
    for epoch in (0, 1):
        for loader in (single, *ranks):
            loader.sampler.set_epoch(epoch)
        orders = [list(loader.sampler) for loader in (single, *ranks)]
        for k in range(2):
            assert sorted(orders[0][8 * k : 8 * k + 8]) == sorted(
                orders[1][4 * k : 4 * k + 4] + orders[2][4 * k : 4 * k + 4]
            )
    assert orders[0] != sorted(orders[0])  # shuffled


def test_devices_under_torchrun(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert select_device("", local_rank=1, local_world_size=2).type == "cpu"
    assert select_device("cpu", local_rank=1, local_world_size=2).type == "cpu"
    with pytest.raises(ValueError, match="this machine has no CUDA device"):
        select_device("0,1", local_rank=0, local_world_size=2)
    with pytest.raises(ValueError, match="names 1 GPU.*started 2 processes"):
        select_device("0", local_rank=0, local_world_size=2)
    with pytest.raises(ValueError, match="only `gmyolo train` uses several"):
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
        select_device("0,1")
    with pytest.raises(ValueError, match="names a GPU twice"):
        select_device("1,1")
    assert launch_needed("0,1") and not launch_needed("0") and not launch_needed("cpu")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert not launch_needed("0,1")  # already a torchrun process
    with pytest.raises(ValueError, match="--sync-bn needs GPUs"):
        setup_distributed("cpu", sync_bn=True)
    assert not distributed_module.is_distributed()


@pytest.mark.slow
def test_launch_runs_torchrun_and_returns_rank_0_results(synth, tmp_path):
    # What `--device 0,1,...` does, here with one CPU process: torchrun, the worker, the results file.
    args = TrainArgs(data=synth, epochs=1, project=str(tmp_path), noautoanchor=True, **RUN)
    result = distributed_module.launch(args, trainer_module.DetectionTrainer, nproc=1)
    assert result["save_dir"] == str(tmp_path / "exp") and result["epochs_trained"] == 1
    assert torch.load(result["last"], weights_only=True)["epoch"] == 0
