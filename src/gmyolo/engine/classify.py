"""Moved to :mod:`gmyolo.tasks.classify` (engine/ holds task-agnostic machinery only); kept so that
``from gmyolo.engine.classify import ClassifyTrainArgs, classify_train, ...`` keeps working."""

from typing import Any

_HOMES = ("train", "val", "predict", "model", "options")


def __getattr__(name: str) -> Any:
    import importlib

    for home in _HOMES:
        module = importlib.import_module(f"gmyolo.tasks.classify.{home}")
        if name in getattr(module, "__all__", ()):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
