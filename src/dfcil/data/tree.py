"""Image-folder trees ``train/<class>/<image>`` + ``test/<class>/<image>``.

The tree may be a directory or a tar archive (optionally compressed, optionally with one
top-level folder). Archives are read in one sequential pass without extraction. Images are
ordered by class index, then file name, so a directory and its archive decode identically.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from dfcil.data.archive import iter_archive, member_parts
from dfcil.data.arrays import Allocator, ImageArrays
from dfcil.data.images import Geometry, is_image_name
from dfcil.data.parallel import decode_files, decode_stream
from dfcil.errors import DataError

SPLITS = ("train", "test")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")

# split -> class folder -> file names (sorted later)
Listing = dict[str, dict[str, list[str]]]


def is_archive(path: Path) -> bool:
    """True if ``path`` is a file whose name looks like a tar archive."""
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def has_split_dirs(base: Path) -> bool:
    """True if ``base/train`` and ``base/test`` are both directories."""
    return all((base / split).is_dir() for split in SPLITS)


def _visible_dirs(path: Path) -> list[os.DirEntry[str]]:
    with os.scandir(path) as entries:
        return sorted((e for e in entries if e.is_dir() and not e.name.startswith(".")),
                      key=lambda e: e.name)


def list_directory(base: Path) -> Listing:
    """List the image files of ``base/{train,test}/<class>/`` (non-image files are ignored)."""
    listing: Listing = {}
    for split in SPLITS:
        split_dir = base / split
        if not split_dir.is_dir():
            raise DataError(f"missing split folder {split_dir}")
        classes: dict[str, list[str]] = {}
        for entry in _visible_dirs(split_dir):
            with os.scandir(entry.path) as files:
                classes[entry.name] = [f.name for f in files if is_image_name(f.name) and f.is_file()]
        listing[split] = classes
    return listing


class _ArchiveReader:
    """Walks a tar once, yielding image bytes keyed by (split, class, file) for the decoder."""

    def __init__(self, archive: Path) -> None:
        self.archive = archive
        self.listing: Listing = {split: {} for split in SPLITS}
        self._prefix: str | None = None
        self._prefix_seen = False

    def _locate(self, parts: list[str]) -> list[str] | None:
        """Strip an optional top-level folder; return ``[split, class, ...rest]`` or None."""
        if parts and parts[0] in SPLITS:
            prefix, rest = None, parts
        elif len(parts) > 1 and parts[1] in SPLITS:
            prefix, rest = parts[0], parts[1:]
        else:
            return None
        if len(rest) < 2 or rest[1].startswith("."):
            return None
        if not self._prefix_seen:
            self._prefix, self._prefix_seen = prefix, True
        elif prefix != self._prefix:
            raise DataError(f"archive {self.archive} holds more than one image tree "
                            f"({self._prefix or '.'} and {prefix or '.'})")
        return rest

    def items(self) -> Iterator[tuple[tuple[str, str, str], bytes, str]]:
        """Yield ``((split, class, file), bytes, display_name)`` for every image member."""

        def want(member: tarfile.TarInfo) -> bool:
            rest = self._locate(member_parts(member.name))
            return rest is not None and len(rest) == 3 and is_image_name(rest[2])

        for member, data in iter_archive(self.archive, want):
            rest = self._locate(member_parts(member.name))
            if rest is None:
                continue
            split, cls = rest[0], rest[1]
            if member.isdir() and len(rest) == 2:
                self.listing[split].setdefault(cls, [])
            elif data is not None:
                self.listing[split].setdefault(cls, []).append(rest[2])
                yield (split, cls, rest[2]), data, f"{self.archive}:{member.name}"


def check_classes(listing: Listing, origin: Path, dataset: str,
                  expected: Sequence[str] | None = None) -> list[str]:
    """Validate the class folders of both splits and return the class names in label order.

    Without ``expected`` the classes are the sorted train folders and the test split must
    have exactly the same ones; with it, every folder must be one of ``expected`` and every
    expected class must be present in both splits. Empty class folders are rejected.
    """
    if expected is None:
        classes = sorted(listing["train"])
        if not classes:
            raise DataError(f"{dataset}: no class folders in {origin}/train")
    else:
        classes = list(expected)
        known = set(classes)
        for split in SPLITS:
            for folder in sorted(listing[split]):
                if folder not in known:
                    raise DataError(f"{dataset}: unknown class folder '{folder}' in split "
                                    f"{split} of {origin}")
    for split in SPLITS:
        for cls in classes:
            if cls not in listing[split]:
                raise DataError(f"{dataset}: class '{cls}' has no folder in split {split} of {origin}")
            if not listing[split][cls]:
                raise DataError(f"{dataset}: class folder {origin}/{split}/{cls} contains no images")
        extra = sorted(set(listing[split]) - set(classes))
        if extra:
            raise DataError(f"{dataset}: class folder '{extra[0]}' in split {split} of {origin} "
                            f"has no counterpart in train")
    return classes


def _order(listing: Listing, split: str, classes: list[str]) -> tuple[list[tuple[str, str]], np.ndarray]:
    entries: list[tuple[str, str]] = []
    labels: list[int] = []
    for index, cls in enumerate(classes):
        names = sorted(set(listing[split][cls]))
        entries.extend((cls, name) for name in names)
        labels.extend([index] * len(names))
    return entries, np.asarray(labels, dtype=np.int64)


def decode_tree(path: Path, *, dataset: str, geometry: Geometry, allocate: Allocator,
                progress: bool, expected: Sequence[str] | None = None
                ) -> tuple[ImageArrays, ImageArrays, list[str]]:
    """Decode an image-folder tree (a directory or a tar archive) into both splits.

    Returns ``(train, test, class_names)``; see :func:`check_classes` for ``expected``.
    """
    shape = (geometry.size, geometry.size, 3)
    splits: dict[str, ImageArrays] = {}
    if path.is_dir():
        listing = list_directory(path)
        classes = check_classes(listing, path, dataset, expected)
        for split in SPLITS:
            entries, labels = _order(listing, split, classes)
            out = allocate(split, (len(entries), *shape))
            files = [path / split / cls / name for cls, name in entries]
            decode_files(files, out, geometry, desc=f"{dataset} {split}", progress=progress)
            splits[split] = ImageArrays(out, labels)
    else:
        reader = _ArchiveReader(path)
        decoded = decode_stream(reader.items(), geometry, desc=f"{dataset} {path.name}",
                                progress=progress)
        classes = check_classes(reader.listing, path, dataset, expected)
        for split in SPLITS:
            entries, labels = _order(reader.listing, split, classes)
            out = allocate(split, (len(entries), *shape))
            for index, (cls, name) in enumerate(entries):
                out[index] = decoded.pop((split, cls, name))
            splits[split] = ImageArrays(out, labels)
    return splits["train"], splits["test"], classes
