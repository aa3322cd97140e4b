"""The anchor-free and end-to-end heads through the whole tool chain, on detectors trained here on generated data:
training (the head's loss columns, AutoAnchor's note), val against pycocotools, export to ONNX and TorchScript
with the parity check, and predict and val of the exported files."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
import torch

from gmyolo import YOLO
from gmyolo.data.synth import make_synthetic_dataset
from gmyolo.errors import CheckpointError
from gmyolo.models.yolo import DetectionModel
from gmyolo.models.yolo.head import YOLOV5_FORMAT
from gmyolo.tasks.detect.backends import Backend, load_backend
from gmyolo.tasks.detect.export import ExportArgs, detections_difference, export
from gmyolo.tasks.detect.train import TrainArgs, train
from gmyolo.tasks.detect.val import ValArgs, run_val

MODELS = {"anchor-free": "yolo11n-gmf-nano", "end-to-end": "yolo26n-gmf-nano"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("afsynth"), seed=1, n_train=64, n_val=16, imgsz=96)


@pytest.fixture(scope="module", params=list(MODELS))
def trained(request, data, tmp_path_factory):
    """(head, run folder, log text) of a nano GroupMixFormer detector with that head after 20 epochs at 96 px
    (160 optimiser steps, ~1 CPU minute: far from converged; mAP@0.5 about 0.1)."""
    root = tmp_path_factory.mktemp(request.param)
    logger = logging.getLogger("gmyolo")
    records: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: records.append(record.getMessage())
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        result = train(
            TrainArgs(
                data=str(data), model=MODELS[request.param], epochs=20, imgsz=96, batch=8, nbs=8, workers=0,
                progress=False, project=str(root), plots=False, tensorboard=False, close_mosaic=20,
                hyp={"lr0_adamw": 0.004, "warmup_epochs": 0},
            )
        )  # fmt: skip
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return request.param, Path(result["save_dir"]), "\n".join(records)


def test_training_logs_the_heads_losses_and_skips_autoanchor(trained):
    head, run, log = trained
    with open(run / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    third = (
        "dfl_loss" if head == "anchor-free" else "l1_loss"
    )  # YOLO26's reg_max 1: an L1 loss, as Ultralytics names it
    assert list(rows[0])[:4] == ["epoch", "train/box_loss", "train/cls_loss", f"train/{third}"]
    assert f"val/{third}" in rows[0] and "train/obj_loss" not in rows[0]
    assert "AutoAnchor: does not apply to the anchor-free" in log and log.count("AutoAnchor") == 1
    hyp = json.loads(json.dumps(torch.load(run / "weights/last.pt", weights_only=True)["hyp"]))
    assert (hyp["box"], hyp["cls"], hyp["dfl"]) == (7.5, 0.5, 1.5) and "obj" not in hyp  # the head's own gains
    first, last = float(rows[0]["train/box_loss"]), float(rows[-1]["train/box_loss"])
    assert last < first
    # Measured (seed 0, this set-up): mAP@0.5 0.10 (anchor-free) and 0.11 (end-to-end) at the last epoch; the
    # untrained weights score < 0.01 (the negative control below).
    assert float(rows[-1]["metrics/mAP_0.5"]) > 0.03, rows[-1]


def test_untrained_weights_find_nothing(trained, data, tmp_path):
    head, run, _ = trained
    ckpt = torch.load(run / "weights/best.pt", weights_only=True)
    torch.manual_seed(0)
    initial = DetectionModel(ckpt["args"]["model"], nc=ckpt["nc"]).state_dict()
    path = tmp_path / "untrained.pt"
    torch.save({**ckpt, "model": initial, "ema": initial}, path)
    untrained = run_val(ValArgs(weights=str(path), batch=8, plots=False, progress=False, project=str(tmp_path)))
    assert untrained["mAP50"] < 0.01  # the negative control of the floor above


def test_val_agrees_with_pycocotools(trained, tmp_path):
    _, run, _ = trained
    r = run_val(ValArgs(weights=str(run / "weights/best.pt"), batch=8, save_json=True, plots=False, progress=False,
                        project=str(tmp_path)))  # fmt: skip
    assert r["mAP50"] > 0.03
    assert abs(r["mAP50-95"] - r["coco"]["mAP50-95"]) < 0.005, r
    assert abs(r["mAP50"] - r["coco"]["mAP50"]) < 0.005, r


def test_export_predict_and_val_of_the_exported_files(trained, data, tmp_path):
    head, run, _ = trained
    best = str(run / "weights/best.pt")
    files = {}
    for fmt, dynamic, name in (
        ("onnx", True, "dyn.onnx"),
        ("onnx", False, "fixed.onnx"),
        ("torchscript", True, "m.ts"),
    ):
        r = export(ExportArgs(weights=best, format=fmt, dynamic=dynamic, output=str(tmp_path / name)))
        assert r["max_abs_diff"] <= 1e-3, (name, r)
        files[name] = r["file"]
    expected_format = "xywh_cls" if head == "anchor-free" else "xyxy_score_class"
    for file in files.values():
        assert load_backend(file).output_format == expected_format  # recorded in the file's metadata
    images = sorted((data.parent / "images/val").glob("*.png"))[:6]
    reference = YOLO(best).predict([str(p) for p in images], conf=0.05)
    assert sum(len(r) for r in reference) > 0
    for name in ("dyn.onnx", "m.ts"):
        got = YOLO(files[name]).predict([str(p) for p in images], conf=0.05)
        for a, b in zip(reference, got, strict=True):
            assert len(a) == len(b), name
            assert torch.allclose(a.boxes, b.boxes, atol=1e-2) and torch.equal(a.classes, b.classes), name
            assert torch.allclose(a.scores, b.scores, atol=1e-4), name
    kwargs = dict(batch=4, plots=False, progress=False, project=str(tmp_path))
    metrics = {name: run_val(ValArgs(weights=w, **kwargs)) for name, w in [("pt", best), *files.items()]}
    for name in ("dyn.onnx", "m.ts"):
        for key in ("mAP50", "mAP50-95", "precision", "recall"):
            assert metrics[name][key] == pytest.approx(metrics["pt"][key], abs=1e-4), (name, key)
    assert metrics["fixed.onnx"]["mAP50"] > 0.01  # square letterboxed inputs: close, not equal


def test_old_exports_without_an_output_format_are_yolov5s():
    assert Backend({"names": ["a"]}, torch.device("cpu")).output_format == YOLOV5_FORMAT
    with pytest.raises(CheckpointError, match="output format 'boxes_v9'"):
        Backend({"output_format": "boxes_v9"}, torch.device("cpu"))


def test_end_to_end_parity_compares_detections_as_sets():
    want = torch.tensor([[[0.0, 0, 10, 10, 0.9, 1], [5, 5, 20, 20, 0.5, 0], [1, 1, 2, 2, 0.1, 0]]])
    swapped = want[:, [1, 0, 2]].clone()
    assert detections_difference(swapped, want) == 0.0  # the same detections in another order
    moved = want.clone()
    moved[0, 0, 2] += 0.5
    assert detections_difference(moved, want) == pytest.approx(0.5)
    other_class = want.clone()
    other_class[0, 1, 5] = 1
    assert detections_difference(other_class, want) > 1  # matched to another detection of class 1, far away
    cut = want.clone()
    cut[0, 2] = torch.tensor([50.0, 50, 60, 60, 0.1, 1])  # a different last row at the cut score: not required
    assert detections_difference(cut, want) == 0.0
