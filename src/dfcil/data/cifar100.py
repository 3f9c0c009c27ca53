"""CIFAR-100: the official python pickles (directory or tarball) or a JPEG image-folder tree.

Labels always follow the official fine-label order, which is the alphabetical order of
:data:`CIFAR100_CLASSES`.
"""

from __future__ import annotations

import codecs
import io
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from dfcil.data.archive import iter_archive, member_parts
from dfcil.data.arrays import Allocator, DecodedSplits, ImageArrays, Source
from dfcil.data.checksum import file_digest
from dfcil.data.download import download as fetch
from dfcil.data.images import Geometry
from dfcil.data.tree import decode_tree, has_split_dirs, is_archive
from dfcil.errors import DataError

CIFAR100_CLASSES: tuple[str, ...] = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)
MEAN = (0.5071, 0.4867, 0.4408)
STD = (0.2675, 0.2565, 0.2761)
IMAGE_SIZE = 32

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
PICKLE_DIR = "cifar-100-python"
PICKLE_TAR = "cifar-100-python.tar.gz"
JPG_DIR = "cifar100-jpg"
JPG_TAR = "cifar100-jpg.tar.gz"
PICKLE_FILES = ("train", "test", "meta")


def _is_pickle_dir(path: Path) -> bool:
    return all((path / name).is_file() for name in PICKLE_FILES)


def locate(root: Path, *, download: bool = False, progress: bool = True) -> Source:
    """Find CIFAR-100 under ``root`` (see the module docs for the order); download if allowed."""
    if root.is_file():
        if root.name == PICKLE_TAR:
            return Source(root, "pickle-tar")
        if is_archive(root):
            return Source(root, "jpg-tar")
        raise DataError(f"cifar100: {root} is neither a directory nor a .tar.gz archive")
    candidates: list[tuple[Path, str, bool]] = [
        (root / PICKLE_DIR, "pickle-dir", _is_pickle_dir(root / PICKLE_DIR)),
        (root, "pickle-dir", root.is_dir() and _is_pickle_dir(root)),
        (root / PICKLE_TAR, "pickle-tar", (root / PICKLE_TAR).is_file()),
        (root, "jpg-dir", has_split_dirs(root)),
        (root / JPG_DIR, "jpg-dir", has_split_dirs(root / JPG_DIR)),
        (root / JPG_TAR, "jpg-tar", (root / JPG_TAR).is_file()),
    ]
    for path, layout, present in candidates:
        if present:
            return Source(path, layout)
    if download:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"cifar100: cannot create data root {root}: {exc}") from exc
        try:
            return Source(fetch(URL, root / PICKLE_TAR, MD5, progress=progress), "pickle-tar")
        except DataError as error:
            raise DataError(f"cifar100: could not download {URL} into {root} ({error}); put {PICKLE_TAR} "
                            f"there yourself, or set DFCIL_DATA to a folder that holds CIFAR-100") from None
    raise DataError(
        f"cifar100: nothing found under {root}: looked for {PICKLE_DIR}/{{train,test,meta}}, "
        f"{PICKLE_TAR}, train/ + test/ class folders, {JPG_DIR}/, {JPG_TAR} "
        f"(put one there, or pass --set data.download=true to fetch {PICKLE_TAR})"
    )


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays: a data file cannot run arbitrary code."""

    def find_class(self, module: str, name: str) -> Any:
        core = getattr(np, "_core", None) or np.core
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
            return getattr(core.multiarray, name)
        if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
            return core.numeric._frombuffer
        if module == "_codecs" and name == "encode":  # bytes in protocol-2 pickles from Python 3
            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(data: bytes, name: str) -> dict[str, Any]:
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:
        raise DataError(f"cifar100: cannot unpickle {name}: {' '.join(str(exc).split())}") from exc
    if not isinstance(obj, dict):
        raise DataError(f"cifar100: {name} does not hold a dict")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _field(obj: dict[str, Any], key: str, name: str) -> Any:
    if key not in obj:
        raise DataError(f"cifar100: {name} has no '{key}' entry")
    return obj[key]


def _class_names(meta: dict[str, Any], name: str) -> list[str]:
    raw = _field(meta, "fine_label_names", name)
    names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in raw]
    if len(names) != len(CIFAR100_CLASSES):
        raise DataError(f"cifar100: {name} lists {len(names)} fine labels, expected 100")
    return names


def _pickle_split(obj: dict[str, Any], name: str, split: str, allocate: Allocator) -> ImageArrays:
    data = np.asarray(_field(obj, "data", name))
    labels = np.asarray(_field(obj, "fine_labels", name), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * IMAGE_SIZE * IMAGE_SIZE:
        raise DataError(f"cifar100: {name} data is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    if labels.shape != (len(data),):
        raise DataError(f"cifar100: {name} has {len(data)} images but {labels.size} fine_labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CIFAR100_CLASSES)):
        raise DataError(f"cifar100: {name} has fine_labels outside [0, 100)")
    out = allocate(split, (len(data), IMAGE_SIZE, IMAGE_SIZE, 3))
    out[...] = data.reshape(len(data), 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)
    return ImageArrays(out, labels)


def _read_pickle_tar(path: Path) -> dict[str, bytes]:
    actual = file_digest(path, "md5")
    if actual != MD5:
        raise DataError(f"cifar100: {path} has md5 {actual}, expected {MD5} (not the official archive)")
    wanted = {f"{PICKLE_DIR}/{name}": name for name in PICKLE_FILES}
    found: dict[str, bytes] = {}

    def want(member: tarfile.TarInfo) -> bool:
        return "/".join(member_parts(member.name)) in wanted

    for member, data in iter_archive(path, want):
        if data is not None:
            found[wanted["/".join(member_parts(member.name))]] = data
    for member_name, name in wanted.items():
        if name not in found:
            raise DataError(f"cifar100: archive {path} has no member {member_name}")
    return found


def decode(source: Source, geometry: Geometry, allocate: Allocator, progress: bool) -> DecodedSplits:
    """Decode the located CIFAR-100 copy into 32x32 arrays in official label order."""
    if geometry.size != IMAGE_SIZE:
        raise DataError(f"cifar100: image_size must be 32, got {geometry.size}")
    if source.layout in ("jpg-dir", "jpg-tar"):
        train, test, classes = decode_tree(source.path, dataset="cifar100", geometry=geometry,
                                           allocate=allocate, progress=progress,
                                           expected=CIFAR100_CLASSES)
        return DecodedSplits(train, test, classes)
    if source.layout == "pickle-tar":
        blobs = _read_pickle_tar(source.path)
        names = {key: f"{source.path}:{PICKLE_DIR}/{key}" for key in PICKLE_FILES}
    else:
        blobs, names = {}, {}
        for key in PICKLE_FILES:
            names[key] = str(source.path / key)
            try:
                blobs[key] = (source.path / key).read_bytes()
            except OSError as exc:
                raise DataError(f"cifar100: cannot read {source.path / key}: {exc.strerror}") from exc
    classes = _class_names(_unpickle(blobs.pop("meta"), names["meta"]), names["meta"])
    splits = {}
    for split in ("train", "test"):
        splits[split] = _pickle_split(_unpickle(blobs.pop(split), names[split]), names[split],
                                      split, allocate)
    return DecodedSplits(splits["train"], splits["test"], classes)
