"""Any ``train/<class>/*`` + ``test/<class>/*`` tree (directory or tar archive).

Classes are the sorted train folder names. Mean/std are measured on the decoded train split.
"""

from __future__ import annotations

from pathlib import Path

from dfcil.data.arrays import Allocator, DecodedSplits, Source
from dfcil.data.images import Geometry
from dfcil.data.stats import channel_stats
from dfcil.data.tree import decode_tree, has_split_dirs, is_archive
from dfcil.errors import DataError

DEFAULT_IMAGE_SIZE = 32


def locate(root: Path, *, download: bool = False, progress: bool = True) -> Source:
    """``root`` must hold ``train/`` and ``test/`` class folders, or be a tar archive of them."""
    del download, progress
    if is_archive(root):
        return Source(root, "tree-tar")
    if has_split_dirs(root):
        return Source(root, "tree-dir")
    raise DataError(f"imagefolder: {root} has no train/ and test/ class folders and is not "
                    f"a .tar.gz archive of them")


def decode(source: Source, geometry: Geometry, allocate: Allocator, progress: bool) -> DecodedSplits:
    """Decode both splits at ``geometry`` and measure the train split's channel statistics."""
    train, test, classes = decode_tree(source.path, dataset="imagefolder", geometry=geometry,
                                       allocate=allocate, progress=progress)
    mean, std = channel_stats(train.images)
    return DecodedSplits(train, test, classes, mean, std)
