"""Loader workers: YOLOv5's default count, persistent processes that still see each epoch's dataset state
(epoch seed, mosaic off), the same batches with any number of workers, and OpenCV kept quiet."""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from gmyolo.data import dataset as dataset_module
from gmyolo.data.classify import ClassifyFolder, build_classify_loader, collate_classify, make_classify_dataset
from gmyolo.data.config import load_dataset_config
from gmyolo.data.dataset import EpochState, build_dataloader, collate_fn, create_dataset, default_workers
from gmyolo.data.synth import make_synthetic_dataset


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth"), seed=0, n_train=16, n_val=4, imgsz=64)


def collate_with_pid(batch):
    """Detection's collate, run in the worker process, plus that process's id."""
    return (*collate_fn(batch), os.getpid())


def collate_classify_with_pid(batch):
    return (*collate_classify(batch), os.getpid())


def run_epochs(loader, dataset, epochs: int, close_mosaic_at: int | None = None):
    """Per epoch as the trainer does it (state first, then iterate): the batches and the worker pids seen."""
    batches, pids = [], []
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        loader.sampler.set_epoch(epoch)
        if close_mosaic_at is not None and epoch >= close_mosaic_at:
            dataset.close_mosaic()
        seen = []
        for *batch, pid in loader:
            batches.append(batch)
            seen.append(pid)
        pids.append(set(seen))
    return batches, pids


def test_default_workers_follow_yolov5(monkeypatch):
    monkeypatch.setattr(dataset_module, "cpu_cores", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers(64) == 8  # at most 8 per process
    assert default_workers(4) == 4  # never more than the batch
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: 4 processes share the 16 cores
    assert default_workers(64) == 4
    assert default_workers(64, processes=8) == 2
    monkeypatch.setattr(dataset_module, "cpu_cores", lambda: 2)
    assert default_workers(16, processes=1) == 2  # this project's machine: the quick start's 2 workers


def test_loader_defaults_persistent_prefetching_pinned_on_request(synth):
    data = load_dataset_config(synth)
    ds, _ = create_dataset(data, "train", 64, augment=True)
    loader = build_dataloader(ds, batch_size=4, workers=None, seed=0, pin_memory=False)
    assert loader.num_workers == default_workers(4)
    if loader.num_workers:
        assert loader.persistent_workers and loader.prefetch_factor == 2
    assert not loader.pin_memory
    assert not build_dataloader(ds, batch_size=4, workers=0).persistent_workers  # no processes to keep


def test_epoch_state_is_shared_memory():
    state = EpochState(epoch=3, mosaic=True)
    assert state.values.is_shared() and (state["epoch"], state["mosaic"]) == (3, 1)
    state["epoch"] = 7
    assert state["epoch"] == 7


def test_persistent_workers_are_not_restarted_and_see_every_epochs_state(synth):
    # Three epochs, mosaic closed for the last: workers started once (the same two pids every epoch) must
    # still produce exactly the batches of a loader without workers, where nothing is copied.
    data = load_dataset_config(synth)
    results = {}
    for workers in (0, 2):
        ds, _ = create_dataset(data, "train", 64, augment=True, seed=5)
        loader = build_dataloader(ds, batch_size=4, workers=workers, seed=5, collate=collate_with_pid)
        results[workers] = run_epochs(loader, ds, epochs=3, close_mosaic_at=2)
    (b0, _), (b2, pids) = results[0], results[2]
    assert len(pids[0]) == 2 and pids[0] == pids[1] == pids[2] and os.getpid() not in pids[0]
    assert len(b0) == len(b2) == 12
    for (im0, t0, p0, s0), (im2, t2, p2, s2) in zip(b0, b2):
        assert p0 == p2 and torch.equal(im0, im2) and torch.equal(t0, t2) and s0 == s2
    assert all(s is None for s in b0[0][3]) and all(s is not None for s in b0[-1][3])  # mosaic on, then off
    assert not torch.equal(b0[0][0], b0[4][0])  # a new epoch, new augmentation


def test_classification_workers_see_the_epoch(tmp_path):
    from gmyolo.data.classify import classify_train_transform

    root = make_classify_dataset(tmp_path, n_train=4, n_val=1, imgsz=32)
    results = {}
    for workers in (0, 2):
        ds = ClassifyFolder(root / "train", transform=classify_train_transform(32), seed=0)
        loader = build_classify_loader(ds, 4, workers, shuffle=True, seed=0)
        loader.collate_fn = collate_classify_with_pid
        results[workers] = run_epochs(loader, ds, epochs=2)
    (b0, _), (b2, pids) = results[0], results[2]
    assert pids[0] == pids[1] and len(pids[0]) == 2
    for (im0, y0, p0, _), (im2, y2, p2, _) in zip(b0, b2):
        assert p0 == p2 and torch.equal(y0, y2) and torch.equal(im0, im2)


def test_opencv_decoding_prints_nothing(tmp_path):
    # A truncated JPEG, a file that is no image and a missing file: OpenCV's own log lines and libjpeg's
    # "Premature end of JPEG file" would go to stderr; gmyolo reports such images itself.
    jpeg = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (96, 96, 3), np.uint8))[1].tobytes()
    (tmp_path / "cut.jpg").write_bytes(jpeg[: len(jpeg) * 2 // 3])
    (tmp_path / "junk.jpg").write_text("<html>")
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from gmyolo.data.opencv import imread\n"
        "from gmyolo.data.sources import read_image\n"
        f"d = Path({str(tmp_path)!r})\n"
        "assert imread(d / 'cut.jpg') is not None and imread(d / 'junk.jpg') is None and imread(d / 'no.jpg') is None\n"
        "read_image(d / 'cut.jpg')  # imdecode: decoded in part or refused, depending on the OpenCV version\n"
        "assert read_image(d / 'junk.jpg').image is None\n"
        "print('after', file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stderr == "after\n"  # nothing from OpenCV or libjpeg, and stderr works again afterwards
