"""The in-memory form of a decoded dataset: uint8 image arrays plus int64 labels."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dfcil.errors import DataError


@dataclass(frozen=True, eq=False)
class ImageArrays:
    """One split of a dataset (compared and hashed by identity: it wraps arrays).

    ``images`` is uint8 with shape (N, H, W, 3) in RGB order (it may be a read-only
    ``np.memmap`` for very large datasets); ``labels`` is int64 with shape (N,).
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise DataError(
                f"images must be uint8 (N, H, W, 3), got {images.dtype} {tuple(images.shape)}"
            )
        if labels.dtype != np.int64 or labels.ndim != 1 or len(labels) != len(images):
            raise DataError(
                f"labels must be int64 ({len(images)},), got {labels.dtype} {tuple(labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True, eq=False)
class DatasetArrays:
    """A whole decoded dataset: both splits, class names and normalisation constants.

    Compared and hashed by identity, like :class:`ImageArrays`.
    """

    name: str
    train: ImageArrays
    test: ImageArrays
    class_names: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str

    @property
    def num_classes(self) -> int:
        """Number of classes; labels lie in ``[0, num_classes)``."""
        return len(self.class_names)


@dataclass(frozen=True, eq=False)
class DecodedSplits:
    """What a dataset decoder hands to the cache: both splits and the class names.

    ``mean``/``std`` are set only by decoders that measure them (imagefolder); otherwise
    the dataset's published constants are used.
    """

    train: ImageArrays
    test: ImageArrays
    class_names: list[str]
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None


#: ``allocate(split, shape)`` returns a writable uint8 array for a split's images; the cache
#: passes one that hands out disk-backed arrays for very large splits.
Allocator = Callable[[str, tuple[int, int, int, int]], np.ndarray]


def allocate_in_memory(split: str, shape: tuple[int, int, int, int]) -> np.ndarray:
    """The plain :data:`Allocator`: an uninitialised in-RAM array."""
    del split
    return np.empty(shape, dtype=np.uint8)


@dataclass(frozen=True)
class Source:
    """Where a dataset was found: the file or directory decoded, and its recognised layout."""

    path: Path
    layout: str
