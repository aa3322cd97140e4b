"""Every error a user can act on from its message alone, in one place (no torch import here).

The command line prints these as one line and exits with status 2 (:data:`USER_ERRORS`); everything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ModelConfigError",
    "DatasetError",
    "TrainingDiverged",
    "BatchTooLarge",
    "LaunchError",
    "ExportError",
    "USER_ERRORS",
]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked: another model or variant, a corrupt or unsafe file."""


class ModelConfigError(ValueError):
    """A model YAML that cannot be built; the message names the file, line and layer."""


class DatasetError(ValueError):
    """A dataset that cannot be used as given; the message says which file and what is wrong."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says where, and which checkpoint is still good."""


class BatchTooLarge(RuntimeError):
    """A training batch did not fit in memory; the message names the batch and image size."""


class LaunchError(RuntimeError):
    """torchrun, started by ``--device 0,1,...``, ended with an error (the workers' messages are above it)."""


class ExportError(RuntimeError):
    """The exported file failed to load or does not reproduce PyTorch's output."""


# Names, sizes, files and data problems are ValueError/OSError subclasses; the rest are listed.
USER_ERRORS = (ValueError, OSError, TrainingDiverged, ExportError, BatchTooLarge, LaunchError)
