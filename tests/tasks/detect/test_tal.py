"""The anchor-free heads' decoding, task-aligned assigner and loss, on hand-computed cases: a box on a cell
boundary, two boxes competing for one anchor point, a box larger than the image; the end-to-end top-k and the
dual-assignment schedule."""

from __future__ import annotations

import math

import pytest
import torch

from gmyolo.models.yolo import DetectionModel
from gmyolo.models.yolo.anchor_free import DFL, AnchorFreeDetect, bbox2dist, dist2bbox, make_anchor_points
from gmyolo.tasks.detect.assigner import points_in_boxes, task_aligned_assign
from gmyolo.tasks.detect.loss import make_loss
from gmyolo.tasks.detect.loss_tal import AnchorFreeLoss, EndToEndLoss, dfl_loss, one_to_many_weight, padded_targets
from gmyolo.tasks.detect.postprocess import postprocess

HYP = {"box": 7.5, "cls": 0.5, "dfl": 1.5, "o2m": 0.8, "o2m_final": 0.1}


# --------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------
def test_anchor_points_are_cell_centres_level_by_level():
    points, strides = make_anchor_points([(2, 3), (1, 1)], [8, 16])
    assert points.tolist() == [[0.5, 0.5], [1.5, 0.5], [2.5, 0.5], [0.5, 1.5], [1.5, 1.5], [2.5, 1.5], [0.5, 0.5]]
    assert strides.view(-1).tolist() == [8.0] * 6 + [16.0]


def test_distances_and_boxes_round_trip():
    points = torch.tensor([[4.5, 2.5]])
    box = dist2bbox(torch.tensor([[1.0, 2.0, 3.0, 0.5]]), points, xywh=False)
    assert box.tolist() == [[3.5, 0.5, 7.5, 3.0]]
    assert dist2bbox(torch.tensor([[1.0, 2.0, 3.0, 0.5]]), points).tolist() == [[5.5, 1.75, 4.0, 2.5]]  # cx cy w h
    assert bbox2dist(points, box).tolist() == [[1.0, 2.0, 3.0, 0.5]]
    # Clamped to the distribution's range (a box far larger than the bins can describe).
    clamped = bbox2dist(points, torch.tensor([[-100.0, 2.0, 5.0, 50.0]]), 14.99)
    assert clamped.tolist() == [pytest.approx([14.99, 0.5, 0.5, 14.99])]


def test_dfl_is_the_expected_bin():
    dfl = DFL(4)
    assert sum(p.numel() for p in dfl.parameters()) == 4 and not any(p.requires_grad for p in dfl.parameters())
    logits = torch.full((1, 16, 1), -1e4)  # 4 sides x 4 bins, one point
    for side, b in enumerate((0, 1, 3, 2)):
        logits[0, side * 4 + b, 0] = 0.0
    assert dfl(logits).view(-1).tolist() == [0.0, 1.0, 3.0, 2.0]
    uniform = dfl(torch.zeros(1, 16, 1))
    assert torch.allclose(uniform, torch.full_like(uniform, 1.5))  # the mean of 0..3
    # Half between bins 1 and 2: a target on a bin boundary is reachable.
    half = torch.full((1, 16, 1), -1e4)
    half[0, [1, 2, 5, 6, 9, 10, 13, 14], 0] = 0.0
    assert torch.allclose(dfl(half), torch.full((1, 4, 1), 1.5))


def head_with_known_outputs(end2end: bool = False) -> AnchorFreeDetect:
    """One 2x2 level at stride 8, nc 2, reg_max 4: every point predicts distances (1, 1, 2, 2) cells (bins are
    one-hot through the bias) and class scores from a per-point bias we set below."""
    head = AnchorFreeDetect(nc=2, reg_max=4, end2end=end2end, ch=[8], strides=[8.0]).eval()
    for branch in head.branches():
        box_last, cls_last = branch[0][0][-1], branch[1][0][-1]
        for conv in (box_last, cls_last):
            conv.weight.data.zero_()
        bias = torch.full((16,), -1e4)
        bias[[1, 5, 10, 14]] = 0.0  # sides l, t, r, b -> bins 1, 1, 2, 2
        box_last.bias.data.copy_(bias)
        cls_last.bias.data.copy_(torch.tensor([2.0, -2.0]))
    return head


