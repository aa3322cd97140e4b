"""Stopping a training run from outside: SIGKILL then --resume, Ctrl-C, out of memory."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from gmyolo.cli.main import main
from gmyolo.data.synth import make_synthetic_dataset
from gmyolo.engine import trainer as trainer_module
from gmyolo.engine.faults import BatchTooLarge, GracefulInterrupt, out_of_memory_hint, tidy_interrupted_run
from gmyolo.engine.trainer import TrainArgs, train
from gmyolo.models.yolo import DetectionModel

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


def test_sigkill_mid_epoch_then_resume(synth, tmp_path):
    cmd = [sys.executable, "-m", "gmyolo", "train", "--data", synth, "--epochs", "3", "--project", str(tmp_path), *CLI]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, cwd=tmp_path)
    seen = bytearray()

    def read_stderr():  # the progress bar writes "2/3 ..." once a batch of epoch 2 has been trained
        while chunk := proc.stderr.read1(4096):
            seen.extend(chunk)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    deadline = time.monotonic() + 240
    while b"2/3 cpu" not in seen and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert b"2/3 cpu" in seen, seen.decode(errors="replace")[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reader.join(10)
    run = tmp_path / "exp"
    killed = torch.load(run / "weights/last.pt", weights_only=True)  # loads: never half written
    assert killed["epoch"] >= 0 and len(read_epochs(run / "results.csv")) >= killed["epoch"] + 1

    resumed = train(TrainArgs(resume=str(run / "weights/last.pt"), progress=False))
    assert resumed["save_dir"] == str(run) and resumed["epochs_trained"] == 3
    assert read_epochs(run / "results.csv") == ["1", "2", "3"]
    assert torch.load(run / "weights/last.pt", weights_only=True)["epoch"] == 2
    assert not temp_files(tmp_path)


def test_ctrl_c_while_saving_finishes_the_checkpoint_first(synth, tmp_path, monkeypatch, capsys):
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
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


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
