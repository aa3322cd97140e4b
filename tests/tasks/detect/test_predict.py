"""Prediction, export and the Python API: geometry, parity across backends, run-folder outputs, bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from gmyolo import YOLO
from gmyolo.cli.main import main
from gmyolo.data.augment import xywhn_to_xyxy
from gmyolo.tasks.detect import export as exporter_module
from gmyolo.tasks.detect.backends import Backend
from gmyolo.tasks.detect.export import ExportArgs, ExportError, export
from gmyolo.tasks.detect.predict import PredictArgs, predict
from gmyolo.tasks.detect.val import ValArgs, run_val


@pytest.fixture(scope="module")
def best(trained_run):
    return str(trained_run / "weights/best.pt")


@pytest.fixture(scope="module")
def val_images(trained_run):
    images = sorted((trained_run.parent.parent / "synth/images/val").glob("*.png"))
    assert len(images) == 16
    return images


@pytest.fixture(scope="module")
def exported(best, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    files = {}
    cases = [("onnx", True, "dyn.onnx"), ("onnx", False, "fixed.onnx"), ("torchscript", True, "m.ts")]
    cases.append(("torchscript", False, "fixed.ts"))
    for fmt, dynamic, name in cases:
        r = export(ExportArgs(weights=best, format=fmt, dynamic=dynamic, output=str(out / name)))
        assert r["max_abs_diff"] <= 1e-3
        files[name] = r["file"]
    return files


class FixedBackend(Backend):
    """Always 'detects' one box at a given letterboxed position; records what it was given."""

    def __init__(self, decoded_row, imgsz=(64, 64)):
        super().__init__({"names": ["a", "b"], "stride": 32, "imgsz": list(imgsz), "dynamic_size": False},
                         torch.device("cpu"))  # fmt: skip
        self.row = torch.tensor(decoded_row, dtype=torch.float32)
        self.inputs = []

    def __call__(self, images):
        self.check_input(images)
        self.inputs.append(images.clone())
        return self.row.view(1, 1, -1).expand(images.shape[0], 1, -1)


def test_boxes_are_mapped_back_to_original_pixels():
    # A 100x200 (h x w) blue image letterboxed to 64x64: scale 0.32, 16 px of padding above and below.
    image = np.zeros((100, 200, 3), np.uint8)
    image[..., 0] = 255  # blue in BGR
    box = np.array([50.0, 20.0, 150.0, 80.0])  # original pixels, xyxy
    lb = box * 0.32 + np.array([0, 16, 0, 16])
    cx, cy, w, h = (lb[0] + lb[2]) / 2, (lb[1] + lb[3]) / 2, lb[2] - lb[0], lb[3] - lb[1]
    backend = FixedBackend([cx, cy, w, h, 0.9, 0.1, 0.8])
    (r,) = predict(PredictArgs(source=[image], save=False), backend, verbose=False)
    x = backend.inputs[0]
    assert x.shape == (1, 3, 64, 64)
    assert x[0, 2, 32, 32] == 1.0 and x[0, 0, 32, 32] == 0.0  # RGB order, scaled to [0, 1]
    assert x[0, :, 5, 32] == pytest.approx(torch.full((3,), 114 / 255))  # grey padding
    assert r.boxes[0].tolist() == pytest.approx(box.tolist(), abs=1e-3)
    assert r.scores[0].item() == pytest.approx(0.72) and r.classes.tolist() == [1]
    assert r.orig_shape == (100, 200) and r.summary() == "1 b"
    assert r.xywhn[0].tolist() == pytest.approx([0.5, 0.5, 0.5, 0.6])
    assert r.txt_lines(save_conf=True) == ["1 0.500000 0.500000 0.500000 0.600000 0.72000"]
    # The class filter and the confidence threshold apply.
    assert not list(predict(PredictArgs(source=[image], save=False, classes=[0]), backend, verbose=False))[0]
    assert not list(predict(PredictArgs(source=[image], save=False, conf=0.8), backend, verbose=False))[0]


def shape_finding(weights, images, conf: float) -> dict[str, int]:
    """Objects with a predicted box at IoU > 0.5 (``located``), of the right class too (``correct``), and predicted
    boxes that lie so on an object (``good_boxes``, of ``boxes``)."""
    located = correct = objects = boxes = good_boxes = 0
    for r, path in zip(YOLO(weights).predict([str(p) for p in images], conf=conf), images, strict=True):
        label_file = Path(str(path).replace("images", "labels")).with_suffix(".txt")
        labels = np.array(label_file.read_text().split(), dtype=np.float64).reshape(-1, 5)  # may be empty
        h, w = r.orig_shape
        gt = torch.from_numpy(xywhn_to_xyxy(labels[:, 1:], w, h))
        objects, boxes = objects + len(gt), boxes + len(r)
        if len(r) and len(gt):
            found = box_iou(gt, r.boxes) > 0.5
            hit = found & (torch.from_numpy(labels[:, 0]).long()[:, None] == r.classes[None])
            located += int(found.any(1).sum())
            correct += int(hit.any(1).sum())
            good_boxes += int(hit.any(0).sum())
    return dict(objects=objects, located=located, correct=correct, boxes=boxes, good_boxes=good_boxes)


def test_trained_model_finds_the_shapes(best, untrained_weights, val_images):
    # ~130 CPU optimiser steps leave the model far from converged: its scores do not rank its boxes yet (above
    # conf 0.02, 3 runs of 13 had no correct box), but at conf 0.001 its boxes land on the objects. Measured over
    # the 13 runs of test_training_improves_map (37-39 objects): located 11-20, correct 6-16 (3 in the run that
    # barely learnt to classify, which fails here too), precision (good boxes / boxes) 0.0033-0.0087, i.e. 5-24
    # good of 1428-2766 boxes (seed 0 as here: located 20, correct 12, 15 good of 2332). The runs' initial
    # weights: located 0, correct 0, 0 good of 112-144 boxes, in every run.
    def finds_the_shapes(s):
        return (
            s["located"] >= s["objects"] / 5
            and s["correct"] >= s["objects"] / 10
            and s["good_boxes"] >= 0.0015 * s["boxes"]
            and s["good_boxes"] >= 3
        )

    trained, untrained = shape_finding(best, val_images, 0.001), shape_finding(untrained_weights, val_images, 0.001)
    assert trained["objects"] > 20 and finds_the_shapes(trained), trained
    assert not finds_the_shapes(untrained), untrained  # the negative control: the same check fails
    assert untrained["located"] < untrained["objects"] / 5 and untrained["good_boxes"] < 3, untrained


def test_exports_reproduce_pytorch_predictions(best, val_images, exported):
    source = [str(p) for p in val_images[:6]]
    reference = YOLO(best).predict(source, conf=0.05)
    assert sum(len(r) for r in reference) > 0
    for name, file in exported.items():
        got = YOLO(file).predict(source, conf=0.05)
        for a, b in zip(reference, got):
            assert len(a) == len(b), name
            assert torch.allclose(a.boxes, b.boxes, atol=1e-2), name
            assert torch.allclose(a.scores, b.scores, atol=1e-4) and torch.equal(a.classes, b.classes), name


def test_val_of_an_exported_model_equals_val_of_the_checkpoint(best, exported, tmp_path):
    kwargs = dict(batch=4, plots=False, progress=False, project=str(tmp_path))
    metrics = {name: run_val(ValArgs(weights=w, **kwargs)) for name, w in [("pt", best), *exported.items()]}
    # Dynamic-size files see the same rectangular batches as the checkpoint; fixed-size files see square
    # letterboxed images (the synthetic images are partly non-square), so they are compared with each other.
    for a, b in (("pt", "dyn.onnx"), ("pt", "m.ts"), ("fixed.ts", "fixed.onnx")):
        for key in ("mAP50", "mAP50-95", "precision", "recall"):
            assert metrics[a][key] == pytest.approx(metrics[b][key], abs=1e-4), (a, b, key)
    with pytest.raises(ValueError, match="exported for 96 px"):
        run_val(ValArgs(weights=exported["fixed.onnx"], imgsz=128, **kwargs))


def test_matching_rule_of_val(best, tmp_path, capsys):
    # YOLOv5's head is matched by YOLOv5's rule unless asked; --matching coco gives pycocotools' figure (its mAP on
    # the same detections within 0.005), whatever the head.
    kwargs = dict(batch=8, plots=False, progress=False, project=str(tmp_path))
    auto = run_val(ValArgs(weights=best, **kwargs))
    assert auto["matching"] == "best_iou" and "matching: best_iou" in capsys.readouterr().out
    assert run_val(ValArgs(weights=best, matching="best_iou", **kwargs))["mAP50-95"] == auto["mAP50-95"]
    coco = run_val(ValArgs(weights=best, matching="coco", save_json=True, **kwargs))
    assert coco["matching"] == "coco" and coco["mAP50"] > 0.01
    assert abs(coco["mAP50-95"] - coco["coco"]["mAP50-95"]) < 0.005, coco
    assert abs(coco["mAP50"] - coco["coco"]["mAP50"]) < 0.005, coco
    with pytest.raises(ValueError, match="--matching must be one of"):
        run_val(ValArgs(weights=best, matching="greedy", **kwargs))


def test_compile_flag_in_val_and_predict(best, exported, val_images, tmp_path, monkeypatch):
    # The wiring of --compile in val and predict: torch.compile is asked for the checkpoint's fused model (once per
    # backend, never for an exported file). A stand-in for torch.compile that returns the model keeps this fast
    # (Inductor compiles for minutes on a CPU); the compiled path itself is tested in tests/engine/test_precision.py.
    compiled = []

    def fake_compile(model, **options):
        compiled.append((type(model).__name__, options))
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    kwargs = dict(batch=4, plots=False, progress=False, project=str(tmp_path))
    plain = run_val(ValArgs(weights=best, **kwargs))
    assert not compiled
    with_compile = run_val(ValArgs(weights=best, compile=True, **kwargs))
    assert compiled == [("DetectionModel", {"dynamic": False})]
    assert with_compile["mAP50"] == plain["mAP50"]
    list(predict(PredictArgs(weights=best, source=str(val_images[0]), compile=True, save=False)))
    run_val(ValArgs(weights=exported["dyn.onnx"], compile=True, **kwargs))  # exported: runs as it is
    assert len(compiled) == 2


def test_cli_predict_writes_the_run_folder(best, val_images, tmp_path, caplog):
    folder = tmp_path / "images"
    folder.mkdir()
    for p in val_images[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.jpg").write_bytes(b"not an image at all")
    args = ["predict", "--weights", best, "--source", str(folder), "--project", str(tmp_path / "runs"),
            "--save-txt", "--save-conf", "--save-json", "--conf", "0.1"]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="gmyolo"):
        assert main(args) == 0
    assert "broken.jpg" in caplog.text and "not a readable image" in caplog.text
    run = tmp_path / "runs/exp"
    assert sorted(p.name for p in run.glob("*.png")) == sorted(p.name for p in val_images[:3])
    records = json.loads((run / "predictions.json").read_text())
    assert len(records) == 3 and not list(run.rglob(".*tmp"))
    expected = YOLO(best).predict([str(folder / p.name) for p in val_images[:3]], conf=0.1)
    for rec, r in zip(records, expected):
        assert len(rec["detections"]) == len(r)
        lines = (run / "labels" / f"{r.path.split('/')[-1][:-4]}.txt").read_text().splitlines()
        assert lines == r.txt_lines(save_conf=True)
        if len(r):
            assert rec["detections"][0]["box"] == pytest.approx(r.boxes[0].tolist(), abs=0.01)
            assert rec["detections"][0]["name"] == r.names[int(r.classes[0])]
    annotated = cv2.imread(str(run / val_images[0].name))
    assert annotated.shape == cv2.imread(str(val_images[0])).shape


def test_cli_predict_and_export_errors(best, tmp_path, capsys):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    runs = tmp_path / "runs"
    cases = [
        (["predict", "--weights", best, "--source", str(tmp_path / "missing.jpg")], "source not found"),
        (["predict", "--weights", str(tmp_path / "nope.pt"), "--source", str(image)], "checkpoint not found"),
        (["predict", "--weights", str(tmp_path / "nope.onnx"), "--source", str(image)], "onnx file not found"),
        (["predict", "--weights", best, "--source", str(image), "--conf", "2"], "between 0 and 1"),
        (["predict", "--weights", best, "--source", str(image), "--classes", "9"], "classes 0..3"),
        (["predict", "--weights", str(image), "--source", str(image)], "not a"),
        (["export", "--weights", best, "--opset", "5"], "--opset"),
        (["export", "--weights", str(tmp_path / "nope.pt")], "checkpoint not found"),
    ]
    for argv, message in cases:
        assert main([*argv, "--project", str(runs)] if argv[0] == "predict" else argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    assert not runs.exists()  # nothing written for a run that could not start


def test_export_that_does_not_match_is_not_written(best, tmp_path, monkeypatch):
    monkeypatch.setattr(exporter_module, "max_difference", lambda *a: 0.5)
    out = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match="differs from PyTorch by 0.5"):
        export(ExportArgs(weights=best, output=str(out)))
    assert list(tmp_path.iterdir()) == []


def test_export_needs_a_checkpoint(exported):
    with pytest.raises(ValueError, match="export needs a gmyolo checkpoint"):
        export(ExportArgs(weights=exported["dyn.onnx"]))


def test_video_prediction(best, val_images, tmp_path):
    video = tmp_path / "clip.mp4"
    frame = cv2.imread(str(val_images[0]))
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, frame.shape[1::-1])
    if not writer.isOpened():
        pytest.skip("OpenCV cannot write mp4v here")
    for _ in range(5):
        writer.write(frame)
    writer.release()
    results = list(predict(PredictArgs(weights=best, source=str(video), project=str(tmp_path / "runs"), conf=0.1),
                           verbose=False))  # fmt: skip
    assert [r.frame for r in results] == [0, 1, 2, 3, 4]
    out = tmp_path / "runs/exp/clip.mp4"
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    cap.release()
    assert [p.name for p in (tmp_path / "runs/exp").iterdir()] == ["clip.mp4"]


def test_python_api(best, val_images, tmp_path):
    model = YOLO(best)
    image = cv2.imread(str(val_images[1]))
    (r,) = model.predict(image, conf=0.1)
    assert r.path == "<array 0>" and r.plot().shape == image.shape
    saved = r.save(tmp_path / "annotated.png")
    assert cv2.imread(str(saved)).shape == image.shape
    stream = model.predict(str(val_images[0].parent), stream=True, conf=0.1)
    assert not isinstance(stream, list) and len(list(stream)) == len(val_images)
    onnx_file = model.export(format="onnx", output=str(tmp_path / "model.onnx"))
    exported = YOLO(onnx_file)
    assert exported.names == model.names
    (r2,) = exported.predict(image, conf=0.1)
    assert torch.allclose(r.boxes, r2.boxes, atol=1e-2)
    with pytest.raises(ValueError, match="needs a model YAML or a .pt checkpoint"):
        exported.train(epochs=1)
    untrained = YOLO("yolov5n-gmf-nano", nc=2)
    path = untrained.export(format="torchscript", imgsz=64, output=str(tmp_path / "untrained.torchscript"))
    assert YOLO(path).names == {0: "0", 1: "1"}


@pytest.mark.slow
def test_dynamo_onnx_export(best, tmp_path):
    r = export(ExportArgs(weights=best, dynamo=True, output=str(tmp_path / "dynamo.onnx")))
    assert r["max_abs_diff"] <= 1e-3
