"""Classification: folder data, the recipe's transforms, training that learns, exact reloads, resume, fine-tuning."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from gmyolo.data.classify import (
    ClassifyFolder,
    augment_ops,
    build_classify_loader,
    classify_eval_transform,
    classify_train_transform,
    collate_classify,
    make_classify_dataset,
)
from gmyolo.models.groupmixformer import VARIANTS, CheckpointError, groupmixformer
from gmyolo.models.yolo import DetectionModel
from gmyolo.tasks.classify import train as classify_module
from gmyolo.tasks.classify.model import build_classifier
from gmyolo.tasks.classify.options import ClassifyPredictArgs, ClassifyTrainArgs, ClassifyValArgs
from gmyolo.tasks.classify.predict import classify_predict
from gmyolo.tasks.classify.train import classify_train, seed_everything
from gmyolo.tasks.classify.val import classify_val, evaluate
from gmyolo.tasks.detect.checkpoint import load_checkpoint, save_checkpoint

# A GroupMixFormer small enough for CPU tests: one block per stage, the real architecture otherwise.
PICO = dict(embedding_dims=(20, 20, 40, 40), serial_depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2), drop_path_rate=0.1)
# The authors' recipe without its regularisers, so that a few steps show learning; lr is for a batch of 512.
PLAIN = dict(
    recipe="imagenet", mixup=0.0, cutmix=0.0, auto_augment="", reprob=0.0, label_smoothing=0.0, warmup_epochs=0, lr=1.0
)
FAST = dict(model="pico", imgsz=32, batch=8, workers=0, progress=False)


@pytest.fixture(scope="module", autouse=True)
def pico_variant():
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(VARIANTS, "pico", PICO)
        yield


@pytest.fixture(autouse=True)
def one_thread():
    # The pico model is dispatch-bound: a second thread only adds synchronisation (many times slower when
    # the cores are shared with other work).
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_classify_dataset(tmp_path_factory.mktemp("shapes"), n_train=16, n_val=8, imgsz=40, seed=0)


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    project = tmp_path_factory.mktemp("runs")
    torch.set_num_threads(1)  # module fixtures run before the per-test one above
    return classify_train(ClassifyTrainArgs(data=str(shapes), epochs=5, project=str(project), **FAST, **PLAIN))


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_generated_folder_dataset(shapes, tmp_path):
    train = ClassifyFolder(shapes / "train")
    assert train.names == ["circle", "square", "triangle"]
    assert train.counts() == [16, 16, 16]
    image, label, path, error = train[20]
    assert isinstance(image, Image.Image) and image.size == (40, 40) and label == 1 and error is None
    assert path.endswith("square/0004.png")
    again = make_classify_dataset(tmp_path / "again", n_train=16, n_val=8, imgsz=40, seed=0)
    assert (again / "train/square/0004.png").read_bytes() == (shapes / "train/square/0004.png").read_bytes()
    # val may hold a subset of the classes; a class the model does not know is an error naming it
    (tmp_path / "val/dog").mkdir(parents=True)
    Image.new("RGB", (20, 20)).save(tmp_path / "val/dog/a.png")
    with pytest.raises(ValueError, match=r"class folders \['dog'\] are not among the model's 3 classes"):
        ClassifyFolder(tmp_path / "val", train.names)
    with pytest.raises(OSError, match="classification folder not found"):
        ClassifyFolder(tmp_path / "nowhere")


def test_unreadable_images_are_reported_and_skipped(shapes, tmp_path, caplog):
    val = tmp_path / "val"
    shutil.copytree(shapes / "val", val)
    (val / "circle/broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    dataset = ClassifyFolder(val, transform=classify_eval_transform(32))
    assert len(dataset) == 25
    broken = [str(p) for p, _ in dataset.samples].index(str(val / "circle/broken.jpg"))
    images, labels, paths, unreadable = collate_classify([dataset[i] for i in (0, broken, 9)])
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [0, 1] and len(paths) == 2
    assert len(unreadable) == 1 and unreadable[0].startswith(str(val / "circle/broken.jpg"))
    model = groupmixformer("pico", num_classes=3)
    with caplog.at_level(logging.WARNING, logger="gmyolo"):
        metrics = evaluate(model, build_classify_loader(dataset, 8), dataset.names, torch.device("cpu"))
    assert int(metrics.confusion.sum()) == 24  # the broken file is not counted
    assert "skipped unreadable image" in caplog.text and "broken.jpg" in caplog.text


def test_recipe_transforms():
    train = classify_train_transform(32)
    names = [type(t).__name__ for t in train.transforms]
    assert names[0] == "RandomResizedCropAndInterpolation" and "RandAugment" in names and "RandomErasing" in names
    assert "BICUBIC" in str(train.transforms[0].interpolation).upper()
    eval_names = [type(t).__name__ for t in classify_eval_transform(224).transforms]
    assert eval_names[:2] == ["Resize", "CenterCrop"]
    assert classify_eval_transform(224).transforms[0].size == 256  # 224 / 0.875, as the authors test
    # RandAugment's top magnitude asks timm's posterize for 0 bits, which Pillow >= 13 refuses.
    posterize = [op for op in augment_ops(train) if op.name.startswith("Posterize")]
    assert posterize
    image = Image.new("RGB", (32, 32), (200, 100, 50))
    for op in posterize:
        op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0
        assert op(image).size == (32, 32)


def test_training_improves_accuracy(shapes, trained):
    seed_everything(0)  # the same initial weights as the run
    before = evaluate(
        build_classifier("pico", 3),
        build_classify_loader(ClassifyFolder(shapes / "val", transform=classify_eval_transform(32)), 8),
        ["circle", "square", "triangle"],
        torch.device("cpu"),
    )
    assert before.top1 < 0.5
    assert trained["top1"] >= 0.8 and trained["top1"] >= before.top1 + 0.4
    assert trained["top5"] == 1.0  # top-k with k = 3 classes
    assert set(trained["per_class"]) == {"circle", "square", "triangle"}
    rows = read_csv(f"{trained['save_dir']}/results.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert float(rows[-1]["train/loss"]) < float(rows[0]["train/loss"])


def test_run_folder_and_checkpoint_reload_to_identical_numbers(shapes, trained, tmp_path, capsys):
    run = trained["save_dir"]
    for name in ("args.yaml", "results.csv", "results.png", "confusion_matrix.png", "weights/best.pt"):
        assert (Path(run) / name).is_file(), name
    ckpt = torch.load(trained["best"], weights_only=True)
    assert ckpt["task"] == "classify" and ckpt["names"] == ["circle", "square", "triangle"]
    assert {"model", "ema", "optimizer", "epoch", "args", "model_config", "metrics", "data"} <= set(ckpt)
    assert ckpt["model"]["head.weight"].shape == (3, 40)
    v = classify_val(ClassifyValArgs(weights=trained["best"], workers=0, project=str(tmp_path), progress=False))
    for key in ("top1", "top5", "images", "per_class"):
        assert v[key] == trained[key], key
    assert v["loss"] == pytest.approx(trained["loss"], abs=1e-6)
    assert (tmp_path / "exp/confusion_matrix.png").is_file()
    # predict agrees with val image by image: its top-1 accuracy is val's
    out = classify_predict(
        ClassifyPredictArgs(weights=trained["best"], source=str(shapes / "val"), topk=2, workers=0, progress=False)
    )
    assert len(out) == 24 and all(len(r["top"]) == 2 for r in out)
    correct = sum(r["top"][0]["class"] == r["path"].split("/")[-2] for r in out)
    assert correct / 24 == pytest.approx(v["top1"])
    assert "circle" in capsys.readouterr().out


def test_recipe_with_mixup_ema_and_unreadable_images_resumes_exactly(shapes, tmp_path, monkeypatch, caplog):
    data = tmp_path / "data"
    shutil.copytree(shapes, data)
    (data / "train/square/broken.png").write_bytes(b"\x89PNG broken")  # skipped; mixup then needs an even batch
    base = dict(data=str(data), epochs=2, ema=True, plots=False, warmup_epochs=0.5, **{**FAST, "batch": 16})
    base["recipe"] = "imagenet"  # the authors' regularisers (mixup, cutmix, RandAugment) at batch 16
    with caplog.at_level(logging.WARNING, logger="gmyolo"):
        straight = classify_train(ClassifyTrainArgs(project=str(tmp_path / "a"), **base))
    assert "broken.png" in caplog.text
    args = torch.load(straight["last"], weights_only=True)["args"]
    assert args["mixup"] == 0.8 and args["cutmix"] == 1.0 and args["auto_augment"] == "rand-m9-mstd0.5-inc1"

    real_evaluate, calls = classify_module.evaluate, {"n": 0}

    def interrupt_in_epoch_2(*a, **k):  # Ctrl-C while epoch 2 validates: last.pt holds epoch 1
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_evaluate(*a, **k)

    monkeypatch.setattr(classify_module, "evaluate", interrupt_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        classify_train(ClassifyTrainArgs(project=str(tmp_path / "b"), **base))
    monkeypatch.setattr(classify_module, "evaluate", real_evaluate)
    last = tmp_path / "b/exp/weights/last.pt"
    assert torch.load(last, weights_only=True)["epoch"] == 0
    # workers as before: augmentation randomness lives in the loader workers
    resumed = classify_train(ClassifyTrainArgs(resume=str(last), workers=0, progress=False))
    assert resumed["save_dir"] == str(tmp_path / "b/exp")
    assert [r["epoch"] for r in read_csv(tmp_path / "b/exp/results.csv")] == ["1", "2"]
    a = torch.load(straight["last"], weights_only=True)
    b = torch.load(resumed["last"], weights_only=True)
    for part in ("model", "ema"):
        for k, v in a[part].items():
            torch.testing.assert_close(b[part][k], v, rtol=1e-5, atol=1e-6, msg=f"{part} {k}")
    with pytest.raises(ValueError, match="already finished"):
        classify_train(ClassifyTrainArgs(resume=resumed["last"], progress=False))


def test_resume_after_a_kill_between_the_csv_row_and_the_checkpoint_writes_each_epoch_once(
    shapes, tmp_path, monkeypatch
):
    # Regression: resuming kept the results.csv row of an epoch that last.pt does not hold, then wrote it again.
    real_evaluate, calls = classify_module.evaluate, {"n": 0}

    def interrupt_in_epoch_2(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_evaluate(*a, **k)

    monkeypatch.setattr(classify_module, "evaluate", interrupt_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        classify_train(ClassifyTrainArgs(data=str(shapes), epochs=2, project=str(tmp_path), plots=False, **FAST))
    monkeypatch.setattr(classify_module, "evaluate", real_evaluate)
    run = tmp_path / "exp"
    last = run / "weights/last.pt"
    assert torch.load(last, weights_only=True)["epoch"] == 0  # epoch 1 finished
    # What a run killed after writing epoch 2's row, before its checkpoint landed, leaves behind.
    with open(run / "results.csv", newline="") as f:
        header, row1 = list(csv.reader(f))
    stale = ["2", *(["-1"] * (len(header) - 1))]
    with open(run / "results.csv", "a", newline="") as f:
        csv.writer(f).writerow(stale)
    assert [r["epoch"] for r in read_csv(run / "results.csv")] == ["1", "2"]

    resumed = classify_train(ClassifyTrainArgs(resume=str(last), workers=0, progress=False))
    assert resumed["save_dir"] == str(run) and resumed["epochs_trained"] == 2
    rows = read_csv(run / "results.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]  # each epoch exactly once
    assert list(rows[0].values()) == row1  # the finished epoch's row is kept as it was
    assert rows[1]["train/loss"] != "-1"  # epoch 2's row is the resumed run's, not the killed run's
    assert torch.load(last, weights_only=True)["epoch"] == 1


def test_finetuning_from_the_authors_checkpoint_replaces_the_head(tmp_path):
    imagenet = groupmixformer("pico", num_classes=1000)
    torch.save({"model": imagenet.state_dict()}, tmp_path / "authors.pth")  # the authors' release format
    model = build_classifier("pico", 3, tmp_path / "authors.pth", drop_path=0.0)
    assert model.head.weight.shape == (3, 40) and model.num_classes == 3
    for k, v in imagenet.state_dict().items():
        if not k.startswith("head."):
            torch.testing.assert_close(model.state_dict()[k], v, msg=k)
    assert not torch.allclose(model.head.weight, imagenet.head.weight[:3])  # a fresh head, not a slice
    with pytest.raises(CheckpointError, match="pick the matching variant"):
        build_classifier("m", 3, tmp_path / "authors.pth")


def test_authors_format_classifier_evaluates_with_folder_names(shapes, tmp_path):
    torch.save({"model": groupmixformer("pico", num_classes=3).state_dict()}, tmp_path / "w.pth")
    v = classify_val(
        ClassifyValArgs(
            weights=str(tmp_path / "w.pth"), data=str(shapes), imgsz=32, workers=0, plots=False, progress=False
        )
    )
    assert v["images"] == 24 and set(v["per_class"]) == {"circle", "square", "triangle"}
    torch.save({"model": groupmixformer("pico", num_classes=5).state_dict()}, tmp_path / "w5.pth")
    with pytest.raises(ValueError, match="has 3 class folders but .* predicts 5"):
        classify_val(ClassifyValArgs(weights=str(tmp_path / "w5.pth"), data=str(shapes), progress=False))


def test_detection_and_classification_checkpoints_are_told_apart(trained, tmp_path):
    detector = tmp_path / "detector.pt"
    save_checkpoint(detector, DetectionModel("yolov5n-gmf-nano", nc=3), epoch=0)
    with pytest.raises(CheckpointError, match="detection checkpoint"):
        classify_val(ClassifyValArgs(weights=str(detector), progress=False))
    with pytest.raises(CheckpointError, match="detection checkpoint"):
        build_classifier("pico", 3, detector)
    with pytest.raises(CheckpointError, match="classification checkpoint"):
        load_checkpoint(trained["best"])


def test_bad_arguments_fail_before_any_work(shapes, tmp_path):
    with pytest.raises(ValueError, match="--data is required"):
        classify_train(ClassifyTrainArgs())
    with pytest.raises(ValueError, match="even --batch"):
        classify_train(ClassifyTrainArgs(data=str(shapes), batch=7, recipe="imagenet"))
    with pytest.raises(OSError, match="no train or val folder"):
        classify_train(ClassifyTrainArgs(data=str(shapes / "train"), project=str(tmp_path)))
    with pytest.raises(ValueError, match="larger than the 48 training images"):
        classify_train(ClassifyTrainArgs(data=str(shapes), batch=64, project=str(tmp_path), **PLAIN))
    with pytest.raises(ValueError, match="must end in .csv or .json"):
        classify_predict(ClassifyPredictArgs(source=str(shapes), save=str(tmp_path / "out.txt")))
