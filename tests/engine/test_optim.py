"""Optimizer parameter groups: weight decay, the pretrained-backbone learning rate, the optimizer choice, resume.

Detection: :func:`gmyolo.tasks.detect.train.build_optimizer`;
classification: :func:`gmyolo.tasks.classify.train.build_optimizer`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from gmyolo.data.synth import make_synthetic_dataset
from gmyolo.models.groupmixformer import GroupMixFormer, groupmixformer
from gmyolo.models.yolo import DetectionModel, resolve_model_path
from gmyolo.tasks.classify import train as classify_module
from gmyolo.tasks.detect import train as trainer_module
from gmyolo.tasks.detect.hyp import resolve_hyp
from gmyolo.tasks.detect.train import TrainArgs, build_optimizer, train

HYP = resolve_hyp()  # lr0 0.01 (SGD), lr0_adamw 0.002, weight_decay 0.0005 (SGD), 0.05 (AdamW), backbone_lr_ratio 0.1
NANO = "yolov5n-gmf-nano"  # GroupMixFormer-M with widths 40-80-120-160 and depths 1-1-2-1 under the YOLOv5n neck
NANO_BACKBONE = dict(embedding_dims=[40, 80, 120, 160], serial_depths=[1, 1, 2, 1])
NORMS = (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
FAST = dict(model=NANO, imgsz=64, batch=8, nbs=8, workers=0, progress=False, plots=False)


def group_of(opt: torch.optim.Optimizer) -> dict[int, dict]:
    """id(parameter) -> its parameter group; each parameter must be in exactly one group."""
    where: dict[int, dict] = {}
    for g in opt.param_groups:
        for p in g["params"]:
            assert id(p) not in where, "a parameter is in two groups"
            where[id(p)] = g
    return where


def norm_weight_names(model: nn.Module) -> set[str]:
    return {f"{name}.weight" if name else "weight" for name, m in model.named_modules() if isinstance(m, NORMS)}


def authors_checkpoint(path: Path) -> Path:
    """The authors' release format ({"model": state_dict}, classifier included) for the nano detector's backbone."""
    torch.save({"model": groupmixformer("m", **NANO_BACKBONE).state_dict()}, path)
    return path


def yaml_with_pretrained(tmp_path: Path, weights: Path) -> Path:
    """The packaged nano YAML with the backbone's ``pretrained`` argument set to ``weights``."""
    text = resolve_model_path(NANO).read_text()
    layer = "[m, [1, 2, 3], null, 0.0, 0,"
    assert text.count(layer) == 1
    path = tmp_path / "nano-pretrained.yaml"
    path.write_text(text.replace(layer, f"[m, [1, 2, 3], '{weights}', 0.0, 0,"))
    return path


def assert_backbone_lr(model: DetectionModel, opt: torch.optim.Optimizer, lr0: float, ratio: float) -> None:
    """Backbone parameters at lr0 * ratio, all others at lr0 (lr, initial_lr and the warm-up's lr_scale)."""
    backbone = {id(p) for p in model.model[0].parameters()}
    where = group_of(opt)
    seen = set()
    for name, p in model.named_parameters():
        g = where[id(p)]
        scale = ratio if id(p) in backbone else 1.0
        assert (g["lr"], g["initial_lr"], g["lr_scale"]) == pytest.approx((lr0 * scale, lr0 * scale, scale)), name
        seen.add((g["kind"], id(p) in backbone))
    # the decay / no-decay / bias split holds inside and outside the backbone (the Detect biases are outside)
    assert seen == {(k, b) for k in ("decay", "no_decay", "bias") for b in (True, False)}


