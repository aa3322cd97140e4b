"""Reading the authors' GroupMixFormer checkpoints: unwrapping, key checks, variant inference, loading.

The released files (``{"model": state_dict}``, the authors' module names) load without any key
mapping. Files are read with ``torch.load(weights_only=True)``; a checkpoint of another variant or
another model is one :class:`~gmyolo.errors.CheckpointError` that says what did not fit.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ...errors import CheckpointError
from ...utils.checkpoints import read_checkpoint
from .model import VARIANTS

if TYPE_CHECKING:
    from .model import GroupMixFormer

__all__ = [
    "LoadReport",
    "read_checkpoint",
    "load_checkpoint_state_dict",
    "infer_config_from_state_dict",
    "describe_config",
    "variant_of",
    "load_groupmixformer_weights",
    "check_variant",
    "checkpoint_filter_fn",
]

LOGGER = logging.getLogger("gmyolo")


@dataclass
class LoadReport:
    """What :func:`load_groupmixformer_weights` did, for logs and tests."""

    loaded: int = 0
    dropped: list[str] = field(default_factory=list)  # checkpoint keys deliberately not used
    missing: list[str] = field(default_factory=list)  # model keys left at their initial values
    notes: list[str] = field(default_factory=list)


def load_checkpoint_state_dict(checkpoint: str | os.PathLike | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Unwrap every checkpoint format the authors' code produces into a flat state dict.

    Accepted: ``{"model": sd}`` (released files), ``{"state_dict": sd}``, a bare state dict; keys may
    carry a ``module.`` prefix (DataParallel / DDP).
    """
    where = os.fspath(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "checkpoint dict"
    obj = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{where}: expected a dict of tensors, found {type(obj).__name__}")
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    state = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(
                f"{where}: entry {k!r} is a {type(v).__name__}, not a tensor; expected a state dict "
                f"(top level, or under 'model' or 'state_dict')"
            )
        state[k[len("module.") :] if k.startswith("module.") else k] = v
    if not state:
        raise CheckpointError(f"{where}: the checkpoint holds no tensors")
    return state


def infer_config_from_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, Any] | None:
    """Read widths, depths, MLP ratios and class count off an authors'-format state dict (None if not one)."""
    dims, depths, ratios = [], [], []
    for i in range(4):
        pw = state.get(f"patch_embed_layers.{i}.proj.pointwise_conv.weight")
        if pw is None:
            break
        dims.append(pw.shape[0])
        prefix = f"groupmixformer_backbone.{i}.gma_stage."
        blocks = {int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)}
        depths.append(len(blocks))
        fc1 = state.get(f"{prefix}0.mlp.fc1.weight")
        ratios.append(fc1.shape[0] / fc1.shape[1] if fc1 is not None else None)
    if not dims:
        return None
    ratios = [int(r) if r is not None and float(r).is_integer() else r for r in ratios]
    head = state.get("head.weight")
    return dict(
        embedding_dims=dims,
        serial_depths=depths,
        mlp_ratios=ratios,
        num_classes=head.shape[0] if head is not None else None,
    )


def describe_config(cfg: Mapping[str, Any]) -> str:
    """'GroupMixFormer-T (dims 80-160-200-240, depths 4-4-12-4)' or without the name if no variant fits."""
    name = variant_of(cfg)
    text = "dims {} depths {}".format(
        "-".join(map(str, cfg["embedding_dims"])), "-".join(map(str, cfg["serial_depths"]))
    )
    return f"GroupMixFormer-{name.upper()} ({text})" if name else f"GroupMixFormer ({text})"


def variant_of(cfg: Mapping[str, Any]) -> str | None:
    """The name of the variant with these widths, depths and MLP ratios, if any."""
    for name, v in VARIANTS.items():
        if all(list(cfg.get(k, [])) == list(v[k]) for k in ("embedding_dims", "serial_depths", "mlp_ratios")):
            return name
    return None


