"""Hostile and broken input: pickled code in checkpoints, Python in YAML, broken datasets, arguments out of
range. Each is refused with a one-line message naming what and where, and nothing is run or written."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from gmyolo.cli.main import main
from gmyolo.data.augment import stride_multiple
from gmyolo.data.config import DatasetError, load_dataset_config
from gmyolo.data.synth import make_synthetic_dataset
from gmyolo.engine import distributed as distributed_module
from gmyolo.engine.distributed import per_rank_batch
from gmyolo.models.yolo import DetectionModel, ModelConfigError

FAST = ["--model", "yolov5n-gmf-nano", "--imgsz", "64", "--batch", "8", "--nbs", "8", "--workers", "0"]
FAST += ["--device", "cpu", "--no-plots", "--no-tensorboard", "--noautoanchor"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return str(make_synthetic_dataset(tmp_path_factory.mktemp("synth"), seed=0, n_train=8, n_val=4, imgsz=96))


def one_line_error(capsys, message: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    return err[0]


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------
class RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint carries."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_pickled_code_is_refused(synth, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "best.pt"
    model = DetectionModel("yolov5n-gmf-nano", nc=4)
    torch.save({"model": model.state_dict(), "model_yaml": model.yaml, "nc": 4, "extra": RunsCode(marker)}, evil)
    image = tmp_path / "im.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    for argv in (
        ["train", "--data", synth, "--weights", str(evil), "--project", str(tmp_path), *FAST],
        ["train", "--resume", str(evil)],
        ["val", "--weights", str(evil)],
        ["predict", "--weights", str(evil), "--source", str(image), "--project", str(tmp_path)],
        ["export", "--weights", str(evil)],
    ):
        assert main(argv) == 2, argv
        line = one_line_error(capsys, "refused to load")
        assert "posix.system" in line or "os.system" in line
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------
# Model YAML
# --------------------------------------------------------------------------------------------------
MODEL_YAML = """\
nc: 2
depth_multiple: 0.33
width_multiple: 0.25
anchors:
  - [10,13, 16,30, 33,23]
backbone:
  [[-1, 1, Conv, [64, 6, 2, 2]],
   [-1, 1, Conv, [128, 3, 2]],
   [-1, 1, Conv, [256, 3, 2]],
  ]
head:
  [[-1, 1, C3, [256]],
   [[3], 1, Detect, [nc, anchors]],
  ]
