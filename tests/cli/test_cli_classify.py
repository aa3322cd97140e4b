"""`gmyolo classify train|val|predict`: fine-tune from an authors'-format checkpoint, evaluate, predict, errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from gmyolo.cli.common import args_as
from gmyolo.cli.main import build_parser, main
from gmyolo.data.classify import make_classify_dataset
from gmyolo.models.groupmixformer import VARIANTS, groupmixformer
from gmyolo.tasks.classify.options import ClassifyTrainArgs

PICO = dict(embedding_dims=(20, 20, 40, 40), serial_depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2), drop_path_rate=0.1)


@pytest.fixture(autouse=True)
def pico_variant(monkeypatch):
    monkeypatch.setitem(VARIANTS, "pico", PICO)
    torch.set_num_threads(1)  # a tiny model: one thread is faster than two


def test_cli_finetune_val_predict_and_errors(tmp_path, capsys):
    data = make_classify_dataset(tmp_path / "shapes", n_train=8, n_val=4, imgsz=40)
    torch.save({"model": groupmixformer("pico", num_classes=1000).state_dict()}, tmp_path / "authors.pth")
    train = [
        "classify", "train", "--data", str(data), "--model", "groupmixformer-pico", "--weights",
        str(tmp_path / "authors.pth"), "--epochs", "1", "--imgsz", "32", "--batch", "8", "--workers", "0",
        "--project", str(tmp_path / "runs"), "--warmup-epochs", "0", "--no-plots",
    ]  # fmt: skip
    assert main(train) == 0
    best = tmp_path / "runs/exp/weights/best.pt"
    ckpt = torch.load(best, weights_only=True)
    assert ckpt["model"]["head.weight"].shape == (3, 40) and ckpt["args"]["mixup"] == 0.8
    assert ckpt["args"]["recipe"] == "imagenet" and ckpt["args"]["warmup_epochs"] == 0  # fine-tuning; --warmup-epochs
    capsys.readouterr()

    assert main(["classify", "val", "--weights", str(best), "--workers", "0", "--project", str(tmp_path / "v")]) == 0
    out = capsys.readouterr().out
    assert "all" in out and "triangle" in out and "top3" in out
    assert (tmp_path / "v/exp/confusion_matrix.png").is_file()

    for suffix in ("json", "csv"):
        saved = tmp_path / f"pred.{suffix}"
        argv = ["classify", "predict", "--weights", str(best), "--source", str(data / "val/circle"), "--topk", "2"]
        assert main([*argv, "--workers", "0", "--save", str(saved)]) == 0
        printed = capsys.readouterr().out.strip().splitlines()
        assert len(printed) == 4 and printed[0].startswith(str(data / "val/circle/0000.png"))
        if suffix == "json":
            rows = json.loads(saved.read_text())
            assert [len(r["top"]) for r in rows] == [2] * 4 and rows[0]["top"][0]["class"] in printed[0]
        else:
            with open(saved, newline="") as f:
                rows = list(csv.reader(f))
            assert rows[0] == ["path", "top1", "prob1", "top2", "prob2"] and len(rows) == 5

    # clear one-line errors, exit code 2
    assert main(["classify", "train", "--data", str(tmp_path / "missing")]) == 2
    assert "gmyolo classify train: error: --data: folder not found" in capsys.readouterr().err
    assert main(["val", "--weights", str(best)]) == 2
    assert "a gmyolo classification checkpoint; use `gmyolo classify val|predict`" in capsys.readouterr().err
    assert main(["classify", "predict", "--weights", str(best), "--source", str(tmp_path / "none/*.jpg")]) == 2
    assert "no images found" in capsys.readouterr().err


def train_args(*flags: str) -> ClassifyTrainArgs:
    """What `gmyolo classify train --data d FLAGS` trains with (the recipe resolved)."""
    return args_as(
        ClassifyTrainArgs, build_parser().parse_args(["classify", "train", "--data", "d", *flags])
    ).resolved()


def test_cli_recipe_flags(capsys):
    assert train_args().recipe == "scratch"  # batch 64, random weights
    assert train_args("--batch", "256").recipe == "imagenet"
    args = train_args("--weights", "authors.pth", "--batch", "16")
    assert args.recipe == "imagenet" and (args.lr, args.mixup, args.cutmix) == (5e-4, 0.8, 1.0)
    args = train_args("--batch", "16")
    assert args.lr * 16 / 512 == pytest.approx(2e-3) and (args.mixup, args.auto_augment) == (0.0, "")
    args = train_args("--recipe", "imagenet", "--batch", "16", "--mixup", "0", "--auto-augment", "", "--lr", "1e-3")
    assert (args.recipe, args.lr, args.mixup, args.cutmix, args.auto_augment) == ("imagenet", 1e-3, 0.0, 1.0, "")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["classify", "train", "--recipe", "fast"])
    assert "invalid choice: 'fast'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["classify", "train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "auto: imagenet when fine-tuning (--weights) or at --batch >= 256, else scratch" in text
    assert "(default: the recipe's: imagenet 0.0005; scratch 0.002*512/batch, so 0.002 at any batch)" in text
