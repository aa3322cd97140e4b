"""YOLOv5 loss on hand-made targets: assignment, each term, gains."""

from __future__ import annotations

import math

import pytest
import torch

from gmyolo.models.yolo.head import Detect
from gmyolo.tasks.detect.loss import ComputeLoss, scale_loss_gains

HYP = dict(box=0.05, obj=1.0, cls=0.5, cls_pw=1.0, obj_pw=1.0, anchor_t=4.0, label_smoothing=0.0)


def one_level_head(nc=3, anchors=((2, 2, 4, 4, 16, 16),), stride=8):
    """A 1-level head whose anchors in grid units are (2/8, 2/8), ... i.e. pixel anchors / stride."""
    return Detect(nc=nc, anchors=[list(a) for a in anchors], ch=[8], strides=[stride])


def test_assignment_to_cell_and_two_neighbours():
    head = one_level_head(anchors=((8, 8, 16, 16, 128, 128),))  # grid units: 1, 2, 16
    loss = ComputeLoss(head, HYP)
    H, W = 20, 32
    preds = [torch.zeros(1, 3, H, W, 8)]
    # Centre (10.3, 5.7) cells, size 1.5x1.5 cells: matches anchors 1 (ratio 1.5) and 2 (1.33), not 16.
    targets = torch.tensor([[0, 2, 10.3 / W, 5.7 / H, 1.5 / W, 1.5 / H]])
    tcls, tbox, indices, anchors = loss.build_targets(preds, targets)
    b, a, gj, gi = indices[0]
    cells = sorted(zip(a.tolist(), gj.tolist(), gi.tolist()))
    # own cell (5, 10), left neighbour (x frac .3 < .5) -> (5, 9), lower neighbour (y frac .7 > .5) -> (6, 10)
    assert cells == sorted((anc, y, x) for anc in (0, 1) for (y, x) in [(5, 10), (5, 9), (6, 10)])
    assert tcls[0].tolist() == [2] * 6
    # Box targets are relative to each assigned cell: x offset 0.3 in its own cell, 1.3 from the left one.
    offsets = {
        (y, x): tuple(round(v, 4) for v in box[:2].tolist()) for y, x, box in zip(gj.tolist(), gi.tolist(), tbox[0])
    }
    assert offsets[(5, 10)] == (0.3, 0.7) and offsets[(5, 9)] == (1.3, 0.7) and offsets[(6, 10)] == (0.3, -0.3)
    torch.testing.assert_close(tbox[0][:, 2:], torch.full((6, 2), 1.5), atol=1e-5, rtol=0)


