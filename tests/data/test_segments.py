"""Instance segmentation data: outlines move with the image through letterbox, mosaic, affine and flips, and the
masks made from them after augmentation lie where the objects are drawn."""

from __future__ import annotations

import numpy as np
import pytest

from gmyolo.data.augment import clip_polygon, polygons_to_masks
from gmyolo.data.config import load_dataset_config
from gmyolo.data.dataset import MASK_DOWNSAMPLE, build_dataloader, create_dataset
from gmyolo.data.opencv import cv2


def test_clip_polygon_cuts_at_the_image_border():
    square = np.array([[-2, 2], [6, 2], [6, 6], [-2, 6]], np.float32)  # its left part lies outside x >= 0
    np.testing.assert_allclose(clip_polygon(square, 10, 10), [[0, 2], [6, 2], [6, 6], [0, 6]])
    corner = np.array([[8, 8], [12, 8], [12, 12], [8, 12]], np.float32)  # a corner of it inside a 10x10 image
    out = clip_polygon(corner, 10, 10)
    assert sorted(map(tuple, out.tolist())) == [(8, 8), (8, 10), (10, 8), (10, 10)]
    assert clip_polygon(corner + 20, 10, 10).shape == (0, 2)
    inside = np.array([[1, 1], [4, 1], [2, 3]], np.float32)
    np.testing.assert_allclose(clip_polygon(inside, 10, 10), inside)


def test_overlapping_masks_put_the_smaller_object_on_top():
    big = np.array([[0, 0], [32, 0], [32, 32], [0, 32]], np.float32)
    small = np.array([[8, 8], [16, 8], [16, 16], [8, 16]], np.float32)
    mask, order = polygons_to_masks([small, big], 40, 40, downsample=4)
    assert mask.shape == (10, 10) and order.tolist() == [1, 0]  # ranked by area: big first
    assert (mask[2:4, 2:4] == 2).all()  # the small square, on top
    assert (mask[:8, :8] > 0).sum() == 64 and (mask == 2).sum() == 4 and (mask[8:] == 0).all()


def write_red_shapes(root, n=6, size=96):
    """Images with red polygons on a dark background, labelled by their exact outlines."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            h, w = size, int(rng.integers(64, size + 1))
            im = np.full((h, w, 3), 40, np.uint8)
            lines = []
            for _ in range(2):
                c = rng.uniform([15, 15], [w - 15, h - 15])
                k = int(rng.integers(3, 7))
                a = np.sort(rng.uniform(0, 2 * np.pi, k))
                pts = c + np.stack([np.cos(a), np.sin(a)], 1) * rng.uniform(8, 14)
                cv2.fillPoly(im, [np.round(pts * 16 - 8).astype(np.int32)], (0, 0, 255), cv2.LINE_8, 4)
                lines.append("0 " + " ".join(f"{v:.6f}" for v in (pts / (w, h)).ravel()))
            cv2.imwrite(str(root / f"images/{split}/{i}.png"), im)
            (root / f"labels/{split}/{i}.txt").write_text("\n".join(lines) + "\n")
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: [shape]\n")
    return root / "data.yaml"


def red_at_mask_size(image_chw, downsample):
    """Where the image is red, at the masks' resolution (area average, more than half red)."""
    im = image_chw.numpy().transpose(1, 2, 0)  # RGB
    red = ((im[..., 0] > 150) & (im[..., 1] < 100) & (im[..., 2] < 100)).astype(np.float32)
    h, w = red.shape
    return cv2.resize(red, (w // downsample, h // downsample), interpolation=cv2.INTER_AREA) > 0.5


NO_HSV = {"hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0}  # the objects stay red


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param(dict(rect=True, batch_size=2), id="letterbox"),
        pytest.param(dict(augment=True, hyp={"degrees": 20, "flipud": 0.5, **NO_HSV}), id="mosaic-affine-flip"),
        pytest.param(dict(augment=True, hyp={"mosaic": 0.0, "degrees": 20, "shear": 5, **NO_HSV}), id="affine"),
        # Blended images are not pure red any more: the masks are checked against the boxes alone.
        pytest.param(dict(augment=True, hyp={"mixup": 1.0}), id="mixup"),
    ],
)
def test_masks_lie_where_the_objects_are_drawn(tmp_path, kwargs):
    data = load_dataset_config(write_red_shapes(tmp_path))
    dataset, _ = create_dataset(data, "train", 96, segments=True, seed=1, **kwargs)
    both = either = mirrored = 0  # red pixels and mask pixels, over all samples; and with the mask mirrored
    downsample = MASK_DOWNSAMPLE if dataset.augment else 1  # training: the prototypes' size; validation: the input's
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for i in range(len(dataset)):
            image, targets, _, _, masks = dataset[i]
            assert masks.shape == (image.shape[1] // downsample, image.shape[2] // downsample)
            assert int(masks.max()) <= len(targets)
            # Target j's box holds mask value j + 1 (to within a mask pixel).
            H, W = masks.shape
            for j, (cx, cy, w, h) in enumerate(targets[:, 2:].tolist()):
                ys, xs = np.nonzero(masks.numpy() == j + 1)
                if len(xs):
                    assert xs.min() >= (cx - w / 2) * W - 1 and xs.max() + 1 <= (cx + w / 2) * W + 1
                    assert ys.min() >= (cy - h / 2) * H - 1 and ys.max() + 1 <= (cy + h / 2) * H + 1
            red, ours = red_at_mask_size(image, downsample), masks.numpy() > 0
            both, either = both + (red & ours).sum(), either + (red | ours).sum()
            mirrored += (red & ours[:, ::-1]).sum()
    if "mixup" not in kwargs.get("hyp", {}):
        # Objects are 16-28 px, 4-7 mask pixels: a mask pixel's rounding at their border costs some IoU.
        print(f"pooled IoU {both / either:.3f}, mirrored {mirrored / either:.3f}")
        assert both / either > 0.8, (both, either)
        assert mirrored / either < 0.3  # what the same check says of masks that did not follow a flip


def test_segment_batches_and_boxes_without_outlines(tmp_path, caplog):
    yaml_file = write_red_shapes(tmp_path)
    (tmp_path / "labels/train/0.txt").write_text("0 0.5 0.5 0.2 0.2\n" + (tmp_path / "labels/train/0.txt").read_text())
    data = load_dataset_config(yaml_file)
    with caplog.at_level("WARNING", logger="gmyolo"):
        dataset, _ = create_dataset(data, "train", 64, segments=True, rect=True, batch_size=3)
    assert "1 objects in 1 label files have a box but no outline" in caplog.text
    assert all(len(r.labels) == len(r.segments) == 2 for r in dataset.records)
    from gmyolo.data.dataset import collate_segments

    loader = build_dataloader(dataset, 3, workers=0, shuffle=False, collate=collate_segments)
    images, targets, paths, shapes, masks = next(iter(loader))
    assert masks.shape == (3, *images.shape[2:])  # not augmented (validation): at the input's size
    for b in range(3):  # each image's targets number its mask values
        assert int(masks[b].max()) == int((targets[:, 0] == b).sum())


def test_an_image_without_objects_has_an_empty_mask():
    mask, order = polygons_to_masks([], 32, 48, downsample=4)
    assert mask.shape == (8, 12) and not mask.any() and order.shape == (0,)
