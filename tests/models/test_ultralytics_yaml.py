"""Ultralytics' model YAML format, read by the same builder: scales (from the file name or an argument), no
anchors, ``Detect, [nc]``, ``reg_max`` / ``end2end`` / ``activation``; YOLOv8, YOLO11, YOLO12 and YOLO26 detection
with Ultralytics' exact parameter counts and layer order; the new blocks and the anchor-free heads.

Figures were counted on Ultralytics' own models (only the numbers are used here; ultralytics is AGPL-3.0 and no
dependency of gmyolo):
    python3 -m venv --system-site-packages /tmp/ulvenv  (+ a .pth with /work/main/.venv's site-packages, for torch)
    /tmp/ulvenv/bin/pip install ultralytics==8.4.190
    from ultralytics.nn.tasks import DetectionModel
    m = DetectionModel(f"{name}.yaml", nc=80); sum(p.numel() for p in m.parameters())
    [(type(layer).__name__, sum(p.numel() for p in layer.parameters())) for layer in m.model]
When the package is importable, the tests below also build Ultralytics' models and compare state dicts and outputs.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from gmyolo.models.yolo import AnchorFreeDetect, DetectionModel, ModelConfigError
from gmyolo.models.yolo.builder import guess_model_scale, parse_activation

ULTRALYTICS_PARAMS = {
    "yolov8n": 3_157_200, "yolov8s": 11_166_560, "yolov8m": 25_902_640, "yolov8l": 43_691_520, "yolov8x": 68_229_648,
    "yolo11n": 2_624_080, "yolo11s": 9_458_752, "yolo11m": 20_114_688, "yolo11l": 25_372_160, "yolo11x": 56_966_176,
    "yolo12n": 2_602_288, "yolo12s": 9_284_096, "yolo12m": 20_199_168, "yolo12l": 26_450_784, "yolo12x": 59_210_784,
    "yolo26n": 2_572_280, "yolo26s": 10_009_784, "yolo26m": 21_896_248, "yolo26l": 26_299_704, "yolo26x": 58_993_368,
}  # fmt: skip
# Ultralytics' layer table at scale n: module type and parameter count of every layer, in order.
ULTRALYTICS_LAYERS = {
    "yolov8n": (
        "Conv:464 Conv:4672 C2f:7360 Conv:18560 C2f:49664 Conv:73984 C2f:197632 Conv:295424 C2f:460288 "
        "SPPF:164608 Upsample:0 Concat:0 C2f:148224 Upsample:0 Concat:0 C2f:37248 Conv:36992 Concat:0 "
        "C2f:123648 Conv:147712 Concat:0 C2f:493056 Detect:897664"
    ),
    "yolo11n": (
        "Conv:464 Conv:4672 C3k2:6640 Conv:36992 C3k2:26080 Conv:147712 C3k2:87040 Conv:295424 C3k2:346112 "
        "SPPF:164608 C2PSA:249728 Upsample:0 Concat:0 C3k2:111296 Upsample:0 Concat:0 C3k2:32096 Conv:36992 "
        "Concat:0 C3k2:86720 Conv:147712 Concat:0 C3k2:378880 Detect:464912"
    ),
    "yolo26n": (
        "Conv:464 Conv:4672 C3k2:6640 Conv:36992 C3k2:26080 Conv:147712 C3k2:87040 Conv:295424 C3k2:346112 "
        "SPPF:164608 C2PSA:249728 Upsample:0 Concat:0 C3k2:119808 Upsample:0 Concat:0 C3k2:34304 Conv:36992 "
        "Concat:0 C3k2:95232 Conv:147712 Concat:0 C3k2:463104 Detect:309656"
    ),
    "yolo12n": (
        "Conv:464 Conv:4672 C3k2:6640 Conv:36992 C3k2:26080 Conv:147712 A2C2f:180864 Conv:295424 A2C2f:689408 "
        "Upsample:0 Concat:0 A2C2f:86912 Upsample:0 Concat:0 A2C2f:24000 Conv:36992 Concat:0 A2C2f:74624 "
        "Conv:147712 Concat:0 C3k2:378880 Detect:464912"
    ),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(ULTRALYTICS_PARAMS))
def test_ultralytics_parameter_parity(name):
    model = DetectionModel(name)
    assert model.nc == 80 and model.yaml["scale"] == name[-1]
    assert n_params(model) == ULTRALYTICS_PARAMS[name]


@pytest.mark.parametrize("name", list(ULTRALYTICS_LAYERS))
def test_ultralytics_layer_order(name):
    rows = DetectionModel(name).layer_rows
    ours = " ".join(f"{r.module.removeprefix('nn.')}:{r.params}" for r in rows)
    assert ours == ULTRALYTICS_LAYERS[name]


def test_heads_of_each_family():
    v8, v11, v26 = (DetectionModel(n).detect for n in ("yolov8n", "yolo11n", "yolo26n"))
    assert all(isinstance(h, AnchorFreeDetect) for h in (v8, v11, v26))
    assert (v8.reg_max, v8.end2end, v11.reg_max, v26.reg_max, v26.end2end) == (16, False, 16, 1, True)
    assert isinstance(v8.cv3[0][0], nn.Module) and v8.cv3[0][0].conv.kernel_size == (3, 3)  # YOLOv8: 3x3 convs
    assert v11.cv3[0][0][0].conv.groups == v11.cv3[0][0][0].conv.in_channels  # YOLO11+: depthwise first
    assert v26.one2one_cv2 is not None and isinstance(v26.dfl, nn.Identity)
    assert (v8.output_format, v26.output_format) == ("xywh_cls", "xyxy_score_class")


def test_scale_from_the_name_an_argument_or_the_first_row(caplog):
    assert guess_model_scale("yolo11s-gmf-t.yaml") == "s" and guess_model_scale("my/yolov8x-p2.yaml") == "x"
    assert guess_model_scale("yolov5s-gmf-t") == "s" and guess_model_scale("groupmixformer.yaml") is None
    assert DetectionModel("yolo11", scale="s").yaml["scale"] == "s"
    assert n_params(DetectionModel("yolo11.yaml", scale="m")) == ULTRALYTICS_PARAMS["yolo11m"]
    assert DetectionModel("yolo11n", scale="l").yaml["scale"] == "l"  # the argument wins over the name
    with caplog.at_level(logging.WARNING, logger="gmyolo"):
        assert DetectionModel("yolo11").yaml["scale"] == "n"
    assert "no model scale given" in caplog.text
    with pytest.raises(ModelConfigError, match=r"yolo11.yaml line \d+: scale 'q' is not one of the file's scales"):
        DetectionModel("yolo11", scale="q")
    with pytest.raises(ModelConfigError, match="scale 's' requested, but the model YAML has no 'scales' block"):
        DetectionModel("yolov5n", scale="s")


def test_a_copied_yaml_builds_at_the_scale_of_its_name(tmp_path):
    from gmyolo.models.yolo.builder import resolve_model_path

    text = resolve_model_path("yolo11").read_text()
    (tmp_path / "my-yolo11s.yaml").write_text(text)
    assert n_params(DetectionModel(tmp_path / "my-yolo11s.yaml")) == ULTRALYTICS_PARAMS["yolo11s"]
    (tmp_path / "yolo11.yaml").write_text(text)  # yolo11x.yaml does not exist: Ultralytics reads yolo11.yaml at x
    model = DetectionModel(str(tmp_path / "yolo11x.yaml"))
    assert model.yaml["yaml_file"] == str(tmp_path / "yolo11.yaml") and model.yaml["scale"] == "x"
    # A checkpoint's YAML (a dict) keeps its scale.
    assert n_params(DetectionModel(model.yaml)) == ULTRALYTICS_PARAMS["yolo11x"]


def test_activation_key_is_parsed_not_evaluated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert isinstance(parse_activation("nn.ReLU()")(), nn.ReLU)
    leaky = parse_activation("torch.nn.LeakyReLU(0.1)")()
    assert isinstance(leaky, nn.LeakyReLU) and leaky.negative_slope == 0.1
    from gmyolo.models.yolo.builder import resolve_model_path

    text = resolve_model_path("yolov8").read_text().replace("nc: 80\n", "nc: 80\nactivation: nn.ReLU()\n")
    (tmp_path / "yolov8n-relu.yaml").write_text(text)
    model = DetectionModel(tmp_path / "yolov8n-relu.yaml")
    acts = {type(m.act) for m in model.modules() if hasattr(m, "act") and hasattr(m, "bn")}
    assert acts == {nn.ReLU}  # every Conv built with act=True (YOLOv8 has no linear Conv)
    assert {type(m.act) for m in DetectionModel("yolov8n").modules() if hasattr(m, "bn")} == {nn.SiLU}  # no leak
    for bad, message in [
        ("\"__import__('os').system('touch pwned')\"", "must be written as nn.<Name>"),
        ("nn.Linear(3, 4)", "unknown activation 'Linear'"),
        ("nn.LeakyReLU(slope=2)", "activation 'nn.LeakyReLU"),
        ("[1, 2]", "must be a string"),
    ]:
        (tmp_path / "bad.yaml").write_text(text.replace("activation: nn.ReLU()", f"activation: {bad}"))
        with pytest.raises(ModelConfigError, match=rf"bad.yaml line 6: .*{message}"):
            DetectionModel(tmp_path / "bad.yaml", scale="n")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("nc: 80\n", "nc: 80\nreg_max: 0\n", r"line 6: 'reg_max' must be an integer from 1 to 64"),
        ("nc: 80\n", "nc: 80\nend2end: yes please\n", r"line 6: 'end2end' must be true or false"),
        ("  n: [0.50, 0.25, 1024]", "  n: [0.50, 0.25]", r"'scales' must map scale names to \[depth, width"),
        ("[[16, 19, 22], 1, Detect, [nc]]", "[[16, 19, 22], 1, Detect, [nc, {reg_max: 'x'}]]", "cannot build Detect"),
        ("[-1, 2, C2PSA, [1024]]", "[-1, 2, C2PSA, [512]]", r"cannot build C2PSA .*keeps its input width"),
        (
            "[-1, 1, SPPF, [1024, 5]]",
            "[-1, 1, SPPF, [1024, 4]]",
            r"SPPF fails on input 1x256x2x2: Sizes of tensors must match",
        ),
    ],
)
def test_bad_ultralytics_yaml_names_the_line(tmp_path, old, new, message):
    from gmyolo.models.yolo.builder import resolve_model_path

    text = resolve_model_path("yolo11").read_text()
    assert text.count(old) == 1
    (tmp_path / "yolo11n.yaml").write_text(text.replace(old, new))
    with pytest.raises(ModelConfigError, match=message) as err:
        DetectionModel(tmp_path / "yolo11n.yaml")
    assert str(err.value).startswith(str(tmp_path / "yolo11n.yaml")) and "\n" not in str(err.value)


def test_anchor_free_outputs_train_and_eval():
    model = DetectionModel("yolo11n-gmf-nano", nc=3)
    x = torch.randn(2, 3, 96, 128)
    raw = model.train()(x)
    n = 12 * 16 + 6 * 8 + 3 * 4
    assert raw["boxes"].shape == (2, 64, n) and raw["scores"].shape == (2, 3, n)
    assert raw["sizes"] == [(12, 16), (6, 8), (3, 4)]
    (raw["boxes"].sum() + raw["scores"].sum()).backward()
    assert model.model[0].conv_stem.proj1.weight.grad is not None
    decoded, _ = model.eval()(x)
    assert decoded.shape == (2, n, 4 + 3) and ((decoded[..., 4:] >= 0) & (decoded[..., 4:] <= 1)).all()
    assert (decoded[..., 2:4] >= 0).all()


def test_anchor_free_bias_priors_from_the_strides():
    head = DetectionModel("yolo11n", nc=4).detect
    for box, cls, s in zip(head.cv2, head.cv3, (8, 16, 32)):
        assert torch.all(box[-1].bias == 2.0)
        torch.testing.assert_close(cls[-1].bias, torch.full((4,), __import__("math").log(5 / 4 / (640 / s) ** 2)))


def test_fuse_keeps_anchor_free_outputs():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 96, 128)
    for name in ("yolo11n-gmf-nano", "yolov8n"):
        model = DetectionModel(name, nc=5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        model.eval()
        with torch.no_grad():
            before = model(x)[0]
            model.fuse()
            after = model(x)[0]
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.detect.modules())
        torch.testing.assert_close(after, before, atol=1e-3, rtol=1e-4)


# --------------------------------------------------------------------------------------------------
# Against Ultralytics itself, when it is installed
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ultralytics():
    pytest.importorskip("ultralytics", reason="ultralytics is not installed (not a gmyolo dependency)")
    import ultralytics.nn.tasks

    return ultralytics


@pytest.mark.parametrize("name", ["yolov8n", "yolo11n", "yolo12n", "yolo26n", "yolo11m"])
def test_same_state_dict_and_outputs_as_ultralytics(ultralytics, name):
    theirs = ultralytics.nn.tasks.DetectionModel(f"{name}.yaml", nc=80, verbose=False).eval()
    ours = DetectionModel(name).eval()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in theirs.state_dict().items()
    ]
    ours.load_state_dict(theirs.state_dict())
    if ours.detect.end2end:
        theirs.model[-1].end2end = True  # their one-to-one inference
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        want, got = theirs(x)[0], ours(x)[0]
    if not ours.detect.end2end:
        want = want.permute(0, 2, 1)  # theirs is B×(4+nc)×N
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_ultralytics_own_yaml_files_build_unchanged(ultralytics):
    from pathlib import Path

    root = Path(ultralytics.__file__).parent / "cfg/models"
    for family, file in (("yolov8", "v8/yolov8.yaml"), ("yolo11", "11/yolo11.yaml"), ("yolo26", "26/yolo26.yaml")):
        for scale in "nsmlx":
            assert n_params(DetectionModel(root / file, scale=scale)) == ULTRALYTICS_PARAMS[family + scale]
