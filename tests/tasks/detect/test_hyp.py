"""Hyper-parameter sets: the packaged files, user files, checking, the CLI's --hyp and what a run saves."""

from __future__ import annotations

import re

import pytest
import torch
import yaml

from gmyolo.cli.main import main
from gmyolo.data.synth import make_synthetic_dataset
from gmyolo.tasks.detect.hyp import (
    ANCHOR_FREE_LOSS,
    HYP_DEFAULTS,
    head_defaults,
    hyp_names,
    hyp_values,
    load_hyp,
    resolve_hyp,
)


def test_packaged_sets_are_complete_and_scratch_low_is_the_default():
    assert hyp_names() == ["finetune", "gmf-adamw", "scratch-high", "scratch-low"]
    for name in hyp_names():
        values = load_hyp(name)
        # Every key of both heads: the loss gains in the head's section, everything else outside.
        for head in ("anchor_based", "anchor_free"):
            own = {k.partition(".")[2] for k in values if k.startswith(f"{head}.")}
            assert own | {k for k in values if "." not in k} == set(head_defaults(head)), (name, head)
        assert all(v >= 0 for v in values.values()), name
    assert resolve_hyp("scratch-low") == HYP_DEFAULTS == resolve_hyp() == resolve_hyp("scratch-low.yaml")
    assert list(resolve_hyp("scratch-low")) == list(HYP_DEFAULTS)  # hyp.yaml of a YOLOv5-head run, in order


def test_anchor_free_heads_have_their_own_gains_and_cli_overrides_win():
    af = resolve_hyp(head="anchor_free")
    assert {k: af[k] for k in ANCHOR_FREE_LOSS} == {"box": 7.5, "cls": 0.5, "dfl": 1.5, "o2m": 0.8, "o2m_final": 0.1}
    assert not {"obj", "obj_pw", "anchor_t", "cls_pw", "label_smoothing"} & set(af)
    assert {k: v for k, v in af.items() if k not in ANCHOR_FREE_LOSS} == {
        k: v
        for k, v in HYP_DEFAULTS.items()
        if k not in ("box", "cls", "cls_pw", "obj", "obj_pw", "anchor_t", "label_smoothing")  # fmt: skip
    }
    for name in hyp_names():  # every packaged set trains the anchor-free heads with Ultralytics' gains
        assert resolve_hyp(name, head="anchor_free")["box"] == 7.5, name
        assert resolve_hyp(name)["box"] < 0.1, name
    # `--hyp scratch-high box=5`: the override is outside the sections, so it wins for either head.
    merged = hyp_values(["scratch-high", "box=5", "anchor_free.dfl=2"])
    assert resolve_hyp(merged, head="anchor_free")["box"] == 5.0 and resolve_hyp(merged)["box"] == 5.0
    assert resolve_hyp(merged, head="anchor_free")["dfl"] == 2.0 and "dfl" not in resolve_hyp(merged)
    # A YOLOv5 hyp file (flat) used with an anchor-free head: its YOLOv5-only keys are ignored.
    assert "obj" not in resolve_hyp({"obj": 0.7, "lr0": 0.02}, head="anchor_free")
    with pytest.raises(ValueError, match="'dfll' is not a hyper-parameter of the anchor_free head; did you mean 'dfl'"):
        resolve_hyp({"anchor_free.dfll": 1.0})
    with pytest.raises(ValueError, match="unknown hyper-parameter 'anchor_fre'; did you mean 'anchor_free'"):
        resolve_hyp({"anchor_fre": 1.0})


def test_packaged_sets_carry_yolov5s_values():
    high = resolve_hyp("scratch-high")
    assert {k: high[k] for k in ("lrf", "cls", "obj", "scale", "mixup")} == dict(
        lrf=0.1, cls=0.3, obj=0.7, scale=0.9, mixup=0.1
    )
    assert {k: v for k, v in high.items() if k not in ("lrf", "cls", "obj", "scale", "mixup")} == {
        k: v for k, v in HYP_DEFAULTS.items() if k not in ("lrf", "cls", "obj", "scale", "mixup")
    }
    finetune = resolve_hyp("finetune")
    assert finetune["lr0"] == 0.0032 and finetune["anchor_t"] == 2.91 and finetune["momentum"] == 0.843
    gmf = resolve_hyp("gmf-adamw")
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


def test_command_line_items_a_set_then_overrides(tmp_path):
    assert hyp_values([]) == {}
    assert hyp_values(["mosaic=0.5", "lr0=1e-3"]) == {"mosaic": 0.5, "lr0": 0.001}
    assert hyp_values(["scratch-high", "lr0=0.005"]) == {**load_hyp("scratch-high"), "lr0": 0.005}
    f = tmp_path / "h.yaml"
    f.write_text("scale: 0.25\n")
    assert hyp_values([str(f), "mixup=0.2"]) == {"scale": 0.25, "mixup": 0.2}
    with pytest.raises(ValueError, match="one set name or YAML file first"):
        hyp_values(["scratch-high", "finetune"])
    with pytest.raises(ValueError, match="not a number"):
        hyp_values(["lr0=fast"])


def test_run_saves_the_resolved_values_and_they_can_be_reused(tmp_path):
    data = make_synthetic_dataset(tmp_path / "synth", seed=0, n_train=8, n_val=4, imgsz=64)
    common = ["--data", str(data), "--model", "yolov5n-gmf-nano", "--epochs", "1", "--imgsz", "64", "--batch", "8"]
    common += ["--workers", "0", "--no-plots", "--no-tensorboard", "--project", str(tmp_path / "runs")]
    assert main(["train", *common, "--hyp", "scratch-high", "lr0=0.005", "warmup_epochs=0"]) == 0
    run = tmp_path / "runs/exp"
    expected = resolve_hyp({**load_hyp("scratch-high"), "lr0": 0.005, "warmup_epochs": 0.0})
    saved = yaml.safe_load((run / "hyp.yaml").read_text())
    assert saved == expected  # before the per-model loss-gain scaling, so it can be passed back as --hyp
    ckpt = torch.load(run / "weights/last.pt", weights_only=True)
    assert ckpt["hyp_overrides"] == expected
    assert ckpt["hyp"]["cls"] == pytest.approx(expected["cls"] * 4 / 80)  # the gains the loss used
    assert hyp_values([str(run / "hyp.yaml")]) == expected  # `--hyp runs/train/exp/hyp.yaml` repeats the run