def test_anchor_free_decoding_in_input_pixels():
    head = head_with_known_outputs()
    decoded, raw = head([torch.zeros(1, 8, 2, 2)])
    assert head.output_format == "xywh_cls" and decoded.shape == (1, 4, 6)
    # Point (0.5, 0.5) cells = (4, 4) px; box from (4 - 8, 4 - 8) to (4 + 16, 4 + 16): centre (8, 8), size 24.
    torch.testing.assert_close(decoded[0, 0, :4], torch.tensor([8.0, 8.0, 24.0, 24.0]))
    torch.testing.assert_close(decoded[0, 3, :4], torch.tensor([16.0, 16.0, 24.0, 24.0]))  # point (12, 12) px
    torch.testing.assert_close(decoded[0, :, 4:], torch.sigmoid(torch.tensor([2.0, -2.0])).expand(4, 2))
    assert raw["boxes"].shape == (1, 16, 4) and raw["scores"].shape == (1, 2, 4) and raw["sizes"] == [(2, 2)]


def test_end_to_end_top_k_ranks_points_and_classes():
    head = head_with_known_outputs(end2end=True)
    head.max_det = 3
    cls_last = head.one2one_cv3[0][-1]
    cls_last.weight.data.zero_()
    # Class logits per point through the input: point k has logit k for class 0 and -k for class 1.
    cls_last.weight.data[0, 0, 0, 0], cls_last.weight.data[1, 0, 0, 0] = 1.0, -1.0
    cls_last.bias.data.zero_()
    head.one2one_cv3[0][0] = torch.nn.Identity()
    head.one2one_cv3[0][1] = torch.nn.Identity()
    x = torch.zeros(1, 8, 2, 2)
    x[0, 0] = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    decoded, _ = head([x])
    assert head.output_format == "xyxy_score_class" and decoded.shape == (1, 3, 6)
    # Best point is the last one (logit 3 for class 0), then 2, then 1; xyxy boxes.
    torch.testing.assert_close(decoded[0, :, 4], torch.sigmoid(torch.tensor([3.0, 2.0, 1.0])))
    assert decoded[0, :, 5].tolist() == [0.0, 0.0, 0.0]
    torch.testing.assert_close(decoded[0, 0, :4], torch.tensor([12.0 - 8, 12.0 - 8, 12.0 + 16, 12.0 + 16]))
    # Post-processing only filters: above --conf, the listed classes, at most max_det.
    kept = postprocess(decoded, "xyxy_score_class", conf_thres=0.8)[0]
    assert kept[:, 4].tolist() == pytest.approx([torch.sigmoid(torch.tensor(3.0)).item(), 0.8807970285415649])
    assert len(postprocess(decoded, "xyxy_score_class", conf_thres=0.0, classes=[1])[0]) == 0
    assert len(postprocess(decoded, "xyxy_score_class", conf_thres=0.0, max_det=1)[0]) == 1


def test_fuse_drops_the_one_to_many_branches_of_an_end_to_end_head():
    model = DetectionModel("yolo26n-gmf-nano", nc=3).eval()
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        before = model(x)[0]
        model.fuse()
        after = model(x)[0]
    assert model.detect.cv2 is None and model.detect.one2one_cv2 is not None
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------------------------------
# Assigner
# --------------------------------------------------------------------------------------------------
def grid_points(h: int, w: int, stride: float = 8.0) -> torch.Tensor:
    points, strides = make_anchor_points([(h, w)], [stride])
    return points * strides


def assign(pd_scores, pd_boxes, points, labels, boxes, **kw):
    b, m = boxes.shape[:2]
    return task_aligned_assign(pd_scores, pd_boxes, points, labels, boxes, torch.ones(b, m, 1, dtype=torch.bool), **kw)


