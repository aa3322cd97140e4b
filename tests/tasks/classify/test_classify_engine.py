"""Classification through the shared trainer: DDP (2 gloo ranks = 1 process), Ctrl-C, SIGKILL + --resume
against an uninterrupted run, and TensorBoard scalars — what detection's tests check, for the classifier."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from gmyolo.cli.main import main
from gmyolo.data.classify import make_classify_dataset
from gmyolo.engine import trainer as base_trainer_module
from gmyolo.models.groupmixformer import VARIANTS, GroupMixFormer
from gmyolo.tasks.classify import train as classify_module
from gmyolo.tasks.classify.options import ClassifyTrainArgs
from gmyolo.tasks.classify.train import classify_train

# One block per stage, no stochastic depth (each process would draw its own masks).
PICO = dict(embedding_dims=(20, 20, 40, 40), serial_depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2), drop_path_rate=0.0)
# No mixup (it mixes within each process's share of a batch) and a plain loss; crops and flips stay on:
# they are seeded per image, so every process draws the same ones.
RUN = dict(
    model="pico",
    imgsz=32,
    batch=8,
    workers=0,
    device="cpu",
    progress=False,
    plots=False,
    tensorboard=False,
    mixup=0.0,
    cutmix=0.0,
    auto_augment="",
    reprob=0.0,
    label_smoothing=0.0,
    warmup_epochs=0.5,
    lr=1.0,
)
CLI = ["--model", "pico", "--imgsz", "32", "--batch", "8", "--workers", "0", "--device", "cpu", "--no-plots"]
CLI += ["--no-tensorboard", "--mixup", "0", "--cutmix", "0", "--lr", "1.0", "--warmup-epochs", "0.5"]


@pytest.fixture(scope="module", autouse=True)
def pico_variant():
    with pytest.MonkeyPatch.context() as m:
        m.setitem(VARIANTS, "pico", PICO)
        yield


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_classify_dataset(tmp_path_factory.mktemp("shapes"), n_train=16, n_val=4, imgsz=40, seed=0)


def read_rows(path, drop=("time/epoch_s",)) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


# ---- DDP -----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frozen_batchnorm_train(self: GroupMixFormer, mode: bool = True) -> GroupMixFormer:
    """model.train(), but BatchNorm normalises with its running statistics: on the CPU there is no
    SyncBatchNorm, and per-rank batch statistics differ from the global batch's."""
    nn.Module.train(self, mode)
    for m in self.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    return self


def ddp_worker(rank: int, world: int, port: int, out: str, args: dict) -> None:
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
    GroupMixFormer.train = frozen_batchnorm_train  # a forked process: the test process keeps the original
    models = []
    real_wrap = base_trainer_module.wrap_model
    base_trainer_module.wrap_model = lambda model, *a: (models.append(model), real_wrap(model, *a))[1]
    result = classify_train(ClassifyTrainArgs(**args))
    torch.save({"result": result, "model": models[0].state_dict()}, os.path.join(out, f"rank{rank}.pt"))


def run_processes(world: int, out, args: dict) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    ctx = mp.start_processes(
        ddp_worker, (world, free_port(), str(out), args), nprocs=world, join=False, start_method="fork"
    )
    deadline = time.monotonic() + 300  # a rank left waiting for the others would hang: fail instead
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the ranks did not finish together")
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world)]


def test_two_ranks_train_like_one_process(shapes, tmp_path):
    # 48 images, global batch 8: 6 AdamW steps an epoch, 4 images per rank and step with 2 ranks.
    args = dict(data=str(shapes), epochs=2, **RUN)
    ddp = run_processes(2, tmp_path / "ddp", {**args, "project": str(tmp_path / "ddp/runs")})
    single = run_processes(1, tmp_path / "one", {**args, "project": str(tmp_path / "one/runs")})
    assert ddp[0]["result"]["epochs_trained"] == ddp[1]["result"]["epochs_trained"] == 2
    worst = 0.0
    for k, v in single[0]["model"].items():
        assert torch.equal(ddp[0]["model"][k], ddp[1]["model"][k]), k  # DDP keeps the ranks identical
        if v.is_floating_point():
            worst = max(worst, (ddp[0]["model"][k] - v).abs().max().item())
    print(f"largest weight difference, 2 ranks vs 1 process: {worst:.3g}")
    assert worst < 1e-5  # float rounding; a rank that saw other images or another loss scale is off by > 1e-3
    runs = tmp_path / "ddp/runs"
    assert [p.name for p in runs.iterdir()] == ["exp"]  # rank 0 alone wrote the run
    assert [r["epoch"] for r in read_rows(runs / "exp/results.csv")] == ["1", "2"]
    assert read_rows(runs / "exp/results.csv", drop=("time/epoch_s", "val/loss")) == read_rows(
        tmp_path / "one/runs/exp/results.csv", drop=("time/epoch_s", "val/loss")
    )


