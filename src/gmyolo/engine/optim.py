"""Optimizer parameter groups from a model's own no-weight-decay rule, for every task.

A model names the parameters that must not be decayed (``no_weight_decay()``, timm's convention:
norm weights, biases, position encodings); a module that loaded pretrained weights says so with
``pretrained_loaded = True`` and its parameters learn at ``pretrained_lr_ratio`` × lr.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

__all__ = ["param_groups", "pretrained_parameters", "no_weight_decay_names"]


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """``model.no_weight_decay()`` if it has one, else every parameter of one dimension or less."""
    if hasattr(model, "no_weight_decay"):
        return set(model.no_weight_decay())
    return {name for name, p in model.named_parameters() if p.ndim <= 1}


def pretrained_parameters(model: nn.Module) -> set[int]:
    """ids of the parameters of every submodule that loaded pretrained weights."""
    return {id(p) for m in model.modules() if getattr(m, "pretrained_loaded", False) for p in m.parameters()}


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    separate_biases: bool = False,
    pretrained_lr_ratio: float = 1.0,
    pretrained: Iterable[int] = (),
) -> list[dict]:
    """Groups of the trainable parameters of ``model``, each tagged with its ``kind`` and ``lr_scale``.

    kinds: ``decay`` (weight decay), ``no_decay`` (the model's no-weight-decay set) and, with
    ``separate_biases``, ``bias`` (no decay; detectors warm biases up on their own schedule). Parameters
    whose id is in ``pretrained`` learn at ``pretrained_lr_ratio`` × ``lr``. Groups are ordered by kind,
    then fresh before pretrained; parameters keep the model's order.
    """
    skip = no_weight_decay_names(model)
    pretrained = set(pretrained)
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if separate_biases and name.endswith(".bias"):
            kind = "bias"
        elif name in skip:
            kind = "no_decay"
        else:
            kind = "decay"
        groups.setdefault((kind, id(p) in pretrained), []).append(p)
    out = []
    for (kind, is_pretrained), params in sorted(groups.items()):
        scale = pretrained_lr_ratio if is_pretrained else 1.0
        out.append(
            {
                "params": params,
                "lr": lr * scale,
                "initial_lr": lr * scale,
                "lr_scale": scale,
                "kind": kind,
                "weight_decay": weight_decay if kind == "decay" else 0.0,
            }
        )
    return out
