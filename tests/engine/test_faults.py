"""Stopping a training run from outside: SIGKILL then --resume, Ctrl-C, out of memory."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from gmyolo.cli.main import main
from gmyolo.data.synth import make_synthetic_dataset
from gmyolo.engine.faults import BatchTooLarge, GracefulInterrupt, out_of_memory_hint, tidy_interrupted_run
from gmyolo.models.yolo import DetectionModel
from gmyolo.tasks.detect import train as trainer_module

CLI = ["--model", "yolov5n-gmf-nano", "--imgsz", "64", "--batch", "8", "--nbs", "8", "--workers", "0"]
CLI += ["--device", "cpu", "--no-plots", "--no-tensorboard", "--noautoanchor"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return str(make_synthetic_dataset(tmp_path_factory.mktemp("synth"), seed=0, n_train=16, n_val=8, imgsz=96))


def read_epochs(path) -> list[str]:
    with open(path, newline="") as f:
        return [row["epoch"] for row in csv.DictReader(f)]


def temp_files(run) -> list:
    return [p for p in run.rglob("*") if p.name.endswith(".tmp")]


def gmyolo_train(*argv: str) -> list[str]:
    return [sys.executable, "-m", "gmyolo", "train", *argv]


def read_rows(path, drop=()) -> list[dict[str, str]]:
    """results.csv's rows, without the columns ``drop`` (wall times, which no two runs share)."""
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


def assert_same_training_state(a: dict, b: dict) -> None:
    """Two checkpoints hold bit-identical training state: weights, EMA, optimizer, counters, RNG."""
    assert (a["epoch"], a["best_fitness"], a["updates"]) == (b["epoch"], b["best_fitness"], b["updates"])
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys(), part
        for k, v in a[part].items():
            assert torch.equal(b[part][k], v), (part, k, (b[part][k].float() - v.float()).abs().max().item())
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and len(sa) > 100  # AdamW state for every trained tensor
    for p, state in sa.items():
        assert state.keys() == sb[p].keys(), p
        for name, v in state.items():
            assert torch.equal(sb[p][name], v), (p, name, (sb[p][name].float() - v.float()).abs().max().item())
    for ga, gb in zip(a["optimizer"]["param_groups"], b["optimizer"]["param_groups"], strict=True):
        assert (ga["lr"], ga["betas"]) == (gb["lr"], gb["betas"])  # AdamW: betas[0] is the (warm-up) momentum
        assert ga == gb  # and everything else: weight decay, initial lr, the parameters in the group
    assert torch.equal(a["rng_state"], b["rng_state"])


def test_sigkill_mid_epoch_then_resume(synth, tmp_path, kill_when_seen):
    # The same command twice: one run is SIGKILLed while it trains epoch 2, then resumed with the command its
    # error message suggests (`gmyolo train --resume LAST_PT`, which does not repeat --workers 0: the data must
    # not depend on it); the other runs straight through. Training depends only on (seed, epoch, step), so both
    # must end bit for bit the same. One thread each (a different thread count splits intra-op reductions
    # differently), the two runs side by side.
    def command(project):
        return gmyolo_train("--data", synth, "--epochs", "3", "--project", str(tmp_path / project), *CLI)

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "straight.log", "wb") as log:
        straight = subprocess.Popen(command("straight"), stdout=log, stderr=log, env=env, cwd=tmp_path)
    try:
        # The progress bar writes "2/3 cpu ..." once a batch of epoch 2 has been trained.
        seen = kill_when_seen(command("killed"), b"2/3 cpu", env, tmp_path)
        assert b"2/3 cpu" in seen, seen.decode(errors="replace")[-2000:]
        run = tmp_path / "killed/exp"
        killed = torch.load(run / "weights/last.pt", weights_only=True)  # loads: never half written
        assert killed["epoch"] >= 0 and len(read_epochs(run / "results.csv")) >= killed["epoch"] + 1

        resume = subprocess.run(gmyolo_train("--resume", str(run / "weights/last.pt")), capture_output=True,
                                env=env, cwd=tmp_path)  # fmt: skip
        assert resume.returncode == 0, resume.stderr.decode(errors="replace")[-3000:]
        assert straight.wait(timeout=300) == 0, (tmp_path / "straight.log").read_text(errors="replace")[-3000:]
    finally:
        straight.kill()  # no-op once it has finished
        straight.wait()
    assert [p.name for p in (tmp_path / "killed").iterdir()] == ["exp"]  # resumed in its own folder
    assert read_epochs(run / "results.csv") == ["1", "2", "3"]
    assert not temp_files(tmp_path)
    resumed = torch.load(run / "weights/last.pt", weights_only=True)
    uninterrupted = torch.load(tmp_path / "straight/exp/weights/last.pt", weights_only=True)
    assert resumed["epoch"] == 2
    assert_same_training_state(uninterrupted, resumed)
    # Every logged value too (train and val losses, P, R, mAPs, learning rates), as written (6 digits).
    assert read_rows(run / "results.csv") == read_rows(tmp_path / "straight/exp/results.csv")


