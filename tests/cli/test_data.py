"""`gmyolo data synth | convert-coco | check` through the real command line."""

from __future__ import annotations

import json

import cv2
import numpy as np

from gmyolo.cli.main import main


def test_synth_then_check(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out), "--n-train", "8", "--n-val", "4", "--imgsz", "96"]) == 0
    assert (out / "data.yaml").is_file() and len(list((out / "images/train").iterdir())) == 8
    pics = tmp_path / "pics"
    assert main(["data", "check", "--data", str(out / "data.yaml"), "--imgsz", "96", "--out", str(pics)]) == 0
    printed = capsys.readouterr().out
    assert "train: 8 images" in printed and "val: 4 images" in printed
    for name in ("labels_train.jpg", "labels_val.jpg", "train_batch0.jpg"):
        assert cv2.imread(str(pics / name)) is not None, name


def test_convert_coco_then_check(tmp_path, capsys):
    images = tmp_path / "coco_images"
    images.mkdir()
    cv2.imwrite(str(images / "a.jpg"), np.full((100, 200, 3), 90, np.uint8))
    gt = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 100}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 20, 50, 40], "iscrowd": 0}],
        "categories": [{"id": 5, "name": "thing"}],
    }
    (tmp_path / "instances_val.json").write_text(json.dumps(gt))
    out = tmp_path / "converted"
    argv = ["data", "convert-coco", "--json", str(tmp_path / "instances_val.json"), "--images", str(images)]
    assert main([*argv, "--out", str(out)]) == 0
    assert (out / "labels/val/a.txt").read_text().split() == ["0", "0.175000", "0.400000", "0.250000", "0.400000"]
    assert main(["data", "check", "--data", str(out / "data.yaml"), "--imgsz", "64", "--out", str(tmp_path / "p")]) == 0
    assert "1 boxes" in capsys.readouterr().out
    assert main(["data", "check", "--data", str(tmp_path / "missing.yaml")]) == 2
    assert "dataset YAML not found" in capsys.readouterr().err
