"""The dataset registry and :func:`load_dataset`, the one entry point the engine calls.

Every fact about a dataset lives here: its name (``data.dataset`` in a config), its number of
classes where that is fixed (a scenario is resolved from it before any image is read), its
default image size and normalisation, and the module that finds and decodes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal, get_args

from dfcil.data import cifar100, imagefolder, imagenet100, tiny_imagenet
from dfcil.data.arrays import DatasetArrays, Source
from dfcil.data.cache import CacheKey, build_cache, build_lock, read_cache
from dfcil.data.images import Geometry
from dfcil.data.signature import source_signature
from dfcil.errors import DataError

Triple = tuple[float, float, float]

#: The datasets a config can name (``data.dataset``), in the order they are listed to users.
DatasetName = Literal["cifar100", "imagefolder", "tiny_imagenet", "imagenet100"]
DATASETS: tuple[DatasetName, ...] = get_args(DatasetName)


@dataclass(frozen=True)
class DatasetSpec:
    """How to find, decode and normalise one dataset.

    ``module`` provides ``locate(root, *, download, progress) -> Source`` and
    ``decode(source, geometry, allocate, progress) -> DecodedSplits``; it is looked up at
    call time so tests can patch it. ``num_classes`` is None where the data decides it (a
    folder of class folders).
    """

    module: ModuleType
    num_classes: int | None
    default_size: int
    imagenet_crop: bool
    mean: Triple | None
    std: Triple | None
    fixed_size: int | None = None

    def geometry(self, size: int) -> Geometry:
        return Geometry.imagenet(size) if self.imagenet_crop else Geometry.square(size)


_SPECS: dict[str, DatasetSpec] = {  # keyed by every name of DATASETS
    "cifar100": DatasetSpec(cifar100, len(cifar100.CIFAR100_CLASSES), cifar100.IMAGE_SIZE, False,
                            cifar100.MEAN, cifar100.STD, fixed_size=cifar100.IMAGE_SIZE),
    "imagefolder": DatasetSpec(imagefolder, None, imagefolder.DEFAULT_IMAGE_SIZE, False, None, None),
    "tiny_imagenet": DatasetSpec(tiny_imagenet, 200, tiny_imagenet.DEFAULT_IMAGE_SIZE, False,
                                 tiny_imagenet.MEAN, tiny_imagenet.STD),
    "imagenet100": DatasetSpec(imagenet100, imagenet100.NUM_CLASSES, imagenet100.DEFAULT_IMAGE_SIZE, True,
                               imagenet100.MEAN, imagenet100.STD),
}


def _spec(name: str) -> DatasetSpec:
    if name not in _SPECS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return _SPECS[name]


def class_count(name: DatasetName) -> int | None:
    """Number of classes of dataset ``name``; None where only its data can tell (``imagefolder``)."""
    return _SPECS[name].num_classes


def _image_size(name: str, spec: DatasetSpec, image_size: int | None) -> int:
    size = spec.default_size if image_size is None else image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise DataError(f"{name}: image_size must be a positive integer, got {image_size!r}")
    if spec.fixed_size is not None and size != spec.fixed_size:
        raise DataError(f"{name}: image_size must be {spec.fixed_size}, got {size}")
    return size


def load_dataset(name: str, root: Path, cache_dir: Path, *, image_size: int | None = None,
                 download: bool = False, progress: bool = True) -> DatasetArrays:
    """Return dataset ``name`` found under ``root`` as uint8 arrays, decoding it at most once.

    The decoded arrays are cached under ``cache_dir/datasets/``; later calls with the same
    source (same path, size/mtime signature) and ``image_size`` load the cache, verified
    against its manifest. ``download`` lets cifar100 fetch the official archive into
    ``root`` when nothing is found. Raises :class:`DataError` for every bad input.
    """
    spec = _spec(name)
    size = _image_size(name, spec, image_size)
    root = Path(root).expanduser()
    cache_dir = Path(cache_dir).expanduser()
    if not root.exists() and not (download and name == "cifar100"):
        raise DataError(f"{name}: data root {root} does not exist")
    source = spec.module.locate(root, download=download, progress=progress)
    source = Source(source.path.resolve(), source.layout)
    key = CacheKey(name, source, source_signature(source.path, exclude=cache_dir), size)
    entry = key.directory(cache_dir)
    cached = read_cache(entry, key)
    if cached is not None:
        return cached
    geometry = spec.geometry(size)
    try:
        with build_lock(entry):
            cached = read_cache(entry, key, quiet=True)  # another process may have just built it
            if cached is not None:
                return cached
            return build_cache(
                entry, key,
                lambda allocate: spec.module.decode(source, geometry, allocate, progress),
                spec.mean, spec.std,
            )
    except OSError as exc:  # e.g. an unwritable cache dir or an unreadable source folder
        raise DataError(f"{name}: I/O error while building dataset cache {entry}: "
                        f"{' '.join(str(exc).split())}") from exc
