"""timm and torchvision backbones as YAML layers: layer indices, channels and strides from the model itself, weights
from files the tests write (never a download), the pretrained learning-rate ratio, frozen stages, one-line errors,
and Ultralytics' TorchVision + Index rows read unchanged (with its parameter count)."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

from gmyolo.models.yolo import BackboneOutput, DetectionModel, ModelConfigError
from gmyolo.models.yolo.external import Index, Timm, TorchVision, TorchVisionBackbone
from gmyolo.tasks.detect.checkpoint import model_from_checkpoint, portable_yaml, save_checkpoint
from gmyolo.tasks.detect.hyp import resolve_hyp
from gmyolo.tasks.detect.train import backbones, build_optimizer, freeze_layers


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def detector(layer: list, levels=(0, 1, 2), **over) -> dict:
    """A model dict: the backbone layer (3 maps), a 1x1 conv on P5, the anchor-free head on P3, P4 and the conv."""
    return dict(
        nc=2,
        backbone=[layer],
        head=[[levels[2], 1, "Conv", [64, 1, 1]], [[levels[0], levels[1], -1], 1, "Detect", ["nc"]]],
        **over,
    )


def test_timm_maps_take_consecutive_indices_with_timm_channels_and_strides():
    model = DetectionModel(detector([-1, 1, "Timm", ["convnext_atto", [1, 2, 3]]]))
    backbone = model.model[0]
    assert isinstance(backbone, Timm) and all(isinstance(model.model[i], BackboneOutput) for i in (1, 2))
    assert backbone.out_channels == [80, 160, 320] and backbone.out_strides == [8, 16, 32]
    assert model.model[3].conv.in_channels == 320  # layer 3 reads map 2 (P5)
    assert [m[0].conv.in_channels for m in model.detect.cv2] == [80, 160, 64]
    assert model.stride.tolist() == [8, 16, 32]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        maps = backbone.eval()(x)
    assert [tuple(m.shape[1:]) for m in maps] == [(80, 8, 12), (160, 4, 6), (320, 2, 3)]
    # The default out_indices: the last three stages (resnet18's stages start at its stride-2 stem).
    model = DetectionModel(detector([-1, 1, "Timm", ["resnet18"]]))
    assert model.model[0].out_strides == [8, 16, 32] and model.model[0].out_channels == [128, 256, 512]


def test_timm_weights_from_a_file_lower_lr_and_a_checkpoint_that_does_not_need_the_file(tmp_path):
    torch.manual_seed(3)
    source = timm.create_model("convnext_atto")
    file = tmp_path / "convnext_atto.pth"
    torch.save(source.state_dict(), file)
    cfg = detector([-1, 1, "Timm", ["convnext_atto", [1, 2, 3], {"pretrained_file": str(file)}]])
    model = DetectionModel(cfg)
    backbone = model.model[0]
    assert backbone.pretrained_loaded
    loaded = dict(backbone.model.named_parameters())
    for name, p in source.named_parameters():
        if name.startswith(("stem.", "stages.")):
            assert torch.equal(loaded[name.replace("stem.", "stem_", 1).replace("stages.", "stages_", 1)], p), name
    hyp = resolve_hyp({})
    opt = build_optimizer(model, "SGD", hyp, batch=8, accumulate=1)
    scales = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    assert {scales[id(p)] for p in backbone.parameters()} == {hyp["backbone_lr_ratio"]}
    assert {scales[id(p)] for p in model.detect.parameters() if p.requires_grad} == {1.0}
    # The checkpoint's YAML names no file: rebuilding it neither reads nor downloads weights.
    assert portable_yaml(model.yaml)["backbone"][0][3] == ["convnext_atto", [1, 2, 3]]
    save_checkpoint(tmp_path / "best.pt", model)
    file.unlink()
    rebuilt = model_from_checkpoint(torch.load(tmp_path / "best.pt", weights_only=True), use_ema=False)
    assert not rebuilt.model[0].pretrained_loaded
    for (k, v), w in zip(model.state_dict().items(), rebuilt.state_dict().values()):
        assert torch.equal(v, w), k


def test_freeze_stages_of_timm_and_torchvision_backbones_keeps_batchnorm_statistics():
    model = DetectionModel(detector([-1, 1, "Timm", ["resnet18", [2, 3, 4]]]))
    backbone = model.model[0]
    assert backbones(model) == [backbone] and backbone.num_stages == 5  # act1 (stem), layer1..4
    freeze_layers(model, 0, 2)  # what --freeze-stages 2 does: the stem (stage 0) and layer1
    net = backbone.model
    frozen = [net.conv1, net.bn1, net.layer1]
    assert not any(p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for m in (net.layer2, net.layer3, net.layer4) for p in m.parameters())
    model.train()
    assert not net.bn1.training and not net.layer1[0].bn1.training and net.layer2[0].bn1.training
    convnext = DetectionModel(detector([-1, 1, "Timm", ["convnext_atto", [1, 2, 3]]])).model[0]
    convnext.freeze_stages(1)  # the stem goes with stage 0
    assert not any(p.requires_grad for p in convnext.model.stem_0.parameters())
    assert not any(p.requires_grad for p in convnext.model.stages_0.parameters())
    assert all(p.requires_grad for p in convnext.model.stages_1.parameters())
    tv = DetectionModel(detector([-1, 1, "TorchVision", ["resnet18", [2, 3, 4]]]))
    freeze_layers(tv, 0, 3)
    layers = tv.model[0].layers  # conv1 bn1 relu maxpool, layer1's 2 blocks, layer2's 2 blocks, ...
    assert not any(p.requires_grad for m in layers[:8] for p in m.parameters())
    assert all(p.requires_grad for m in layers[8:] for p in m.parameters())
    freeze_layers(tv, 1, 0)  # --freeze 1: the whole backbone layer, with its statistics
    tv.train()
    assert not any(p.requires_grad for p in tv.model[0].parameters()) and not layers[-1].bn2.training


def test_torchvision_maps_from_a_weights_file_equal_torchvisions_own(tmp_path):
    torch.manual_seed(4)
    net = torchvision.models.resnet18().eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
    file = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), file)
    model = DetectionModel(detector([-1, 1, "TorchVision", ["resnet18", [2, 3, 4], {"weights_file": str(file)}]]))
    backbone = model.model[0]
    assert isinstance(backbone, TorchVisionBackbone) and backbone.pretrained_loaded
    assert backbone.out_channels == [128, 256, 512] and backbone.out_strides == [8, 16, 32]
    assert model.stride.tolist() == [8, 16, 32]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = backbone.eval()(x)
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)(x)
        p3 = net.layer2(stem)
        p5 = net.layer4(net.layer3(p3))
    torch.testing.assert_close(maps[0], p3, rtol=0, atol=0)
    torch.testing.assert_close(maps[2], p5, rtol=0, atol=0)
    assert portable_yaml(model.yaml)["backbone"][0][3] == ["resnet18", [2, 3, 4]]


# Ultralytics' documented ConvNeXt example (facts only: the rows' values), with weights null instead of DEFAULT so
# that nothing is downloaded. Ultralytics 8.4.190 counts 32,082,976 parameters for it (27,818,592 in the
# TorchVision layer, 4,264,384 in Detect): DetectionModel(yaml, nc=80) on /tmp/ulvenv, only the numbers used here.
ULTRALYTICS_CONVNEXT = dict(
    nc=80,
    backbone=[[-1, 1, "TorchVision", [768, "convnext_tiny", None, True, 2, True]]],
    head=[
        [0, 1, "Index", [192, 4]],
        [0, 1, "Index", [384, 6]],
        [0, 1, "Index", [768, 8]],
        [[1, 2, 3], 1, "Detect", ["nc"]],
    ],
)


def test_ultralytics_torchvision_and_index_rows_build_unchanged():
    model = DetectionModel(ULTRALYTICS_CONVNEXT)
    assert isinstance(model.model[0], TorchVision) and all(isinstance(model.model[i], Index) for i in (1, 2, 3))
    assert sum(p.numel() for p in model.parameters()) == 32_082_976
    assert sum(p.numel() for p in model.model[0].parameters()) == 27_818_592
    assert model.stride.tolist() == [8, 16, 32] and [r.module for r in model.layer_rows][:2] == ["TorchVision", "Index"]
    model.eval()
    with torch.no_grad():
        decoded, _ = model(torch.zeros(1, 3, 64, 96))
    assert decoded.shape == (1, 8 * 12 + 4 * 6 + 2 * 3, 84)


def test_ultralytics_torchvision_with_weights_default_asks_torchvision_for_them(monkeypatch):
    asked = []
    real = torchvision.models.get_model

    def no_download(name, weights=None, **kwargs):  # what DEFAULT would fetch; here random weights
        asked.append((name, weights))
        return real(name, weights=None, **kwargs)

    monkeypatch.setattr(torchvision.models, "get_model", no_download)
    cfg = {
        **ULTRALYTICS_CONVNEXT,
        "backbone": [[-1, 1, "TorchVision", [768, "convnext_tiny", "DEFAULT", True, 2, True]]],
    }
    model = DetectionModel(cfg)
    assert asked == [("convnext_tiny", "DEFAULT")] and model.model[0].pretrained_loaded
    # A checkpoint rebuilds without the download: weights None (also when the row leaves them at their default).
    assert portable_yaml(model.yaml)["backbone"][0][3] == [768, "convnext_tiny", None, True, 2, True]
    assert portable_yaml({"backbone": [[-1, 1, "TorchVision", [768, "convnext_tiny"]]], "head": []})["backbone"][0][
        3
    ] == [768, "convnext_tiny", None]


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (
            ["Timm", ["convnext_atoo", [1, 2, 3]]],
            r"layer 0\).*unknown timm model 'convnext_atoo' \(closest: convnext_atto",
        ),
        (["Timm", ["convnext_atto", [1, 2, 5]]], r"convnext_atto has 4 feature stages \(0-3, strides 4, 8, 16, 32\)"),
        (["Timm", ["convnext_atto", [1, 2, 3], {"pretrained_file": "nowhere.pth"}]], "pretrained_file not found"),
        (["TorchVision", ["resnet81", [2, 3, 4]]], r"unknown torchvision model 'resnet81' \(closest: resnet18"),
        (["TorchVision", ["resnet18", [2, 3, 5]]], r"resnet18 has 5 stages \(0-4, strides 2, 4, 8, 16, 32\)"),
        (["TorchVision", [500, "resnet18", None, True, 2]], "gives 512-channel maps here, not 500"),
    ],
)
def test_bad_backbone_rows_are_one_line_errors_naming_the_layer(layer, message):
    with pytest.raises(ModelConfigError, match=message) as e:
        DetectionModel(detector([-1, 1, *layer]))
    assert "\n" not in str(e.value)


def test_index_rows_that_do_not_fit_say_what_would():
    cfg = {**ULTRALYTICS_CONVNEXT, "head": [[0, 1, "Index", [190, 4]], *ULTRALYTICS_CONVNEXT["head"][1:]]}
    with pytest.raises(ModelConfigError, match=r"layer 1\).*element 4 has 192 channels, not 190: write \[192, 4\]"):
        DetectionModel(cfg)
    cfg["head"][0] = [0, 1, "Index", [192, 9]]
    with pytest.raises(ModelConfigError, match=r"index 9 is past the 9 elements .*7: 768ch/32, 8: 768ch/32\)"):
        DetectionModel(cfg)


def test_a_wrong_weights_file_is_a_clear_error(tmp_path):
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ModelConfigError, match=r"r18.pth does not fit timm's convnext_atto"):
        DetectionModel(detector([-1, 1, "Timm", ["convnext_atto", 3, {"pretrained_file": str(tmp_path / "r18.pth")}]]))
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pth")
    row = [-1, 1, "TorchVision", ["resnet18", 3, {"weights_file": str(tmp_path / "r34.pth")}]]
    with pytest.raises(ModelConfigError, match=r"r34.pth does not fit torchvision's resnet18: 0 missing .* unexpected"):
        DetectionModel(detector(row))


def test_checkpoint_yamls_name_no_weights_for_any_backbone_type():
    rows = [
        ["GroupMixFormer", ["t", [1, 2, 3], "gmf_t.pth", 0.1, 0]],
        ["GroupMixFormer", ["t", {"pretrained": "gmf_t.pth"}]],  # the mapping goes with its only key
        ["GroupMixFormer", ["t", {"out_indices": [1, 2, 3], "pretrained": "gmf_t.pth"}]],
        ["Timm", ["resnet18", [2, 3, 4], True]],
        ["Timm", ["resnet18", 3, {"pretrained": True, "drop_path_rate": 0.1}]],
        ["TorchVision", ["resnet18", [2, 3, 4], "DEFAULT"]],
        ["TorchVision", [512, "resnet18", "DEFAULT", True, 2]],
        ["Conv", [64, 3, 2]],
    ]
    d = portable_yaml({"nc": 2, "backbone": [[-1, 1, *r] for r in rows], "head": [], "plugins": ["blocks.py"]})
    assert [layer[3] for layer in d["backbone"]] == [
        ["t", [1, 2, 3], None, 0.1, 0],
        ["t"],
        ["t", {"out_indices": [1, 2, 3]}],
        ["resnet18", [2, 3, 4], False],
        ["resnet18", 3, {"drop_path_rate": 0.1}],
        ["resnet18", [2, 3, 4], None],
        [512, "resnet18", None, True, 2],
        [64, 3, 2],
    ]
    assert d["plugins"] == ["blocks.py"]  # kept: the checkpoint says what it needs
