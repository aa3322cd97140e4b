"""Segmentation end to end: the task follows the head (CLI and API), results.csv and gmyolo val carry box and mask
metrics, and a run stopped by Ctrl-C resumes bit for bit."""

from __future__ import annotations

import csv

import pytest
import torch

from gmyolo import YOLO
from gmyolo.cli.main import main
from gmyolo.data.synth import make_synthetic_dataset
from gmyolo.tasks import trainer_for
from gmyolo.tasks.detect.options import TrainArgs
from gmyolo.tasks.detect.val import ValArgs, run_val
from gmyolo.tasks.segment.train import MASK_COLUMNS, SegmentationTrainer, SegmentValidator

FAST = dict(model="yolo11n-gmf-nano-seg", imgsz=64, batch=8, nbs=8, workers=0, progress=False, plots=False)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthseg")
    return str(make_synthetic_dataset(root, seed=0, n_train=16, n_val=8, imgsz=96, segments=True))


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_task_follows_the_head():
    assert trainer_for(TrainArgs(model="yolo11n-gmf-nano-seg")) is SegmentationTrainer
    assert trainer_for(TrainArgs(model="yolo11n-gmf-nano")).__name__ == "DetectionTrainer"


@pytest.fixture
def one_thread():
    """Convolutions summed by one thread: the same order in every run of this process (the validation losses of
    runs in one process with two threads can differ in their sixth digit)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_stopped_run_resumes_exactly_and_val_reads_masks(
    synth, tmp_path, monkeypatch, one_thread, validator_interrupted_at
):
    base = dict(data=synth, epochs=3, close_mosaic=1, **FAST)
    api = {k: v for k, v in base.items() if k != "model"}  # the API: the task of the YAML YOLO was given
    straight = YOLO("yolo11n-gmf-nano-seg").train(project=str(tmp_path / "a"), **api)
    rows = read_csv(tmp_path / "a/exp/results.csv")
    assert set(MASK_COLUMNS) <= set(rows[0]) and "train/seg_loss" in rows[0] and "val/seg_loss" in rows[0]
    assert "mask_mAP50" in straight

    # Ctrl-C while epoch 2 validates: last.pt holds epoch 1
    monkeypatch.setattr(SegmentationTrainer, "validator", validator_interrupted_at(SegmentValidator))
    code = main(["train", "--model", "yolo11n-gmf-nano-seg", "--data", synth, "--epochs", "3", "--close-mosaic", "1",
              "--imgsz", "64", "--batch", "8", "--nbs", "8", "--workers", "0", "--no-plots",
                 "--project", str(tmp_path / "b")])  # fmt: skip
    assert code == 130  # the CLI: stopped, with the resume line
    monkeypatch.undo()
    last = tmp_path / "b/exp/weights/last.pt"
    assert torch.load(last, weights_only=True)["epoch"] == 0
    options = TrainArgs(resume=str(last), progress=False)
    assert trainer_for(options) is SegmentationTrainer  # from the checkpoint's head
    resumed = trainer_for(options)(options).train()
    a = torch.load(straight["last"], weights_only=True)
    b = torch.load(resumed["last"], weights_only=True)
    for part in ("model", "ema"):
        for k, v in a[part].items():
            assert torch.equal(b[part][k], v), (part, k)
    assert read_csv(tmp_path / "a/exp/results.csv") == read_csv(tmp_path / "b/exp/results.csv")
    metrics = run_val(ValArgs(weights=resumed["best"], imgsz=64, batch=8, workers=0, progress=False, plots=False,
                              project=str(tmp_path / "val")))  # fmt: skip
    assert metrics["mask_mAP50-95"] == pytest.approx(resumed["mask_mAP50-95"], abs=1e-6)


@pytest.fixture(scope="module")
def trained(synth, tmp_path_factory):
    root = tmp_path_factory.mktemp("segrun")
    options = TrainArgs(data=synth, epochs=2, project=str(root), **FAST)
    return trainer_for(options)(options).train()["best"]


def test_predict_draws_and_saves_masks(trained, synth, tmp_path):
    from pathlib import Path

    from gmyolo.data.opencv import cv2
    from gmyolo.tasks.detect.predict import PredictArgs, predict

    source = Path(synth).parent / "images/val"
    args = PredictArgs(weights=trained, source=str(source), conf=0.001, max_det=5, save_txt=True, save_json=True,
                       project=str(tmp_path), imgsz=64)  # fmt: skip
    results = list(predict(args, verbose=False))
    import json

    from pycocotools import mask as mask_utils

    records = {r["image"]: r for r in json.loads((tmp_path / "exp/predictions.json").read_text())}
    for r in results:  # predictions.json: each detection's mask, exactly, as COCO RLE
        written = [mask_utils.decode(d["mask"]).astype(bool) for d in records[r.path]["detections"]]
        assert len(written) == len(r) and all((w == m.numpy()).all() for w, m in zip(written, r.masks))
    assert len(results) == 8 and all(r.masks is not None for r in results)
    assert sum(len(r) for r in results) > 0 and any(r.masks.any() for r in results)
    for r in results:
        assert r.masks.shape == (len(r), *r.orig_shape) and r.masks.dtype == torch.bool
        assert r.plot().shape == (*r.orig_shape, 3)
        stem = Path(r.path).stem
        lines = (tmp_path / "exp/labels" / f"{stem}.txt").read_text().splitlines()
        assert len(lines) == len(r) and all(len(line.split()) % 2 == 1 for line in lines)  # class + x, y pairs
        index = cv2.imread(str(tmp_path / "exp/masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert index.shape == r.orig_shape and index.max() <= len(r)
        for i, m in enumerate(r.masks):  # the PNG's value i + 1 wherever mask i is the last drawn
            later = r.masks[i + 1 :].any(0) if i + 1 < len(r) else torch.zeros_like(m)
            assert (index[(m & ~later).numpy()] == i + 1).all()


def test_onnx_export_has_both_outputs_and_validates_as_the_checkpoint(trained, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime checks exports")
    import onnxruntime

    from gmyolo.tasks.detect.export import ExportArgs, export

    out = export(ExportArgs(weights=trained, imgsz=64, dynamic=True, output=str(tmp_path / "seg.onnx")))
    assert out["max_abs_diff"] < 1e-3
    names = [o.name for o in onnxruntime.InferenceSession(out["file"]).get_outputs()]
    assert names == ["output", "prototypes"]
    common = dict(imgsz=64, batch=8, workers=0, progress=False, plots=False)
    from_pt = run_val(ValArgs(weights=trained, project=str(tmp_path / "a"), **common))
    from_onnx = run_val(ValArgs(weights=out["file"], project=str(tmp_path / "b"), **common))
    for key in ("mAP50", "mAP50-95", "mask_mAP50", "mask_mAP50-95"):
        assert from_onnx[key] == pytest.approx(from_pt[key], abs=1e-3), key


def test_segment_command_form_and_its_synthetic_data(tmp_path):
    from gmyolo.cli.main import build_parser
    from gmyolo.tasks.detect.train import resolve_data

    args = build_parser().parse_args(["segment", "train", "--epochs", "1"])
    assert args.model == "yolo11n-gmf-nano-seg" and args.data == "synth" and args.epochs == 1
    assert build_parser().parse_args(["train"]).model == "yolo11n-gmf-nano"  # detection's default is untouched
    assert build_parser().parse_args(["segment", "val", "--weights", "w.pt"]).weights == "w.pt"
    data = resolve_data(TrainArgs(synth_dir=str(tmp_path / "synth")), segments=True)  # 'synth': the outlines
    label = next(iter(sorted((tmp_path / "synth-seg/labels/train").glob("*.txt"))))
    assert data.nc == 4 and all(len(line.split()) >= 7 for line in label.read_text().splitlines())


def test_yolov5_seg_trains_with_anchors_fitted(synth, tmp_path):
    options = TrainArgs(data=synth, epochs=1, project=str(tmp_path), **{**FAST, "model": "yolov5s-seg", "plots": True})
    assert trainer_for(options) is SegmentationTrainer
    result = trainer_for(options)(options).train()
    row = read_csv(tmp_path / "exp/results.csv")[0]
    assert {"train/box_loss", "train/seg_loss", "train/obj_loss", "train/cls_loss"} <= set(row)
    assert float(row["train/seg_loss"]) > 0 and "mask_mAP50" in result
    assert (tmp_path / "exp/MaskPR_curve.png").is_file() and (tmp_path / "exp/PR_curve.png").is_file()


def test_save_json_writes_masks_and_scores_them_with_pycocotools(trained, tmp_path, caplog):
    import json

    from pycocotools import mask as mask_utils

    metrics = run_val(ValArgs(weights=trained, imgsz=64, batch=8, workers=0, progress=False, plots=False,
                              save_json=True, project=str(tmp_path)))  # fmt: skip
    run = tmp_path / "exp"
    truth = json.loads((run / "ground_truth.json").read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in truth["images"]}
    assert all(len(a["segmentation"][0]) >= 6 for a in truth["annotations"])  # every object's outline, in pixels
    detections = json.loads((run / "predictions.json").read_text())
    assert detections and all("segmentation" in d for d in detections)
    for d in detections[:50]:  # each mask on its original image, inside its box (+1 px of resampling)
        mask = mask_utils.decode(d["segmentation"])
        assert mask.shape == sizes[d["image_id"]]
        ys, xs = mask.nonzero()
        x, y, w, h = d["bbox"]
        if len(xs):
            assert xs.min() >= x - 1 and xs.max() <= x + w + 1 and ys.min() >= y - 1 and ys.max() <= y + h + 1
    # A COCO file of boxes only (no outlines): the boxes are scored, the masks left out with one warning
    for annotation in truth["annotations"]:
        del annotation["segmentation"]
    (tmp_path / "boxes.json").write_text(json.dumps(truth))
    with caplog.at_level("WARNING", logger="gmyolo"):
        boxes_only = run_val(ValArgs(weights=trained, imgsz=64, batch=8, workers=0, progress=False, plots=False,
                                     save_json=True, coco_gt=str(tmp_path / "boxes.json"),
                                     project=str(tmp_path)))  # fmt: skip
    assert set(boxes_only["coco"]) == {"mAP50", "mAP50-95"}
    assert "without a 'segmentation': masks not scored by pycocotools" in caplog.text
    # pycocotools' figures for boxes and masks (their agreement with ours: test_segment_metrics.py's noisy oracle)
    assert set(metrics["coco"]) == {"mAP50", "mAP50-95", "mask_mAP50", "mask_mAP50-95"}
