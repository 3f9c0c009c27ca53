"""On-disk cache of decoded datasets: four ``.npy`` arrays plus a ``manifest.json``.

``<cache_dir>/datasets/<name>-<hash>/`` holds ``{train,test}_{images,labels}.npy`` and a
manifest written LAST, so a half-built entry has no manifest. Every load re-checks the
manifest against the files (existence, byte size, checksum, shape, dtype, label range); any
mismatch logs one warning (``dfcil`` logger) and the entry is rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dfcil.atomic import atomic_write, write_json
from dfcil.data.arrays import Allocator, DatasetArrays, DecodedSplits, ImageArrays, Source
from dfcil.data.checksum import array_file_checksum, file_digest, sampled_sha256

try:  # POSIX only; elsewhere concurrent builders are simply not serialised
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

# 2: image trees are read with the whole IMAGE_EXTENSIONS set (.bmp, .webp, ... besides .jpg
# and .png): an entry of version 1 may lack a tree's images of those formats, so it is not used
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")
#: Arrays bigger than this are written and loaded as memory maps instead of held in RAM.
MMAP_THRESHOLD = 4 << 30
CHECKSUM_FIELDS = {
    "sha256": lambda path: file_digest(path, "sha256"),
    "sha256_of_size_and_64MiB_start_middle_end": sampled_sha256,
}

Triple = tuple[float, float, float]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheKey:
    """Everything a cache entry depends on; its hash names the entry's directory."""

    dataset: str
    source: Source
    signature: str
    image_size: int

    def digest(self) -> str:
        """Short hex hash of the key fields (and the cache format version)."""
        fields = [FORMAT_VERSION, self.dataset, self.source.layout, str(self.source.path),
                  self.signature, self.image_size]
        return hashlib.sha256(json.dumps(fields).encode("utf-8")).hexdigest()[:16]

    def directory(self, cache_dir: Path) -> Path:
        """``<cache_dir>/datasets/<dataset>-<digest>``."""
        return cache_dir / "datasets" / f"{self.dataset}-{self.digest()}"


class _Invalid(Exception):
    """A cache entry cannot be used; the message says why."""


def _warn(message: str) -> None:
    logger.warning("warning: %s", message)


def _triple(value: Any, field: str) -> Triple:
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)):
        raise _Invalid(f"manifest field {field} is not three numbers")
    return float(value[0]), float(value[1]), float(value[2])


