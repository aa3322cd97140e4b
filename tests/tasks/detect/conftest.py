"""A detector trained once per test session on generated data, shared by the training and prediction tests; and
the same detector untrained (its initial weights), the negative control of the tests that judge the training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gmyolo.data.synth import make_synthetic_dataset
from gmyolo.models.yolo import DetectionModel
from gmyolo.tasks.detect.train import TrainArgs, train


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """The run folder of yolov5n-gmf-nano after 16 epochs on 64 synthetic 96 px images (~130 optimiser steps)."""
    root = tmp_path_factory.mktemp("trained")
    data = make_synthetic_dataset(root / "synth", seed=1, n_train=64, n_val=16, imgsz=96)
    args = TrainArgs(
        data=str(data),
        model="yolov5n-gmf-nano",
        epochs=16,
        imgsz=96,
        batch=8,
        nbs=8,
        workers=0,
        progress=False,
        project=str(root / "runs"),
        plots=False,
        close_mosaic=16,
        hyp={"lr0_adamw": 0.004, "warmup_epochs": 0},
    )
    return Path(train(args)["save_dir"])


@pytest.fixture(scope="session")
def untrained_weights(trained_run, tmp_path_factory) -> str:
    """A checkpoint of the trained run's model as it was before its first step: the same architecture built
    under the run's seed (so the same initial weights), with the run's anchors (AutoAnchor may have refit them).
    Everything else (names, dataset, image size) is the run's best.pt, so it is validated and used the same way.
    (Checked when the learning tests' floors were measured: bit for bit the weights the trainer starts from.)"""
    ckpt = torch.load(trained_run / "weights/best.pt", weights_only=True)
    torch.manual_seed(ckpt["args"]["seed"])  # what the trainer does before it builds the model
    initial = DetectionModel(ckpt["args"]["model"], nc=ckpt["nc"]).state_dict()
    initial = {k: ckpt["model"][k] if k.endswith("anchors") else v for k, v in initial.items()}
    path = tmp_path_factory.mktemp("untrained") / "untrained.pt"
    torch.save({**ckpt, "model": initial, "ema": initial, "epoch": -1, "optimizer": None}, path)
    return str(path)