# --------------------------------------------------------------------------------------------------
# Weight decay
# --------------------------------------------------------------------------------------------------
def test_no_decay_on_norms_biases_and_position_convs_decay_on_conv_and_linear_weights():
    model = DetectionModel(NANO, nc=4)
    backbone = model.model[0]
    assert isinstance(backbone, GroupMixFormer)
    backbone.freeze_stages(1)  # frozen parameters belong to no group
    opt = build_optimizer(model, "auto", HYP, batch=8, accumulate=2, nbs=64)
    where = group_of(opt)
    norms = norm_weight_names(model)
    counts = {"bias": 0, "norm": 0, "position": 0, "decay": 0}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert id(p) not in where, f"frozen {name} is optimised"
            continue
        g = where[id(p)]
        if name.endswith(".bias"):
            what, kind = "bias", "bias"
        elif name in norms:
            what, kind = "norm", "no_decay"
        elif ".cpe." in name or ".crpe." in name:
            assert p.ndim == 4, name  # conv kernels: only their names keep them out of weight decay
            what, kind = "position", "no_decay"
        else:
            what, kind = "decay", "decay"
            assert p.ndim >= 2, name
        assert g["kind"] == kind, name
        assert g["weight_decay"] == (HYP["weight_decay_adamw"] if kind == "decay" else 0.0), name
        counts[what] += 1
    assert all(counts.values()), counts
    assert len(where) == sum(p.requires_grad for p in model.parameters())
    # named examples: a linear and a conv weight decayed; a position conv, a norm and a bias not
    params = dict(model.named_parameters())
    for name, decayed in [
        ("model.0.groupmixformer_backbone.1.gma_stage.0.att.qkv.weight", True),  # Linear
        ("model.3.cv1.conv.weight", True),  # SPPF conv
        ("model.0.groupmixformer_backbone.1.gma_stage.0.cpe.proj.weight", False),
        ("model.0.groupmixformer_backbone.1.gma_stage.0.att.crpe.conv_list.0.weight", False),
        ("model.0.groupmixformer_backbone.1.gma_stage.0.norm1.weight", False),
        ("model.3.cv1.bn.weight", False),
        ("model.18.m.0.bias", False),  # Detect
    ]:
        assert (where[id(params[name])]["weight_decay"] > 0) == decayed, name


def test_detector_and_backbone_agree_on_what_is_not_decayed():
    # The backbone's own no_weight_decay() set (the classification optimizer's rule) is the detector's too.
    model = DetectionModel(NANO, nc=4)
    where = group_of(build_optimizer(model, "auto", HYP, batch=16, accumulate=1, nbs=16))
    backbone_params = dict(model.model[0].named_parameters())
    skip = model.model[0].no_weight_decay()
    for name, p in backbone_params.items():
        assert (where[id(p)]["weight_decay"] == 0.0) == (name in skip), name


def test_sgd_weight_decay_scales_with_batch_times_accumulate_over_nbs():
    model = DetectionModel("yolov5n", nc=4)
    for batch, accumulate, nbs in [(8, 2, 64), (16, 4, 64), (16, 1, 16), (32, 1, 16)]:
        opt = build_optimizer(model, "auto", HYP, batch=batch, accumulate=accumulate, nbs=nbs)
        assert isinstance(opt, torch.optim.SGD)
        expected = HYP["weight_decay"] * batch * accumulate / nbs
        assert [g["weight_decay"] for g in opt.param_groups if g["kind"] == "decay"] == [pytest.approx(expected)]
        assert {g["weight_decay"] for g in opt.param_groups if g["kind"] != "decay"} == {0.0}
        assert all(g["nesterov"] and g["momentum"] == HYP["momentum"] for g in opt.param_groups)
    # AdamW's decoupled weight decay is not scaled
    opt = build_optimizer(DetectionModel(NANO, nc=4), "auto", HYP, batch=8, accumulate=2, nbs=64)
    assert {g["weight_decay"] for g in opt.param_groups if g["kind"] == "decay"} == {HYP["weight_decay_adamw"]}