# ---- Ctrl-C, SIGKILL -----------------------------------------------------------------------------
def test_ctrl_c_while_saving_finishes_the_checkpoint_and_prints_the_resume_command(
    shapes, tmp_path, monkeypatch, capsys
):
    before = signal.getsignal(signal.SIGINT)  # default_int_handler; SIG_IGN in a background job (`pytest &`)
    real_save, calls = classify_module.save_classify_checkpoint, []

    def ctrl_c_then_save(path, *a, **k):  # a real SIGINT to this process while the checkpoint is written
        calls.append(path.name)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real_save(path, *a, **k)

    monkeypatch.setattr(classify_module, "save_classify_checkpoint", ctrl_c_then_save)
    argv = ["classify", "train", "--data", str(shapes), "--epochs", "3", "--project", str(tmp_path), *CLI]
    assert main(argv) == 130
    last = tmp_path / "exp/weights/last.pt"
    err = capsys.readouterr().err.strip().splitlines()[-1]
    resume = f"gmyolo classify train --resume {last}"
    assert err == f"gmyolo classify train: interrupted; {last} holds epoch 1; continue with: {resume}"
    assert calls == ["best.pt", "last.pt"]  # both written, then stopped
    assert torch.load(last, weights_only=True)["epoch"] == 0
    assert [r["epoch"] for r in read_rows(tmp_path / "exp/results.csv")] == ["1"]
    assert signal.getsignal(signal.SIGINT) is before  # the handler found, put back


RUNNER = """
import sys
from gmyolo.models.groupmixformer import VARIANTS
VARIANTS["pico"] = {pico!r}
from gmyolo.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(shapes, tmp_path, kill_when_seen):
    runner = tmp_path / "gmyolo_pico.py"  # `gmyolo` with the test's tiny variant registered
    runner.write_text(textwrap.dedent(RUNNER.format(pico=PICO)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, str(runner), "classify", "train", "--data", str(shapes), "--epochs", "3", *CLI]
    straight = subprocess.Popen([*base, "--project", str(tmp_path / "a")], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        # The log line of epoch 1: its checkpoint is being written; 0.3 s later epoch 2 is under way.
        seen = kill_when_seen([*base, "--project", str(tmp_path / "b")], b"epoch 1/3", env, tmp_path, settle=0.3)
        assert b"epoch 1/3" in seen, seen.decode(errors="replace")[-2000:]
        run = tmp_path / "b/exp"
        killed = torch.load(run / "weights/last.pt", weights_only=True)  # loads: never half written
        assert killed["epoch"] in (0, 1)
        resume = [sys.executable, str(runner), "classify", "train", "--resume", str(run / "weights/last.pt")]
        resumed = subprocess.run(resume, env=env, cwd=tmp_path, capture_output=True, text=True)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert straight.wait(timeout=300) == 0
    finally:
        straight.kill()
    a = torch.load(tmp_path / "a/exp/weights/last.pt", weights_only=True)
    b = torch.load(run / "weights/last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and a["best_fitness"] == b["best_fitness"]
    for k, v in a["model"].items():
        assert torch.equal(b["model"][k], v), k
    for i, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(b["optimizer"]["state"][i][name], value), (i, name)
    assert [g["lr"] for g in a["optimizer"]["param_groups"]] == [g["lr"] for g in b["optimizer"]["param_groups"]]
    assert read_rows(tmp_path / "a/exp/results.csv") == read_rows(run / "results.csv")  # each epoch once, equal
    assert not [p for p in tmp_path.rglob("*.tmp")]


# ---- TensorBoard ---------------------------------------------------------------------------------
def test_tensorboard_holds_the_results_csv(shapes, tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    args = {**RUN, "tensorboard": True}
    classify_train(ClassifyTrainArgs(data=str(shapes), epochs=2, project=str(tmp_path), **args))
    run = tmp_path / "exp"
    acc = event_accumulator.EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    with open(run / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    columns = [c for c in rows[0] if c != "epoch"]
    assert set(acc.Tags()["scalars"]) == set(columns)
    assert "metrics/accuracy_top1" in columns and "train/loss" in columns
    for column in columns:
        events = acc.Scalars(column)
        assert [e.step for e in events] == [1, 2], column
        for e, row in zip(events, rows):
            assert e.value == pytest.approx(float(row[column]), rel=1e-5, abs=1e-9), column