def test_anchor_ratio_threshold():
    head = one_level_head(anchors=((8, 8, 16, 16, 128, 128),))
    loss = ComputeLoss(head, HYP)
    preds = [torch.zeros(1, 3, 16, 16, 8)]
    # 10x10 cells: ratios 10, 5, 1.6 -> only the 16-cell anchor (index 2) is within 4.0.
    _, _, indices, _ = loss.build_targets(preds, torch.tensor([[0, 0, 0.5, 0.5, 10 / 16, 10 / 16]]))
    assert set(indices[0][1].tolist()) == {2}
    # Nothing fits a 0.05-cell box (ratio 20 to the smallest anchor): no assignment at all.
    _, _, indices, _ = loss.build_targets(preds, torch.tensor([[0, 0, 0.5, 0.5, 0.05 / 16, 0.05 / 16]]))
    assert len(indices[0][0]) == 0


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_each_loss_term():
    head = one_level_head(nc=3, anchors=((16, 16, 16, 16, 16, 16),), stride=8)  # anchor = 2 cells
    loss = ComputeLoss(head, HYP)
    H = W = 8
    target = torch.tensor([[0, 1, 4.5 / W, 4.5 / H, 2 / W, 2 / H]])  # centre mid-cell: no neighbours
    pred = torch.zeros(1, 3, H, W, 8)
    # Exact box: sigmoid(xy)*2-0.5 = 0.5 -> xy logit 0; (2*sigmoid(wh))^2 * 2 = 2 -> sigmoid = 0.5 -> logit 0.
    pred[..., 4] = -20.0  # objectness ~0 everywhere
    pred[0, :, 4, 4, 4] = 20.0
    pred[0, :, 4, 4, 5:] = torch.tensor([-20.0, 20.0, -20.0])  # class 1, confidently
    total, (lbox, lobj, lcls) = loss([pred], target)
    assert lbox.item() == pytest.approx(0, abs=1e-5)
    assert lcls.item() == pytest.approx(0, abs=1e-5)
    assert lobj.item() == pytest.approx(0, abs=1e-5)  # target objectness = IoU = 1, predicted 1
    assert total.item() == pytest.approx(0, abs=1e-4)

    # Shift the predicted box by a quarter cell: box loss = (1 - CIoU) * gain, objectness target = CIoU.
    pred[0, :, 4, 4, 0] = logit(0.375)  # x = 0.375*2-0.5 = 0.25 -> 0.25 cells left of the target centre
    _, (lbox, lobj, _) = loss([pred], target)
    pb = torch.tensor([[4.25 - 1, 3.5, 4.25 + 1, 5.5]])
    tb = torch.tensor([[3.5, 3.5, 5.5, 5.5]])
    from torchvision.ops import complete_box_iou_loss

    ciou_loss = complete_box_iou_loss(pb, tb).item()
    assert lbox.item() == pytest.approx(ciou_loss * 0.05, rel=1e-4)
    expected_obj = (
        torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(20.0), torch.tensor(1 - ciou_loss))
        * 3
        / (3 * H * W)
        * 4.0
    )  # 3 anchors assigned in one cell, mean over all cells, level balance 4.0
    assert lobj.item() == pytest.approx(expected_obj.item(), rel=1e-3)

    # Wrong class: BCE against one-hot targets, averaged over the 3 classes of the 3 assigned anchors.
    pred[0, :, 4, 4, 5:] = torch.tensor([20.0, -20.0, -20.0])
    _, (_, _, lcls) = loss([pred], target)
    assert lcls.item() == pytest.approx((2 * 20.0 / 3) * 0.5, rel=1e-3)


def test_single_class_has_no_class_loss_and_empty_targets():
    head = one_level_head(nc=1)
    loss = ComputeLoss(head, HYP)
    pred = torch.randn(2, 3, 4, 4, 6)
    total, items = loss([pred], torch.tensor([[0, 0, 0.5, 0.5, 0.3, 0.3]]))
    assert items[2] == 0 and torch.isfinite(total)
    total, items = loss([pred], torch.zeros((0, 6)))
    assert items[0] == 0 and items[1] > 0  # only objectness (all background)


def test_gain_scaling_like_yolov5():
    hyp = scale_loss_gains(dict(box=0.05, cls=0.5, obj=1.0), nc=4, nl=3, imgsz=320)
    assert hyp["box"] == pytest.approx(0.05)
    assert hyp["cls"] == pytest.approx(0.5 * 4 / 80)
    assert hyp["obj"] == pytest.approx(0.25)
    hyp = scale_loss_gains(dict(box=0.05, cls=0.5, obj=1.0), nc=80, nl=4, imgsz=640)
    assert hyp["box"] == pytest.approx(0.0375) and hyp["obj"] == pytest.approx(0.75)


def test_loss_backpropagates_through_a_model():
    from gmyolo.models.yolo import DetectionModel

    model = DetectionModel("yolov5n", nc=2)
    loss = ComputeLoss(model.detect, scale_loss_gains(HYP, 2, 3, 64))
    preds = model.train()(torch.randn(2, 3, 64, 64))
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.4, 0.3], [1, 1, 0.3, 0.6, 0.2, 0.5]])
    total, items = loss(preds, targets)
    total.backward()
    assert all(torch.isfinite(items)) and model.model[0].conv.weight.grad.abs().sum() > 0