"""
PWN = "__import__('os').system('touch pwned')"


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("nc: 2", f'nc: "{PWN}"', r"line 1: 'nc' must be a positive integer"),
        ("nc: 2", "nc: 2.5", r"line 1: 'nc' must be a positive integer"),
        ("nc: 2", "nc: [2]", r"line 1: 'nc' must be a positive integer"),
        ("depth_multiple: 0.33", "depth_multiple: \"eval('0.33')\"", r"line 2: 'depth_multiple' must be a positive"),
        ("width_multiple: 0.25", "width_multiple: .nan", r"line 3: 'width_multiple' must be a positive"),
        ("  - [10,13, 16,30, 33,23]", "  - [10,13, 16,-30, 33,23]", r"line 4: 'anchors' must be"),
        ("  - [10,13, 16,30, 33,23]", "  - [10,13, '16',30, 33,23]", r"line 4: 'anchors' must be"),
        ("anchors:\n  - [10,13, 16,30, 33,23]", 'anchors: "[[10,13]] * 3"', r"line 4: 'anchors' must be"),
        ("[-1, 1, Conv, [128, 3, 2]]", f'["{PWN}", 1, Conv, [128, 3, 2]]', r"line 8 .*'from' must be"),
        ("[-1, 1, Conv, [128, 3, 2]]", "[-1, '3*3', Conv, [128, 3, 2]]", r"line 8 .*'number' must be"),
        ("[-1, 1, Conv, [128, 3, 2]]", "[-1, 1, nn.Conv2d, [128, 3, 2]]", r"line 8 .*unknown module 'nn.Conv2d'"),
        ("[-1, 1, Conv, [128, 3, 2]]", "[-1, 1, os.system, [touch]]", r"line 8 .*unknown module 'os.system'"),
        ("[-1, 1, Conv, [128, 3, 2]]", f'[-1, 1, Conv, ["{PWN}", 3, 2]]', r"line 8 .*cannot build Conv"),
        ("[-1, 1, Conv, [128, 3, 2]]", "[-1, 1, Conv, [128, '3', 2]]", r"line 8 .*cannot build Conv"),
        ("[-1, 1, Conv, [128, 3, 2]]", f'[-1, 1, Conv, [128, 3, {{s: "{PWN}"}}]]', r"line 8 .*cannot build Conv"),
        ("[-1, 1, C3, [256]]", "[-1, 1, C3, [256, 'True']]", r"line 12 .*cannot build C3"),
        # Arguments torch would only refuse deep inside a forward pass: checked where the layer is built, or its
        # first forward (every model runs once when built) names the layer and its input.
        ("[-1, 1, Conv, [128, 3, 2]]", "[-1, 1, Conv, [128, 3, 0]]", r"line 8 .*layer 1\): .*stride s must be a posi"),
        ("[-1, 1, Conv, [128, 3, 2]]", "[-1, 1, Conv, [128, 3, 2, -1]]", r"line 8 .*Conv fails on input 1x16x8x8: neg"),
        ("[-1, 1, C3, [256]]", "[-1, 1, nn.Upsample, [None, 2, cubic]]", r"line 12 .*nn.Upsample fails on input 1x64"),
        ("[-1, 1, C3, [256]]", "[[-1, 2], 1, Concat, [4]]", r"line 12 .*cannot build Concat .*dimension 4"),
        ("[-1, 1, C3, [256]]", "[-1, 1, SPPF, [256, 0]]", r"line 12 .*SPPF fails on input 1x64x2x2: kernel size"),
        ("[-1, 1, C3, [256]]", "[-1, 1, C3k2, [256, False, 0.5, True, 7]]", r"line 12 .*cannot build C3k2"),
        ("[-1, 1, C3, [256]]", "[-1, 1, A2C2f, [256, True, 3]]", r"line 12 .*A2C2f fails on input 1x64x2x2"),
        ("[[3], 1, Detect, [nc, anchors]]", "[[3], 1, Detect, [nc, 1, 2]]", r"line 13 .*cannot build Detect"),
        ("[[3], 1, Detect, [nc, anchors]]", "[[3], 1, Detect, [nc, {end2end: 'True'}]]", r"line 13 .*end2end"),
        ("nc: 2", "nc: !!python/object/apply:os.system ['touch pwned']", r"line 1: not valid YAML"),
        ("head:\n", "head: !!python/name:builtins.exec\n", r"line 11: not valid YAML"),
    ],
)
def test_model_yaml_refuses_code_and_wrong_types_naming_the_line(tmp_path, monkeypatch, old, new, message):
    monkeypatch.chdir(tmp_path)
    assert MODEL_YAML.count(old) == 1
    path = tmp_path / "model.yaml"
    path.write_text(MODEL_YAML.replace(old, new))
    with pytest.raises(ModelConfigError, match=message) as err:
        DetectionModel(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value) and len(str(err.value)) < 600
    assert not (tmp_path / "pwned").exists()


def test_model_yaml_template_builds(tmp_path):
    (tmp_path / "model.yaml").write_text(MODEL_YAML)
    assert DetectionModel(tmp_path / "model.yaml").stride.tolist() == [8]


# --------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------
def snapshot(root) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_broken_dataset_trains_reports_and_is_left_untouched(tmp_path, capsys, caplog):
    root = tmp_path / "data"
    make_synthetic_dataset(root, seed=0, n_train=8, n_val=4, imgsz=96)
    images, labels = root / "images/train", root / "labels/train"
    (images / "notanimage.jpg").write_text("<html>not an image</html>")
    (labels / "notanimage.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    jpeg = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (96, 96, 3), np.uint8))[1].tobytes()
    (images / "header_only.jpg").write_bytes(jpeg[:200])  # cut inside the headers: unusable
    (images / "cut.jpg").write_bytes(jpeg[: len(jpeg) * 2 // 3])  # the last third missing: decodable in part
    (labels / "cut.txt").write_text("1 0.5 0.5 0.3 0.3\n")
    first = sorted(labels.glob("0*.txt"))
    first[0].write_text("0 nan 0.5 0.2 0.2\n0 0.5 inf 0.2 0.2\n1 0.5 0.5 -0.2 0.2\n2 0.5 0.5 0.2 0.2\n")
    with open(first[1], "r+b") as f:  # a 20 MB label file (sparse: costs no disk)
        f.truncate(20 * 1024 * 1024)
    before = snapshot(root)
    with caplog.at_level(logging.INFO, logger="gmyolo"):
        code = main(["train", "--data", str(root / "data.yaml"), "--epochs", "1", "--project", str(tmp_path), *FAST])
    assert code == 0, capsys.readouterr().err
    for problem in (
        "notanimage.jpg: unreadable image",
        "header_only.jpg: unreadable image",
        "cut.jpg: truncated JPEG (no end marker); the decodable part is used",
        f"{first[0]}:1: NaN or infinite value",
        f"{first[0]}:2: NaN or infinite value",
        f"{first[0]}:3: box of zero or negative size",
        f"{first[1]}: label file is 20971520 bytes, over the limit",
    ):
        assert problem in caplog.text, problem
    after = snapshot(root)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing changed
    assert sorted(set(after) - set(before)) == ["labels/train.cache", "labels/val.cache"]  # the documented cache


@pytest.mark.parametrize(
    "layout, message",
    [
        ("train: nowhere\nval: nowhere", "train: .*nowhere does not exist"),
        ("train: empty\nval: empty", "train: no images found"),
        ("train: junk\nval: junk", "train: none of the 2 images could be used"),
    ],
)
def test_dataset_without_usable_images_is_one_line(tmp_path, capsys, layout, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk/a.jpg").write_bytes(b"\xff\xd8\xff junk")
    (tmp_path / "junk/b.png").write_text("not a png")
    (tmp_path / "d.yaml").write_text(f"path: {tmp_path}\n{layout}\nnames: [a]\n")
    assert main(["train", "--data", str(tmp_path / "d.yaml"), "--project", str(tmp_path / "runs"), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gmyolo train: error: ")
    assert re.search(message, err[0]), err
    new = {p.relative_to(tmp_path) for p in tmp_path.rglob("*")} - {Path("d.yaml"), Path("empty"), Path("junk")}
    assert {str(p) for p in new if p.parts[0] != "runs"} <= {"junk/a.jpg", "junk/b.png", "junk.cache"}


def test_dataset_yaml_python_tags_are_refused(tmp_path):
    (tmp_path / "d.yaml").write_text(
        f"path: .\ntrain: .\nnames: !!python/object/apply:os.system ['touch {tmp_path}/x']\n"
    )
    with pytest.raises(DatasetError, match="not valid YAML"):
        load_dataset_config(tmp_path / "d.yaml")
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------------------------
# Command-line arguments
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch", "0"], "--batch must be a positive integer, got 0"),
        (["--imgsz", "-64"], "--imgsz must be a positive integer, got -64"),
        (["--nbs", "0"], "--nbs must be a positive integer"),
        (["--workers", "-1"], "--workers must not be negative, got -1"),
        (["--patience", "-3"], "--patience must not be negative"),
        (["--close-mosaic", "-1"], "--close-mosaic must not be negative"),
        (["--optimizer", "Lion"], "--optimizer must be auto, SGD or AdamW"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--device", "0,1"], "device '0,1' requested but this machine has no CUDA device; use --device cpu"),
        (["--device", "0,0"], "device '0,0' names a GPU twice"),
        (["--resume"], "--resume: no last.pt found under"),
    ],
)
def test_arguments_out_of_range_are_one_line(synth, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert main(["train", "--data", synth, "--project", str(tmp_path), *FAST, *args]) == 2
    one_line_error(capsys, message)
    assert not list(tmp_path.iterdir())  # failed before creating anything


def test_image_size_rounded_up_to_the_stride_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="gmyolo"):
        assert stride_multiple(70, 32) == 96
    assert "--imgsz 70 is not a multiple of the largest stride 32; using 96" in caplog.text
    caplog.clear()
    assert stride_multiple(96, 32) == 96 and not caplog.text


def test_batch_must_split_evenly_across_processes(monkeypatch):
    monkeypatch.setattr(distributed_module, "get_world_size", lambda: 4)
    assert per_rank_batch(64) == 16
    with pytest.raises(ValueError, match="--batch 30 must be a multiple of the number of processes \\(4\\)"):
        per_rank_batch(30)
