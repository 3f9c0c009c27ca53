"""A user's folder of images: one sub-folder per class, decoded to the model's input size.

Layouts: ``FOLDER/<class>/<images>`` (a held-out split is drawn from it), or
``FOLDER/train/<class>/...`` + ``FOLDER/test/<class>/...`` (the test folder is the held-out
split). Images of any size and mode (grayscale, RGBA, palette, EXIF-rotated; transparent pixels become white) are
decoded to RGB, resized on the shorter side and centre-cropped. Files that cannot be decoded
are reported and skipped, or stop the job when ``strict``. Files and folders whose names start
with a dot are ignored.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dfcil.data.images import Geometry, decode_image, is_image_name
from dfcil.data.parallel import num_workers
from dfcil.errors import DataError

logger = logging.getLogger(__name__)


def is_image_file(path: Path) -> bool:
    """A visible regular file with an image extension (:data:`dfcil.data.images.IMAGE_EXTENSIONS`)."""
    return is_image_name(path.name) and path.is_file()


@dataclass
class Skipped:
    """A file that could not be used, and why."""

    path: str
    reason: str


@dataclass
class DecodedImages:
    """Decoded images (uint8 N x S x S x 3), their source files, and the files skipped."""

    images: np.ndarray
    paths: list[Path]
    skipped: list[Skipped] = field(default_factory=list)


def _visible_subdirs(path: Path) -> list[Path]:
    return sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def list_class_folders(root: Path) -> dict[str, list[Path]]:
    """``{class name: sorted image files}`` for the class sub-folders of ``root``.

    Refuses a folder without class sub-folders and any class folder without images.
    """
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder")
    classes = {}
    for folder in _visible_subdirs(root):
        files = sorted(p for p in folder.rglob("*") if is_image_file(p)
                       and not any(part.startswith(".") for part in p.relative_to(folder).parts))
        if not files:
            raise DataError(f"class folder {folder} contains no images")
        classes[folder.name] = files
    if not classes:
        raise DataError(f"image folder {root} has no class sub-folders (expected {root}/<class>/<images>)")
    return classes


def decode_paths(paths: list[Path], geometry: Geometry, strict: bool = False) -> DecodedImages:
    """Decode ``paths`` (in order) with one thread per core; unreadable files are skipped
    (listed in ``skipped``) or, with ``strict``, raise :class:`DataError`."""

    def one(path: Path) -> np.ndarray | str:
        try:
            return decode_image(path, geometry)
        except DataError as error:
            if strict:
                raise
            return str(error)

    with ThreadPoolExecutor(max_workers=num_workers(), thread_name_prefix="dfcil-decode") as pool:
        results = list(pool.map(one, paths))
    kept = [(path, array) for path, array in zip(paths, results) if isinstance(array, np.ndarray)]
    skipped = [Skipped(str(path), reason) for path, reason in zip(paths, results) if isinstance(reason, str)]
    images = np.stack([array for _, array in kept]) if kept else np.empty((0, geometry.size, geometry.size, 3), np.uint8)
    return DecodedImages(images, [path for path, _ in kept], skipped)


def report_skipped(skipped: list[Skipped], limit: int = 20) -> None:
    """Log the skipped files as warnings, one per line (the first ``limit`` of them)."""
    if not skipped:
        return
    logger.warning("skipped %d unreadable file(s):", len(skipped))
    for item in skipped[:limit]:
        logger.warning("  %s", item.reason)
    if len(skipped) > limit:
        logger.warning("  ... and %d more", len(skipped) - limit)


@dataclass
class LabelledFolder:
    """A class-labelled image folder decoded for training: train and held-out splits."""

    class_names: list[str]
    train_images: np.ndarray
    train_labels: np.ndarray  # int64, 0..len(class_names) - 1
    held_out_images: np.ndarray
    held_out_labels: np.ndarray
    skipped: list[Skipped]


def _decode_classes(classes: dict[str, list[Path]], geometry: Geometry, strict: bool,
                    names: list[str]) -> tuple[np.ndarray, np.ndarray, list[Skipped]]:
    paths = [path for name in names for path in classes.get(name, [])]
    owner = {path: index for index, name in enumerate(names) for path in classes.get(name, [])}
    decoded = decode_paths(paths, geometry, strict)
    labels = np.asarray([owner[path] for path in decoded.paths], dtype=np.int64)
    return decoded.images, labels, decoded.skipped


def read_labelled_folder(root: Path, image_size: int, *, holdout: float = 0.1, seed: int = 0,
                         strict: bool = False) -> LabelledFolder:
    """Decode a class-labelled folder; hold out ``holdout`` of each class unless it has
    ``train/`` and ``test/`` sub-folders. Every class must keep at least one training and one
    held-out image after unreadable files are skipped."""
    root = Path(root)
    if not 0 < holdout < 1:
        raise DataError(f"holdout must be a fraction in (0, 1), got {holdout}")
    geometry = Geometry.square(image_size)
    if (root / "train").is_dir() and (root / "test").is_dir():
        train_classes = list_class_folders(root / "train")
        test_classes = list_class_folders(root / "test")
        names = sorted(train_classes)
        extra = sorted(set(test_classes) - set(names))
        if extra:
            raise DataError(f"class folder {root / 'test' / extra[0]} has no counterpart in {root / 'train'}")
        train_x, train_y, skipped = _decode_classes(train_classes, geometry, strict, names)
        test_x, test_y, more = _decode_classes(test_classes, geometry, strict, names)
        skipped += more
    else:
        classes = list_class_folders(root)
        names = sorted(classes)
        images, labels, skipped = _decode_classes(classes, geometry, strict, names)
        rng = np.random.default_rng(seed)
        held = np.zeros(len(labels), dtype=bool)
        for label in range(len(names)):
            members = np.nonzero(labels == label)[0]
            if len(members) >= 2:
                count = min(len(members) - 1, max(1, int(round(holdout * len(members)))))
                held[rng.permutation(members)[:count]] = True
        train_x, train_y, test_x, test_y = images[~held], labels[~held], images[held], labels[held]
    for label, name in enumerate(names):
        if not np.any(train_y == label) or not np.any(test_y == label):
            raise DataError(f"class '{name}' in {root} needs at least 2 readable images "
                            f"(one for training, one held out)")
    return LabelledFolder(names, train_x, train_y, test_x, test_y, skipped)


def collect_image_paths(items: list[Path]) -> list[Path]:
    """Image files named directly or found (recursively, sorted) in the folders named."""
    paths: list[Path] = []
    for item in items:
        item = Path(item)
        if item.is_dir():
            found = sorted(Path(d) / f for d, _, files in os.walk(item) for f in files
                           if not any(part.startswith(".") for part in (Path(d) / f).relative_to(item).parts))
            paths.extend(p for p in found if is_image_name(p.name))
        elif item.exists():
            paths.append(item)
        else:
            raise DataError(f"{item} does not exist")
    if not paths:
        raise DataError("no image files found in " + ", ".join(str(i) for i in items))
    return paths
