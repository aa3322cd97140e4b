"""Moved to :mod:`gmyolo.models.yolo.head`; this name keeps existing imports working."""

from .yolo.head import *  # noqa: F401,F403
from .yolo.head import __all__  # noqa: F401
