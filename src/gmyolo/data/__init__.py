"""Data: dataset YAML, label checks and cache, augmentation, loaders, the synthetic dataset, COCO conversion."""

from .config import DatasetConfig, DatasetError, load_dataset_config
from .dataset import YOLODataset, build_dataloader, collate_fn, create_dataset

__all__ = [
    "DatasetConfig",
    "DatasetError",
    "load_dataset_config",
    "YOLODataset",
    "build_dataloader",
    "collate_fn",
    "create_dataset",
]
