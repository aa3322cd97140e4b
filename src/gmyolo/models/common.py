"""Moved to :mod:`gmyolo.models.yolo.common`; this name keeps existing imports working."""

from .yolo.common import *  # noqa: F401,F403
from .yolo.common import __all__  # noqa: F401
