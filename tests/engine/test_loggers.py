"""TensorBoard logging: a training run's event file read back and compared with results.csv."""

from __future__ import annotations

import csv
import logging
import sys

import pytest

from gmyolo.data.synth import make_synthetic_dataset
from gmyolo.engine import trainer as trainer_module
from gmyolo.engine.loggers import tensorboard_logger
from gmyolo.engine.trainer import CSV_COLUMNS, TrainArgs, train

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def test_event_file_holds_the_results_csv_and_images(tmp_path, monkeypatch):
    for slow_plot in ("plot_labels", "plot_results", "save_validation_plots"):  # matplotlib; not logged here
        monkeypatch.setattr(trainer_module, slow_plot, lambda *args, **kwargs: None)
    data = make_synthetic_dataset(tmp_path / "synth", seed=0, n_train=8, n_val=4, imgsz=64)
    args = TrainArgs(data=str(data), epochs=2, imgsz=64, batch=8, nbs=8, workers=0, progress=False)
    args.project = str(tmp_path / "runs")
    train(args)
    run = tmp_path / "runs/exp"
    assert len(list(run.glob("events.out.tfevents.*"))) == 1

    acc = event_accumulator.EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    with open(run / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert set(acc.Tags()["scalars"]) == set(CSV_COLUMNS[1:])
    for column in CSV_COLUMNS[1:]:
        events = acc.Scalars(column)
        assert [e.step for e in events] == [1, 2], column
        for e, row in zip(events, rows):
            assert e.value == pytest.approx(float(row[column]), rel=1e-5, abs=1e-9), column
    images = acc.Tags()["images"]
    assert {"train_batch0", "val/labels", "val/predictions"} <= set(images)
    assert [e.step for e in acc.Images("val/predictions")] == [1, 2]
    first = acc.Images("val/predictions")[0]
    assert first.width > 0 and first.height > 0 and first.encoded_image_string[:4] == b"\x89PNG"


def test_off_when_disabled_or_not_installed(tmp_path, monkeypatch, caplog):
    with caplog.at_level(logging.INFO, logger="gmyolo"):
        assert tensorboard_logger(tmp_path, enabled=False) is None
    assert not caplog.text and not list(tmp_path.iterdir())
    for module in ("tensorboard", "torch.utils.tensorboard"):  # importing them now raises ImportError
        monkeypatch.setitem(sys.modules, module, None)
    with caplog.at_level(logging.INFO, logger="gmyolo"):
        assert tensorboard_logger(tmp_path) is None
    assert caplog.text.count("TensorBoard: not installed") == 1 and not list(tmp_path.iterdir())
