"""The YOLO model builder: YOLOv5 parity, multi-output backbones, shipped configs, fuse, bad YAML."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gmyolo.models.groupmixformer import GroupMixFormer, groupmixformer
from gmyolo.models.yolo import BackboneOutput, DetectionModel, ModelConfigError, packaged_models
from gmyolo.models.yolo.common import C3GMA, Conv
from gmyolo.models.yolo.registry import MODULES, register_module

# sum(p.numel()) of YOLOv5's own models at nc=80, counted on its code (only the numbers are used here):
#   python -m venv /tmp/yolov5venv  (+ a .pth with /work/main/.venv's site-packages, for torch)
#   pip install --no-deps yolov5==7.0.14 ultralytics==8.0.238 && pip install pandas requests seaborn psutil
#   root = Path(yolov5.__file__).parent / "models"   (P6 configs: root / "hub")
#   sum(p.numel() for p in yolov5.models.yolo.DetectionModel(str(root / f"{name}.yaml"), ch=3, nc=80).parameters())
YOLOV5_PARAMS = {
    "yolov5n": 1_872_157,
    "yolov5s": 7_235_389,
    "yolov5m": 21_190_557,
    "yolov5l": 46_563_709,
    "yolov5x": 86_749_405,
    "yolov5n6": 3_246_940,
    "yolov5s6": 12_626_620,
    "yolov5m6": 35_731_932,
    "yolov5l6": 76_770_172,
    "yolov5x6": 140_794_780,
}
ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomize_batchnorm(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


@pytest.mark.parametrize("name", list(YOLOV5_PARAMS))
def test_yolov5_parameter_parity(name):
    model = DetectionModel(name)
    assert model.nc == 80
    assert n_params(model) == YOLOV5_PARAMS[name]


def test_parity_table_covers_every_shipped_yolov5_config():
    shipped = {n for n in packaged_models() if n.startswith("yolov5") and "-" not in n}  # not the -gmf- hybrids
    assert shipped == set(YOLOV5_PARAMS)
    # The Ultralytics families ship one file for all scales (tests/models/test_ultralytics_yaml.py).
    assert {n for n in packaged_models() if "-" not in n and not n.startswith("yolov5")} == {
        "yolov8",
        "yolo11",
        "yolo12",
        "yolo26",
    }


def test_yolov5s_layer_order_and_state_dict_names():
    sd = DetectionModel("yolov5s").state_dict()
    keys = list(sd)
    assert keys[:3] == ["model.0.conv.weight", "model.0.bn.weight", "model.0.bn.bias"]
    assert sd["model.0.conv.weight"].shape == (32, 3, 6, 6)
    assert sd["model.2.m.0.cv1.conv.weight"].shape == (32, 32, 1, 1)
    assert sd["model.9.cv2.conv.weight"].shape == (512, 1024, 1, 1)
    assert sd["model.24.anchors"].shape == (3, 3, 2)
    assert sd["model.24.m.0.weight"].shape == (255, 128, 1, 1)
    assert keys[-6:] == [f"model.24.m.{i}.{p}" for i in range(3) for p in ("weight", "bias")]
    # Anchors are stored in grid units, as in YOLOv5 checkpoints.
    torch.testing.assert_close(sd["model.24.anchors"][0], torch.tensor([[10, 13], [16, 30], [33, 23]]) / 8.0)


@pytest.mark.parametrize("name", packaged_models())
def test_every_shipped_config_builds_and_runs(name):
    model = DetectionModel(name)
    max_stride = int(model.stride.max())
    model.eval()
    for h, w in [(max_stride, 2 * max_stride), (2 * max_stride, 3 * max_stride)]:
        with torch.no_grad():
            decoded, raw = model(torch.randn(1, 3, h, w))
        cells = [(h // s) * (w // s) for s in model.stride.int().tolist()]  # static strides equal the real ones
        nm = getattr(model.detect, "nm", 0)  # segmentation: mask coefficients per detection, and prototypes
        if nm:
            decoded, prototypes = decoded
            assert prototypes.shape == (1, nm, h // 4, w // 4) and torch.isfinite(prototypes).all()
        if model.output_format.startswith("xywh_obj_cls"):  # YOLOv5's head: one 5D map per level
            if nm:
                raw, _ = raw  # YOLOv5-seg's raw outputs come with the prototypes, as in training
            assert len(raw) == model.detect.nl
            for r, s in zip(raw, model.stride.tolist()):
                assert r.shape == (1, model.detect.na, h // s, w // s, model.nc + 5 + nm)
            assert decoded.shape == (1, model.detect.na * sum(cells), model.nc + 5 + nm)
        else:  # anchor-free: one point per cell, every level concatenated
            one2many = raw["one2one"] if model.detect.end2end else raw
            assert one2many["boxes"].shape == (1, 4 * model.detect.reg_max, sum(cells))
            assert one2many["scores"].shape == (1, model.nc, sum(cells))
            width = 6 if model.output_format == "xyxy_score_class" else 4 + model.nc + nm
            rows = min(sum(cells), model.detect.max_det) if width == 6 else sum(cells)
            assert decoded.shape == (1, rows, width)
        assert torch.isfinite(decoded).all()


def test_train_and_eval_outputs():
    model = DetectionModel("yolov5n-gmf-m", nc=3)
    x = torch.randn(2, 3, 96, 128)
    raw = model.train()(x)
    assert [tuple(r.shape) for r in raw] == [(2, 3, 12, 16, 8), (2, 3, 6, 8, 8), (2, 3, 3, 4, 8)]
    sum(r.sum() for r in raw).backward()
    assert model.model[0].conv_stem.proj1.weight.grad is not None
    decoded, raw_eval = model.eval()(x)
    assert decoded.shape == (2, 3 * (12 * 16 + 6 * 8 + 3 * 4), 8)
    assert ((decoded[..., 4:] >= 0) & (decoded[..., 4:] <= 1)).all()
    assert (decoded[..., 2:4] > 0).all()
    # Centres decode into (or just around) the image: xy = (2 sigmoid - 0.5 + cell) * stride.
    assert decoded[..., 0].min() >= -0.5 * 32 and decoded[..., 0].max() <= 128 + 0.5 * 32


def test_bias_initialisation_matches_yolov5_priors():
    model = DetectionModel("yolov5s", nc=3)
    for conv, s in zip(model.detect.m, (8, 16, 32)):
        b = conv.bias.view(3, -1)
        assert torch.allclose(b[:, 4], torch.full((3,), math.log(8 / (640 / s) ** 2)), atol=0.2)
        assert torch.allclose(b[:, 5:], torch.full((3, 3), math.log(0.6 / (3 - 0.99999))), atol=0.2)
    assert model.detect.m[0].weight.shape == (24, 128, 1, 1)  # nc override reaches the head


def test_nc_override_and_names():
    model = DetectionModel("yolov5n", nc=2)
    assert model.nc == model.detect.nc == 2 and model.yaml["nc"] == 2
    with pytest.raises(ModelConfigError, match="positive integer"):
        DetectionModel("yolov5n", nc=0)


def backbone_cfg(**over):
    d = dict(
        nc=4,
        depth_multiple=0.33,
        width_multiple=0.25,
        anchors=ANCHORS,
        backbone=[[-1, 1, "GroupMixFormer", ["m", [0, 1, 2, 3]]]],  # occupies layers 0..3
        head=[
            [2, 1, "Conv", [64, 1, 1]],  # 4: reads stage 2 (stride 16)
            [-1, 1, "nn.Upsample", ["None", 2, "nearest"]],  # 5
            [[-1, 1], 1, "Concat", [1]],  # 6: with stage 1 (stride 8)
            [3, 1, "Conv", [128, 1, 1]],  # 7: stage 3 (stride 32)
            [[6, 2, 7], 1, "Detect", ["nc", "anchors"]],
        ],
    )
    d.update(over)
    return d


def test_multi_output_backbone_indexing():
    model = DetectionModel(backbone_cfg())
    backbone = model.model[0]
    assert isinstance(backbone, GroupMixFormer) and backbone.out_channels == [40, 80, 160, 160]
    assert all(isinstance(model.model[i], BackboneOutput) for i in (1, 2, 3))
    assert model.model[4].conv.in_channels == 160  # stage 2 width
    assert model.model[7].conv.in_channels == 160  # stage 3 width
    assert [m.in_channels for m in model.detect.m] == [16 + 80, 160, 32]
    assert model.stride.tolist() == [8, 16, 32]

    seen = {}
    model.model[4].register_forward_hook(lambda m, i, o: seen.update(conv4_in=i[0]))
    model.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        _, raw = model(x)
        maps = backbone(x)
    torch.testing.assert_close(seen["conv4_in"], maps[2])
    assert [tuple(r.shape[2:4]) for r in raw] == [(8, 12), (4, 6), (2, 3)]


def test_backbone_args_pretrained_drop_path_and_frozen_stages(tmp_path):
    source = groupmixformer("m")
    torch.save({"model": source.state_dict()}, tmp_path / "gmf_m.pth")
    cfg = backbone_cfg()
    cfg["backbone"] = [[-1, 1, "GroupMixFormer", ["m", [0, 1, 2, 3], str(tmp_path / "gmf_m.pth"), 0.05, 2]]]
    model = DetectionModel(cfg)
    backbone = model.model[0]
    assert torch.equal(
        backbone.groupmixformer_backbone[3].gma_stage[0].att.qkv.weight,
        source.groupmixformer_backbone[3].gma_stage[0].att.qkv.weight,
    )
    assert backbone.groupmixformer_backbone[3].gma_stage[-1].drop_path == pytest.approx(0.05)
    assert not any(p.requires_grad for p in backbone.groupmixformer_backbone[1].parameters())
    assert all(p.requires_grad for p in backbone.groupmixformer_backbone[2].parameters())
    # Keyword form, and a checkpoint of the wrong variant: one clear error naming the layer.
    cfg["backbone"] = [
        [-1, 1, "GroupMixFormer", ["t", {"out_indices": [0, 1, 2, 3], "pretrained": str(tmp_path / "gmf_m.pth")}]]
    ]
    with pytest.raises(ModelConfigError, match=r"layer 0\).*GroupMixFormer-M.*GroupMixFormer-T"):
        DetectionModel(cfg)


def test_fuse_keeps_outputs():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 96, 128)
    for name in ("yolov5n", "yolov5n-gmf-m-gmaneck"):
        model = DetectionModel(name)
        randomize_batchnorm(model)
        model.eval()
        with torch.no_grad():
            before = model(x)[0]
            model.fuse()
            after = model(x)[0]
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.model[-2].modules())
        torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-5)


def test_c3gma_block():
    block = C3GMA(64, 128, n=2)
    assert block.cv1.conv.out_channels % 10 == 0
    y = block(torch.randn(2, 64, 13, 11))
    assert y.shape == (2, 128, 13, 11)
    assert "C3GMA" in MODULES


def test_custom_module_through_registry():
    class Doubler(nn.Module):
        def __init__(self, c1, c2):
            super().__init__()
            self.conv = Conv(c1, c2, 3, 1)

        def forward(self, x):
            return 2 * self.conv(x)

    register_module("Doubler", Doubler)
    try:
        cfg = backbone_cfg()
        cfg["head"][0] = [2, 1, "Doubler", [64]]
        model = DetectionModel(cfg)
        assert isinstance(model.model[4], Doubler) and model.model[4].conv.conv.out_channels == 16
    finally:
        MODULES.pop("Doubler")


def test_anchor_placeholders_and_order():
    model = DetectionModel(backbone_cfg(anchors=3))
    assert model.detect.anchors.shape == (3, 3, 2)
    reversed_anchors = DetectionModel(backbone_cfg(anchors=ANCHORS[::-1]))
    pixels = reversed_anchors.detect.anchors * reversed_anchors.stride.view(-1, 1, 1)
    torch.testing.assert_close(pixels, torch.tensor(ANCHORS, dtype=torch.float32).view(3, 3, 2))


def write(tmp_path, text):
    path = tmp_path / "model.yaml"
    path.write_text(text)
    return path


YAML_OK = """nc: 2
depth_multiple: 0.33
width_multiple: 0.25
anchors:
  - [10,13, 16,30, 33,23]
