"""TensorBoard logging: a training run's event file read back and compared with results.csv."""

from __future__ import annotations

import csv
import logging
import sys

import pytest
import torch

from gmyolo.data.config import load_dataset_config
from gmyolo.data.dataset import build_dataloader, create_dataset
from gmyolo.data.synth import make_synthetic_dataset
from gmyolo.engine import trainer as base_trainer_module
from gmyolo.engine.loggers import TensorBoardLogger, tensorboard_logger
from gmyolo.models.yolo import DetectionModel
from gmyolo.tasks.detect import plots as detect_plots
from gmyolo.tasks.detect import train as trainer_module
from gmyolo.tasks.detect.plots import PredictionPictures
from gmyolo.tasks.detect.train import CSV_COLUMNS, TrainArgs, train

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def test_event_file_holds_the_results_csv_and_images(tmp_path, monkeypatch):
    for module, slow_plot in (  # matplotlib; not logged here
        (trainer_module, "plot_labels"),
        (base_trainer_module, "plot_results"),
        (trainer_module, "save_validation_plots"),
    ):
        monkeypatch.setattr(module, slow_plot, lambda *args, **kwargs: None)
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
    columns = list(rows[0])[1:]  # the trained head's columns (the default model's anchor-free head: dfl_loss)
    assert "train/dfl_loss" in columns and set(CSV_COLUMNS[1:]) - set(columns) == {"train/obj_loss", "val/obj_loss"}
    assert set(acc.Tags()["scalars"]) == set(columns)
    for column in columns:
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


def test_predictions_are_drawn_in_batch_coordinates(tmp_path, monkeypatch):
    data = load_dataset_config(make_synthetic_dataset(tmp_path / "synth", seed=0, n_train=1, n_val=6, imgsz=64))
    dataset, _ = create_dataset(data, "val", 64, rect=True, batch_size=4, stride=32)
    loader = build_dataloader(dataset, 4, 0, shuffle=False)
    drawn = {}

    def record(images, boxes, names, path, *args, **kwargs):
        drawn[len(drawn)] = (images, boxes)
        return real_plot_batch(images, boxes, names, path, *args, **kwargs)

    real_plot_batch = detect_plots.plot_batch
    monkeypatch.setattr(detect_plots, "plot_batch", record)
    logger = TensorBoardLogger(tmp_path / "run")
    pictures = PredictionPictures(loader, data.names, max_images=8, conf=0.001)  # an untrained model scores ~0.01
    model = DetectionModel("yolov5n-gmf-nano", nc=4)
    for step, value in ((1, 0.5), (2, 0.6)):
        logger.log_scalars({"metrics/mAP_0.5": value}, step)
        pictures.log(logger, model, step)
    logger.close()
    labels_images, labels = drawn[0]
    assert len(labels_images) == 4 and labels.shape[1] == 6  # one loader batch at most; the labels once
    images, predictions = drawn[1]
    assert images is labels_images and predictions.shape[1] == 7 and len(predictions)
    assert set(predictions[:, 0].tolist()) <= {0.0, 1.0, 2.0, 3.0} and (predictions[:, 6] >= 0.001).all()
    assert (predictions[:, 2:6] >= -0.01).all() and (predictions[:, 2:4] <= 1.01).all()  # normalised cx, cy
    torch.testing.assert_close(drawn[2][1], predictions)  # the same images, the same model: the same boxes
    acc = event_accumulator.EventAccumulator(str(tmp_path / "run"), size_guidance={"images": 0})
    acc.Reload()
    assert [e.step for e in acc.Images("val/predictions")] == [1, 2] and len(acc.Images("val/labels")) == 1
    assert [e.value for e in acc.Scalars("metrics/mAP_0.5")] == pytest.approx([0.5, 0.6])
