"""Hyper-parameter sets: the packaged files, user files, checking, the CLI's --hyp and what a run saves."""

from __future__ import annotations

import re

import pytest
import torch
import yaml

from gmyolo.cli.main import main
from gmyolo.cli.train import parse_hyp
from gmyolo.data.synth import make_synthetic_dataset
from gmyolo.tasks.detect.hyp import HYP_DEFAULTS, hyp_names, load_hyp, resolve_hyp


def test_packaged_sets_are_complete_and_scratch_low_is_the_default():
    assert hyp_names() == ["finetune", "gmf-adamw", "scratch-high", "scratch-low"]
    for name in hyp_names():
        values = load_hyp(name)
        assert set(values) == set(HYP_DEFAULTS), name
        assert all(v >= 0 for v in values.values()), name
    assert load_hyp("scratch-low") == HYP_DEFAULTS == resolve_hyp() == resolve_hyp("scratch-low.yaml")


def test_packaged_sets_carry_yolov5s_values():
    high = load_hyp("scratch-high")
    assert {k: high[k] for k in ("lrf", "cls", "obj", "scale", "mixup")} == dict(
        lrf=0.1, cls=0.3, obj=0.7, scale=0.9, mixup=0.1
    )
    assert {k: v for k, v in high.items() if k not in ("lrf", "cls", "obj", "scale", "mixup")} == {
        k: v for k, v in HYP_DEFAULTS.items() if k not in ("lrf", "cls", "obj", "scale", "mixup")
    }
    finetune = load_hyp("finetune")
    assert finetune["lr0"] == 0.0032 and finetune["anchor_t"] == 2.91 and finetune["momentum"] == 0.843
    gmf = load_hyp("gmf-adamw")
    assert {k for k in HYP_DEFAULTS if gmf[k] != HYP_DEFAULTS[k]} == {"lr0_adamw", "momentum"}
    assert gmf["lr0_adamw"] == 0.003 and gmf["momentum"] == 0.9


def test_user_file_sets_a_subset_and_bad_keys_name_the_file(tmp_path):
    f = tmp_path / "my.yaml"
    f.write_text("lr0: 0.02\nmosaic: 0.5\nlr0_adamw: 1e-3  # YAML reads this as a string\n")
    hyp = resolve_hyp(str(f))
    assert hyp["lr0"] == 0.02 and hyp["mosaic"] == 0.5 and hyp["lr0_adamw"] == 0.001
    assert {k: v for k, v in hyp.items() if k not in ("lr0", "mosaic", "lr0_adamw")} == {
        k: v for k, v in HYP_DEFAULTS.items() if k not in ("lr0", "mosaic", "lr0_adamw")
    }
    f.write_text("")
    assert resolve_hyp(f) == HYP_DEFAULTS
    for text, message in [
        ("lr00: 0.01\n", "my.yaml: unknown hyper-parameter 'lr00'; did you mean 'lr0'?"),
        ("mosiac: 1.0\n", "did you mean 'mosaic'"),
        ("lr0: fast\n", "my.yaml: hyper-parameter 'lr0' must be a number, got 'fast'"),
        ("lr0: .nan\n", "must be finite"),
        ("lr0: true\n", "must be a number"),
        ("- lr0\n", "expected a mapping"),
        ("lr0: [0.01\n", "not valid YAML"),
        ("fl_gamma: 1.5\n", "'fl_gamma: 1.5' is not supported by gmyolo (focal loss"),
        ("copy_paste: 0.1\n", "copy-paste needs segment labels"),
    ]:
        f.write_text(text)
        with pytest.raises(ValueError, match=re.escape(message)):
            load_hyp(f)
    # A YOLOv5 hyp file loads as it is: its keys without a gmyolo use are accepted at values that change nothing.
    f.write_text("lr0: 0.01\niou_t: 0.20\nfl_gamma: 0.0\ncopy_paste: 0.0\n")
    assert load_hyp(f) == {"lr0": 0.01}
    with pytest.raises(ValueError, match="did you mean 'scratch-high'"):
        load_hyp("scratch-hihg")
    with pytest.raises(ValueError, match="hyper-parameter file not found: missing/x.yaml"):
        load_hyp("missing/x.yaml")
    with pytest.raises(ValueError, match="--hyp: unknown hyper-parameter 'momentun'; did you mean 'momentum'"):
        resolve_hyp({"momentun": 0.9})


def test_cli_parses_a_set_then_overrides(tmp_path):
    assert parse_hyp([]) == {}
    assert parse_hyp(["mosaic=0.5", "lr0=1e-3"]) == {"mosaic": 0.5, "lr0": 0.001}
    assert parse_hyp(["scratch-high", "lr0=0.005"]) == {**load_hyp("scratch-high"), "lr0": 0.005}
    f = tmp_path / "h.yaml"
    f.write_text("scale: 0.25\n")
    assert parse_hyp([str(f), "mixup=0.2"]) == {"scale": 0.25, "mixup": 0.2}
    with pytest.raises(ValueError, match="one set name or YAML file first"):
        parse_hyp(["scratch-high", "finetune"])
    with pytest.raises(ValueError, match="not a number"):
        parse_hyp(["lr0=fast"])


def test_run_saves_the_resolved_values_and_they_can_be_reused(tmp_path):
    data = make_synthetic_dataset(tmp_path / "synth", seed=0, n_train=8, n_val=4, imgsz=64)
    common = ["--data", str(data), "--epochs", "1", "--imgsz", "64", "--batch", "8", "--workers", "0"]
    common += ["--no-plots", "--no-tensorboard", "--project", str(tmp_path / "runs")]
    assert main(["train", *common, "--hyp", "scratch-high", "lr0=0.005", "warmup_epochs=0"]) == 0
    run = tmp_path / "runs/exp"
    expected = {**load_hyp("scratch-high"), "lr0": 0.005, "warmup_epochs": 0.0}
    saved = yaml.safe_load((run / "hyp.yaml").read_text())
    assert saved == expected  # before the per-model loss-gain scaling, so it can be passed back as --hyp
    ckpt = torch.load(run / "weights/last.pt", weights_only=True)
    assert ckpt["hyp_overrides"] == expected
    assert ckpt["hyp"]["cls"] == pytest.approx(expected["cls"] * 4 / 80)  # the gains the loss used
    assert parse_hyp([str(run / "hyp.yaml")]) == expected  # `--hyp runs/train/exp/hyp.yaml` repeats the run
