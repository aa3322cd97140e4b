"""Training checkpoints: plain dicts of state dicts and metadata, written atomically, read with weights_only.

Contents: ``model`` (float32 state dict), ``ema`` (state dict of the EMA model, or None), ``updates`` (EMA
updates), ``optimizer``, ``epoch`` (last finished, 0-based), ``best_fitness``, ``hyp``, ``args``,
``model_yaml`` (the model's YAML as data; backbone weight paths and downloads removed), ``names``, ``nc``,
``version`` and ``date``. No module is ever pickled, so a checkpoint never runs code when loaded.
"""

from __future__ import annotations

import copy
import datetime
import os
from pathlib import Path
from typing import Any

from ... import __version__
from ...errors import CheckpointError
from ...models.yolo import MODULES, DetectionModel
from ...utils.checkpoints import atomic_save, read_checkpoint

__all__ = ["save_checkpoint", "load_checkpoint", "model_from_checkpoint", "portable_yaml", "atomic_save"]


def portable_yaml(model_yaml: dict[str, Any]) -> dict[str, Any]:
    """The model YAML without backbone weight paths or downloads (each layer type's ``portable`` rule: GroupMixFormer,
    Timm, TorchVision): a checkpoint carries its own weights. Everything else, ``plugins`` included, is kept."""
    d = copy.deepcopy(model_yaml)
    for layer in d.get("backbone", []) + d.get("head", []):
        if isinstance(layer, list) and len(layer) == 4 and isinstance(layer[3], list):
            layer_type = MODULES.get(layer[2]) if isinstance(layer[2], str) else None
            if layer_type is not None and layer_type.portable is not None:
                layer[3] = layer_type.portable(layer[3])
    return d


def save_checkpoint(path: str | os.PathLike, model: DetectionModel, **fields: Any) -> Path:
    state = {
        "model": {k: v.detach().float() if v.is_floating_point() else v for k, v in model.state_dict().items()},
        "model_yaml": portable_yaml(model.yaml),
        "names": [model.names[i] for i in range(model.nc)],
        "nc": model.nc,
        "version": __version__,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        **fields,
    }
    return atomic_save(state, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a gmyolo checkpoint (weights_only); a file that is not one gets a clear CheckpointError."""
    ckpt = read_checkpoint(path)
    if isinstance(ckpt, dict) and ckpt.get("task") == "classify":
        raise CheckpointError(f"{path}: a gmyolo classification checkpoint; use `gmyolo classify val|predict`")
    if not isinstance(ckpt, dict) or "model_yaml" not in ckpt or "model" not in ckpt:
        raise CheckpointError(
            f"{path}: not a gmyolo detector checkpoint (expected 'model' and 'model_yaml'; "
            "an authors' GroupMixFormer file belongs in --backbone-weights or the model YAML)"
        )
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], use_ema: bool = True) -> DetectionModel:
    """Rebuild the detector from its YAML and load the EMA weights (or the raw ones)."""
    model = DetectionModel(ckpt["model_yaml"], nc=ckpt["nc"])
    state = ckpt.get("ema") if use_ema and ckpt.get("ema") else ckpt["model"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint weights do not fit its own model YAML ({len(missing)} missing, {len(unexpected)} unexpected)"
        )
    model.names = dict(enumerate(ckpt.get("names") or [str(i) for i in range(model.nc)]))
    return model
