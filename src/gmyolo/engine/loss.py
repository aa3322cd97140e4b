"""Moved to :mod:`gmyolo.tasks.detect.loss` (engine/ holds task-agnostic machinery only);
kept so that existing imports keep working."""

from typing import Any


def __getattr__(name: str) -> Any:
    import importlib

    return getattr(importlib.import_module("gmyolo.tasks.detect.loss"), name)
