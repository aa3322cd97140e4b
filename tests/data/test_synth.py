"""The built-in synthetic dataset: layout, YAML, determinism, label validity, box tightness, arguments, CLI."""

from __future__ import annotations

import argparse
import re

import cv2
import numpy as np
import pytest
import yaml

from gmyolo.cli.data import add_synth_parser, run_synth
from gmyolo.data import synth
from gmyolo.data.config import list_images, load_dataset_config
from gmyolo.data.labels import load_labels, parse_label_file
from gmyolo.data.synth import SYNTH_CLASSES, make_synthetic_dataset

SMALL = dict(n_train=12, n_val=4, imgsz=96)
LINE_RE = re.compile(r"^\d+ \d\.\d{6} \d\.\d{6} \d\.\d{6} \d\.\d{6}$")


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth") / "ds", seed=0, **SMALL)


def read_labels(path) -> np.ndarray:
    text = path.read_text()
    return np.array([[float(v) for v in line.split()] for line in text.splitlines()]).reshape(-1, 5)


def box_pixels(label: np.ndarray, h: int, w: int) -> tuple[float, float, float, float]:
    """x0 y0 x1 y1 in pixel-edge coordinates (pixel i spans [i, i + 1))."""
    _, cx, cy, bw, bh = label
    return (cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h


def test_layout_and_yaml(small_dataset):
    root = small_dataset.parent
    assert small_dataset.name == "data.yaml"
    spec = yaml.safe_load(small_dataset.read_text())
    assert spec == {
        "path": ".",
        "train": "images/train",
        "val": "images/val",
        "nc": 4,
        "names": list(SYNTH_CLASSES),
    }
    for split, n in (("train", 12), ("val", 4)):
        images = sorted((root / "images" / split).iterdir())
        labels = sorted((root / "labels" / split).iterdir())
        assert [p.name for p in images] == [f"{i:05d}.png" for i in range(n)]
        assert [p.name for p in labels] == [f"{i:05d}.txt" for i in range(n)]
        for p in images:
            img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
            assert 72 <= img.shape[0] <= 96 and 72 <= img.shape[1] <= 96
    cfg = load_dataset_config(small_dataset, require=("train", "val"))
    assert cfg.names == list(SYNTH_CLASSES)
    assert cfg.root.resolve() == root.resolve()


def test_labels_parse_and_lie_inside(small_dataset):
    root = small_dataset.parent
    n_objects = 0
    for p in sorted((root / "labels").rglob("*.txt")):
        for line in p.read_text().splitlines():
            assert LINE_RE.match(line), f"{p}: bad line {line!r}"
        labels = read_labels(p)
        n_objects += len(labels)
        assert len(labels) <= 4
        assert np.all((labels[:, 0] >= 0) & (labels[:, 0] < len(SYNTH_CLASSES)))
        cx, cy, bw, bh = labels[:, 1:].T
        assert np.all((bw > 0) & (bh > 0))
        assert np.all((cx - bw / 2 >= -1e-6) & (cx + bw / 2 <= 1 + 1e-6))
        assert np.all((cy - bh / 2 >= -1e-6) & (cy + bh / 2 <= 1 + 1e-6))
    assert n_objects > 0


def test_project_loader_accepts_it(small_dataset):
    cfg = load_dataset_config(small_dataset)
    for split, n in (("train", 12), ("val", 4)):
        records, summary = load_labels(list_images(cfg.splits[split]), len(cfg.names), use_cache=False)
        assert summary.images == n and not summary.problems


def test_deterministic(tmp_path):
    args = dict(n_train=5, n_val=2, imgsz=64)
    a = make_synthetic_dataset(tmp_path / "a", seed=3, **args).parent
    b = make_synthetic_dataset(tmp_path / "b", seed=3, **args).parent
    c = make_synthetic_dataset(tmp_path / "c", seed=4, **args).parent
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    differs = False
    for rel in files:
        if rel.suffix == ".png":
            ia, ib, ic = (cv2.imread(str(d / rel)) for d in (a, b, c))
            assert np.array_equal(ia, ib), rel
            differs |= ia.shape != ic.shape or not np.array_equal(ia, ic)
        else:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert differs, "another seed gave the same images"
    # The two splits come from different sub-seeds.
    assert not np.array_equal(
        cv2.imread(str(a / "images/train/00000.png")), cv2.imread(str(a / "images/val/00000.png"))
    )


@pytest.mark.parametrize("shape", SYNTH_CLASSES)
def test_box_is_tight_around_the_drawn_shape(shape):
    """On a plain background, drawn pixels lie inside the box and reach each of its sides (within a pixel)."""
    for i in range(10):
        rng = np.random.default_rng(i)
        h, w = 90, 110
        img, labels, masks, _ = synth._render_image(rng, h, w, (shape,), 1, plain=True)
        assert len(labels) == 1 and len(masks) == 1 and labels[0, 0] == 0
        bg = np.median(img.reshape(-1, 3), axis=0).astype(int)  # a shape covers at most 45% x 45% of the image
        changed = np.abs(img.astype(int) - bg).sum(axis=2) > 0
        assert changed.any()
        x0, y0, x1, y1 = box_pixels(labels[0], h, w)
        ys, xs = np.nonzero(changed)
        # Every changed pixel touches the box, and the box's sides lie within a pixel of the changed pixels
        # (a barely covered edge pixel may round to the background colour).
        assert xs.min() + 1 > x0 and xs.max() < x1 and ys.min() + 1 > y0 and ys.max() < y1
        assert x0 >= xs.min() - 1 and x1 <= xs.max() + 2 and y0 >= ys.min() - 1 and y1 <= ys.max() + 2
        # Boxes are 8%..45% of the shorter image side (the longer box side).
        assert 0.08 * min(h, w) - 1e-6 <= max(x1 - x0, y1 - y0) <= 0.45 * min(h, w) + 1e-6


def test_textured_images_boxes_cover_their_masks_and_stand_out():
    """With textures, noise and several objects: each object's coverage lies in its box and differs from the
    background around it."""
    contrasts = []
    for i in range(20):
        rng = np.random.default_rng(100 + i)
        img, labels, masks, _ = synth._render_image(rng, 96, 80, SYNTH_CLASSES, 4)
        assert len(labels) == len(masks) >= 1
        for label, mask in zip(labels, masks):
            x0, y0, x1, y1 = box_pixels(label, 96, 80)
            ys, xs = np.nonzero(mask)
            assert xs.min() + 1 > x0 and xs.max() < x1 and ys.min() + 1 > y0 and ys.max() < y1
            # Inside the shape vs a ring just outside its box: the object must stand out from its surroundings.
            inner = img[mask > 200].astype(float).mean(axis=0)
            ring = np.zeros(mask.shape, bool)
            ring[max(int(y0) - 3, 0) : int(np.ceil(y1)) + 3, max(int(x0) - 3, 0) : int(np.ceil(x1)) + 3] = True
            ring[max(int(y0), 0) : int(np.ceil(y1)), max(int(x0), 0) : int(np.ceil(x1))] = False
            if ring.any():
                contrasts.append(np.linalg.norm(inner - img[ring].astype(float).mean(axis=0)))
    # Mostly well visible (neighbouring objects and strong textures make a few rings misleading).
    assert np.median(contrasts) > 50


def test_objects_are_not_hidden():
    for i in range(30):
        rng = np.random.default_rng(200 + i)
        _, labels, masks, _ = synth._render_image(rng, 96, 96, SYNTH_CLASSES, 4, plain=True)
        solid = [m > 127 for m in masks]
        for j, s in enumerate(solid):
            later = np.zeros_like(s)
            for t in solid[j + 1 :]:
                later |= t
            assert np.count_nonzero(s & ~later) >= synth.MIN_VISIBLE * np.count_nonzero(s) - 1


def test_empty_images_and_class_subset(tmp_path):
    root = make_synthetic_dataset(tmp_path / "ds", seed=1, n_train=80, n_val=1, imgsz=32, classes=("cross", "circle"))
    spec = yaml.safe_load(root.read_text())
    assert spec["names"] == ["cross", "circle"] and spec["nc"] == 2
    labels = [read_labels(p) for p in sorted((tmp_path / "ds/labels/train").glob("*.txt"))]
    n_empty = sum(len(lab) == 0 for lab in labels)
    assert 1 <= n_empty <= 12  # about 5% of 80
    assert set(np.concatenate(labels)[:, 0].astype(int)) == {0, 1}


def test_rerun_overwrites_its_files_and_keeps_others(tmp_path):
    out = tmp_path / "ds"
    make_synthetic_dataset(out, seed=0, n_train=6, n_val=2, imgsz=48)
    (out / "notes.txt").write_text("mine")
    (out / "labels" / "train.cache").write_text("{}")
    make_synthetic_dataset(out, seed=0, n_train=3, n_val=2, imgsz=48)
    fresh = make_synthetic_dataset(tmp_path / "fresh", seed=0, n_train=3, n_val=2, imgsz=48).parent
    assert sorted(p.name for p in (out / "images/train").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert sorted(p.name for p in (out / "labels/train").iterdir()) == ["00000.txt", "00001.txt", "00002.txt"]
    for p in (fresh / "labels").rglob("*.txt"):
        assert (out / p.relative_to(fresh)).read_bytes() == p.read_bytes()
    assert (out / "notes.txt").read_text() == "mine" and (out / "labels/train.cache").exists()
    assert not list(out.rglob("*.tmp"))


def test_refuses_folders_holding_other_data(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [a]\n")
    with pytest.raises(ValueError, match="not a gmyolo synthetic dataset"):
        make_synthetic_dataset(foreign, n_train=2, n_val=1, imgsz=32)
    assert not (foreign / "images").exists()

    loose = tmp_path / "loose"
    (loose / "images" / "train").mkdir(parents=True)
    (loose / "images" / "train" / "00000.png").write_bytes(b"not ours")
    with pytest.raises(ValueError, match="refusing"):
        make_synthetic_dataset(loose, n_train=2, n_val=1, imgsz=32)
    assert (loose / "images" / "train" / "00000.png").read_bytes() == b"not ours"

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        make_synthetic_dataset(a_file, n_train=2, n_val=1, imgsz=32)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_train=0), "n_train"),
        (dict(n_val=0), "n_val"),
        (dict(imgsz=31), "imgsz"),
        (dict(max_objects=0), "max_objects"),
        (dict(seed=-1), "seed"),
        (dict(n_train=2.5), "n_train"),
        (dict(imgsz=True), "imgsz"),
        (dict(classes=()), "classes"),
        (dict(classes="circle"), "classes"),
        (dict(classes=("circle", "hexagon")), "hexagon"),
        (dict(classes=("circle", "circle")), "duplicates"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_synthetic_dataset(tmp_path / "ds", **kwargs)
    assert not (tmp_path / "ds").exists()


def test_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_synth_parser(parser.add_subparsers(dest="cmd"))
    out = tmp_path / "cli"
    args = parser.parse_args(
        ["synth", "--out", str(out), "--seed", "2", "--n-train", "3", "--n-val", "1", "--imgsz", "48"]
    )
    assert args.run is run_synth and args.max_objects == 4
    path = args.run(args)
    assert path == out / "data.yaml" and path.is_file()
    assert len(list((out / "images/train").glob("*.png"))) == 3
    printed = capsys.readouterr().out.strip()
    assert printed.count("\n") == 0 and str(path) in printed
    defaults = parser.parse_args(["synth"])
    assert (defaults.out, defaults.seed, defaults.n_train, defaults.n_val, defaults.imgsz) == (
        "datasets/synth",
        0,
        256,
        64,
        256,
    )


def test_segments_are_the_exact_outlines_of_shapes_that_never_touch():
    for i in range(20):
        rng = np.random.default_rng(300 + i)
        h, w = 96, 80
        _, labels, masks, polygons = synth._render_image(rng, h, w, SYNTH_CLASSES, 4, plain=True, apart=True)
        assert len(polygons) == len(labels) == len(masks) >= 1
        for j, (label, mask, poly) in enumerate(zip(labels, masks, polygons)):
            # The outline's bounding box is the label's box, and the outline filled is the drawn shape.
            lo, hi = poly.min(0) / (w, h), poly.max(0) / (w, h)
            np.testing.assert_allclose([*(lo + hi) / 2, *(hi - lo)], label[1:], atol=1e-9)
            filled = synth._rasterize(poly, h, w) > 127
            assert np.array_equal(filled, mask > 127)
            for other in masks[j + 1 :]:
                assert not ((mask > 0) & (other > 0)).any()


def test_segments_dataset_reads_back_as_polygons(tmp_path):
    root = make_synthetic_dataset(tmp_path / "seg", seed=0, n_train=6, n_val=2, imgsz=64, segments=True)
    for lbl in sorted((root.parent / "labels/train").glob("*.txt")):
        labels, polygons, problems = parse_label_file(lbl, nc=4)
        assert problems == [] and len(polygons) == len(labels)
        assert all(len(p) >= 3 for p in polygons)
