"""Tiny ImageNet (200 classes, 64x64) in its official layout; the val split is the test split.

Layout (under ``root/tiny-imagenet-200/`` or ``root`` itself)::

    wnids.txt                      one wnid per line; line order = class index
    words.txt                      optional, "wnid<TAB>name" lines
    train/<wnid>/images/*.JPEG
    val/images/*.JPEG
    val/val_annotations.txt        "file<TAB>wnid<TAB>bbox..." lines
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dfcil.data.arrays import Allocator, DecodedSplits, ImageArrays, Source
from dfcil.data.images import Geometry, is_image_name
from dfcil.data.parallel import decode_files
from dfcil.errors import DataError

MEAN = (0.4803, 0.4481, 0.3976)
STD = (0.2764, 0.2688, 0.2816)
DEFAULT_IMAGE_SIZE = 64
FOLDER = "tiny-imagenet-200"


def locate(root: Path, *, download: bool = False, progress: bool = True) -> Source:
    """Find ``wnids.txt`` in ``root/tiny-imagenet-200/`` or in ``root``."""
    del download, progress
    for base in (root / FOLDER, root):
        if (base / "wnids.txt").is_file():
            return Source(base, "official")
    raise DataError(f"tiny_imagenet: no wnids.txt in {root / FOLDER} or {root}")


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"tiny_imagenet: cannot read {path}: {' '.join(str(exc).split())}") from exc


def _wnids(base: Path) -> list[str]:
    path = base / "wnids.txt"
    wnids = [line.strip() for line in _read_lines(path) if line.strip()]
    if not wnids:
        raise DataError(f"tiny_imagenet: {path} lists no wnids")
    seen: set[str] = set()
    for wnid in wnids:
        if wnid in seen:
            raise DataError(f"tiny_imagenet: {path} lists wnid {wnid} twice")
        seen.add(wnid)
    return wnids


def _class_names(base: Path, wnids: list[str]) -> list[str]:
    path = base / "words.txt"
    if not path.is_file():
        return list(wnids)
    words: dict[str, str] = {}
    for line in _read_lines(path):
        wnid, _, name = line.partition("\t")
        if name.strip():
            words[wnid.strip()] = name.strip()
    return [words.get(wnid, wnid) for wnid in wnids]


def _train_files(base: Path, wnids: list[str]) -> tuple[list[Path], np.ndarray]:
    files: list[Path] = []
    labels: list[int] = []
    for index, wnid in enumerate(wnids):
        folder = base / "train" / wnid / "images"
        if not folder.is_dir():
            raise DataError(f"tiny_imagenet: missing class folder {folder} for wnid {wnid}")
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries if is_image_name(e.name) and e.is_file())
        if not names:
            raise DataError(f"tiny_imagenet: class folder {folder} contains no images")
        files.extend(folder / name for name in names)
        labels.extend([index] * len(names))
    return files, np.asarray(labels, dtype=np.int64)


def _val_files(base: Path, wnids: list[str]) -> tuple[list[Path], np.ndarray]:
    annotations = base / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise DataError(f"tiny_imagenet: missing annotation file {annotations}")
    image_dir = base / "val" / "images"
    try:
        with os.scandir(image_dir) as entries:
            present = {e.name for e in entries if e.is_file()}
    except OSError as exc:
        raise DataError(f"tiny_imagenet: cannot list {image_dir}: {exc.strerror}") from exc
    index = {wnid: i for i, wnid in enumerate(wnids)}
    files: list[Path] = []
    labels: list[int] = []
    for lineno, line in enumerate(_read_lines(annotations), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DataError(f"tiny_imagenet: {annotations}:{lineno} is not 'file<TAB>wnid...'")
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in index:
            raise DataError(f"tiny_imagenet: {annotations}:{lineno} names unknown wnid {wnid}")
        if name not in present:
            raise DataError(f"tiny_imagenet: {annotations}:{lineno} lists missing file {image_dir / name}")
        files.append(image_dir / name)
        labels.append(index[wnid])
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(wnids))
    if (counts == 0).any():
        wnid = wnids[int(np.argmin(counts))]
        raise DataError(f"tiny_imagenet: {annotations} has no images of wnid {wnid}")
    return files, np.asarray(labels, dtype=np.int64)


def decode(source: Source, geometry: Geometry, allocate: Allocator, progress: bool) -> DecodedSplits:
    """Decode train and val (as test); labels are positions in ``wnids.txt``."""
    base = source.path
    wnids = _wnids(base)
    class_names = _class_names(base, wnids)
    listed = {"train": _train_files(base, wnids), "test": _val_files(base, wnids)}
    splits: dict[str, ImageArrays] = {}
    for split, (files, labels) in listed.items():
        out = allocate(split, (len(files), geometry.size, geometry.size, 3))
        decode_files(files, out, geometry, desc=f"tiny_imagenet {split}", progress=progress)
        splits[split] = ImageArrays(out, labels)
    return DecodedSplits(splits["train"], splits["test"], class_names)
