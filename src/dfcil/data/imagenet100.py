"""ImageNet-100 as defined by the split files ``train_100.txt`` / ``val_100.txt``.

Each line is ``relative/path.JPEG label`` with paths relative to the data root and labels
0..99. Class names are the parent (wnid) folder of each label's first train image. Images
are decoded with the evaluation transform: shorter side to 256, centre crop 224 (scaled
for other sizes).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dfcil.data.arrays import Allocator, DecodedSplits, ImageArrays, Source
from dfcil.data.images import Geometry
from dfcil.data.parallel import decode_files
from dfcil.errors import DataError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 224
NUM_CLASSES = 100
SPLIT_FILES = {"train": "train_100.txt", "test": "val_100.txt"}


def locate(root: Path, *, download: bool = False, progress: bool = True) -> Source:
    """``root`` must contain ``train_100.txt`` and ``val_100.txt``."""
    del download, progress
    for name in SPLIT_FILES.values():
        if not (root / name).is_file():
            raise DataError(f"imagenet100: missing split file {root / name}")
    return Source(root, "split-files")


def _parse_split(root: Path, name: str) -> tuple[list[Path], list[str], np.ndarray]:
    """Return (absolute paths, relative paths, labels) listed in split file ``name``."""
    path = root / name
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"imagenet100: cannot read split file {path}: {' '.join(str(exc).split())}") from exc
    relative: list[str] = []
    labels: list[int] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.rsplit(None, 1)
        try:
            label = int(fields[1]) if len(fields) == 2 else None
        except ValueError:
            label = None
        if label is None:
            raise DataError(f"imagenet100: {path}:{lineno} is not 'relative/path label'")
        if not 0 <= label < NUM_CLASSES:
            raise DataError(f"imagenet100: {path}:{lineno} has label {label} outside 0..{NUM_CLASSES - 1}")
        relative.append(fields[0].strip())
        labels.append(label)
    _check_exist(root, relative)
    label_array = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(label_array, minlength=NUM_CLASSES)
    if (counts == 0).any():
        raise DataError(f"imagenet100: {path} has no images of label {int(np.argmin(counts))}")
    return [root / rel for rel in relative], relative, label_array


def _check_exist(root: Path, relative: list[str]) -> None:
    """Raise DataError for the first listed image that is not a file (one scandir per folder)."""
    listings: dict[str, set[str]] = {}
    for rel in relative:
        parent, _, base = rel.rpartition("/")
        if parent not in listings:
            try:
                with os.scandir(root / parent) as entries:
                    listings[parent] = {e.name for e in entries if e.is_file()}
            except OSError:
                listings[parent] = set()
        if base not in listings[parent]:
            raise DataError(f"imagenet100: missing image {root / rel}")


def _class_names(relative: list[str], labels: np.ndarray) -> list[str]:
    names: list[str | None] = [None] * NUM_CLASSES
    for rel, label in zip(relative, labels.tolist()):
        if names[label] is None:
            parts = rel.split("/")
            names[label] = parts[-2] if len(parts) > 1 else str(label)
    return [name if name is not None else str(i) for i, name in enumerate(names)]


def decode(source: Source, geometry: Geometry, allocate: Allocator, progress: bool) -> DecodedSplits:
    """Decode the images listed in both split files (val is the test split)."""
    root = source.path
    parsed = {split: _parse_split(root, name) for split, name in SPLIT_FILES.items()}
    class_names = _class_names(parsed["train"][1], parsed["train"][2])
    splits: dict[str, ImageArrays] = {}
    for split, (files, _, labels) in parsed.items():
        out = allocate(split, (len(files), geometry.size, geometry.size, 3))
        decode_files(files, out, geometry, desc=f"imagenet100 {split}", progress=progress)
        splits[split] = ImageArrays(out, labels)
    return DecodedSplits(splits["train"], splits["test"], class_names)