def check_variant(state: Mapping[str, torch.Tensor], model: GroupMixFormer) -> dict[str, Any]:
    """The checkpoint's config, read off its tensors; a :class:`CheckpointError` naming both variants when the
    model's built stages do not have the same widths, depths and MLP ratios."""
    found = infer_config_from_state_dict(state)
    if found is None:
        sample = ", ".join(list(state)[:3])
        raise CheckpointError(
            f"this is not a GroupMixFormer checkpoint: it has none of the patch_embed_layers.* weights "
            f"(its first keys: {sample}, ...)"
        )
    mine, n = model.config, model.num_stages
    if (found["embedding_dims"][:n], found["serial_depths"][:n]) != (
        mine["embedding_dims"][:n],
        mine["serial_depths"][:n],
    ) or (found["mlp_ratios"][:n] != list(mine["mlp_ratios"][:n])):
        raise CheckpointError(
            f"checkpoint is {describe_config(found)} with mlp ratios {found['mlp_ratios']}, but the model is "
            f"{describe_config(mine)} with mlp ratios {mine['mlp_ratios']}: pick the matching variant"
        )
    return found


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: GroupMixFormer) -> dict[str, torch.Tensor]:
    """timm's hook between reading a checkpoint and loading it (``build_model_with_cfg``).

    The authors' key names are this model's, so nothing is renamed: the file is unwrapped (``{"model": sd}``,
    ``module.`` prefixes) and checked to be the model's variant; timm then drops a classifier of another
    class count and loads the rest strictly.
    """
    state = load_checkpoint_state_dict(state_dict)
    check_variant(state, model)
    return state


def load_groupmixformer_weights(
    model: GroupMixFormer, checkpoint: str | os.PathLike | Mapping[str, Any], strict: bool = True
) -> LoadReport:
    """Load authors'-format weights into ``model``.

    The classifier (``norm4``, ``head``) is dropped in features mode and re-initialised when the
    class count differs; stages the model did not build are dropped. Everything else must fit
    exactly when ``strict`` (the default); otherwise one :class:`CheckpointError` says what did not.
    """
    state = load_checkpoint_state_dict(checkpoint)
    found = check_variant(state, model)
    mine = model.config
    ours_desc, theirs_desc = describe_config(mine), describe_config(found)
    n = model.num_stages

    report = LoadReport()
    model_state = model.state_dict()
    reinit: tuple[str, ...] = ()  # model keys deliberately left at their fresh initialisation
    if model.features_only:
        head_keys = [k for k in state if k.startswith(("norm4.", "head."))]
        if head_keys:
            report.notes.append("dropped the classification head (norm4, head): the model returns features")
    elif found["num_classes"] is not None and found["num_classes"] != model.num_classes:
        head_keys, reinit = [k for k in state if k.startswith("head.")], ("head.",)
        report.notes.append(
            f"classification head re-initialised for {model.num_classes} classes "
            f"(the checkpoint's head has {found['num_classes']})"
        )
    else:
        head_keys = []
    cut_stages = [
        k
        for k in state
        if k.split(".")[0] in ("patch_embed_layers", "groupmixformer_backbone") and int(k.split(".")[1]) >= n
    ]
    if cut_stages:
        report.notes.append(f"dropped stages {n}..3: the model stops at stage {n - 1} (out_indices)")
    report.dropped = head_keys + cut_stages
    dropped = set(report.dropped)
    usable = {k: v for k, v in state.items() if k not in dropped}

    unexpected = [k for k in usable if k not in model_state]
    shape_bad = [k for k in usable if k in model_state and usable[k].shape != model_state[k].shape]
    missing = [k for k in model_state if k not in usable and not k.startswith(reinit)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} model weights are absent from the checkpoint (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} checkpoint entries have no place in the model (e.g. {unexpected[0]})")
    if shape_bad:
        k = shape_bad[0]
        problems.append(
            f"{len(shape_bad)} entries have the wrong shape (e.g. {k}: checkpoint "
            f"{tuple(usable[k].shape)}, model {tuple(model_state[k].shape)})"
        )
    if problems and strict:
        raise CheckpointError(
            f"checkpoint ({theirs_desc}) does not fit the model ({ours_desc}): " + "; ".join(problems)
        )
    fitting = {k: v for k, v in usable.items() if k in model_state and k not in shape_bad}
    model.load_state_dict(fitting, strict=False)
    report.loaded = len(fitting)
    report.missing = missing
    for note in report.notes + problems:
        LOGGER.info("GroupMixFormer weights: %s", note)
    LOGGER.info("GroupMixFormer weights: loaded %d tensors from a %s checkpoint", report.loaded, theirs_desc)
    return report
