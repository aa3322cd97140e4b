"""A detector trained once per test session on generated data, shared by the training and prediction tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from gmyolo.data.synth import make_synthetic_dataset
from gmyolo.engine.trainer import TrainArgs, train


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
