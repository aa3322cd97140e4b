"""Package data: model YAMLs (``cfg/models``) and hyper-parameter sets (``cfg/hyps``), found by name."""

from __future__ import annotations

from importlib import resources
from importlib.abc import Traversable

__all__ = ["hyps_dir", "hyp_names", "models_dir", "model_names"]


def hyps_dir() -> Traversable:
    return resources.files(__name__) / "hyps"


def models_dir() -> Traversable:
    return resources.files(__name__) / "models"


def hyp_names() -> list[str]:
    """Names of the packaged hyper-parameter sets (``--hyp NAME``)."""
    return sorted(p.name[:-5] for p in hyps_dir().iterdir() if p.name.endswith(".yaml"))


def model_names() -> list[str]:
    """Names of the packaged model YAMLs (``--model NAME``)."""
    return sorted(p.name[:-5] for p in models_dir().iterdir() if p.name.endswith(".yaml"))
