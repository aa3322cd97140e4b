"""Image classification with GroupMixFormer: options, training hooks, evaluation, prediction, checkpoints.

Submodules are imported where used (``gmyolo.tasks.classify.train`` ...), so that the command line can
read ``options`` without importing torch.
"""
