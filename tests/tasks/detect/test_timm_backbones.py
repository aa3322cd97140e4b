"""The shipped detectors on timm backbones of three families (a CNN, a hierarchical transformer, a mobile net), under
the YOLOv5 and the anchor-free heads: each passes `gmyolo info`, trains a few steps on generated data, and exports
to ONNX within the export tolerance. Small images, one thread."""

from __future__ import annotations

import json

import pytest
import torch

from gmyolo.cli.main import main
from gmyolo.data.synth import make_synthetic_dataset
from gmyolo.models.yolo import DetectionModel
from gmyolo.tasks.detect.export import ExportArgs, export
from gmyolo.tasks.detect.hyp import resolve_hyp
from gmyolo.tasks.detect.train import TrainArgs, build_optimizer, train

# name -> (head's output format, parameters at nc=80 from `gmyolo info`, optimizer `auto` picks)
CONFIGS = {
    "yolov5s-timm-convnext": ("xywh_obj_cls", 6_787_317, "SGD"),  # ConvNeXt-Atto: a CNN
    "yolo11s-timm-pvtv2": ("xywh_cls", 8_664_544, "AdamW"),  # PVT-v2-B0: a hierarchical transformer
    "yolo11n-timm-mobilenetv4": ("xywh_cls", 3_715_600, "SGD"),  # MobileNetV4-Conv-Small: a mobile net
}


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return str(make_synthetic_dataset(tmp_path_factory.mktemp("synth"), seed=0, n_train=8, n_val=4, imgsz=64))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_info_training_steps_and_onnx_export(name, data, tmp_path, capsys):
    output_format, params, optimizer = CONFIGS[name]
    assert main(["info", "--model", name, "--imgsz", "64", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == params and info["strides"] == [8, 16, 32] and info["output_format"] == output_format
    assert info["layers"][0]["module"] == "Timm" and info["layers"][1]["module"] == "  map 1 of layer 0"
    opt = build_optimizer(DetectionModel(name, nc=2), "auto", resolve_hyp({}), batch=4, accumulate=1)
    assert type(opt).__name__ == optimizer

    args = TrainArgs(
        data=data, model=name, epochs=1, imgsz=64, batch=4, nbs=4, workers=0, device="cpu", project=str(tmp_path),
        noautoanchor=True, plots=False, tensorboard=False, progress=False,
    )  # fmt: skip
    result = train(args)  # 2 optimiser steps
    best = torch.load(result["best"], weights_only=True)
    assert best["updates"] == 2 and all(
        torch.isfinite(v).all() for v in best["model"].values() if v.is_floating_point()
    )

    exported = export(ExportArgs(weights=result["best"], output=str(tmp_path / f"{name}.onnx")))
    print(f"{name}: ONNX max |difference| {exported['max_abs_diff']:.2e}")
    assert exported["max_abs_diff"] <= ExportArgs().tolerance