def test_box_on_cell_boundaries_keeps_only_the_points_strictly_inside():
    points = grid_points(4, 4)  # centres at 4, 12, 20, 28 px
    box = torch.tensor([[[4.0, 4.0, 20.0, 20.0]]])  # its edges run through the centres of rows/columns 0 and 2
    inside = points_in_boxes(points, box)[0, 0].view(4, 4)
    assert inside.nonzero().tolist() == [[1, 1]]  # only (12, 12): points on an edge are outside
    # A box narrower than min_side is widened about its centre for the choice: a 2 px box around (12, 12) grows to
    # (4, 4)-(20, 20), the box above; a 2 px box between centres holds none until widened.
    small = torch.tensor([[[11.0, 11.0, 13.0, 13.0]]])
    assert points_in_boxes(points, small, min_side=16.0)[0, 0].view(4, 4).nonzero().tolist() == [[1, 1]]
    between = torch.tensor([[[15.0, 15.0, 17.0, 17.0]]])
    assert not points_in_boxes(points, between).any()
    assert points_in_boxes(points, between, min_side=16.0)[0, 0].view(4, 4).nonzero().tolist() == [
        [1, 1],
        [1, 2],
        [2, 1],
        [2, 2],
    ]
    # The assigner then has exactly one candidate: it is the only positive, even with top-k 10.
    pd_scores = torch.full((1, 16, 2), 0.5)
    pd_boxes = box.expand(1, 16, 4).clone()  # every point predicts the box exactly: IoU 1
    a = assign(pd_scores, pd_boxes, points, torch.tensor([[[1.0]]]), box, topk=10)
    assert a.fg.view(4, 4).nonzero().tolist() == [[1, 1]]
    assert a.boxes[0, 5].tolist() == [4.0, 4.0, 20.0, 20.0]
    torch.testing.assert_close(a.scores[0, 5], torch.tensor([0.0, 1.0]))  # its class, at its IoU (1)


def test_two_boxes_competing_for_one_point_go_to_the_best_overlap():
    points = torch.tensor([[12.0, 12.0]])  # a single anchor point inside both boxes
    boxes = torch.tensor([[[0.0, 0.0, 24.0, 24.0], [8.0, 8.0, 40.0, 40.0]]])
    labels = torch.tensor([[[0.0], [1.0]]])
    pd_scores = torch.tensor([[[0.6, 0.4]]])
    for predicted, winner in (([0.0, 0.0, 24.0, 24.0], 0), ([8.0, 8.0, 40.0, 40.0], 1)):
        a = assign(pd_scores, torch.tensor([[predicted]]), points, labels, boxes, topk=10)
        assert a.fg.tolist() == [[True]] and a.gt_index.tolist() == [[winner]]
        assert a.boxes[0, 0].tolist() == boxes[0, winner].tolist()
        # Target score: its class only, t normalised by the box's best t and scaled by its best overlap. The
        # point is the winner's only positive, so the target is that box's best IoU: 1 (the prediction is the box).
        expected = [1.0, 0.0] if winner == 0 else [0.0, 1.0]
        torch.testing.assert_close(a.scores[0, 0], torch.tensor(expected), atol=1e-6, rtol=0)


def test_top_k_and_the_one_to_one_cut():
    points = grid_points(1, 4)  # (4, 4), (12, 4), (20, 4), (28, 4)
    box = torch.tensor([[[0.0, 0.0, 32.0, 8.0]]])
    pd_boxes = box.expand(1, 4, 4).clone()
    pd_scores = torch.tensor([[[0.1], [0.9], [0.4], [0.2]]])
    ones = torch.zeros(1, 1, 1)
    a = assign(pd_scores, pd_boxes, points, ones, box, topk=2)
    assert a.fg.tolist() == [[False, True, True, False]]  # the two best scores (equal IoU)
    # t = sqrt(s) (IoU 1): normalised targets sqrt(s) / sqrt(0.9) * 1.
    torch.testing.assert_close(a.scores[0, :, 0], torch.tensor([0.0, 1.0, math.sqrt(0.4 / 0.9), 0.0]))
    one = assign(pd_scores, pd_boxes, points, ones, box, topk=3, topk2=1)
    assert one.fg.tolist() == [[False, True, False, False]]