# --------------------------------------------------------------------------------------------------
# Optimizer choice
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "model_name, choice, expected",
    [
        (NANO, "auto", torch.optim.AdamW),  # a GroupMixFormer backbone
        ("yolov5n", "auto", torch.optim.SGD),  # a pure CNN
        ("yolov5n", "AdamW", torch.optim.AdamW),
        ("yolov5n", "adamw", torch.optim.AdamW),
        (NANO, "SGD", torch.optim.SGD),
        (NANO, "sgd", torch.optim.SGD),
    ],
)
def test_auto_picks_adamw_for_groupmixformer_and_sgd_for_cnn_explicit_choice_honoured(model_name, choice, expected):
    opt = build_optimizer(DetectionModel(model_name, nc=4), choice, HYP, batch=16, accumulate=1, nbs=16)
    assert type(opt) is expected
    lr0 = HYP["lr0_adamw"] if expected is torch.optim.AdamW else HYP["lr0"]
    assert {g["lr"] for g in opt.param_groups} == {lr0}  # nothing pretrained: one learning rate
    if expected is torch.optim.AdamW:
        assert all(g["betas"] == (HYP["momentum"], 0.999) for g in opt.param_groups)


# --------------------------------------------------------------------------------------------------
# Pretrained backbone: backbone_lr_ratio x lr
# --------------------------------------------------------------------------------------------------
def test_backbone_weights_give_the_backbone_the_lower_learning_rate(tmp_path):
    # What --backbone-weights does: load_pretrained on each GroupMixFormer of the built detector.
    weights = authors_checkpoint(tmp_path / "gmf_nano.pth")
    model = DetectionModel(NANO, nc=4)
    model.model[0].load_pretrained(weights)
    for name, choice, lr0 in [("AdamW", "auto", HYP["lr0_adamw"]), ("SGD", "SGD", HYP["lr0"])]:
        opt = build_optimizer(model, choice, HYP, batch=16, accumulate=1, nbs=16)
        assert type(opt).__name__ == name
        assert_backbone_lr(model, opt, lr0, HYP["backbone_lr_ratio"])
    hyp = {**HYP, "backbone_lr_ratio": 0.25}  # the ratio is the hyper-parameter's, not a constant
    assert_backbone_lr(model, build_optimizer(model, "auto", hyp, 16, 1, 16), HYP["lr0_adamw"], 0.25)


def test_yaml_pretrained_backbone_gets_the_lower_learning_rate(tmp_path):
    # Regression: weights named by the YAML's `pretrained` argument ([variant, out_indices, pretrained, ...]) did
    # not mark the backbone as pretrained, so it trained at the full learning rate (only --backbone-weights did).
    weights = authors_checkpoint(tmp_path / "gmf_nano.pth")
    model = DetectionModel(yaml_with_pretrained(tmp_path, weights), nc=4)
    authors = torch.load(weights, weights_only=True)["model"]
    qkv = "groupmixformer_backbone.3.gma_stage.0.att.qkv.weight"
    assert torch.equal(model.model[0].state_dict()[qkv], authors[qkv])  # the weights did arrive
    opt = build_optimizer(model, "auto", HYP, batch=16, accumulate=1, nbs=16)
    assert_backbone_lr(model, opt, HYP["lr0_adamw"], HYP["backbone_lr_ratio"])


# --------------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------------
def test_classification_optimizer_skips_the_models_no_weight_decay_set():
    model = GroupMixFormer(embedding_dims=(20, 20, 40, 40), serial_depths=(1, 1, 1, 1), num_classes=3)
    model.freeze_stages(1)
    opt = classify_module.build_optimizer(model, lr=1e-3, weight_decay=0.05)
    assert isinstance(opt, torch.optim.AdamW)
    assert all(g["betas"] == (0.9, 0.999) and g["eps"] == 1e-8 and g["lr"] == 1e-3 for g in opt.param_groups)
    where = group_of(opt)
    skip = model.no_weight_decay()
    assert {n for n in skip if ".cpe." in n or ".crpe." in n} and norm_weight_names(model) <= skip
    assert "head.bias" in skip and "head.weight" not in skip
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert id(p) not in where, name
            continue
        assert where[id(p)]["weight_decay"] == (0.0 if name in skip else 0.05), name
    assert len(where) == sum(p.requires_grad for p in model.parameters())


