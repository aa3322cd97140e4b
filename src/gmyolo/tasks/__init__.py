"""What is specific to each task, on top of the task-agnostic :mod:`gmyolo.engine`: ``detect`` and ``classify``."""