def test_box_larger_than_the_image():
    points = grid_points(4, 4)  # a 32x32 image
    box = torch.tensor([[[-40.0, -40.0, 90.0, 90.0]]])
    pd_scores = torch.rand(1, 16, 3, generator=torch.Generator().manual_seed(0))
    pd_boxes = torch.tensor([[0.0, 0.0, 32.0, 32.0]]).expand(1, 16, 4).clone()
    a = assign(pd_scores, pd_boxes, points, torch.tensor([[[2.0]]]), box, topk=10)
    assert int(a.fg.sum()) == 10  # every point is a candidate; the top 10 are kept (by score: equal overlaps)
    assert set(a.fg[0].nonzero().view(-1).tolist()) == set(pd_scores[0, :, 2].topk(10).indices.tolist())
    assert (a.boxes[a.fg] == box[0, 0]).all() and (a.scores[0, :, :2] == 0).all()
    # Every point predicts (0, 0)-(32, 32): IoU 1024 / 16900 with the box, centres 9 px apart in x and y, enclosing
    # diagonal² 2·130², equal aspect: CIoU u = 1024/16900 - 162/33800. The best-aligned point's target is
    # u · t / (t + 1e-9), t = sqrt(s) · u^6 its metric (the assigner's eps matters for metrics this small).
    u = 1024 / 16900 - 162 / 33800
    t = math.sqrt(pd_scores[0, :, 2].max().item()) * u**6
    assert a.scores.max().item() == pytest.approx(u * t / (t + 1e-9), rel=1e-4)


def test_no_boxes_and_padded_slots_assign_nothing():
    points = grid_points(2, 2)
    a = task_aligned_assign(
        torch.rand(2, 4, 3),
        torch.rand(2, 4, 4),
        points,
        torch.zeros(2, 0, 1),
        torch.zeros(2, 0, 4),
        torch.zeros(2, 0, 1),
    )
    assert not a.fg.any() and a.scores.sum() == 0
    # Image 1 has a padded (invalid) slot only: nothing there; image 0's box is assigned.
    boxes = torch.tensor([[[0.0, 0.0, 16.0, 16.0]], [[0.0, 0.0, 16.0, 16.0]]])
    mask = torch.tensor([[[True]], [[False]]])
    a = task_aligned_assign(torch.full((2, 4, 3), 0.5), boxes.expand(2, 4, 4).clone(), points, torch.zeros(2, 1, 1),
                            boxes, mask)  # fmt: skip
    assert a.fg[0].any() and not a.fg[1].any()


# --------------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------------
def test_padded_targets():
    targets = torch.tensor([[1, 2, 0.5, 0.5, 0.5, 0.25], [0, 1, 0.25, 0.25, 0.5, 0.5], [1, 0, 0.5, 0.5, 1.0, 1.0]])
    labels, boxes, mask = padded_targets(targets, 3, (32, 64))  # h 32, w 64
    assert labels.shape == (3, 2, 1) and mask.view(3, 2).tolist() == [[True, False], [True, True], [False, False]]
    assert labels[1, :, 0].tolist() == [2.0, 0.0]  # image order kept
    assert boxes[1, 0].tolist() == [16.0, 12.0, 48.0, 20.0] and boxes[0, 0].tolist() == [0.0, 0.0, 32.0, 16.0]


def test_distribution_focal_loss_by_hand():
    uniform = torch.zeros(3, 16)
    torch.testing.assert_close(dfl_loss(uniform, torch.tensor([0.0, 7.3, 14.99])), torch.full((3,), math.log(16)))
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3]]))  # probabilities of bins 0, 1, 2
    # t = 1.25: 0.75 * -log 0.6 + 0.25 * -log 0.3
    torch.testing.assert_close(
        dfl_loss(logits, torch.tensor([1.25])), torch.tensor([-0.75 * math.log(0.6) - 0.25 * math.log(0.3)])
    )
    torch.testing.assert_close(dfl_loss(logits, torch.tensor([1.0])), torch.tensor([-math.log(0.6)]))  # on a bin


def one_level_raw(boxes: torch.Tensor, scores: torch.Tensor, h: int, w: int) -> dict:
    return {"boxes": boxes, "scores": scores, "sizes": [(h, w)]}


