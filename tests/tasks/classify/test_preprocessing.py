"""Classification preprocessing comes from one table: each GroupMixFormer variant's PRETRAINED_CFG (what timm's
resolve_data_config reads for groupmixformer_*), for training and for evaluating an authors' checkpoint; values
given on the command line win."""

from __future__ import annotations

import pytest
import timm
import torch

from gmyolo.cli.common import args_as
from gmyolo.cli.main import build_parser
from gmyolo.models.groupmixformer import VARIANTS, groupmixformer
from gmyolo.models.groupmixformer.model import PRETRAINED_CFG
from gmyolo.tasks.classify.model import load_classifier
from gmyolo.tasks.classify.options import ClassifyTrainArgs

KEYS = ("interpolation", "crop_pct", "mean", "std")
PICO = dict(embedding_dims=(20, 20, 40, 40), serial_depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2), drop_path_rate=0.1)


def preprocessing_of(args: ClassifyTrainArgs) -> dict:
    resolved = args.resolved()
    return {k: getattr(resolved, k) for k in KEYS}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_variant_trains_with_the_preprocessing_timm_gives_it(variant):
    timm_cfg = timm.data.resolve_data_config(
        pretrained_cfg=timm.models.get_pretrained_cfg(f"groupmixformer_{variant}").to_dict()
    )
    got = preprocessing_of(ClassifyTrainArgs(data="d", model=f"groupmixformer-{variant}"))
    assert got == {k: list(timm_cfg[k]) if k in ("mean", "std") else timm_cfg[k] for k in KEYS}
    assert got["crop_pct"] == PRETRAINED_CFG[variant]["crop_pct"]


def test_the_table_is_read_not_a_copy_and_the_command_line_wins(monkeypatch):
    monkeypatch.setitem(
        PRETRAINED_CFG, "t", {**PRETRAINED_CFG["t"], "crop_pct": 0.9, "interpolation": "bilinear", "mean": (0.5,) * 3}
    )
    assert preprocessing_of(ClassifyTrainArgs(data="d", model="groupmixformer-t")) == dict(
        interpolation="bilinear", crop_pct=0.9, mean=[0.5, 0.5, 0.5], std=[0.229, 0.224, 0.225]
    )
    cli = build_parser().parse_args(["classify", "train", "--data", "d", "--crop-pct", "0.95", "--std", "1", "1", "1"])
    args = args_as(ClassifyTrainArgs, cli)
    assert (args.crop_pct, args.interpolation, args.mean) == (0.95, None, None)  # None: the variant's
    assert preprocessing_of(args) == dict(interpolation="bilinear", crop_pct=0.95, mean=[0.5] * 3, std=[1.0] * 3)
    args.apply_recipe()  # what training does: the values it uses are the ones its checkpoints record
    assert (args.crop_pct, args.interpolation, args.mean, args.std) == (0.95, "bilinear", [0.5] * 3, [1.0] * 3)


def test_an_authors_checkpoint_is_evaluated_with_its_variants_preprocessing(monkeypatch, tmp_path):
    monkeypatch.setitem(VARIANTS, "pico", PICO)
    torch.save({"model": groupmixformer("pico", num_classes=3).state_dict()}, tmp_path / "authors.pth")
    _, info = load_classifier(tmp_path / "authors.pth")  # a variant without a pretrained config: timm's defaults
    assert (info["imgsz"], info["crop_pct"], info["interpolation"]) == (224, 0.875, "bicubic")
    cfg = dict(input_size=(3, 160, 160), crop_pct=0.95, interpolation="bilinear", mean=(0.5,) * 3, std=(0.25,) * 3)
    monkeypatch.setitem(PRETRAINED_CFG, "pico", cfg)
    _, info = load_classifier(tmp_path / "authors.pth")
    assert info["imgsz"] == 160 and {k: info[k] for k in KEYS} == {k: cfg[k] for k in KEYS}
