"""GroupMixFormer through timm's API, in the spirit of timm's own model tests: every registered variant builds,
loads weights from a file the test writes, equals gmyolo's model, and serves features_only as timm describes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import gmyolo  # noqa: F401  (registers GroupMixFormer with timm when timm is imported)
from gmyolo.errors import CheckpointError
from gmyolo.models.groupmixformer import VARIANTS, groupmixformer
from gmyolo.models.groupmixformer.model import MODEL_ZOO

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def released_files(tmp_path_factory):
    """One authors'-format file ({"model": state_dict}, 1000 classes) per variant, random weights."""
    root = tmp_path_factory.mktemp("released")
    files = {}
    for v in VARIANTS:
        torch.manual_seed(len(files))
        path = root / f"groupmixformer_{v}.pth"
        torch.save({"model": groupmixformer(v).state_dict()}, path)
        files[v] = path
    return files


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)  # building and running five variants is dispatch-bound; a second thread only contends


def test_every_variant_is_registered():
    assert set(timm.list_models("groupmixformer_*")) == {f"groupmixformer_{v}" for v in VARIANTS}
    for v in VARIANTS:
        cfg = timm.models.get_pretrained_cfg(f"groupmixformer_{v}.in1k")
        assert cfg.origin_url == MODEL_ZOO and cfg.url == "" and cfg.classifier == "head"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_create_model_loads_the_release_file_and_equals_gmyolo(variant, released_files):
    file = released_files[variant]
    model = timm.create_model(f"groupmixformer_{variant}", pretrained=True, pretrained_cfg_overlay=dict(file=str(file)))
    reference = groupmixformer(variant, pretrained=str(file))
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), reference.eval()(x))
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())
    cfg = timm.data.resolve_data_config(model=model)
    assert cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic" and cfg["input_size"] == (3, 224, 224)
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)

    # features_only: the maps of out_indices, with the channels and strides feature_info gives, and the same
    # numbers as gmyolo's model with the same weights (its forward_features, which features mode returns).
    features = timm.create_model(
        f"groupmixformer_{variant}",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(file)),
        features_only=True,
        out_indices=(1, 2, 3),
    ).eval()
    with torch.no_grad():
        maps, expected = features(x), reference.forward_features(x)[1:]
    info = features.feature_info
    assert info.channels() == [VARIANTS[variant]["embedding_dims"][i] for i in (1, 2, 3)]
    assert info.reduction() == [8, 16, 32]
    assert len(features.model.groupmixformer_backbone) == 4 and isinstance(features.model.head, torch.nn.Identity)
    for m, e, c, r in zip(maps, expected, info.channels(), info.reduction()):
        assert m.shape == (2, c, -(-64 // r), -(-96 // r))
        assert torch.equal(m, e)


def test_fine_tuning_head_and_refusals(released_files):
    file = str(released_files["m"])
    model = timm.create_model(
        "groupmixformer_m", pretrained=True, pretrained_cfg_overlay=dict(file=file), num_classes=7
    )
    reference = groupmixformer("m", pretrained=file)
    assert model.head.out_features == 7  # re-initialised; everything else loaded
    assert torch.equal(model.patch_embed_layers[3].norm.weight, reference.patch_embed_layers[3].norm.weight)
    with pytest.raises(CheckpointError, match="checkpoint is GroupMixFormer-T.*but the model is GroupMixFormer-M"):
        timm.create_model(
            "groupmixformer_m", pretrained=True, pretrained_cfg_overlay=dict(file=str(released_files["t"]))
        )
    with pytest.raises(CheckpointError, match="cannot be downloaded by a program.*pretrained_cfg_overlay"):
        timm.create_model("groupmixformer_t", pretrained=True)
    torch.save({"model": {"head.weight": torch.zeros(3)}, "code": "x"}, released_files["m"].parent / "bad.pth")
    with pytest.raises(CheckpointError):
        timm.create_model(
            "groupmixformer_m",
            pretrained=True,
            pretrained_cfg_overlay=dict(file=str(released_files["m"].parent / "bad.pth")),
        )


@pytest.mark.parametrize("order", ["import gmyolo, timm", "import timm, gmyolo"])
def test_registered_in_either_import_order_and_gmyolo_alone_imports_no_timm(order):
    code = f"{order}\nprint(sorted(timm.list_models('groupmixformer_*')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(sorted(f"groupmixformer_{v}" for v in VARIANTS))
    alone = "import gmyolo, sys\nprint('timm' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", alone], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )
