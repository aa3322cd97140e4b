"""Segmentation pictures: masks drawn under the boxes in training batches, in TensorBoard's validation images and in
``gmyolo data check --segments``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import box_convert, masks_to_boxes

from gmyolo.cli.main import main
from gmyolo.data.config import load_dataset_config
from gmyolo.data.dataset import build_dataloader, collate_segments, create_dataset
from gmyolo.data.opencv import cv2
from gmyolo.data.plots import class_colour, plot_batch
from gmyolo.data.synth import make_synthetic_dataset
from gmyolo.models.yolo import DetectionModel
from gmyolo.tasks.detect import plots as detect_plots
from gmyolo.tasks.segment.plots import SegmentPredictionPictures, target_masks


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthpictures")
    return make_synthetic_dataset(root, seed=0, n_train=8, n_val=4, imgsz=96, segments=True)


def batch_of(synth, augment):
    dataset, _ = create_dataset(load_dataset_config(synth), "train", imgsz=96, augment=augment, segments=True)
    return next(iter(build_dataloader(dataset, batch_size=4, workers=0, collate=collate_segments)))


@pytest.mark.parametrize("augment", [False, True])
def test_target_masks_follow_the_targets_rows(synth, augment):
    images, targets, _, _, overlap = batch_of(synth, augment)
    masks = target_masks(targets, overlap)
    h, w = overlap.shape[1:]
    assert masks.shape == (len(targets), h, w) and masks.dtype == torch.bool
    shown = masks.flatten(1).any(1)  # an object hidden under others entirely has no pixel left
    assert shown.float().mean() > 0.8
    boxes = box_convert(targets[shown, 2:6] * torch.tensor([w, h, w, h]), "cxcywh", "xyxy")
    drawn = masks_to_boxes(masks[shown]) + torch.tensor([0, 0, 1, 1])  # last pixel -> its far edge
    inside = (drawn[:, :2] >= boxes[:, :2] - 1.5).all(1) & (drawn[:, 2:] <= boxes[:, 2:] + 1.5).all(1)
    assert inside.all(), (drawn[~inside], boxes[~inside])  # each mask sits in its own row's box


def test_plot_batch_blends_masks_in_the_class_colour(tmp_path):
    images = torch.full((1, 3, 64, 64), 128, dtype=torch.uint8)
    targets = torch.tensor([[0.0, 2.0, 0.5, 0.5, 0.5, 0.5]])
    masks = torch.zeros(1, 16, 16, dtype=torch.bool)
    masks[0, 6:10, 6:10] = True  # the centre 16×16 px of the image, at 1/4 size
    plain = cv2.imread(str(plot_batch(images, targets, ["a", "b", "c"], tmp_path / "plain.png")))
    drawn = cv2.imread(str(plot_batch(images, targets, ["a", "b", "c"], tmp_path / "masks.png", masks=masks)))
    colour = np.array(class_colour(2), np.float32)
    centre = drawn[28:36, 28:36].reshape(-1, 3).astype(np.float32)
    np.testing.assert_allclose(centre, np.broadcast_to(128 * 0.55 + colour * 0.45, centre.shape), atol=2)
    np.testing.assert_array_equal(drawn[:20, :20], plain[:20, :20])  # outside the mask: as without masks
    assert (plain[28:36, 28:36] == 128).all()


def test_tensorboard_pictures_carry_label_and_detection_masks(synth, monkeypatch):
    dataset, _ = create_dataset(load_dataset_config(synth), "val", imgsz=96, rect=True, batch_size=4, segments=True)
    loader = build_dataloader(dataset, 4, 0, shuffle=False, collate=collate_segments)
    drawn = []

    def record(images, boxes, names, path, *args, masks=None, **kwargs):
        drawn.append((boxes, masks))
        return real_plot_batch(images, boxes, names, path, *args, masks=masks, **kwargs)

    real_plot_batch = detect_plots.plot_batch
    monkeypatch.setattr(detect_plots, "plot_batch", record)

    class Board:
        def log_image(self, tag, path, step):
            assert cv2.imread(str(path)) is not None

    pictures = SegmentPredictionPictures(loader, ["a", "b", "c", "d"], conf=0.001)  # an untrained model
    torch.manual_seed(0)
    pictures.log(Board(), DetectionModel("yolo11n-gmf-nano-seg", nc=4), 1)
    (labels, label_masks), (predictions, predicted) = drawn
    assert label_masks.shape[0] == len(labels) > 0 and label_masks.flatten(1).any(1).float().mean() > 0.8
    assert predictions.shape[1] == 7 and len(predictions) > 0
    assert predicted.shape == (len(predictions), *pictures.samples[0].shape[2:]) and predicted.dtype == torch.bool


def test_data_check_draws_the_masks(synth, tmp_path, capsys):
    out = tmp_path / "check"
    assert main(["data", "check", "--data", str(synth), "--imgsz", "96", "--out", str(out), "--segments"]) in (0, None)
    pictures = sorted(p.name for p in out.iterdir())
    assert "train_batch0.jpg" in pictures and "labels_train.jpg" in pictures
    assert cv2.imread(str(out / "train_batch0.jpg")) is not None
