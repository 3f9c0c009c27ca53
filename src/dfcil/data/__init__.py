"""Datasets decoded once into uint8 arrays and cached on disk.

``load_dataset(name, root, cache_dir)`` returns a :class:`DatasetArrays` whose splits are
(N, H, W, 3) uint8 RGB images with int64 labels, so training never decodes per sample.
"""

from dfcil.data.arrays import DatasetArrays, ImageArrays
from dfcil.data.paths import data_root, default_cache_dir, default_data_dir, resolve_data_root
from dfcil.data.registry import DATASETS, load_dataset

__all__ = [
    "DATASETS",
    "DatasetArrays",
    "ImageArrays",
    "default_cache_dir",
    "load_dataset",
    "resolve_data_root",
    "data_root",
    "default_data_dir",
]
