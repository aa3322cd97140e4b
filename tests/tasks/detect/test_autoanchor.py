"""AutoAnchor: metrics by hand, fits on made-up label sets with known good anchors, the model and the trainer."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from gmyolo.data.labels import ImageRecord
from gmyolo.data.synth import make_synthetic_dataset
from gmyolo.models.yolo import DetectionModel, load_model_yaml
from gmyolo.tasks.detect.autoanchor import (
    anchor_fitness,
    anchor_metrics,
    check_anchors,
    fit_anchors,
    label_wh,
    model_anchors,
    set_anchors,
)
from gmyolo.tasks.detect.checkpoint import load_checkpoint, model_from_checkpoint
from gmyolo.tasks.detect.train import TrainArgs, train

# YOLOv5's COCO anchors (pixels at 640), smallest first: the "known good" anchors of the made-up label sets.
COCO_ANCHORS = np.array(
    [[10, 13], [16, 30], [33, 23], [30, 61], [62, 45], [59, 119], [116, 90], [156, 198], [373, 326]], float
)


def clustered_wh(centres: np.ndarray, per_cluster: int = 200, spread: float = 0.1, seed: int = 0) -> np.ndarray:
    """Label sizes scattered log-normally (sigma ``spread``) around each centre."""
    rng = np.random.default_rng(seed)
    return np.repeat(centres, per_cluster, 0) * np.exp(rng.normal(0, spread, (len(centres) * per_cluster, 2)))


def records_for(wh: np.ndarray, width: int = 640, height: int = 480, per_image: int = 6) -> list[ImageRecord]:
    """Made-up image records holding boxes of the given pixel sizes (centred; only sizes matter here)."""
    records = []
    for i in range(0, len(wh), per_image):
        sizes = wh[i : i + per_image] / [width, height]
        labels = np.concatenate([np.zeros((len(sizes), 1)), np.full((len(sizes), 2), 0.5), sizes], 1)
        records.append(ImageRecord(Path(f"{i}.jpg"), height, width, labels.astype(np.float32)))
    return records


def test_metrics_by_hand():
    wh = np.array([[10.0, 10.0], [40.0, 10.0]])
    anchors = np.array([[10.0, 10.0], [20.0, 20.0]])
    # thr 4: label 1 matches both anchors (ratios 1, 0.5); label 2 only the second (0.25 is not above 1/4).
    assert anchor_metrics(wh, anchors, 4.0) == (1.0, 1.5)
    assert anchor_fitness(wh, anchors, 4.0) == pytest.approx((1.0 + 0.5) / 2)
    # thr 2: ratio 0.5 is not above 1/2, so label 2 has no match.
    assert anchor_metrics(wh, anchors, 2.0) == (0.5, 0.5)
    assert anchor_fitness(wh, anchors, 2.0) == pytest.approx(0.5)
    assert anchor_metrics(np.zeros((0, 2)), anchors) == (0.0, 0.0)


def test_fit_recovers_known_anchors():
    wh = clustered_wh(COCO_ANCHORS)
    fitted = fit_anchors(wh, 9, 4.0, np.random.default_rng(0))
    assert fitted.shape == (9, 2) and (np.diff(fitted.prod(1)) > 0).all()  # smallest area first
    # Every true anchor has a fitted one within 10% on both sides, and the fit is as good as the truth.
    log_err = np.abs(np.log(fitted[:, None] / COCO_ANCHORS[None])).max(2).min(0)
    assert log_err.max() < np.log(1.1), log_err
    assert anchor_fitness(wh, fitted) >= anchor_fitness(wh, COCO_ANCHORS) - 1e-3
    assert anchor_metrics(wh, fitted)[0] == 1.0
    again = fit_anchors(wh, 9, 4.0, np.random.default_rng(0))
    np.testing.assert_array_equal(fitted, again)  # the seed decides everything
    with pytest.raises(ValueError, match="at least 9 labels"):
        fit_anchors(wh[:5], 9)


def test_label_sizes_follow_the_training_size():
    records = records_for(np.array([[64.0, 32.0], [320.0, 240.0]]), width=640, height=480)
    np.testing.assert_allclose(label_wh(records, 320), [[32, 16], [160, 120]], rtol=1e-6)
    jittered = label_wh(records, 320, np.random.default_rng(0))
    ratio = jittered / label_wh(records, 320)
    assert np.allclose(ratio, ratio[0, 0]) and 0.9 <= ratio[0, 0] <= 1.1  # one scale per image


@pytest.fixture(scope="module")
def nano_yaml() -> dict:
    d = load_model_yaml("yolov5n-gmf-nano")
    return {k: v for k, v in d.items() if not k.startswith("_")}


def test_check_keeps_good_anchors_and_replaces_bad_ones(nano_yaml, caplog):
    model = DetectionModel(nano_yaml, nc=4)
    original = model_anchors(model)
    np.testing.assert_allclose(original, COCO_ANCHORS, rtol=1e-6)  # the nano model has YOLOv5's anchors
    records = records_for(clustered_wh(COCO_ANCHORS * 0.75, per_cluster=30))  # sizes at 640 px (long side)
    with caplog.at_level(logging.INFO, logger="gmyolo"):
        good = check_anchors(records, model, 4.0, imgsz=640)
    assert good.bpr >= 0.98 and not good.replaced and good.fitted_bpr is None
    np.testing.assert_array_equal(model_anchors(model), original)
    assert "the anchors fit the dataset" in caplog.text

    # At 128 px the same labels are 5x smaller: the smallest are far below the smallest anchor.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gmyolo"):
        bad = check_anchors(records, model, 4.0, imgsz=128, seed=1)
    assert bad.bpr < 0.98 and bad.replaced and bad.fitted_bpr >= 0.98 and bad.fitted_bpr > bad.bpr
    assert "fitting 9 anchors" in caplog.text and "new anchors" in caplog.text
    new = model_anchors(model)
    np.testing.assert_allclose(new, bad.anchors)
    wh = label_wh(records, 128)
    assert anchor_metrics(wh, new)[0] >= 0.98
    # Smallest anchors on the finest level; the buffer is in grid units; the YAML carries them in pixels.
    detect = model.detect
    areas = (detect.anchors * detect.stride.view(-1, 1, 1)).prod(-1)
    assert areas[0].max() <= areas[1].min() and areas[1].max() <= areas[2].min()
    torch.testing.assert_close(detect.anchors * detect.stride.view(-1, 1, 1), torch.tensor(new).float().view(3, 3, 2))
    np.testing.assert_allclose(np.array(model.yaml["anchors"]).reshape(-1, 2), new, atol=0.051)


def test_placeholder_anchors_are_fitted(nano_yaml):
    model = DetectionModel({**nano_yaml, "anchors": 3}, nc=4)  # YOLOv5's "anchors: 3": fit them to the data
    records = records_for(clustered_wh(COCO_ANCHORS, per_cluster=20))
    result = check_anchors(records, model, 4.0, imgsz=640, generations=200)
    assert result.bpr < 0.5 and result.replaced and result.fitted_bpr == 1.0
    rebuilt = DetectionModel(model.yaml, nc=4)  # the YAML now holds real anchors
    torch.testing.assert_close(rebuilt.detect.anchors, model.detect.anchors, atol=0.05 / 8, rtol=0)


def test_no_labels_leave_the_anchors_alone(nano_yaml, caplog):
    model = DetectionModel(nano_yaml, nc=4)
    before = model.detect.anchors.clone()
    empty = [ImageRecord(Path("a.jpg"), 100, 100, np.zeros((0, 5), np.float32))]
    with caplog.at_level(logging.WARNING, logger="gmyolo"):
        result = check_anchors(empty, model, 4.0, imgsz=64)
    assert not result.replaced and "no labels" in caplog.text
    torch.testing.assert_close(model.detect.anchors, before)


def test_set_anchors_orders_by_stride_whatever_the_input_order(nano_yaml):
    model = DetectionModel(nano_yaml, nc=4)
    shuffled = COCO_ANCHORS[np.random.default_rng(0).permutation(9)] * 2
    set_anchors(model, shuffled)
    np.testing.assert_allclose(model_anchors(model), COCO_ANCHORS * 2, rtol=1e-6)


def test_training_fits_anchors_that_checkpoints_carry(nano_yaml, tmp_path, caplog):
    """Bad anchors in the YAML: the trainer fits new ones; last/best.pt and a model built from them hold them."""
    data = make_synthetic_dataset(tmp_path / "synth", seed=0, n_train=16, n_val=4, imgsz=96)
    bad = {**nano_yaml, "anchors": [[a * 8 for a in level] for level in nano_yaml["anchors"]]}
    cfg = tmp_path / "bad-anchors.yaml"
    cfg.write_text(yaml.safe_dump(bad))
    common = dict(data=str(data), model=str(cfg), epochs=1, imgsz=64, batch=8, nbs=8, workers=0, progress=False)
    common.update(plots=False, tensorboard=False)
    with caplog.at_level(logging.INFO, logger="gmyolo"):
        r = train(TrainArgs(project=str(tmp_path / "fit"), **common))
    assert "AutoAnchor" in caplog.text and "new anchors" in caplog.text
    yaml_anchors = model_anchors(DetectionModel(str(cfg), nc=4))
    ckpt = load_checkpoint(r["best"])
    for key in ("model", "ema"):
        model = model_from_checkpoint(ckpt, use_ema=key == "ema")  # how val, predict and export build it
        fitted = model_anchors(model)
        assert not np.allclose(fitted, yaml_anchors)
        assert fitted.max() < yaml_anchors.min()  # objects of 5..29 px want far smaller anchors than 80..2984
    np.testing.assert_allclose(np.array(ckpt["model_yaml"]["anchors"]).reshape(-1, 2), fitted, atol=0.051)

    r = train(TrainArgs(project=str(tmp_path / "off"), noautoanchor=True, **common))
    np.testing.assert_allclose(model_anchors(model_from_checkpoint(load_checkpoint(r["best"]))), yaml_anchors)
