"""End-to-end: training on generated data, checkpoints, validation, resume, divergence, CLI and API."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from gmyolo import YOLO
from gmyolo.cli.main import main
from gmyolo.data.synth import make_synthetic_dataset
from gmyolo.errors import TrainingDiverged
from gmyolo.tasks.detect import train as trainer_module
from gmyolo.tasks.detect.train import TrainArgs, train
from gmyolo.tasks.detect.val import ValArgs, run_val

FAST = dict(model="yolov5n-gmf-nano", imgsz=64, batch=8, nbs=8, workers=0, progress=False)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return str(make_synthetic_dataset(tmp_path_factory.mktemp("synth"), seed=0, n_train=24, n_val=8, imgsz=96))


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_train_writes_a_complete_run_and_val_reproduces_it(synth, tmp_path):
    r = train(TrainArgs(data=synth, epochs=2, project=str(tmp_path), **FAST))
    run = tmp_path / "exp"
    for name in (
        "args.yaml",
        "hyp.yaml",
        "results.csv",
        "results.png",
        "labels.jpg",
        "train_batch0.jpg",
        "PR_curve.png",
        "F1_curve.png",
        "confusion_matrix.png",
        "weights/last.pt",
        "weights/best.pt",
    ):
        assert (run / name).is_file(), name
    rows = read_csv(run / "results.csv")
    assert [row["epoch"] for row in rows] == ["1", "2"] and "metrics/mAP_0.5:0.95" in rows[0]
    assert not list(run.glob("weights/*.tmp"))
    ckpt = torch.load(run / "weights/best.pt", weights_only=True)  # plain data only
    assert {"model", "ema", "optimizer", "epoch", "hyp", "args", "model_yaml", "names"} <= set(ckpt)
    assert ckpt["names"] == ["circle", "square", "triangle", "cross"]
    v = run_val(ValArgs(weights=r["best"], batch=16, project=str(tmp_path / "val"), progress=False))
    for key in ("mAP50", "mAP50-95", "precision", "recall"):
        assert v[key] == pytest.approx(r[key], abs=1e-6), key
    # A second run goes into a new folder.
    r2 = train(TrainArgs(data=synth, epochs=1, project=str(tmp_path), plots=False, **FAST))
    assert r2["save_dir"].endswith("exp2")


def test_training_improves_map(trained_run, untrained_weights, tmp_path):
    # ~130 optimiser steps on a CPU: far from converged (the quick start needs ~400 for mAP50 > 0.5), and the run is
    # chaotic (float rounding, e.g. the thread count, changes it like a new seed). Judged on the 64 training images
    # (~150 objects): the 16 validation images (37 objects) are too few at this stage (there the runs below reach
    # mAP50 0.0021-0.11, and their initial weights up to 0.0046). Measured with this fixture's config, 13 runs:
    # training seeds 0-7 with dataset seed 1 (seed 0 with 2 threads, as here, and with 1), dataset seed 2 with
    # training seeds 0 and 1, dataset seed 3 with 0 and 2. best.pt on the training images, min / median / max of 12:
    #   mAP50 0.0036 / 0.012 / 0.038, mAP50-95 0.0015 / 0.0053 / 0.019, precision 0.0026 / 0.035 / 0.56
    #   (seed 0 as here: 0.038, 0.019, 0.56); the runs' initial weights, max of 13: 0.0009, 0.0002, 0.0009.
    # The 13th run (training seed 1, dataset seed 2) barely learnt to classify (cls loss up 5%; mAP50 0.0013,
    # mAP50-95 0.0003, precision 0.0017) and fails this check, as it should; so a change that alters the float
    # rounding can fail it (1 run in 13): try another seed before suspecting the change.
    floors = {"mAP50": 0.0018, "mAP50-95": 0.0006, "precision": 0.0015}

    def evaluate(weights):
        kwargs = dict(split="train", batch=16, workers=0, plots=False, progress=False, project=str(tmp_path))
        return run_val(ValArgs(weights=weights, **kwargs))

    trained, untrained = evaluate(str(trained_run / "weights/best.pt")), evaluate(untrained_weights)
    for key, floor in floors.items():
        assert trained[key] > floor, (key, trained)
        assert untrained[key] < floor, (key, untrained)  # the negative control fails every term of the check
    # Mean train loss, last / first epoch, the same 12 runs: box 0.75-0.92, cls 0.77-0.92 (the 13th: 0.92, 1.05).
    rows = read_csv(trained_run / "results.csv")
    for loss in ("train/box_loss", "train/cls_loss"):
        assert float(rows[-1][loss]) < 0.96 * float(rows[0][loss]), loss


def test_resume_continues_exactly(synth, tmp_path, monkeypatch, validator_interrupted_at):
    base = dict(data=synth, epochs=3, plots=False, close_mosaic=1, **FAST)
    straight = train(TrainArgs(project=str(tmp_path / "a"), **base))

    # Ctrl-C while epoch 2 validates: last.pt holds epoch 1
    monkeypatch.setattr(
        trainer_module.DetectionTrainer, "validator", validator_interrupted_at(trainer_module.Validator)
    )
    with pytest.raises(KeyboardInterrupt):
        train(TrainArgs(project=str(tmp_path / "b"), **base))
    monkeypatch.undo()
    last = tmp_path / "b/exp/weights/last.pt"
    assert torch.load(last, weights_only=True)["epoch"] == 0
    resumed = train(TrainArgs(resume=str(last), progress=False))
    assert resumed["save_dir"] == str(tmp_path / "b/exp")
    assert [r["epoch"] for r in read_csv(tmp_path / "b/exp/results.csv")] == ["1", "2", "3"]
    a = torch.load(straight["last"], weights_only=True)
    b = torch.load(resumed["last"], weights_only=True)
    assert a["updates"] == b["updates"]
    for part in ("model", "ema"):  # bit for bit (test_faults.py also compares the optimizer, after a SIGKILL)
        for k, v in a[part].items():
            assert torch.equal(b[part][k], v), (part, k)
    assert read_csv(tmp_path / "a/exp/results.csv") == read_csv(tmp_path / "b/exp/results.csv")
    with pytest.raises(ValueError, match="already finished"):
        train(TrainArgs(resume=resumed["last"], progress=False))


def test_nan_loss_stops_with_a_clear_message(synth, tmp_path, monkeypatch):
    real_call, calls = trainer_module.ComputeLoss.__call__, {"n": 0}

    def diverge_in_epoch_2(self, preds, targets):
        calls["n"] += 1
        total, items = real_call(self, preds, targets)
        return (total * float("nan"), items) if calls["n"] > 3 else (total, items)

    monkeypatch.setattr(trainer_module.ComputeLoss, "__call__", diverge_in_epoch_2)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2.*last good checkpoint is .*last\.pt"):
        train(TrainArgs(data=synth, epochs=3, project=str(tmp_path), plots=False, **FAST))
    assert torch.load(tmp_path / "exp/weights/last.pt", weights_only=True)["epoch"] == 0


def test_cli_train_val_and_errors(synth, tmp_path, capsys):
    argv = [
        "train",
        "--data",
        synth,
        "--model",
        "yolov5n-gmf-nano",
        "--epochs",
        "1",
        "--imgsz",
        "70",
        "--batch",
        "8",
        "--workers",
        "0",
        "--project",
        str(tmp_path),
        "--no-plots",
        "--hyp",
        "mosaic=0.5",
    ]
    assert main(argv) == 0
    assert (tmp_path / "exp/weights/best.pt").is_file()
    assert torch.load(tmp_path / "exp/weights/best.pt", weights_only=True)["args"]["imgsz"] == 70
    assert main(["val", "--weights", str(tmp_path / "exp/weights/best.pt"), "--project", str(tmp_path / "v")]) == 0
    out = capsys.readouterr().out
    assert "Class" in out and "mAP50-95" in out and "circle" in out
    # COCO-format detections, scored by pycocotools against ground truth made from the labels.
    assert (
        main(
            [
                "val",
                "--weights",
                str(tmp_path / "exp/weights/best.pt"),
                "--save-json",
                "--no-plots",
                "--project",
                str(tmp_path / "v"),
                "--name",
                "json",
            ]
        )
        == 0
    )
    assert "pycocotools: mAP50-95" in capsys.readouterr().out
    detections = json.loads((tmp_path / "v/json/predictions.json").read_text())
    assert detections and {"image_id", "category_id", "bbox", "score"} <= set(detections[0])
    for bad, message in [
        (["--epochs", "-1"], "--epochs must be a positive"),
        (["--hyp", "lr00=1"], "did you mean 'lr0'"),
        (["--device", "7"], "use --device cpu"),
        (["--data", "nowhere.yaml"], "not found"),
    ]:
        assert main(["train", "--data", synth, *bad, "--project", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert main(["val", "--weights", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_python_api(synth, tmp_path):
    model = YOLO("yolov5n-gmf-nano")
    assert model.info(imgsz=64)["strides"] == [8, 16, 32]
    with pytest.raises(ValueError, match="needs trained weights"):
        model.val()
    results = model.train(
        data=synth, epochs=1, project=str(tmp_path), plots=False, **{k: v for k, v in FAST.items() if k != "model"}
    )
    assert model.weights == results["best"] and model.names[0] == "circle"
    metrics = model.val(project=str(tmp_path / "val"), progress=False, batch=16)
    assert metrics["mAP50"] == pytest.approx(results["mAP50"], abs=1e-6)


def test_early_stopping(synth, tmp_path, monkeypatch, caplog):
    class NeverBetter(trainer_module.Validator):  # real validation, but a fitness that never improves after epoch 1
        def __call__(self, model, loader):
            results = super().__call__(model, loader)
            results.metrics.ap[:] = 0.0
            return results

    monkeypatch.setattr(trainer_module.DetectionTrainer, "validator", NeverBetter)
    with caplog.at_level("INFO", logger="gmyolo"):
        r = train(TrainArgs(data=synth, epochs=5, patience=2, project=str(tmp_path), plots=False, **FAST))
    assert r["epochs_trained"] == 3 and "early stop" in caplog.text
    assert [row["epoch"] for row in read_csv(tmp_path / "exp/results.csv")] == ["1", "2", "3"]
