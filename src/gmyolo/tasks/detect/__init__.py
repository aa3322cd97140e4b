"""Object detection: options, training hooks, loss, validation and metrics, prediction, export.

Submodules are imported where used (``gmyolo.tasks.detect.train`` ...), so that the command line can
read ``options`` without importing torch.
"""