def _load_array(entry: Path, name: str, meta: Any) -> np.ndarray:
    if not isinstance(meta, dict):
        raise _Invalid(f"manifest has no entry for {name}")
    path = entry / f"{name}.npy"
    if not path.is_file():
        raise _Invalid(f"{path.name} is missing")
    size = path.stat().st_size
    if size != meta.get("bytes"):
        raise _Invalid(f"{path.name} has {size} bytes, manifest says {meta.get('bytes')}")
    fields = [f for f in CHECKSUM_FIELDS if f in meta]
    if not fields:
        raise _Invalid(f"manifest has no checksum for {path.name}")
    if CHECKSUM_FIELDS[fields[0]](path) != meta[fields[0]]:
        raise _Invalid(f"{path.name} fails its {fields[0]} check")
    try:
        array = np.load(path, mmap_mode="r" if size > MMAP_THRESHOLD else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise _Invalid(f"{path.name} is unreadable: {' '.join(str(exc).split())}") from exc
    if list(array.shape) != meta.get("shape") or str(array.dtype) != meta.get("dtype"):
        raise _Invalid(f"{path.name} is {array.dtype} {list(array.shape)}, manifest says "
                       f"{meta.get('dtype')} {meta.get('shape')}")
    return array


def _split(entry: Path, split: str, files: dict[str, Any], num_classes: int) -> ImageArrays:
    images = _load_array(entry, f"{split}_images", files.get(f"{split}_images"))
    labels = _load_array(entry, f"{split}_labels", files.get(f"{split}_labels"))
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise _Invalid(f"{split}_images.npy is not uint8 (N, H, W, 3)")
    if labels.dtype != np.int64 or labels.shape != (len(images),):
        raise _Invalid(f"{split}_labels.npy does not match {split}_images.npy")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise _Invalid(f"{split}_labels.npy has labels outside [0, {num_classes})")
    return ImageArrays(images, labels)


def _read(entry: Path, key: CacheKey) -> DatasetArrays:
    path = entry / MANIFEST
    if not path.is_file():
        raise _Invalid("no manifest.json (interrupted build?)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _Invalid(f"manifest.json is unreadable: {' '.join(str(exc).split())}") from exc
    if not isinstance(manifest, dict):
        raise _Invalid("manifest.json is not an object")
    expected = {"format_version": FORMAT_VERSION, "dataset": key.dataset,
                "source": str(key.source.path), "source_signature": key.signature,
                "image_size": key.image_size}
    for field, value in expected.items():
        if manifest.get(field) != value:
            raise _Invalid(f"manifest {field} is {manifest.get(field)!r}, expected {value!r}")
    names = manifest.get("class_names")
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise _Invalid("manifest class_names is not a list of strings")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise _Invalid("manifest has no files section")
    train = _split(entry, "train", files, len(names))
    test = _split(entry, "test", files, len(names))
    return DatasetArrays(name=key.dataset, train=train, test=test, class_names=list(names),
                         mean=_triple(manifest.get("mean"), "mean"),
                         std=_triple(manifest.get("std"), "std"), source=str(key.source.path))


def read_cache(entry: Path, key: CacheKey, *, quiet: bool = False) -> DatasetArrays | None:
    """Return the cached dataset, or None if ``entry`` is absent or invalid.

    An entry holding files but failing a check gets one warning line on stderr (unless
    ``quiet``) naming the reason; the caller then rebuilds it.
    """
    if not entry.is_dir():
        return None
    if not (entry / MANIFEST).exists() and not any(entry.glob("*.npy")):
        return None  # nothing was ever written here (e.g. an earlier build failed early)
    try:
        return _read(entry, key)
    except OSError as exc:
        if not quiet:
            _warn(f"dataset cache {entry} is unreadable ({' '.join(str(exc).split())}); rebuilding")
        return None
    except _Invalid as exc:
        if not quiet:
            _warn(f"dataset cache {entry} is unusable ({exc}); rebuilding")
        return None


@contextlib.contextmanager
def build_lock(entry: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``entry`` so two processes never build it at once."""
    entry.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(entry / ".lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class _ArrayFiles:
    """Allocator and writer for an entry's arrays: big image arrays live in a temp memmap."""

    def __init__(self, entry: Path) -> None:
        self.entry = entry
        self.mapped: dict[str, tuple[np.memmap, Path]] = {}

    def allocate(self, split: str, shape: tuple[int, int, int, int]) -> np.ndarray:
        if int(np.prod(shape, dtype=np.int64)) <= MMAP_THRESHOLD:
            return np.empty(shape, dtype=np.uint8)
        fd, tmp = tempfile.mkstemp(dir=self.entry, prefix=f".{split}_images.npy.", suffix=".tmp")
        os.close(fd)
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        self.mapped[split] = (array, Path(tmp))
        return array

    def save(self, name: str, array: np.ndarray) -> np.ndarray:
        """Write ``<name>.npy`` atomically; return the array as the caller should keep it."""
        path = self.entry / f"{name}.npy"
        split = name.split("_", 1)[0]
        mapped = self.mapped.get(split) if name.endswith("_images") else None
        if mapped is not None and mapped[0] is array:
            array.flush()
            with open(mapped[1], "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(mapped[1], path)
            del self.mapped[split]
            return np.load(path, mmap_mode="r", allow_pickle=False)
        atomic_write(path, lambda handle: np.save(handle, np.ascontiguousarray(array), allow_pickle=False))
        return array

    def discard(self) -> None:
        """Delete temp files of arrays that were allocated but never saved."""
        for _, tmp in self.mapped.values():
            tmp.unlink(missing_ok=True)
        self.mapped.clear()


def _clear(entry: Path) -> None:
    """Remove the manifest first (the entry is then invalid), then leftover temp files."""
    (entry / MANIFEST).unlink(missing_ok=True)
    for leftover in entry.glob(".*.tmp"):
        leftover.unlink(missing_ok=True)


def build_cache(entry: Path, key: CacheKey, decode: Callable[[Allocator], DecodedSplits],
                mean: Triple | None, std: Triple | None) -> DatasetArrays:
    """Decode via ``decode(allocate)``, write the arrays, then the manifest; return the data.

    ``mean``/``std`` are used unless the decoder measured its own (it must, if they are
    None). Call under :func:`build_lock`.
    """
    entry.mkdir(parents=True, exist_ok=True)
    _clear(entry)
    files = _ArrayFiles(entry)
    try:
        decoded = decode(files.allocate)
        arrays = {"train_images": decoded.train.images, "train_labels": decoded.train.labels,
                  "test_images": decoded.test.images, "test_labels": decoded.test.labels}
        records: dict[str, dict[str, Any]] = {}
        for name in ARRAYS:
            arrays[name] = files.save(name, arrays[name])
            path = entry / f"{name}.npy"
            field, digest = array_file_checksum(path)
            records[name] = {"file": path.name, "shape": list(arrays[name].shape),
                             "dtype": str(arrays[name].dtype), "bytes": path.stat().st_size,
                             field: digest}
    finally:
        files.discard()
    mean = decoded.mean if decoded.mean is not None else mean
    std = decoded.std if decoded.std is not None else std
    if mean is None or std is None:
        raise ValueError(f"{key.dataset}: no normalisation constants known or measured")
    write_json(entry / MANIFEST, {
        "format_version": FORMAT_VERSION,
        "dataset": key.dataset,
        "source": str(key.source.path),
        "source_layout": key.source.layout,
        "source_signature": key.signature,
        "image_size": key.image_size,
        "class_names": list(decoded.class_names),
        "mean": list(mean),
        "std": list(std),
        "files": records,
    })
    return DatasetArrays(
        name=key.dataset,
        train=ImageArrays(arrays["train_images"], arrays["train_labels"]),
        test=ImageArrays(arrays["test_images"], arrays["test_labels"]),
        class_names=list(decoded.class_names), mean=mean, std=std, source=str(key.source.path),
    )