def test_ctrl_c_while_saving_finishes_the_checkpoint_first(synth, tmp_path, monkeypatch, capsys):
    before = signal.getsignal(signal.SIGINT)  # default_int_handler; SIG_IGN in a background job (`pytest &`)
    real_save, calls = trainer_module.save_checkpoint, []

    def ctrl_c_then_save(path, *a, **k):  # a real SIGINT to this process while the checkpoint is written
        calls.append(path.name)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real_save(path, *a, **k)

    monkeypatch.setattr(trainer_module, "save_checkpoint", ctrl_c_then_save)
    argv = ["train", "--data", synth, "--epochs", "3", "--project", str(tmp_path), *CLI]
    assert main(argv) == 130
    last = tmp_path / "exp/weights/last.pt"
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"gmyolo train: interrupted; {last} holds epoch 1; continue with: gmyolo train --resume {last}"
    assert calls == ["best.pt", "last.pt"]  # both written, then stopped
    assert torch.load(last, weights_only=True)["epoch"] == 0
    assert read_epochs(tmp_path / "exp/results.csv") == ["1"] and not temp_files(tmp_path)
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored, whatever they were


def test_ctrl_c_mid_epoch_names_the_checkpoint_to_resume(synth, tmp_path, monkeypatch, capsys):
    real_call, calls = trainer_module.ComputeLoss.__call__, [0]

    def ctrl_c_in_step_4(self, preds, targets):  # 2 steps and 1 validation batch per epoch: epoch 2
        calls[0] += 1
        if calls[0] == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return real_call(self, preds, targets)

    monkeypatch.setattr(trainer_module.ComputeLoss, "__call__", ctrl_c_in_step_4)
    assert main(["train", "--data", synth, "--epochs", "3", "--project", str(tmp_path), *CLI]) == 130
    last = tmp_path / "exp/weights/last.pt"
    assert f"interrupted; {last} holds epoch 1; continue with" in capsys.readouterr().err
    assert torch.load(last, weights_only=True)["epoch"] == 0


def test_deferred_signal_is_raised_after_the_block():
    with GracefulInterrupt() as interrupt:
        interrupt.saved(__import__("pathlib").Path("w/last.pt"), 4)
        with pytest.raises(KeyboardInterrupt, match=r"w/last.pt holds epoch 5"):
            with interrupt.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                done = True  # the block runs to its end
        assert done
        with pytest.raises(KeyboardInterrupt, match="holds epoch 5"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.parametrize("before", [signal.default_int_handler, signal.SIG_IGN], ids=["foreground", "background"])
def test_the_handlers_found_are_put_back(before):
    # A job started in the background (`pytest &`, `nohup ... &`) starts with SIGINT ignored: that is what it gets
    # back, as a foreground job gets Python's default_int_handler back. Within the block a signal stops the run.
    previous = signal.signal(signal.SIGINT, before)
    try:
        with GracefulInterrupt() as interrupt:
            assert signal.getsignal(signal.SIGINT) == interrupt.handle
            with pytest.raises(KeyboardInterrupt, match="no checkpoint was saved yet"):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)
        assert signal.getsignal(signal.SIGINT) is before
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_signal_sets_worker_failures_aside_until_the_end():
    # Once stopping, a loader worker that ends (killed by the same group-wide signal before it could ignore it)
    # must not raise torch's "DataLoader worker ... is killed by signal" inside a checkpoint write: torch's SIGCHLD
    # handler is set aside while the run stops, and put back afterwards.
    def worker_failed(signum, frame):
        raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Terminated.")

    previous = signal.signal(signal.SIGCHLD, worker_failed)
    try:
        with GracefulInterrupt() as interrupt:
            with pytest.raises(KeyboardInterrupt):
                with interrupt.deferred():
                    os.kill(os.getpid(), signal.SIGTERM)
                    assert signal.getsignal(signal.SIGCHLD) is signal.SIG_DFL
                    os.kill(os.getpid(), signal.SIGCHLD)  # a worker ended: ignored while stopping
                    time.sleep(0.1)
                    done = True
            assert done and interrupt.requested == signal.SIGTERM
        assert signal.getsignal(signal.SIGCHLD) is worker_failed
    finally:
        signal.signal(signal.SIGCHLD, previous)


def test_tidy_interrupted_run(tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights/.last.pt.k2j3.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / "weights/last.pt").write_bytes(b"kept")
    header = "epoch,train/box_loss\r\n"
    (tmp_path / "results.csv").write_text(header + "1,0.5\r\n2,0.4\r\n3,0.3\r\n")
    tidy_interrupted_run(tmp_path, finished_epochs=2)  # killed after writing row 3, before its checkpoint
    assert [p.name for p in (tmp_path / "weights").iterdir()] == ["last.pt"]
    assert (tmp_path / "results.csv").read_bytes() == (header + "1,0.5\r\n2,0.4\r\n").encode()


def test_out_of_memory_is_one_line_with_batch_and_size(synth, tmp_path, monkeypatch, capsys):
    def no_memory(self, x):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(DetectionModel, "forward", no_memory)
    assert main(["train", "--data", synth, "--epochs", "1", "--project", str(tmp_path), *CLI]) == 2
    stderr = capsys.readouterr().err
    err = [line for line in stderr.splitlines() if line.startswith("gmyolo")]  # besides the progress bar
    assert "Traceback" not in stderr and len(err) == 1
    assert err[0].startswith("gmyolo train: error: out of memory on cpu with --batch 8 at 64x64 px")
    assert "smaller --batch (e.g. 4)" in err[0]


def test_out_of_memory_hint_passes_other_errors():
    images = torch.zeros(2, 3, 32, 48)
    with pytest.raises(BatchTooLarge, match="--batch 16 \\(8 per process\\) at 48x32 px"):
        with out_of_memory_hint(16, 8, images):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with out_of_memory_hint(16, 8, images):
            raise RuntimeError("shape mismatch")
