"""COCO JSON -> YOLO conversion: label values, skips, image layouts, data.yaml merging, errors and the CLI."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from gmyolo.cli.data import add_convert_coco_parser
from gmyolo.data.coco import convert_coco
from gmyolo.data.config import label_path, list_images, load_dataset_config
from gmyolo.data.labels import load_labels

# Gapped COCO ids, listed out of order: classes follow ascending id (1 -> 0, 3 -> 1, 7 -> 2).
CATEGORIES = [{"id": 7, "name": "zebra"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
NAMES = ["person", "car", "zebra"]
IMAGES = [  # (id, file_name, width, height); gone.jpg is in the JSON only
    (10, "a.jpg", 200, 100),
    (20, "b.png", 50, 80),
    (30, "sub/c.jpg", 64, 64),
    (40, "d.jpg", 100, 100),
    (50, "gone.jpg", 10, 10),
]
ANNOTATIONS = [  # (image_id, category_id, bbox, iscrowd)
    (10, 1, [20, 10, 40, 30], 0),
    (10, 7, [150, 50, 100, 80], 0),  # hangs over the right and bottom edges
    (20, 3, [5, 8, 10, 16], 0),
    (20, 1, [0, 0, 50, 80], 1),  # crowd
    (30, 3, [10, 10, 0, 5], 0),  # zero width
    (30, 2, [1, 1, 5, 5], 0),  # unknown category
    (30, 7, [-8, 16, 24, 32], 0),  # hangs over the left edge
    (99, 1, [1, 1, 5, 5], 0),  # unknown image
    (30, 1, [70, 0, 10, 10], 0),  # entirely right of the image: empty after clipping
    (10, 1, [1, 2, 3], 0),  # bbox of 3 numbers
    (20, 7, [12.5, 20.25, 25, 40], 0),
    (50, 1, [0, 0, 5, 5], 0),
]
# Hand-computed: class, (x1 + x2) / 2 / W, (y1 + y2) / 2 / H, (x2 - x1) / W, (y2 - y1) / H after clipping.
EXPECTED = {
    "a.txt": "0 0.200000 0.250000 0.200000 0.300000\n"  # x 20..60 of 200, y 10..40 of 100
    "2 0.875000 0.750000 0.250000 0.500000\n",  # x 150..250 -> 150..200, y 50..130 -> 50..100
    "b.txt": "1 0.200000 0.200000 0.200000 0.200000\n"  # x 5..15 of 50, y 8..24 of 80
    "2 0.500000 0.503125 0.500000 0.500000\n",  # x 12.5..37.5, y 20.25..60.25
    "sub/c.txt": "2 0.125000 0.500000 0.250000 0.500000\n",  # x -8..16 -> 0..16 of 64, y 16..48 of 64
    "d.txt": "",
    "gone.txt": "0 0.250000 0.250000 0.500000 0.500000\n",
}
CROWD_LINE = "0 0.500000 0.500000 1.000000 1.000000\n"


def coco_dict(images=IMAGES, annotations=ANNOTATIONS, categories=CATEGORIES) -> dict:
    return {
        "images": [{"id": i, "file_name": f, "width": w, "height": h} for i, f, w, h in images],
        "annotations": [
            {"id": k, "image_id": i, "category_id": c, "bbox": b, "iscrowd": crowd, "area": 1.0}
            for k, (i, c, b, crowd) in enumerate(annotations, 1)
        ],
        "categories": categories,
    }


@pytest.fixture()
def coco(tmp_path):
    """(instances_val2017.json, images folder) with every image but gone.jpg written at its JSON size."""
    img_dir = tmp_path / "coco" / "val2017"
    for _, name, w, h in IMAGES[:-1]:
        (img_dir / name).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(img_dir / name), np.full((h, w, 3), 90, np.uint8))
    ann = tmp_path / "coco" / "instances_val2017.json"
    ann.write_text(json.dumps(coco_dict()))
    return ann, img_dir


def folder_state(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*"))


def read_labels(labels_dir):
    return {str(p.relative_to(labels_dir)): p.read_text() for p in labels_dir.rglob("*.txt")}


def test_labels_match_hand_computed_values(coco, tmp_path, caplog):
    ann, img_dir = coco
    before = folder_state(img_dir)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="gmyolo"):
        y = convert_coco(ann, img_dir, out)
    assert y == out / "data.yaml"
    assert read_labels(out / "labels" / "val2017") == EXPECTED
    assert yaml.safe_load(y.read_text()) == {
        "path": str(out),
        "train": "images/val2017",
        "val": "images/val2017",
        "nc": 3,
        "names": NAMES,
    }
    link = out / "images" / "val2017"
    assert link.is_symlink() and os.readlink(link) == str(img_dir)
    assert folder_state(img_dir) == before  # the user's images are neither changed nor added to
    log = caplog.text
    for n, reason in [(1, "unknown image_id"), (1, "unknown category_id"), (1, "iscrowd=1"), (1, "bbox not 4")]:
        assert f"skipped {n} annotations: {reason}" in log
    assert "skipped 2 annotations: zero size" in log
    assert "1 of 5 images" in log and "gone.jpg" in log
    assert "5 images, 6 boxes, 3 classes" in log
    assert "path rule" not in log


def test_symlink_layout_finds_labels_through_the_images_to_labels_rule(coco, tmp_path):
    ann, img_dir = coco
    data = load_dataset_config(convert_coco(ann, img_dir, tmp_path / "out"), require=("train", "val"))
    assert data.names == NAMES
    images = list_images(data.splits["val"])
    assert [p.name for p in images] == ["a.jpg", "b.png", "d.jpg", "c.jpg"]
    for image in images:
        rel = image.relative_to(tmp_path / "out" / "images" / "val2017").with_suffix(".txt")
        assert label_path(image) == tmp_path / "out" / "labels" / "val2017" / rel
        assert label_path(image).read_text() == EXPECTED[str(rel)]
    # The dataset loader reads back the same boxes at the images' real sizes.
    records, summary = load_labels(images, data.nc, use_cache=False)
    assert summary.images == 4 and summary.instances == 5 and not summary.problems
    by_name = {r.image.name: r for r in records}
    assert (by_name["a.jpg"].width, by_name["a.jpg"].height) == (200, 100)
    np.testing.assert_allclose(by_name["b.png"].labels, [[1, 0.2, 0.2, 0.2, 0.2], [2, 0.5, 0.503125, 0.5, 0.5]])


def test_include_crowd_split_name_and_rerun(coco, tmp_path):
    ann, img_dir = coco
    out = tmp_path / "out"
    y = convert_coco(ann, img_dir, out, split="minival", include_crowd=True)
    first, last = EXPECTED["b.txt"].splitlines(keepends=True)
    assert (out / "labels" / "minival" / "b.txt").read_text() == first + CROWD_LINE + last  # JSON order
    assert yaml.safe_load(y.read_text())["val"] == "images/minival"
    # Converting again (without crowd) rewrites the labels and keeps the link.
    convert_coco(ann, img_dir, out, split="minival")
    assert read_labels(out / "labels" / "minival") == EXPECTED
    assert os.readlink(out / "images" / "minival") == str(img_dir)


def test_list_file_instead_of_symlink(coco, tmp_path, caplog):
    ann, img_dir = coco
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="gmyolo"):
        y = convert_coco(ann, img_dir, out, link_images=False)
    assert not (out / "images").exists()
    listed = (out / "val2017.txt").read_text().splitlines()
    assert listed == sorted(str(img_dir / n) for n in ["a.jpg", "b.png", "sub/c.jpg", "d.jpg"])  # not gone.jpg
    d = yaml.safe_load(y.read_text())
    assert d["train"] == d["val"] == "val2017.txt"
    assert read_labels(out / "labels" / "val2017") == EXPECTED
    # These images are not under out/images, so the path rule cannot reach out/labels: the user is told.
    assert "path rule does not lead from 4 images" in caplog.text
    assert list_images(load_dataset_config(y).splits["val"]) == [Path(p) for p in listed]


def test_symlink_failure_falls_back_to_a_list(coco, tmp_path, monkeypatch, caplog):
    ann, img_dir = coco

    def no_symlinks(*args, **kwargs):
        raise OSError("symbolic links not permitted")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    with caplog.at_level(logging.WARNING, logger="gmyolo"):
        y = convert_coco(ann, img_dir, tmp_path / "out")
    assert "cannot make the symlink" in caplog.text
    assert yaml.safe_load(y.read_text())["val"] == "val2017.txt"
    assert not (tmp_path / "out" / "images").exists()


def test_images_already_under_out_dir(tmp_path, caplog):
    # The usual YOLO layout: out/images/val2017 holds the images, so neither a link nor a warning is needed.
    out = tmp_path / "ds"
    img_dir = out / "images" / "val2017"
    img_dir.mkdir(parents=True)
    assert cv2.imwrite(str(img_dir / "a.jpg"), np.zeros((100, 200, 3), np.uint8))
    ann = tmp_path / "instances_val2017.json"
    ann.write_text(json.dumps(coco_dict(images=IMAGES[:1], annotations=ANNOTATIONS[:2])))
    with caplog.at_level(logging.WARNING, logger="gmyolo"):
        for link in (True, False):
            y = convert_coco(ann, img_dir, out, link_images=link)
    assert not img_dir.is_symlink() and "path rule" not in caplog.text
    for image in list_images(load_dataset_config(y).splits["val"]):
        assert label_path(image).read_text() == EXPECTED["a.txt"]


def test_merging_into_an_existing_data_yaml(coco, tmp_path):
    ann, img_dir = coco
    out = tmp_path / "out"
    convert_coco(ann, img_dir, out)
    train_ann = ann.with_name("instances_train2017.json")
    train_ann.write_text(ann.read_text())
    d = yaml.safe_load(convert_coco(train_ann, img_dir, out).read_text())
    assert (d["train"], d["val"]) == ("images/train2017", "images/val2017")
    d = yaml.safe_load(convert_coco(ann, img_dir, out, split="test-dev").read_text())
    assert list(d) == ["path", "train", "val", "test-dev", "nc", "names"]
    assert (d["train"], d["val"], d["test-dev"], d["names"]) == (
        "images/train2017",
        "images/val2017",
        "images/test-dev",
        NAMES,
    )
    # User entries survive; a data.yaml rooted elsewhere gets an absolute entry; dict names compare by id.
    y = out / "data.yaml"
    y.write_text(yaml.safe_dump({"path": "/elsewhere", "train": "t.txt", "extra": 1, "names": dict(enumerate(NAMES))}))
    d = yaml.safe_load(convert_coco(ann, img_dir, out).read_text())
    assert d == {
        "path": "/elsewhere",
        "train": "t.txt",
        "extra": 1,
        "val": str(out / "images" / "val2017"),
        "nc": 3,
        "names": NAMES,
    }


def test_names_mismatch_on_merge_is_refused(coco, tmp_path):
    ann, img_dir = coco
    out = tmp_path / "out"
    y = convert_coco(ann, img_dir, out)
    before = y.read_text()
    other = ann.with_name("instances_train2017.json")
    other.write_text(json.dumps(coco_dict(categories=[{"id": 1, "name": "person"}, {"id": 3, "name": "bus"}])))
    with pytest.raises(ValueError, match=r"data\.yaml.*class names differ"):
        convert_coco(other, img_dir, out)
    assert y.read_text() == before and not (out / "labels" / "train2017").exists()  # refused before writing


def test_link_spot_taken_stale_link_and_images_folder_in_file_name(coco, tmp_path, caplog):
    ann, img_dir = coco
    out = tmp_path / "out"
    (out / "images" / "val2017").mkdir(parents=True)  # someone else's folder where the link belongs
    with pytest.raises(ValueError, match="already exists and is not a link"):
        convert_coco(ann, img_dir, out)
    assert not (out / "labels").exists() and not (out / "data.yaml").exists()
    (out / "images" / "val2017").rmdir()
    os.symlink(tmp_path, out / "images" / "val2017")  # a link from an older conversion: replaced
    convert_coco(ann, img_dir, out)
    assert os.readlink(out / "images" / "val2017") == str(img_dir) and tmp_path.is_dir()
    # An 'images' folder inside file_name captures the images->labels rule: the user is warned.
    (img_dir / "images").mkdir()
    assert cv2.imwrite(str(img_dir / "images" / "x.jpg"), np.zeros((8, 8, 3), np.uint8))
    ann.write_text(json.dumps(coco_dict(images=[(1, "images/x.jpg", 8, 8)], annotations=[])))
    with caplog.at_level(logging.WARNING, logger="gmyolo"):
        convert_coco(ann, img_dir, out, split="extra")
    assert "does not lead from 1 images" in caplog.text and "has an 'images' folder" in caplog.text


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not a valid JSON file"),
        (b"\xff\xfe\x00bad", "not a valid JSON file"),
        ("[1, 2]", "expected a COCO instances JSON object"),
        ('{"images": [], "categories": []}', "no 'annotations' list"),
        ('{"images": {}, "annotations": [], "categories": []}', "no 'images' list"),
        ('{"images": [], "annotations": [], "categories": []}', "'categories' is empty"),
    ],
)
def test_bad_json_names_the_file(tmp_path, content, message):
    ann = tmp_path / "instances_bad.json"
    ann.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=message) as e:
        convert_coco(ann, tmp_path, tmp_path / "out")
    assert str(ann) in str(e.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "images, message",
    [
        ([(1, "../x.jpg", 10, 10)], "must be relative"),
        ([(1, "/abs/x.jpg", 10, 10)], "must be relative"),
        ([(1, "x.jpg", 0, 10)], "must be positive"),
        ([(1, "x.jpg", 10, 10), (1, "y.jpg", 10, 10)], "appears twice"),
        ([(1, "x.jpg", 10, 10), (2, "x.png", 10, 10)], "share the label file"),
    ],
)
def test_bad_image_entries(tmp_path, images, message):
    ann = tmp_path / "instances_x.json"
    ann.write_text(json.dumps(coco_dict(images=images, annotations=[])))
    with pytest.raises(ValueError, match=message) as e:
        convert_coco(ann, tmp_path, tmp_path / "out")
    assert str(ann) in str(e.value)


def test_missing_inputs(tmp_path, coco):
    ann, img_dir = coco
    with pytest.raises(FileNotFoundError, match="nope.json"):
        convert_coco(tmp_path / "nope.json", img_dir, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no_images"):
        convert_coco(ann, tmp_path / "no_images", tmp_path / "out")


def test_category_order_matches_pycocotools(tmp_path):
    coco_api = pytest.importorskip("pycocotools.coco")
    # Gapped ids listed out of order, names in neither id nor alphabetical order: only ascending id fits.
    categories = [(90, "toothbrush"), (5, "airplane"), (42, "surfboard"), (17, "cat"), (1, "person")]
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    assert cv2.imwrite(str(img_dir / "x.jpg"), np.zeros((100, 200, 3), np.uint8))
    boxes = {cat: [10 + 36 * k, 20, 20, 40] for k, (cat, _) in enumerate(categories)}  # one box per class, own x
    ann = tmp_path / "instances_val.json"
    ann.write_text(
        json.dumps(
            coco_dict(
                images=[(1, "x.jpg", 200, 100)],
                annotations=[(1, cat, box, 0) for cat, box in boxes.items()],
                categories=[{"id": i, "name": n} for i, n in categories],
            )
        )
    )
    out = tmp_path / "out"
    data = yaml.safe_load(convert_coco(ann, img_dir, out).read_text())

    api = coco_api.COCO(str(ann))
    assert api.getCatIds() == [90, 5, 42, 17, 1]  # pycocotools keeps the JSON's order ...
    ids = sorted(api.getCatIds())  # ... and COCO class indices (and val --save-json) follow ascending id
    assert data["nc"] == len(ids)
    assert data["names"] == [c["name"] for c in api.loadCats(ids)]
    assert data["names"] == ["person", "airplane", "cat", "surfboard", "toothbrush"]
    # Every box carries the class index of its category id in that order.
    lines = [line.split() for line in (out / "labels" / "val" / "x.txt").read_text().splitlines()]
    by_centre_x = {round(float(cx) * 200, 3): int(cls) for cls, cx, *_ in lines}
    coco_anns = api.loadAnns(api.getAnnIds(imgIds=[1]))
    assert len(lines) == len(coco_anns) == len(categories)
    for a in coco_anns:
        x, _, w, _ = a["bbox"]
        assert ids[by_centre_x[round(x + w / 2, 3)]] == a["category_id"], a


def test_cli_wrapper(coco, tmp_path, capsys):
    ann, img_dir = coco
    parser = argparse.ArgumentParser()
    add_convert_coco_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "out"
    args = parser.parse_args(
        ["convert-coco", "--json", str(ann), "--images", str(img_dir), "--out", str(out), "--split", "v", "--copy-list"]
    )
    assert args.run(args) == out / "data.yaml"
    line = capsys.readouterr().out.strip()
    assert line == f"converted 5 images, 6 boxes, 3 classes (6 annotations skipped) -> {out / 'data.yaml'}"
    assert (out / "v.txt").is_file() and not (out / "images").exists()
    args = parser.parse_args(["convert-coco", "--json", str(ann), "--images", str(img_dir), "--out", str(out)])
    assert (args.split, args.include_crowd, args.copy_list) == (None, False, False)


def test_segments_become_outlines(tmp_path, caplog):
    from pycocotools import mask as mask_utils

    from gmyolo.data.coco import convert_coco
    from gmyolo.data.labels import parse_label_file

    w, h = 64, 48
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    cv2.imwrite(str(img_dir / "a.jpg"), np.zeros((h, w, 3), np.uint8))
    square = [4.0, 4.0, 20.0, 4.0, 20.0, 20.0, 4.0, 20.0]
    two_parts = [[30.0, 5.0, 40.0, 5.0, 40.0, 15.0], [50.0, 40.0, 60.0, 40.0, 60.0, 30.0, 50.0, 30.0]]  # opposite turns
    crowd = np.zeros((h, w), np.uint8)
    crowd[30:44, 5:25] = 1
    rle = mask_utils.encode(np.asfortranarray(crowd))
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 16, 16], "iscrowd": 0, "segmentation": [square]},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [30, 5, 30, 35], "iscrowd": 0, "segmentation": two_parts},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [5, 30, 20, 14], "iscrowd": 1,
         "segmentation": {"size": [h, w], "counts": rle["counts"].decode()}},
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [40, 40, 10, 5], "iscrowd": 0},  # no segmentation
    ]  # fmt: skip
    d = {"images": [{"id": 1, "file_name": "a.jpg", "width": w, "height": h}], "annotations": anns,
         "categories": [{"id": 1, "name": "thing"}]}  # fmt: skip
    ann = tmp_path / "instances_val.json"
    ann.write_text(json.dumps(d))
    with caplog.at_level("WARNING", logger="gmyolo"):
        convert_coco(ann, img_dir, tmp_path / "out", include_crowd=True, segments=True)
    assert "1 annotations have no usable segmentation: written as boxes" in caplog.text
    labels, polygons, problems = parse_label_file(tmp_path / "out/labels/val/a.txt", nc=1)
    assert problems == [] and [len(p) > 0 for p in polygons] == [True, True, True, False]
    np.testing.assert_allclose(polygons[0] * (w, h), np.array(square).reshape(-1, 2), atol=1e-4)

    def filled(points):
        m = np.zeros((h, w), np.uint8)
        cv2.fillPoly(m, [np.round(points * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
        return m.astype(bool)

    union = filled(np.array(two_parts[0]).reshape(-1, 2)) | filled(np.array(two_parts[1]).reshape(-1, 2))
    merged = filled(polygons[1] * (w, h))  # the bridged outline fills both parts, and the bridge's line of pixels
    assert not (union & ~merged).any() and (merged & ~union).sum() <= 30
    got = filled(polygons[2] * (w, h))
    assert (got & crowd.astype(bool)).sum() / (got | crowd.astype(bool)).sum() > 0.85  # the RLE region's outline
    np.testing.assert_allclose(labels[3], [0, 45 / w, 42.5 / h, 10 / w, 5 / h], atol=1e-5)
