"""The segmentation losses: the mask term in closed form, the whole losses against Ultralytics' v8SegmentationLoss and
YOLOv5-seg's ComputeLoss when those packages are installed (neither is a gmyolo dependency), learning on one batch."""

from __future__ import annotations

import math

import pytest
import torch

from gmyolo.models.yolo import DetectionModel
from gmyolo.tasks.detect.hyp import resolve_hyp
from gmyolo.tasks.detect.loss import loss_gains, make_loss
from gmyolo.tasks.segment.loss import AnchorFreeSegmentLoss, crop_to_boxes, mask_loss

# Two objects in image 0, one in image 1 ([image, class, cx, cy, w, h]), and their overlap masks at 1/4 of 128 px.
BOXES = torch.tensor([[0, 1, 0.3, 0.3, 0.3, 0.4], [0, 2, 0.7, 0.6, 0.4, 0.3], [1, 0, 0.5, 0.5, 0.5, 0.5]])


def overlap_masks() -> torch.Tensor:
    masks = torch.zeros(2, 32, 32, dtype=torch.int32)
    masks[0, 8:12, 5:14] = 1
    masks[0, 15:23, 16:28] = 2
    masks[1, 10:22, 10:22] = 1
    return masks


def test_crop_keeps_what_lies_inside_each_box():
    maps = torch.ones(2, 4, 6)
    cropped = crop_to_boxes(maps, torch.tensor([[1.0, 0.0, 3.0, 2.0], [0.0, 1.0, 6.0, 4.0]]))
    assert cropped[0].sum() == 4 and cropped[0, :2, 1:3].all() and cropped[1].sum() == 18


def test_mask_term_in_closed_form():
    # Constant logits c: inside a box the BCE is the same everywhere, so mean(crop) / (box share) is that BCE.
    c, h, w = 0.7, 8, 10
    prototypes = torch.zeros(2, h, w)
    prototypes[0] = 1.0
    coefficients = torch.tensor([[c, 0.0]])
    box = torch.tensor([[2.0, 1.0, 7.0, 5.0]])  # 5 x 4 of 10 x 8 pixels
    for target_value, want in ((1.0, math.log1p(math.exp(-c))), (0.0, math.log1p(math.exp(c)))):
        targets = torch.full((1, h, w), target_value)
        got = mask_loss(coefficients, prototypes, targets, box, torch.tensor([20 / 80]))
        assert got.item() == pytest.approx(want, rel=1e-6)


def test_items_gradients_and_no_positives():
    model = DetectionModel("yolo11n-gmf-nano-seg", nc=3).train()
    criterion = make_loss(model.detect, resolve_hyp(head="anchor_free"))
    assert isinstance(criterion, AnchorFreeSegmentLoss) and criterion.names == model.detect.loss_names
    x = torch.rand(2, 3, 128, 128)
    total, items = criterion(model(x), (BOXES, overlap_masks()))
    assert items.shape == (4,) and torch.isfinite(items).all() and (items > 0).all()
    total.backward()
    head = model.detect
    assert head.proto.cv3.conv.weight.grad.abs().sum() > 0 and head.cv4[0][2].weight.grad.abs().sum() > 0
    model.zero_grad()
    total, items = criterion(model(x), (torch.zeros(0, 6), torch.zeros(2, 32, 32, dtype=torch.int32)))
    assert items[1] == 0 and items[0] == 0
    total.backward()  # every parameter still in the graph
    assert head.proto.cv3.conv.weight.grad is not None


def mask_losses_on_one_batch(model, criterion, optimizer, steps: int) -> list[float]:
    """The seg_loss item of ``steps`` optimizer steps on one fixed batch (BOXES and their masks)."""
    x, targets = torch.rand(2, 3, 128, 128), (BOXES, overlap_masks())
    seg = []
    for _ in range(steps):
        optimizer.zero_grad()
        total, items = criterion(model(x), targets)
        total.backward()
        optimizer.step()
        seg.append(items[1].item())
    return seg