# --------------------------------------------------------------------------------------------------
# End to end: --backbone-weights in training, and resuming such a run
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["backbone_weights", "yaml_pretrained"])
def pretrained_run(request, tmp_path_factory, validator_interrupted_at) -> Path:
    """last.pt of a 2-epoch run whose backbone started from the authors' weights (``--backbone-weights``, or the
    model YAML's ``pretrained``), interrupted while epoch 2 validated: it holds epoch 1."""
    root = tmp_path_factory.mktemp(request.param)
    data = make_synthetic_dataset(root / "synth", seed=0, n_train=16, n_val=8, imgsz=96)
    weights = authors_checkpoint(root / "gmf_nano.pth")
    if request.param == "backbone_weights":
        how = dict(backbone_weights=str(weights))
    else:
        how = dict(model=str(yaml_with_pretrained(root, weights)))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the nano model at 64 px is dispatch-bound: a second thread only adds waiting
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(trainer_module.DetectionTrainer, "validator", validator_interrupted_at(trainer_module.Validator))
            with pytest.raises(KeyboardInterrupt):
                train(TrainArgs(data=str(data), epochs=2, project=str(root), **{**FAST, **how}))
    finally:
        torch.set_num_threads(threads)
    last = root / "exp/weights/last.pt"
    assert torch.load(last, weights_only=True)["epoch"] == 0
    return last


def test_training_from_pretrained_backbone_saves_the_lower_backbone_learning_rate(pretrained_run):
    groups = torch.load(pretrained_run, weights_only=True)["optimizer"]["param_groups"]
    ratio = HYP["backbone_lr_ratio"]
    assert sorted((g["kind"], g["lr_scale"]) for g in groups) == sorted(
        (k, s) for k in ("bias", "decay", "no_decay") for s in (1.0, ratio)
    )
    for g in groups:
        assert g["initial_lr"] == pytest.approx(HYP["lr0_adamw"] * g["lr_scale"])


def test_resume_of_a_run_with_a_pretrained_backbone(pretrained_run, tmp_path):
    # The checkpoint names the modules that loaded pretrained weights (its model YAML no longer does), so the
    # resumed optimizer has the same parameter groups, the backbone's still at backbone_lr_ratio.
    torch.set_num_threads(1)  # as in the fixture (the autouse fixture sets the count again for the next test)
    run = tmp_path / "exp"
    shutil.copytree(pretrained_run.parent.parent, run)  # the fixture's folder stays as it was for the other test
    resumed = train(TrainArgs(resume=str(run / "weights/last.pt"), progress=False))
    assert resumed["epochs_trained"] == 2
    groups = torch.load(resumed["last"], weights_only=True)["optimizer"]["param_groups"]
    assert sorted(g["lr_scale"] for g in groups) == [HYP["backbone_lr_ratio"]] * 3 + [1.0] * 3


def test_warmup_accumulation_rises_from_one_batch_as_in_yolov5():
    # YOLOv5 7.0's train.py and Ultralytics: while ni <= nw, accumulate = max(1, round(interp(ni, [0, nw],
    # [1, nbs / batch]))) (numpy rounds halves to even: 2.5 -> 2), and a step is taken once ni - last_step >= it.
    trainer = trainer_module.DetectionTrainer(TrainArgs())
    trainer.accumulate, trainer.warmup_iters = 4, 100
    at = (0, 16, 17, 50, 51, 83, 84, 99, 100, 5000)
    assert [trainer.batches_per_step(ni) for ni in at] == [1, 1, 2, 2, 3, 3, 4, 4, 4, 4]
    trainer.warmup_iters = 0  # no warm-up: accumulate from the first batch
    assert trainer.batches_per_step(0) == 4
