"""Moved to :mod:`gmyolo.models.yolo.registry`; this name keeps existing imports working."""

from .yolo.registry import *  # noqa: F401,F403
from .yolo.registry import __all__  # noqa: F401
