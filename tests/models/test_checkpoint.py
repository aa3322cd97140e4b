"""Loading the authors' checkpoints: every format, head handling, and bad files."""

from __future__ import annotations

import logging

import pytest
import torch

from gmyolo.models.groupmixformer import CheckpointError, groupmixformer, infer_config_from_state_dict

SMALL = dict(embedding_dims=(40, 80, 120, 160), serial_depths=(1, 1, 2, 1), mlp_ratios=(4, 4, 2, 2))


@pytest.fixture(scope="module")
def source():
    """A small randomly initialised model whose state dict stands in for a released file."""
    torch.manual_seed(1)
    model = groupmixformer("m", num_classes=1000, **SMALL).eval()
    for m in model.modules():  # non-default BatchNorm statistics, so that loading them is checked
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return model


def assert_same_weights(a, b, skip=()):
    sa, sb = a.state_dict(), b.state_dict()
    for k, v in sa.items():
        if not k.startswith(skip):
            assert torch.equal(v, sb[k]), k


@pytest.mark.parametrize("wrap", ["model", "state_dict", "bare", "module_prefix"])
@pytest.mark.parametrize("as_file", [True, False])
def test_every_checkpoint_format_loads(source, tmp_path, wrap, as_file):
    sd = source.state_dict()
    obj = {
        "model": {"model": sd},
        "state_dict": {"state_dict": sd, "epoch": 3},
        "bare": sd,
        "module_prefix": {"model": {f"module.{k}": v for k, v in sd.items()}},
    }[wrap]
    if as_file:
        torch.save(obj, tmp_path / "ckpt.pth")
        obj = tmp_path / "ckpt.pth"
    model = groupmixformer("m", num_classes=1000, **SMALL, pretrained=obj).eval()
    assert_same_weights(source, model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x))


def test_features_mode_drops_head(source, caplog):
    with caplog.at_level(logging.INFO, logger="gmyolo"):
        model = groupmixformer("m", features_only=True, **SMALL)
        report = model.load_pretrained(source.state_dict())
    assert set(report.dropped) == {k for k in source.state_dict() if k.startswith(("norm4.", "head."))}
    assert "dropped the classification head" in caplog.text
    assert_same_weights(model, source)


def test_cut_stages_are_dropped(source, caplog):
    with caplog.at_level(logging.INFO, logger="gmyolo"):
        model = groupmixformer("m", features_only=True, out_indices=(0, 1), **SMALL, pretrained=source.state_dict())
    assert model.num_stages == 2
    assert "dropped stages 2..3" in caplog.text
    assert_same_weights(model, source)


def test_other_class_count_reinitialises_head(source, caplog):
    with caplog.at_level(logging.INFO, logger="gmyolo"):
        model = groupmixformer("m", num_classes=7, **SMALL, pretrained={"model": source.state_dict()})
    assert "re-initialised for 7 classes" in caplog.text and "has 1000" in caplog.text
    assert model.head.weight.shape == (7, 160)
    assert_same_weights(model, source, skip=("head.",))
    assert torch.equal(model.norm4.running_var, source.norm4.running_var)  # only the linear head is new


def test_another_variant_is_named(tmp_path):
    torch.save({"model": groupmixformer("m").state_dict()}, tmp_path / "m.pth")
    with pytest.raises(CheckpointError) as err:
        groupmixformer("t", pretrained=tmp_path / "m.pth")
    message = str(err.value)
    assert "GroupMixFormer-M" in message and "GroupMixFormer-T" in message
    assert "\n" not in message and len(message) < 400


def test_another_model_is_refused():
    from torchvision.models import resnet18

    with pytest.raises(CheckpointError, match="not a GroupMixFormer checkpoint") as err:
        groupmixformer("m", pretrained={"model": resnet18().state_dict()})
    assert len(str(err.value)) < 300


def test_missing_unexpected_and_misshapen_entries(source):
    sd = dict(source.state_dict())
    del sd["groupmixformer_backbone.0.gma_stage.0.mlp.fc2.bias"]
    sd["groupmixformer_backbone.0.gma_stage.0.extra.weight"] = torch.zeros(3)
    sd["groupmixformer_backbone.1.gma_stage.0.att.proj.bias"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as err:
        groupmixformer("m", **SMALL).load_pretrained(sd)
    message = str(err.value)
    assert "1 model weights are absent" in message and "mlp.fc2.bias" in message
    assert "1 checkpoint entries have no place" in message
    assert "1 entries have the wrong shape" in message and "(3,)" in message
    # Non-strict loads what fits and reports the rest.
    model = groupmixformer("m", **SMALL)
    report = model.load_pretrained(sd, strict=False)
    assert report.missing == ["groupmixformer_backbone.0.gma_stage.0.mlp.fc2.bias"]
    assert torch.equal(model.conv_stem.proj1.weight, source.conv_stem.proj1.weight)


def test_pickled_code_is_never_run(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model": {"conv_stem.proj1.weight": torch.zeros(1)}, "payload": Exploit()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refused to load"):
        groupmixformer("m", pretrained=tmp_path / "evil.pth")
    assert not marker.exists()


def test_unreadable_files(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        groupmixformer("m", pretrained=tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        groupmixformer("m", pretrained=tmp_path / "absent.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="expected a dict of tensors"):
        groupmixformer("m", pretrained=tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not a tensor"):
        groupmixformer("m", pretrained={"model": {"conv_stem.proj1.weight": [1.0]}})


def test_infer_config(source):
    cfg = infer_config_from_state_dict(source.state_dict())
    assert cfg == dict(
        embedding_dims=[40, 80, 120, 160], serial_depths=[1, 1, 2, 1], mlp_ratios=[4, 4, 2, 2], num_classes=1000
    )
