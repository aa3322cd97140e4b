"""Moved to :mod:`gmyolo.models.groupmixformer.literal`; this name keeps existing imports working."""

from .groupmixformer.literal import *  # noqa: F401,F403
from .groupmixformer.literal import __all__  # noqa: F401
