"""GroupMixFormer classifiers: building one (from the authors' weights or a gmyolo classifier) and its checkpoints.

A classification checkpoint is a plain dict with ``task: "classify"`` (float32 weights, the model's
config, class names, optimizer, EMA, args, metrics), written atomically and read with ``weights_only``.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ... import __version__
from ...errors import CheckpointError
from ...models.groupmixformer import (
    GroupMixFormer,
    groupmixformer,
    infer_config_from_state_dict,
    load_checkpoint_state_dict,
    read_checkpoint,
    variant_name,
    variant_of,
)
from ...models.groupmixformer.model import PRETRAINED_CFG
from ...utils.checkpoints import atomic_save

__all__ = [
    "TASK",
    "PREPROCESS_KEYS",
    "build_classifier",
    "save_classify_checkpoint",
    "load_classify_checkpoint",
    "check_classify_checkpoint",
    "classifier_from_checkpoint",
    "load_classifier",
    "drop_path_of",
    "data_config",
    "preprocessing",
]

TASK = "classify"  # the checkpoint key that tells a classifier from a detector
PREPROCESS_KEYS = ("imgsz", "crop_pct", "interpolation", "mean", "std")


def data_config(variant: str | None) -> dict[str, Any]:
    """timm's ``resolve_data_config`` over the variant's ``PRETRAINED_CFG`` entry: input size, interpolation,
    crop_pct, mean and std (timm's defaults for a variant without one, such as one you added to VARIANTS)."""
    from timm.data import resolve_data_config

    return resolve_data_config({"in_chans": 3}, pretrained_cfg=PRETRAINED_CFG.get(variant, {}))


def preprocessing(model: str, **given: Any) -> dict[str, Any]:
    """``interpolation``, ``crop_pct``, ``mean`` and ``std`` for the variant ``model``: the ``given`` values that
    are not None (the command line's), the others from the variant's pretrained config."""
    config = data_config(variant_name(model))
    out = {k: given[k] if given.get(k) is not None else config[k] for k in ("interpolation", "crop_pct", "mean", "std")}
    out["mean"], out["std"] = [float(v) for v in out["mean"]], [float(v) for v in out["std"]]  # YAML-safe lists
    return out


def build_classifier(
    model: str, num_classes: int, weights: str | os.PathLike | None = None, drop_path: float | None = None
) -> GroupMixFormer:
    """A GroupMixFormer variant for ``num_classes``, optionally starting from weights.

    ``weights``: the authors' checkpoint (any class count: a different head is re-initialised) or a
    gmyolo classifier (its EMA weights if it has them). A detection checkpoint is refused.
    """
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if drop_path is not None:
        kwargs["drop_path_rate"] = drop_path
    net = groupmixformer(model, **kwargs)
    if weights:
        ckpt = read_checkpoint(weights)
        if isinstance(ckpt, dict) and "model_yaml" in ckpt:
            raise CheckpointError(f"{weights}: a gmyolo detection checkpoint, not a classifier or an ImageNet backbone")
        if isinstance(ckpt, dict) and ckpt.get("task") == TASK:
            ckpt = ckpt.get("ema") or ckpt["model"]
        net.load_pretrained(ckpt)
    return net


def save_classify_checkpoint(
    path: str | os.PathLike, model: GroupMixFormer, names: Sequence[str], **fields: Any
) -> Path:
    """Atomically write a classifier: float32 weights, the model's config, class names and ``fields``."""
    state = {
        "task": TASK,
        "model": {k: v.detach().float() if v.is_floating_point() else v for k, v in model.state_dict().items()},
        "model_config": {**model.config, "num_classes": model.num_classes},
        "names": list(names),
        "nc": len(names),
        "version": __version__,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        **fields,
    }
    return atomic_save(state, path)


def load_classify_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a gmyolo classifier (weights_only); any other checkpoint gets an error saying what it is."""
    return check_classify_checkpoint(read_checkpoint(path), path)


def check_classify_checkpoint(ckpt: Any, path: str | os.PathLike) -> dict[str, Any]:
    if isinstance(ckpt, dict) and ckpt.get("task") == TASK and "model" in ckpt and "model_config" in ckpt:
        if "best" in ckpt and "best_fitness" not in ckpt:  # written before 0.2: best = [top-1, val loss]
            ckpt["best_fitness"] = [ckpt["best"][0], -ckpt["best"][1]]
        return ckpt
    if isinstance(ckpt, dict) and "model_yaml" in ckpt:
        raise CheckpointError(
            f"{path}: a gmyolo detection checkpoint, not a classifier; evaluate it with `gmyolo val --weights {path}`"
        )
    raise CheckpointError(f"{path}: not a gmyolo classification checkpoint (it has no task: {TASK} entry)")


def classifier_from_checkpoint(
    ckpt: dict[str, Any], use_ema: bool = True, drop_path_rate: float = 0.0
) -> GroupMixFormer:
    """Rebuild the classifier from its recorded config; EMA weights when present and ``use_ema``.

    ``drop_path_rate``: the stochastic depth to train it further with (resuming); 0 for evaluation.
    """
    model = GroupMixFormer(**ckpt["model_config"], drop_path_rate=drop_path_rate)
    state = ckpt["ema"] if use_ema and ckpt.get("ema") else ckpt["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint weights do not fit its own model config: {str(e).splitlines()[0]}") from None
    return model


def load_classifier(weights: str | os.PathLike) -> tuple[GroupMixFormer, dict[str, Any]]:
    """A classifier ready for evaluation from a gmyolo checkpoint or an authors' ImageNet checkpoint.

    Returns the model and what is known about it: ``names`` (None for an authors' file: the class
    folders in sorted order give them, as for ImageNet), ``data`` and the preprocessing it expects.
    """
    ckpt = read_checkpoint(weights)
    if isinstance(ckpt, dict) and (ckpt.get("task") == TASK or "model_yaml" in ckpt):
        ckpt = check_classify_checkpoint(ckpt, weights)
        info = {"names": list(ckpt["names"]), "data": ckpt.get("data"), **variant_preprocessing(ckpt["model_config"])}
        # What the run trained and evaluated with (its resolved args) wins over the variant's table.
        info.update({k: ckpt["args"][k] for k in PREPROCESS_KEYS if ckpt.get("args", {}).get(k) is not None})
        return classifier_from_checkpoint(ckpt), info
    state = load_checkpoint_state_dict(ckpt) if isinstance(ckpt, dict) else None
    cfg = infer_config_from_state_dict(state) if state else None
    if cfg is None or cfg["num_classes"] is None or len(cfg["embedding_dims"]) != 4:
        raise CheckpointError(f"{weights}: neither a gmyolo classifier nor an authors' GroupMixFormer classifier")
    model = GroupMixFormer(**cfg)
    model.load_pretrained(state)
    return model, {"names": None, "data": None, **variant_preprocessing(cfg)}


def variant_preprocessing(config: dict[str, Any]) -> dict[str, Any]:
    """The preprocessing of :data:`PREPROCESS_KEYS` from the pretrained config of the variant with this
    architecture (timm's defaults when no variant has it)."""
    data = data_config(variant_of(config))
    return {"imgsz": int(data["input_size"][-1]), **{k: data[k] for k in PREPROCESS_KEYS if k != "imgsz"}}


def drop_path_of(model: GroupMixFormer) -> float:
    """The stochastic-depth rate the model was built with (that of its last block)."""
    return float(model.groupmixformer_backbone[-1].gma_stage[-1].drop_path)