def test_loss_of_a_perfect_prediction_by_hand():
    """One 2x2 level at stride 8 (16 px image), one class, reg_max 1 (distances directly, YOLO26's L1 term), one box
    exactly predicted at one point. Only that point is positive (the others are outside the box), with target score
    = its IoU 1; box and L1 terms are 0, and the class term is the BCE sum over all points / 1."""
    head = AnchorFreeDetect(nc=1, reg_max=1, ch=[8], strides=[8.0, 16.0][:1])
    loss = AnchorFreeLoss(head, HYP)
    loss.min_side = None
    # Box (2, 2)-(7, 7) px holds only the point (4, 4): distances 2, 2, 3, 3 px = 0.25, 0.25, 0.375, 0.375 cells.
    boxes = torch.zeros(1, 4, 4)
    boxes[0, :, 0] = torch.tensor([0.25, 0.25, 0.375, 0.375])
    logits = torch.tensor([[[3.0, -1.0, -2.0, 0.5]]])
    targets = torch.tensor([[0, 0, 4.5 / 16, 4.5 / 16, 5 / 16, 5 / 16]])
    total, items = loss(one_level_raw(boxes, logits, 2, 2), targets)
    bce = -math.log(torch.sigmoid(torch.tensor(3.0)).item()) + sum(math.log1p(math.exp(v)) for v in (-1.0, -2.0, 0.5))
    torch.testing.assert_close(items, torch.tensor([0.0, 0.5 * bce, 0.0]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(total, items.sum() * 1)


def test_loss_terms_scale_with_the_target_score_sum_and_gains():
    torch.manual_seed(0)
    head = AnchorFreeDetect(nc=3, reg_max=16, ch=[8, 8], strides=[8.0, 16.0])
    raw = {
        "boxes": torch.randn(2, 64, 16 + 4, requires_grad=True),
        "scores": torch.randn(2, 3, 20),
        "sizes": [(4, 4), (2, 2)],
    }
    targets = torch.tensor([[0, 1, 0.4, 0.4, 0.5, 0.5], [1, 2, 0.6, 0.5, 0.9, 0.7], [1, 0, 0.2, 0.2, 0.2, 0.2]])
    total, items = AnchorFreeLoss(head, HYP)(raw, targets)
    double, items2 = AnchorFreeLoss(head, {**HYP, "box": 15.0, "cls": 1.0, "dfl": 3.0})(raw, targets)
    torch.testing.assert_close(items2, 2 * items)
    torch.testing.assert_close(total, items.sum() * 2)  # times the batch size
    assert all(torch.isfinite(items)) and (items > 0).all()
    total.backward()
    assert raw["boxes"].grad.abs().sum() > 0
    # A box larger than the image: finite, and the DFL targets are clamped to the last bin.
    big = torch.tensor([[0, 1, 0.5, 0.5, 3.0, 3.0]])
    assert torch.isfinite(AnchorFreeLoss(head, HYP)(raw, big)[0])
    # No targets at all: class term only, the box outputs still in the graph (DDP needs every parameter used).
    empty_total, empty_items = AnchorFreeLoss(head, HYP)(raw, torch.zeros(0, 6))
    assert empty_items[0] == 0 and empty_items[2] == 0 and empty_items[1] > 0
    assert empty_total.requires_grad


def test_end_to_end_loss_weights_and_schedule():
    assert one_to_many_weight(0, 25) == pytest.approx(0.8)
    assert one_to_many_weight(24, 25) == pytest.approx(0.1)
    assert one_to_many_weight(12, 25) == pytest.approx(0.45)
    assert one_to_many_weight(0, 1) == pytest.approx(0.8) and one_to_many_weight(5, 3) == pytest.approx(0.1)
    model = DetectionModel("yolo26n-gmf-nano", nc=2)
    loss = make_loss(model.detect, HYP)
    assert isinstance(loss, EndToEndLoss) and model.detect.loss_names == ("box_loss", "cls_loss", "l1_loss")
    raw = model.train()(torch.rand(2, 3, 64, 64))
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.4, 0.4]])
    many, _ = loss.one2many(raw["one2many"], targets)
    one, one_items = loss.one2one(raw["one2one"], targets)
    loss.set_epoch(10, 21)  # o2m = 0.5 * 0.7 + 0.1 = 0.45
    total, items = loss(raw, targets)
    torch.testing.assert_close(total, 0.45 * many + 0.55 * one)
    torch.testing.assert_close(items, one_items)  # reported: the one-to-one branch (what inference uses)


def test_one_to_one_branch_trains_on_detached_features():
    model = DetectionModel("yolo26n-gmf-nano", nc=2).train()
    raw = model(torch.rand(1, 3, 64, 64))
    raw["one2one"]["scores"].sum().backward()
    assert model.detect.one2one_cv3[0][-1].weight.grad is not None
    assert all(p.grad is None for p in model.model[0].parameters())  # nothing reached the backbone