backbone:
  [[-1, 1, Conv, [64, 3, 2]],
   [-1, 1, Conv, [128, 3, 2]],
   [-1, 1, Conv, [128, 3, 2]],
  ]
head:
  [[-1, 1, {module}, [256]],
   [[3], 1, Detect, [nc, anchors]],
  ]
"""


def test_yaml_file_builds(tmp_path):
    model = DetectionModel(write(tmp_path, YAML_OK.format(module="C3")))
    assert model.stride.tolist() == [8]


@pytest.mark.parametrize(
    "text, message",
    [
        (YAML_OK.format(module="C4"), r"model.yaml line 12 \(head entry 0, layer 3\): unknown module 'C4'"),
        (YAML_OK.format(module="__import__('os').system('touch pwned')"), "line 12.*unknown module"),
        (YAML_OK.format(module="C3").replace("nc: 2", "nc: two"), "'nc' must be a positive integer"),
        (YAML_OK.format(module="C3").replace("[[3], 1, Detect", "[[7], 1, Detect"), "line 13.*'from' index 7"),
        (YAML_OK.format(module="C3").replace("[-1, 1, C3,", "[-1, 0, C3,"), "'number' must be a positive"),
        (YAML_OK.format(module="C3").replace("[-1, 1, C3, [256]]", "[-1, 1, C3]"), r"\[from, number, module, args\]"),
        (YAML_OK.format(module="C3").replace("[256]]", "256]"), "'args' must be a list"),
        (YAML_OK.format(module="C3").replace("[256]]", "['1+1']]"), "line 12.*cannot build C3"),
        (YAML_OK.format(module="C3").replace("- [10,13, 16,30, 33,23]", "- [10,13, 16]"), "'anchors'"),
        (YAML_OK.format(module="C3").replace("head:", "head: [oops"), "not valid YAML"),
        ("- just a list", "expected a mapping"),
        (
            YAML_OK.format(module="C3").replace("[[3], 1, Detect, [nc, anchors]]", "[-1, 1, Conv, [8]]"),
            "last layer must be Detect",
        ),
    ],
)
def test_bad_model_yaml_is_a_clear_error(tmp_path, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelConfigError, match=message) as err:
        DetectionModel(write(tmp_path, text))
    assert len(str(err.value)) < 600
    assert not (tmp_path / "pwned").exists()


def test_missing_config_lists_packaged_models():
    with pytest.raises(ModelConfigError, match="packaged models: .*yolov5s-gmf-t"):
        DetectionModel("yolov9-imaginary")