def test_a_few_steps_on_one_batch_lower_the_mask_loss():
    torch.manual_seed(0)
    model = DetectionModel("yolo11n-gmf-nano-seg", nc=3).train()
    criterion = make_loss(model.detect, resolve_hyp(head="anchor_free"))
    seg = mask_losses_on_one_batch(model, criterion, torch.optim.AdamW(model.parameters(), lr=2e-3), steps=12)
    assert seg[-1] < 0.7 * seg[0], seg


def test_same_loss_as_ultralytics():
    pytest.importorskip("ultralytics", reason="ultralytics is not installed (not a gmyolo dependency)")
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import SegmentationModel
    from ultralytics.utils import DEFAULT_CFG

    torch.manual_seed(0)
    theirs = SegmentationModel("yolo11n-seg.yaml", nc=3, verbose=False).train()
    theirs.args = get_cfg(DEFAULT_CFG)  # box 7.5, cls 0.5, dfl 1.5, overlap_mask True
    ours = DetectionModel("yolo11n-seg", nc=3).train()
    ours.load_state_dict(theirs.state_dict())
    x = torch.rand(2, 3, 128, 128)
    masks = overlap_masks()
    batch = {"img": x, "batch_idx": BOXES[:, 0], "cls": BOXES[:, 1:2], "bboxes": BOXES[:, 2:], "masks": masks.float()}
    with torch.no_grad():
        want, _ = theirs.loss(batch, theirs(x))
        total, items = make_loss(ours.detect, resolve_hyp(head="anchor_free"))(ours(x), (BOXES, masks))
    torch.testing.assert_close(items * 2, want[:4], rtol=1e-5, atol=1e-5)  # theirs: box, seg, cls, dfl (x batch)
    torch.testing.assert_close(total, want.sum(), rtol=1e-5, atol=1e-5)


def test_yolov5_seg_loss_learns_masks_on_one_batch():
    torch.manual_seed(0)
    model = DetectionModel("yolov5s-seg", nc=3).train()
    hyp = resolve_hyp(head="anchor_based")
    criterion = make_loss(model.detect, loss_gains(hyp, model.detect, 3, 128))
    assert criterion.names == model.detect.loss_names == ("box_loss", "seg_loss", "obj_loss", "cls_loss")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    seg = mask_losses_on_one_batch(model, criterion, optimizer, steps=10)
    assert seg[-1] < 0.7 * seg[0], seg
    assert model.detect.proto.cv1.conv.weight.grad.abs().sum() > 0


def test_same_loss_as_yolov5_seg():
    pytest.importorskip("yolov5", reason="the yolov5 package is not installed (not a gmyolo dependency)")
    from pathlib import Path

    import yolov5
    from yolov5.models.yolo import SegmentationModel
    from yolov5.utils.segment.loss import ComputeLoss as YOLOv5SegmentLoss

    torch.manual_seed(0)
    theirs = SegmentationModel(str(Path(yolov5.__file__).parent / "models/segment/yolov5s-seg.yaml"), ch=3, nc=3)
    ours = DetectionModel("yolov5s-seg", nc=3)
    ours.load_state_dict(theirs.state_dict())
    gains = loss_gains(resolve_hyp(head="anchor_based"), ours.detect, 3, 128)
    theirs.hyp = {**gains, "fl_gamma": 0.0}
    x, masks = torch.rand(2, 3, 128, 128), overlap_masks()
    with torch.no_grad():
        want, want_items = YOLOv5SegmentLoss(theirs.train(), overlap=True)(theirs(x), BOXES, masks.float())
        got, got_items = make_loss(ours.detect, gains)(ours.train()(x), (BOXES, masks))
    torch.testing.assert_close(got_items, want_items, rtol=1e-5, atol=1e-7)  # box, seg, obj, cls
    torch.testing.assert_close(got.reshape(()), want.reshape(()), rtol=1e-5, atol=1e-7)
