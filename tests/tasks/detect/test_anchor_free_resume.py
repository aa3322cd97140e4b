"""SIGKILL mid-epoch, then --resume, with the anchor-free, end-to-end and segmentation heads: the resumed run ends
bit for bit where an uninterrupted one does (weights, EMA, optimizer, RNG, every results.csv value). For the
end-to-end head this also covers the one-to-many weight of its dual loss, which depends on the epoch. The harness
follows tests/engine/test_faults.py."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch

from gmyolo.data.synth import make_synthetic_dataset

CLI = ["--imgsz", "64", "--batch", "8", "--nbs", "8", "--workers", "0"]
CLI += ["--device", "cpu", "--no-plots", "--no-tensorboard"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return str(make_synthetic_dataset(tmp_path_factory.mktemp("synth"), seed=0, n_train=16, n_val=8, imgsz=96))


@pytest.fixture(scope="module")
def synth_segments(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthseg")
    return str(make_synthetic_dataset(root, seed=0, n_train=16, n_val=8, imgsz=96, segments=True))


def read_rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_same_training_state(a: dict, b: dict) -> None:
    assert (a["epoch"], a["best_fitness"], a["updates"]) == (b["epoch"], b["best_fitness"], b["updates"])
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys(), part
        for k, v in a[part].items():
            assert torch.equal(b[part][k], v), (part, k)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and len(sa) > 100
    for p, state in sa.items():
        for name, v in state.items():
            assert torch.equal(sb[p][name], v), (p, name)
    for ga, gb in zip(a["optimizer"]["param_groups"], b["optimizer"]["param_groups"], strict=True):
        assert ga == gb
    assert torch.equal(a["rng_state"], b["rng_state"])


@pytest.mark.parametrize("model", ["yolo11n-gmf-nano", "yolo26n-gmf-nano", "yolo11n-gmf-nano-seg"])
def test_sigkill_mid_epoch_then_resume(request, tmp_path, model, kill_when_seen):
    # The segmentation model (the anchor-free head with masks) on the shapes' outlines; the task follows the head.
    synth = request.getfixturevalue("synth_segments" if model.endswith("-seg") else "synth")

    def command(project):
        return [sys.executable, "-m", "gmyolo", "train", "--data", synth, "--model", model, "--epochs", "3",
                "--project", str(tmp_path / project), *CLI]  # fmt: skip

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "straight.log", "wb") as log:
        straight = subprocess.Popen(command("straight"), stdout=log, stderr=log, env=env, cwd=tmp_path)
    try:
        # The progress bar writes "2/3 cpu ..." once a batch of epoch 2 has been trained.
        seen = kill_when_seen(command("killed"), b"2/3 cpu", env, tmp_path)
        assert b"2/3 cpu" in seen, seen.decode(errors="replace")[-2000:]
        run = tmp_path / "killed/exp"
        resume = subprocess.run([sys.executable, "-m", "gmyolo", "train", "--resume", str(run / "weights/last.pt")],
                                capture_output=True, env=env, cwd=tmp_path)  # fmt: skip
        assert resume.returncode == 0, resume.stderr.decode(errors="replace")[-3000:]
        assert straight.wait(timeout=300) == 0, (tmp_path / "straight.log").read_text(errors="replace")[-3000:]
    finally:
        straight.kill()
        straight.wait()
    rows = read_rows(run / "results.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and "train/cls_loss" in rows[0]
    assert ("metrics/mask_mAP_0.5" in rows[0]) == model.endswith("-seg")
    resumed = torch.load(run / "weights/last.pt", weights_only=True)
    uninterrupted = torch.load(tmp_path / "straight/exp/weights/last.pt", weights_only=True)
    assert resumed["epoch"] == 2
    assert_same_training_state(uninterrupted, resumed)
    assert rows == read_rows(tmp_path / "straight/exp/results.csv")
