"""`gmyolo train` starts its loader workers once: the same processes serve every epoch, and the per-epoch
state (the epoch's augmentation seed, mosaic closed for the last epochs) reaches them without a restart."""

from __future__ import annotations

import os

import pytest

from gmyolo.data import dataset as dataset_module
from gmyolo.data.dataset import YOLODataset
from gmyolo.data.synth import make_synthetic_dataset
from gmyolo.tasks.detect.train import TrainArgs, train


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return str(make_synthetic_dataset(tmp_path_factory.mktemp("synth"), seed=0, n_train=16, n_val=8, imgsz=96))


def test_workers_live_across_epochs_and_see_each_epochs_state(synth, tmp_path, monkeypatch):
    log = tmp_path / "workers.log"
    real_init, real_getitem = dataset_module.seed_worker, YOLODataset.__getitem__

    def write(line: str) -> None:  # one short O_APPEND write per line: lines from several processes stay whole
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def counting_init(worker_id):
        write(f"start {os.getpid()}")
        real_init(worker_id)

    def recording_getitem(self, index):
        if self.augment:  # the training set (validation's is not augmented)
            write(f"sample {os.getpid()} {self.epoch} {int(self.mosaic)}")
        return real_getitem(self, index)

    monkeypatch.setattr(dataset_module, "seed_worker", counting_init)  # forked workers inherit both patches
    monkeypatch.setattr(YOLODataset, "__getitem__", recording_getitem)
    args = TrainArgs(
        data=synth, model="yolov5n-gmf-nano", imgsz=64, batch=8, nbs=8, epochs=3, close_mosaic=1, workers=2,
        device="cpu", project=str(tmp_path / "runs"), plots=False, progress=False, tensorboard=False,
        noautoanchor=True,
    )  # fmt: skip
    train(args)
    lines = [line.split() for line in log.read_text().splitlines()]
    started = [int(parts[1]) for parts in lines if parts[0] == "start"]
    samples = [tuple(int(v) for v in parts[1:]) for parts in lines if parts[0] == "sample"]
    assert len(started) == 4, started  # 2 training + 2 validation workers, each started once in 3 epochs
    train_pids = {pid for pid, _, _ in samples}
    assert len(train_pids) == 2 and train_pids <= set(started) and os.getpid() not in train_pids
    by_epoch = {e: {(pid, m) for pid, ep, m in samples if ep == e} for e in range(3)}
    assert {pid for pid, _ in by_epoch[0]} == {pid for pid, _ in by_epoch[2]} == train_pids  # the same processes
    assert {m for _, m in by_epoch[0] | by_epoch[1]} == {1} and {m for _, m in by_epoch[2]} == {0}  # mosaic closed
    assert len(samples) == 3 * 16  # every image once an epoch (mosaic loads its other images through load_image)
