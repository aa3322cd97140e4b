"""What is specific to each task, on top of the task-agnostic :mod:`gmyolo.engine`: ``detect``, ``segment`` and
``classify``. A YOLO model's task is its head's (``head.task``): :func:`trainer_for` picks the trainer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def trainer_for(args: Any) -> type:
    """The trainer of the task the model's head belongs to: the checkpoint's when resuming, else the model YAML's
    (``args.model``). Detection (:class:`~gmyolo.tasks.detect.train.DetectionTrainer`) or segmentation
    (:class:`~gmyolo.tasks.segment.train.SegmentationTrainer`)."""
    from ..models.yolo.model import head_task

    if args.resume:
        from ..engine.runs import find_last_checkpoint
        from .detect.checkpoint import load_checkpoint

        path = find_last_checkpoint(args.project) if args.resume == "last" else args.resume
        task = head_task(load_checkpoint(path)["model_yaml"])
    else:
        task = head_task(args.model)
    if task == "segment":
        from .segment.train import SegmentationTrainer

        return SegmentationTrainer
    from .detect.train import DetectionTrainer

    return DetectionTrainer


def validator_for(output_format: str) -> tuple[type, bool, Callable]:
    """The validator of a model's decoded output (its head's ``output_format``), whether its dataset carries the
    objects' outlines, and its loader's collate function: segmentation's (masks in the batches) or detection's."""
    from ..data.dataset import collate_fn, collate_segments
    from ..models.yolo.head import FORMAT_TASKS

    if FORMAT_TASKS[output_format] == "segment":
        from .segment.val import SegmentValidator

        return SegmentValidator, True, collate_segments
    from .detect.validator import Validator

    return Validator, False, collate_fn


def predictor_for(output_format: str) -> type:
    """The predictor of a model's decoded output: segmentation's (boxes and masks) or detection's."""
    from ..models.yolo.head import FORMAT_TASKS

    if FORMAT_TASKS[output_format] == "segment":
        from .segment.predict import SegmentPredictor

        return SegmentPredictor
    from .detect.predict import Predictor

    return Predictor
