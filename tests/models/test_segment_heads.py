"""The instance segmentation heads: YOLOv5-seg's anchor-based Segment and YOLOv8-seg / YOLO11-seg's anchor-free one,
with prototype masks. Parameter counts were taken from the packages themselves (only the numbers; both are
AGPL-3.0 and no dependency of gmyolo):
    yolov5==7.0.14: yolov5.models.yolo.SegmentationModel("models/segment/yolov5s-seg.yaml", nc=80)
    ultralytics==8.4.190: ultralytics.nn.tasks.SegmentationModel("yolo11n-seg.yaml", nc=80)
When ultralytics is importable, the state dicts and outputs are compared with its models too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gmyolo.models.yolo import DetectionModel
from gmyolo.models.yolo.segment import AnchorFreeSegment, AnchorSegment
from gmyolo.tasks.detect.loss import criterion_of

# model: (parameters, head parameters, prototype parameters)
PACKAGE_PARAMS = {
    "yolov5s-seg": (7_621_277, 615_133, 299_584),
    "yolov8n-seg": (3_409_968, 1_150_432, 92_544),
    "yolov8s-seg": (11_821_056, 2_801_504, 365_248),
    "yolo11n-seg": (2_876_848, 717_680, 92_544),
    "yolo11s-seg": (10_113_248, 1_504_864, 365_248),
}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", PACKAGE_PARAMS)
def test_parameter_counts_equal_the_packages(name):
    model = DetectionModel(name, nc=80)
    head = model.detect
    assert (n_params(model), n_params(head), n_params(head.proto)) == PACKAGE_PARAMS[name]
    assert isinstance(head, AnchorSegment if name.startswith("yolov5") else AnchorFreeSegment)


@pytest.mark.parametrize("name", ["yolov5s-seg", "yolo11n-gmf-nano-seg"])
def test_outputs_in_train_eval_and_export(name):
    model = DetectionModel(name, nc=3)
    head, x = model.detect, torch.randn(2, 3, 96, 128)
    n = (12 * 16 + 6 * 8 + 3 * 4) * getattr(head, "na", 1)
    out = model.train()(x)
    if isinstance(head, AnchorSegment):
        raw, prototypes = out
        assert [tuple(r.shape) for r in raw] == [(2, 3, 12, 16, 5 + 3 + 32), (2, 3, 6, 8, 40), (2, 3, 3, 4, 40)]
        loss = sum(r.sum() for r in raw) + prototypes.sum()
    else:
        raw, prototypes = out, out["prototypes"]
        assert raw["masks"].shape == (2, 32, n) and raw["boxes"].shape == (2, 64, n)
        loss = raw["masks"].sum() + raw["scores"].sum() + prototypes.sum()
    assert prototypes.shape == (2, 32, 24, 32)  # 1/4 of the input: P3 upsampled twice as fine
    loss.backward()
    assert head.proto.cv1.conv.weight.grad is not None
    model.eval()
    with torch.no_grad():
        (detections, prototypes), _ = model(x)
        head.export = True
        exported = model(x)
    extra = 5 if isinstance(head, AnchorSegment) else 4
    assert detections.shape == (2, n, extra + 3 + 32) and prototypes.shape == (2, 32, 24, 32)
    assert head.output_format.endswith("_masks") and len(head.loss_names) == 4 and "seg_loss" in head.loss_names
    torch.testing.assert_close(exported[0], detections)
    torch.testing.assert_close(exported[1], prototypes)


def test_detection_heads_decode_as_before_and_segment_heads_pass_coefficients_through():
    torch.manual_seed(0)
    seg = DetectionModel("yolov5s-seg", nc=2).eval()
    det = DetectionModel("yolov5s", nc=2).eval()
    shared = {k: v for k, v in seg.state_dict().items() if k in det.state_dict() and "model.24.m" not in k}
    missing, _ = det.load_state_dict(shared, strict=False)
    assert all(k.startswith("model.24.m.") for k in missing)
    for d, s in zip(det.detect.m, seg.detect.m):  # the detection part of each anchor's outputs
        d.weight.data = s.weight.data.view(3, 5 + 2 + 32, -1, 1, 1)[:, : 5 + 2].reshape(d.weight.shape).clone()
        d.bias.data = s.bias.data.view(3, -1)[:, : 5 + 2].reshape(-1).clone()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        (seg_out, _), (raw, _) = seg(x)
        det_out, _ = det(x)
    torch.testing.assert_close(seg_out[..., : 5 + 2], det_out)
    coefficients = torch.cat([r[..., 5 + 2 :].reshape(1, -1, 32) for r in raw], 1)
    torch.testing.assert_close(seg_out[..., 5 + 2 :], coefficients)  # raw, no sigmoid


def test_segment_yaml_arguments_are_checked(tmp_path):
    from gmyolo.errors import ModelConfigError
    from gmyolo.models.yolo.builder import resolve_model_path

    text = resolve_model_path("yolo11-seg").read_text()
    old = "Segment, [nc, 32, 256]"
    for bad, message in (("Segment, [nc, 0, 256]", "nm must be a positive integer"),
                         ("Segment, [nc, 32, '256']", "npr must be a positive integer")):  # fmt: skip
        (tmp_path / "yolo11n-seg.yaml").write_text(text.replace(old, bad))
        with pytest.raises(ModelConfigError, match=message):
            DetectionModel(tmp_path / "yolo11n-seg.yaml")


def test_each_head_names_its_segmentation_loss():
    from gmyolo.tasks.segment.loss import AnchorFreeSegmentLoss, AnchorSegmentLoss  # registers them by name

    assert criterion_of(DetectionModel("yolo11n-seg").detect) is AnchorFreeSegmentLoss
    assert criterion_of(DetectionModel("yolov5s-seg").detect) is AnchorSegmentLoss


# --------------------------------------------------------------------------------------------------
# Against Ultralytics itself, when it is installed
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ultralytics():
    pytest.importorskip("ultralytics", reason="ultralytics is not installed (not a gmyolo dependency)")
    import ultralytics.nn.tasks

    return ultralytics


@pytest.mark.parametrize("name", ["yolov8n-seg", "yolo11n-seg"])
def test_same_state_dict_and_outputs_as_ultralytics(ultralytics, name):
    theirs = ultralytics.nn.tasks.SegmentationModel(f"{name}.yaml", nc=80, verbose=False).eval()
    ours = DetectionModel(name).eval()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in theirs.state_dict().items()
    ]
    ours.load_state_dict(theirs.state_dict())
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        (want, want_prototypes), (got, got_prototypes) = theirs(x)[0], ours(x)[0]
    torch.testing.assert_close(got, want.permute(0, 2, 1), atol=1e-5, rtol=1e-5)  # theirs is B×(4+nc+nm)×N
    torch.testing.assert_close(got_prototypes, want_prototypes, atol=1e-5, rtol=1e-5)


def test_ultralytics_own_segment_yaml_files_build_unchanged(ultralytics):
    root = Path(ultralytics.__file__).parent / "cfg/models"
    for file, name in (("v8/yolov8-seg.yaml", "yolov8{}-seg"), ("11/yolo11-seg.yaml", "yolo11{}-seg")):
        for scale in "ns":
            assert n_params(DetectionModel(root / file, scale=scale)) == PACKAGE_PARAMS[name.format(scale)][0]


@pytest.mark.parametrize("config", ["yolov5n", "yolo11n", "yolo26n", "yolov5s-seg", "yolo11n-seg"])
def test_each_output_format_names_its_heads_task(config):
    """Exported files record only their output format: it must lead to the task of the head that made it."""
    from gmyolo.models.yolo.head import FORMAT_TASKS, OUTPUT_FORMATS

    assert set(FORMAT_TASKS) == set(OUTPUT_FORMATS)
    model = DetectionModel(config, nc=3)
    assert FORMAT_TASKS[model.output_format] == model.detect.task
