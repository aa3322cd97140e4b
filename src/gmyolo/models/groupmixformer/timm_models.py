"""GroupMixFormer in timm's model registry: ``timm.create_model("groupmixformer_t", ...)`` and friends.

Registered with timm's own machinery (``register_model``, ``generate_default_cfgs``, ``build_model_with_cfg``
with :func:`~gmyolo.models.groupmixformer.weights.checkpoint_filter_fn`), from the one variant table
(``VARIANTS``: the architecture; ``PRETRAINED_CFG``: how the released weights expect images). So::

    import gmyolo, timm
    model = timm.create_model("groupmixformer_t", pretrained=True,
                              pretrained_cfg_overlay=dict(file="groupmixformer_tiny.pth"))
    timm.data.resolve_data_config(model=model)      # crop_pct 0.875, bicubic, ImageNet mean/std
    backbone = timm.create_model("groupmixformer_s", features_only=True, out_indices=(1, 2, 3))
    backbone.feature_info.channels(), backbone.feature_info.reduction()   # [160, 320, 320], [8, 16, 32]

The authors publish their files on a SharePoint page (``MODEL_ZOO``), not at a URL a program can fetch:
``pretrained=True`` needs ``pretrained_cfg_overlay=dict(file=...)`` and says so otherwise. This module is
imported when timm is (see ``gmyolo/__init__.py``): ``import gmyolo`` alone stays cheap.
"""

from __future__ import annotations

from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ...errors import CheckpointError
from .model import MODEL_ZOO, PRETRAINED_CFG, VARIANTS, GroupMixFormer
from .weights import checkpoint_filter_fn

__all__ = ["default_cfgs", "create_groupmixformer"]

default_cfgs = generate_default_cfgs(
    {
        f"groupmixformer_{v}.in1k": dict(
            url="",  # no direct download: see MODEL_ZOO
            origin_url=MODEL_ZOO,
            paper_ids="arXiv:2311.15157",
            paper_name="Advancing Vision Transformers with Group-Mix Attention",
            license="mit",
            pool_size=(7, 7),
            **cfg,
        )
        for v, cfg in PRETRAINED_CFG.items()
    }
)


def create_groupmixformer(variant: str, pretrained: bool = False, **kwargs: Any) -> GroupMixFormer:
    """``timm.create_model`` for one variant; kwargs override the variant's arguments (timm's convention)."""
    if pretrained and not has_source(kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay")):
        raise CheckpointError(
            f"groupmixformer_{variant}: the authors' weights cannot be downloaded by a program; get the file from "
            f"{MODEL_ZOO} and pass pretrained_cfg_overlay=dict(file='path/to/the.pth')"
        )
    features = kwargs.get("features_only", False)
    return build_model_with_cfg(
        GroupMixFormer,
        f"groupmixformer_{variant}",
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)) if features else None,
        **{**VARIANTS[variant], **kwargs},
    )


def has_source(pretrained_cfg: Any, overlay: dict[str, Any] | None) -> bool:
    """Whether a file, URL, hub id or state dict was given for the weights."""
    keys = ("file", "url", "hf_hub_id", "state_dict")
    given = [overlay or {}]
    if isinstance(pretrained_cfg, dict):
        given.append(pretrained_cfg)
    elif pretrained_cfg is not None:  # a timm PretrainedCfg
        given.append({k: getattr(pretrained_cfg, k, None) for k in keys})
    return any(d.get(k) for d in given for k in keys)


@register_model
def groupmixformer_m(pretrained: bool = False, **kwargs: Any) -> GroupMixFormer:
    """GroupMixFormer-M (5.7M parameters, 79.6% ImageNet-1K top-1)."""
    return create_groupmixformer("m", pretrained, **kwargs)


@register_model
def groupmixformer_t(pretrained: bool = False, **kwargs: Any) -> GroupMixFormer:
    """GroupMixFormer-T (10.9M parameters, 82.6% ImageNet-1K top-1)."""
    return create_groupmixformer("t", pretrained, **kwargs)


@register_model
def groupmixformer_s(pretrained: bool = False, **kwargs: Any) -> GroupMixFormer:
    """GroupMixFormer-S (22.4M parameters, 83.4% ImageNet-1K top-1)."""
    return create_groupmixformer("s", pretrained, **kwargs)


@register_model
def groupmixformer_b(pretrained: bool = False, **kwargs: Any) -> GroupMixFormer:
    """GroupMixFormer-B (45.8M parameters, 84.7% ImageNet-1K top-1)."""
    return create_groupmixformer("b", pretrained, **kwargs)


@register_model
def groupmixformer_l(pretrained: bool = False, **kwargs: Any) -> GroupMixFormer:
    """GroupMixFormer-L (71.8M parameters in the released configuration, 85.0% ImageNet-1K top-1)."""
    return create_groupmixformer("l", pretrained, **kwargs)
