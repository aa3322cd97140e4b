"""Dataset YAML, label checks and cache, augmentation geometry, batches and loaders."""

from __future__ import annotations

import logging
import os

import cv2
import numpy as np
import pytest
import torch

from gmyolo.data.augment import Instances, letterbox, random_affine, xywhn_to_xyxy
from gmyolo.data.config import DatasetError, label_path, list_images, load_dataset_config
from gmyolo.data.dataset import build_dataloader, create_dataset
from gmyolo.data.labels import load_labels, parse_label_file
from gmyolo.data.plots import plot_batch, plot_labels

# Pure, distinct BGR colours: one per object, so each box can be checked against its own pixels.
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255)]
BG = (60, 60, 60)


def make_dataset(root, n_train=6, n_val=3, sizes=((96, 128), (128, 96), (80, 80))):
    """Grey images with solid rectangles (one colour each), labels that match them exactly."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            h, w = sizes[i % len(sizes)]
            im = np.full((h, w, 3), BG, np.uint8)
            lines, placed = [], []
            for k in range(1 + i % 3):
                while True:  # objects do not touch, so every box interior is one solid colour
                    bw, bh = int(rng.integers(12, w // 2)), int(rng.integers(12, h // 2))
                    x1, y1 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                    if all(
                        x1 > a2 + 3 or a1 > x1 + bw + 3 or y1 > b2 + 3 or b1 > y1 + bh + 3 for a1, b1, a2, b2 in placed
                    ):
                        break
                placed.append((x1, y1, x1 + bw, y1 + bh))
                im[y1 : y1 + bh, x1 : x1 + bw] = COLOURS[k]
                lines.append(f"{k % 2} {(x1 + bw / 2) / w:.6f} {(y1 + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
            cv2.imwrite(str(root / "images" / split / f"{i:03d}.png"), im)
            (root / "labels" / split / f"{i:03d}.txt").write_text("\n".join(lines) + "\n")
    yaml_file = root / "data.yaml"
    yaml_file.write_text("path: .\ntrain: images/train\nval: images/val\nnames: [a, b]\n")
    return yaml_file


@pytest.fixture
def dataset_yaml(tmp_path):
    return make_dataset(tmp_path / "ds")


def test_dataset_yaml_and_paths(dataset_yaml, tmp_path):
    cfg = load_dataset_config(dataset_yaml, require=("train", "val"))
    assert cfg.names == ["a", "b"] and cfg.nc == 2
    images = list_images(cfg.splits["train"])
    assert len(images) == 6 and label_path(images[0]) == dataset_yaml.parent / "labels/train/000.txt"
    # A list file with relative paths, and names as a dict.
    (dataset_yaml.parent / "train.txt").write_text("images/train/000.png\n./images/train/001.png\n\n")
    (tmp_path / "d2.yaml").write_text(f"path: {dataset_yaml.parent}\ntrain: train.txt\nnames: {{0: a, 1: b}}\n")
    cfg2 = load_dataset_config(tmp_path / "d2.yaml")
    assert [p.name for p in list_images(cfg2.splits["train"])] == ["000.png", "001.png"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("path: .\ntrain: nowhere\nnames: [a]\n", "does not exist"),
        ("path: .\ntrain: .\nnames: [a]\nnc: 3\n", "'nc' is 3 but 'names' has 1"),
        ("path: .\ntrain: .\nnames: {0: a, 2: b}\n", "without gaps"),
        ("path: .\ntrain: .\n", "give 'names'"),
        ("path: .\ntrain: [.\n", "not valid YAML"),
        ("path: .\nnames: [a]\n", "no 'val' split"),
    ],
)
def test_bad_dataset_yaml(tmp_path, text, message):
    (tmp_path / "d.yaml").write_text(text)
    with pytest.raises(DatasetError, match=message):
        load_dataset_config(tmp_path / "d.yaml", require=("val",))
    with pytest.raises(DatasetError, match="dataset YAML not found"):
        load_dataset_config(tmp_path / "absent.yaml")


def test_label_checks_report_file_and_line(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text(
        "0 0.5 0.5 0.2 0.2\n"  # 1 ok
        "0 0.5 0.5 0.2\n"  # 2 wrong column count
        "1 0.5 abc 0.2 0.2\n"  # 3 not a number
        "5 0.5 0.5 0.2 0.2\n"  # 4 class out of range
        "1.5 0.5 0.5 0.2 0.2\n"  # 5 non-integer class
        "0 0.5 0.5 0 0.2\n"  # 6 zero size
        "0 nan 0.5 0.2 0.2\n"  # 7 NaN
        "0 0.95 0.5 0.2 0.2\n"  # 8 past the border: clipped
        "0 1.5 0.5 0.2 0.2\n"  # 9 outside
        "0 0.5 0.5 0.2 0.2\n"  # 10 duplicate of 1
        "1 0.1 0.1 0.3 0.1 0.3 0.3\n"  # 11 polygon -> box
        "\n"
    )
    labels, polygons, problems = parse_label_file(f, nc=2)
    by_line = {p.line: p for p in problems}
    assert set(by_line) == {2, 3, 4, 5, 6, 7, 8, 9, None}
    assert "expected 5 values" in by_line[2].message and "not a number" in by_line[3].message
    assert "not one of the 2 classes" in by_line[4].message and by_line[8].action == "fixed"
    assert by_line[None].action == "removed duplicates"
    assert str(by_line[4]).startswith(f"{f}:4: ")
    np.testing.assert_allclose(labels[0], [0, 0.5, 0.5, 0.2, 0.2], atol=1e-6)
    np.testing.assert_allclose(labels[1], [0, 0.925, 0.5, 0.15, 0.2], atol=1e-6)  # clipped at x=1
    np.testing.assert_allclose(labels[2], [1, 0.2, 0.2, 0.2, 0.2], atol=1e-6)
    assert len(labels) == 3


def test_bad_images_are_skipped_and_cache_is_reused(dataset_yaml, caplog):
    root = dataset_yaml.parent
    (root / "images/train/bad.jpg").write_bytes(b"not an image at all")
    good = cv2.imencode(".jpg", np.full((40, 40, 3), 128, np.uint8))[1].tobytes()
    (root / "images/train/trunc.jpg").write_bytes(good[: len(good) // 2])  # truncated JPEG
    (root / "images/train/nolabel.png").write_bytes(cv2.imencode(".png", np.zeros((30, 30, 3), np.uint8))[1])
    images = list_images([root / "images/train"])
    before = {p: p.stat().st_mtime_ns for p in (root / "labels/train").iterdir()}
    with caplog.at_level(logging.INFO, logger="gmyolo"):
        records, summary = load_labels(images, nc=2, prefix="train")
    assert summary.skipped_images >= 1 and summary.missing_labels >= 1
    assert str(root / "images/train/bad.jpg") in caplog.text and "skipped image" in caplog.text
    assert all(r.image.name != "bad.jpg" for r in records)
    cache = root / "labels/train.cache"
    assert cache.is_file()
    assert {p: p.stat().st_mtime_ns for p in (root / "labels/train").iterdir()} == before  # nothing modified
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gmyolo"):
        records2, _ = load_labels(images, nc=2, prefix="train")
    assert "from cache" in caplog.text and len(records2) == len(records)
    # A changed label file invalidates the cache.
    lbl = root / "labels/train/000.txt"
    lbl.write_text("1 0.5 0.5 0.5 0.5\n")
    os.utime(lbl, ns=(1, 1))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gmyolo"):
        records3, _ = load_labels(images, nc=2, prefix="train")
    assert "from cache" not in caplog.text
    assert next(r for r in records3 if r.image.name == "000.png").labels.tolist() == [[1, 0.5, 0.5, 0.5, 0.5]]
    # Only the documented cache file was added to the dataset's folders.
    assert sorted(p.name for p in root.glob("labels/*")) == ["train", "train.cache", "val"]


def test_no_usable_images(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images/a.jpg").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="none of the 1 images could be used"):
        load_labels([tmp_path / "images/a.jpg"], nc=1)
    with pytest.raises(DatasetError, match="no images found"):
        load_labels([], nc=1)


def test_letterbox_geometry():
    im = np.zeros((50, 100, 3), np.uint8)
    out, r, (left, top) = letterbox(im, 64)
    assert out.shape == (64, 64, 3) and r == pytest.approx(0.64) and (left, top) == (0, 16)
    out, r, pad = letterbox(im, (64, 128), scaleup=False)
    assert out.shape == (64, 128, 3) and r == 1.0


def colour_box(im, colour):
    """Tight box (x1, y1, x2, y2) of the pixels of exactly this colour, or None."""
    ys, xs = np.where(np.abs(im.astype(int) - colour).sum(-1) < 30)
    return None if len(xs) == 0 else (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_random_affine_moves_boxes_with_pixels():
    rng = np.random.default_rng(3)
    im = np.full((120, 160, 3), BG, np.uint8)
    boxes = np.array([[20, 30, 60, 70], [90, 10, 150, 50]], np.float32)
    for (x1, y1, x2, y2), c in zip(boxes.astype(int), COLOURS):
        im[y1:y2, x1:x2] = c
    objects = Instances(np.arange(2, dtype=np.float32), boxes)  # class i: drawn in COLOURS[i]
    for _ in range(5):
        out, moved = random_affine(im, objects, rng, degrees=0, translate=0.1, scale=0.3)
        for b, c in zip(moved.boxes, [COLOURS[int(k)] for k in moved.cls]):
            found = colour_box(out, c)
            assert found is not None
            np.testing.assert_allclose(found, b, atol=2.5)


def test_training_samples_have_boxes_on_their_objects(dataset_yaml):
    """Mosaic + affine + flips: every target box must frame a solid block of one of the object colours."""
    cfg = load_dataset_config(dataset_yaml)
    hyp = dict(hsv_h=0, hsv_s=0, hsv_v=0, degrees=0, shear=0, fliplr=0.5, flipud=0.5, mosaic=1.0)
    ds, _ = create_dataset(cfg, "train", imgsz=128, augment=True, hyp=hyp, seed=1)
    checked = 0
    for epoch in range(2):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            img, targets, _, _ = ds[i]
            assert img.shape == (3, 128, 128) and img.dtype == torch.uint8
            im = img.permute(1, 2, 0).numpy()[:, :, ::-1]  # back to BGR
            for _, cls, cx, cy, w, h in targets.tolist():
                assert 0 <= cx <= 1 and 0 <= cy <= 1 and 0 < w <= 1 and 0 < h <= 1
                x1, y1 = int(round((cx - w / 2) * 128)), int(round((cy - h / 2) * 128))
                x2, y2 = int(round((cx + w / 2) * 128)), int(round((cy + h / 2) * 128))
                patch = im[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2].reshape(-1, 3).astype(int)
                if len(patch) < 4:
                    continue
                # The interior is one object's colour (mosaic tiles of different images may meet, so
                # judge by the dominant object colour).
                is_colour = [np.abs(patch - c).sum(-1) < 40 for c in COLOURS]
                assert max(m.mean() for m in is_colour) > 0.9
                checked += 1
    assert checked > 10


def test_validation_rect_batches_and_shapes(dataset_yaml):
    cfg = load_dataset_config(dataset_yaml)
    ds, summary = create_dataset(cfg, "val", imgsz=128, rect=True, batch_size=2, stride=32)
    assert summary.images == 3
    loader = build_dataloader(ds, batch_size=2, workers=0, shuffle=False)
    batches = list(loader)
    assert len(batches) == 2
    for images, targets, paths, shapes in batches:
        assert images.shape[2] % 32 == 0 and images.shape[3] % 32 == 0
        assert max(images.shape[2:]) <= 128 + 32
        for (h0, w0), ((sh, sw), (pw, ph)) in shapes:
            assert sh == pytest.approx(sw, rel=0.02)  # aspect kept
    # Boxes map back to the original label coordinates.
    for i in range(len(ds)):
        img, targets, path, ((h0, w0), ((sh, sw), (pw, ph))) = ds[i]
        H, W = img.shape[1:]
        record = ds.records[i]
        back = xywhn_to_xyxy(targets[:, 2:].numpy(), W, H)
        back[:, [0, 2]] = (back[:, [0, 2]] - pw) / sw
        back[:, [1, 3]] = (back[:, [1, 3]] - ph) / sh
        np.testing.assert_allclose(back, xywhn_to_xyxy(record.labels[:, 1:], w0, h0), atol=1.0)


def test_loader_collate_workers_and_reproducibility(dataset_yaml):
    cfg = load_dataset_config(dataset_yaml)
    ds, _ = create_dataset(cfg, "train", imgsz=64, augment=True, seed=5)
    runs = []
    for workers in (0, 2):
        loader = build_dataloader(ds, batch_size=4, workers=workers, shuffle=True, seed=7)
        runs.append(list(loader))
    for (im_a, t_a, p_a, _), (im_b, t_b, p_b, _) in zip(*runs):
        assert p_a == p_b and torch.equal(im_a, im_b) and torch.equal(t_a, t_b)
    images, targets, paths, _ = runs[0][0]
    assert images.shape == (4, 3, 64, 64)
    assert set(targets[:, 0].long().tolist()) <= set(range(4))
    ds.close_mosaic()
    img, _, _, shapes = ds[0]
    assert shapes is not None  # a plain letterboxed image now


def test_ram_cache_gives_same_samples(dataset_yaml):
    cfg = load_dataset_config(dataset_yaml)
    a, _ = create_dataset(cfg, "train", imgsz=64, augment=True, seed=2)
    b, _ = create_dataset(cfg, "train", imgsz=64, augment=True, seed=2, cache_images=True)
    for i in range(len(a)):
        assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1])


def test_plots(dataset_yaml, tmp_path):
    cfg = load_dataset_config(dataset_yaml)
    ds, _ = create_dataset(cfg, "train", imgsz=64, augment=True)
    images, targets, paths, _ = next(iter(build_dataloader(ds, batch_size=4, workers=0)))
    out = plot_batch(images, targets, cfg.names, tmp_path / "train_batch0.jpg", paths)
    assert cv2.imread(str(out)).shape[2] == 3
    labels = np.concatenate([r.labels for r in ds.records])
    out = plot_labels(labels, cfg.names, tmp_path / "labels.jpg")
    assert cv2.imread(str(out)) is not None


def test_paths_are_absolute_so_checkpoints_can_find_the_data(dataset_yaml, monkeypatch):
    monkeypatch.chdir(dataset_yaml.parent.parent)
    cfg = load_dataset_config(f"{dataset_yaml.parent.name}/data.yaml")
    assert cfg.root.is_absolute() and all(p.is_absolute() for p in cfg.splits["train"])
    monkeypatch.chdir("/")
    again = load_dataset_config(cfg.to_dict())  # as `gmyolo val` reloads it from a checkpoint
    assert again.splits == cfg.splits and again.names == cfg.names


def test_polygon_labels_are_checked_and_kept(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text(
        "0 0.1 0.1 0.4 0.1 0.4 0.4 0.1 0.4\n"  # 1 a square outline
        "0 0.1 0.1 0.4 0.1 0.4\n"  # 2 an odd number of coordinates
        "1 0.5 0.5\n"  # 3 one point
        "0 0.2 0.2 0.5 0.5 0.8 0.8\n"  # 4 collinear: no area
        "1 0.8 0.8 1.2 0.8 1.2 1.1\n"  # 5 past the border: clipped
        "0 0.5 0.5 0.2 0.2\n"  # 6 a box among polygons: no outline
        "0 0.1 0.1 0.4 0.1 0.4 0.4 0.1 0.4\n"  # 7 duplicate of 1
        "0 1.1 1.1 1.5 1.1 1.5 1.5\n"  # 8 wholly outside
        "5 0.1 0.1 0.2 0.1 0.2 0.2\n"  # 9 class out of range
    )
    labels, polygons, problems = parse_label_file(f, nc=2)
    by_line = {p.line: p for p in problems}
    assert set(by_line) == {2, 3, 4, 5, 8, 9, None}
    assert by_line[2].message == "polygon with an odd number of coordinates (5)"
    assert by_line[3].message == "polygon of 1 point (at least 3 needed)"
    assert by_line[4].message == "polygon encloses no area" and by_line[4].action == "dropped line"
    assert by_line[5].message.startswith("polygon extends past the image border") and by_line[5].action == "fixed"
    assert by_line[8].message == "polygon encloses no area inside the image"
    assert by_line[None].action == "removed duplicates"
    np.testing.assert_allclose(labels, [[0, 0.25, 0.25, 0.3, 0.3], [1, 0.9, 0.9, 0.2, 0.2], [0, 0.5, 0.5, 0.2, 0.2]])
    assert [p.shape for p in polygons] == [(4, 2), (3, 2), (0, 2)]
    np.testing.assert_allclose(polygons[1], [[0.8, 0.8], [1.0, 0.8], [1.0, 1.0]])
    f.write_text("0 0.5 0.5 0.2 0.2\n")
    assert parse_label_file(f, nc=2)[1] == []  # boxes only: no outlines at all


def test_polygons_survive_the_label_cache(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for name, text in (("a", "0 0.123457 0.1 0.400002 0.1 0.4 0.4\n0 0.5 0.5 0.2 0.2\n"), ("b", "1 0.5 0.5 0.2 0.2\n")):
        cv2.imwrite(str(tmp_path / f"images/{name}.png"), np.zeros((32, 32, 3), np.uint8))
        (tmp_path / f"labels/{name}.txt").write_text(text)
    images = list_images([tmp_path / "images"])
    fresh, _ = load_labels(images, nc=2)
    assert (tmp_path / "labels.cache").is_file()
    cached, _ = load_labels(images, nc=2)
    for r in (fresh, cached):
        a, b = sorted(r, key=lambda rec: rec.image.name)
        assert [p.shape for p in a.segments] == [(3, 2), (0, 2)] and b.segments == []
        np.testing.assert_allclose(a.segments[0], [[0.123457, 0.1], [0.400002, 0.1], [0.4, 0.4]])
    # Exactly what a fresh check gives (a box derived from a polygon has more digits than the file's values).
    for f, c in zip(sorted(fresh, key=lambda r: r.image.name), sorted(cached, key=lambda r: r.image.name)):
        assert np.array_equal(f.labels, c.labels) and all(map(np.array_equal, f.segments, c.segments))
