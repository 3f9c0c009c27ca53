"""Tests of dfcil.data: decoding, layouts, caching and bad-input errors on tiny synthetic data."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
import tarfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dfcil.console import console_logging
from dfcil.data import (
    DATASETS,
    DatasetArrays,
    default_cache_dir,
    load_dataset,
    resolve_data_root,
)
from dfcil.data import cifar100 as cifar_module
from dfcil.data.cifar100 import CIFAR100_CLASSES
from dfcil.data.images import IMAGE_EXTENSIONS, Geometry, decode_image
from dfcil.data.registry import class_count
from dfcil.errors import DataError

REAL_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar100-jpg.tar.gz"

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


# ----------------------------------------------------------------------------- helpers


def save_image(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (40, 24),
               fmt: str | None = None) -> None:
    """Write a solid-colour image (format from the suffix unless ``fmt`` is given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = fmt or ("PNG" if path.suffix.lower() == ".png" else "JPEG")
    Image.new("RGB", size, color).save(path, format=fmt)


def raises_data_error(*needles: str):
    """Context manager: expect a one-line DataError whose message contains every needle."""

    class _Check:
        def __enter__(self):
            self._ctx = pytest.raises(DataError)
            self.info = self._ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self._ctx.__exit__(*exc)
            message = str(self.info.value)
            assert "\n" not in message, message
            for needle in needles:
                assert needle in message, f"{needle!r} not in {message!r}"
            return handled

    return _Check()


def make_tar(source_dir: Path, archive: Path, arcname: str | None) -> Path:
    """Tar+gzip ``source_dir`` (as ``arcname``; None puts its contents at the top level)."""
    with tarfile.open(archive, "w:gz") as tar:
        if arcname is None:
            for child in sorted(source_dir.iterdir()):
                tar.add(child, arcname=child.name)
        else:
            tar.add(source_dir, arcname=arcname)
    return archive


def assert_same(a: DatasetArrays, b: DatasetArrays) -> None:
    np.testing.assert_array_equal(a.train.images, b.train.images)
    np.testing.assert_array_equal(a.train.labels, b.train.labels)
    np.testing.assert_array_equal(a.test.images, b.test.images)
    np.testing.assert_array_equal(a.test.labels, b.test.labels)
    assert a.class_names == b.class_names


def cache_entry(cache: Path) -> Path:
    (entry,) = [p for p in (cache / "datasets").iterdir() if (p / "manifest.json").exists()]
    return entry


# ----------------------------------------------------------------------------- fixtures

FOLDER_CLASSES = {"cat": RED, "dog": GREEN, "eel": BLUE}


@pytest.fixture
def folder_tree(tmp_path: Path) -> Path:
    """imagefolder tree: 3 classes, 3 train + 2 test images each, PNG and JPEG mixed."""
    root = tmp_path / "tree"
    for cls, color in FOLDER_CLASSES.items():
        for i in range(3):
            save_image(root / "train" / cls / f"{i}.png", color, size=(40 + i, 24))
        save_image(root / "test" / cls / "a.png", color, size=(24, 40))
        save_image(root / "test" / cls / "b.JPG", color)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def cifar_jpg_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cifar100 jpg tree with all 100 official folders, 2 train + 1 test image each.

    The red channel encodes the official index (2 * index) so label mapping can be checked.
    """
    root = tmp_path_factory.mktemp("cifarjpg") / "tree"
    for index, name in enumerate(CIFAR100_CLASSES):
        color = (2 * index, 128, 64)
        for i in range(2):
            save_image(root / "train" / name / f"{name}_{i}.jpg", color, size=(32, 32))
        save_image(root / "test" / name / f"{name}_t.jpg", color, size=(32, 32))
    return root


def write_pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


@pytest.fixture
def cifar_pickles(tmp_path: Path) -> Path:
    """Official-format python pickles (bytes keys) built from random data."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "pickles" / "cifar-100-python"
    for split, n in (("train", 300), ("test", 100)):
        write_pickle(folder / split, {
            b"batch_label": f"{split} batch".encode(),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
            b"fine_labels": rng.integers(0, 100, n).tolist(),
            b"coarse_labels": rng.integers(0, 20, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        })
    write_pickle(folder / "meta", {
        b"fine_label_names": [name.encode() for name in CIFAR100_CLASSES],
        b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)],
    })
    return folder.parent


TINY_WNIDS = ["n02", "n01", "n03"]


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    """Tiny ImageNet layout with 3 wnids (file order != sorted order), 2 train + 2 val each."""
    root = tmp_path / "tiny"
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    (base / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\tcat\nn99\tother\n")
    colors = {"n02": RED, "n01": GREEN, "n03": BLUE}
    lines = []
    for wnid in TINY_WNIDS:
        for i in range(2):
            save_image(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", colors[wnid], (64, 64))
    for i, wnid in enumerate(["n03", "n01", "n02", "n03", "n01", "n02"]):
        save_image(base / "val" / "images" / f"val_{i}.JPEG", colors[wnid], (64, 64))
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def imagenet_root(tmp_path: Path) -> Path:
    """ImageNet-100 split files over 100 wnid folders, one train and one val image each."""
    root = tmp_path / "in100"
    train_lines, val_lines = [], []
    for label in range(100):
        wnid = f"n{label:08d}"
        color = (2 * label, 10, 200)
        save_image(root / "train" / wnid / f"{wnid}_1.JPEG", color, size=(30, 20))
        save_image(root / "val" / wnid / f"val_{label}.JPEG", color, size=(20, 30))
        train_lines.append(f"train/{wnid}/{wnid}_1.JPEG {label}")
        val_lines.append(f"val/{wnid}/val_{label}.JPEG {label}")
    (root / "train_100.txt").write_text("\n".join(train_lines) + "\n")
    (root / "val_100.txt").write_text("\n".join(val_lines) + "\n")
    return root


@pytest.fixture(scope="session")
def real_cifar_cache(cifar_env: dict[str, str]) -> Path:
    """The session cache of conftest's ``cifar_env``, shared with the end-to-end tests."""
    return Path(cifar_env["DFCIL_CACHE"])


# ----------------------------------------------------------------------------- paths and arguments


def test_resolve_data_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from dfcil.data import data_root

    monkeypatch.delenv("DFCIL_DATA", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert data_root(None) == (tmp_path / "xdg" / "dfcil", True)  # the default: CIFAR-100 may be fetched there
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_root(None) == tmp_path / "home" / ".local" / "share" / "dfcil"
    assert data_root(tmp_path) == (tmp_path, False)
    assert resolve_data_root(tmp_path) == tmp_path
    assert resolve_data_root(str(tmp_path)) == tmp_path
    monkeypatch.setenv("DFCIL_DATA", str(tmp_path / "env"))
    assert resolve_data_root(None) == tmp_path / "env"
    assert resolve_data_root(tmp_path / "x") == tmp_path / "x"


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DFCIL_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("DFCIL_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "dfcil"


def test_every_dataset_has_its_facts_in_the_registry() -> None:
    from typing import get_args, get_type_hints

    from dfcil.config import DataConfig

    assert get_args(get_type_hints(DataConfig)["dataset"]) == DATASETS  # the names a config accepts
    assert {name: class_count(name) for name in DATASETS} == {
        "cifar100": 100, "imagefolder": None, "tiny_imagenet": 200, "imagenet100": 100}


def test_bad_arguments(tmp_path: Path, cifar_pickles: Path) -> None:
    assert DATASETS == ("cifar100", "imagefolder", "tiny_imagenet", "imagenet100")
    with raises_data_error("mnist", "cifar100"):
        load_dataset("mnist", tmp_path, tmp_path / "cache")
    with raises_data_error("image_size", "32", "64"):
        load_dataset("cifar100", cifar_pickles, tmp_path / "cache", image_size=64)
    with raises_data_error(str(tmp_path / "nowhere")):
        load_dataset("imagefolder", tmp_path / "nowhere", tmp_path / "cache")


def test_official_class_list() -> None:
    assert len(CIFAR100_CLASSES) == 100 == len(set(CIFAR100_CLASSES))
    assert list(CIFAR100_CLASSES) == sorted(CIFAR100_CLASSES)
    assert CIFAR100_CLASSES[0] == "apple" and CIFAR100_CLASSES[-1] == "worm"


# ----------------------------------------------------------------------------- image geometry


def test_geometry_and_centre_crop() -> None:
    assert Geometry.imagenet(224) == Geometry(224, 256)
    assert Geometry.imagenet(64) == Geometry(64, 73)
    assert Geometry.square(32) == Geometry(32, 32)
    # 20 wide x 40 tall: green top quarter, red below; the centre crop must be red only
    image = Image.new("RGB", (20, 40), RED)
    image.paste(GREEN, (0, 0, 20, 10))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    out = decode_image(buffer.getvalue(), Geometry.square(10))
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    assert (out[2:, :, 0] == 255).all() and (out[2:, :, 1] == 0).all()
    # greyscale and RGBA inputs come out as RGB
    for mode in ("L", "RGBA", "P"):
        buffer = io.BytesIO()
        Image.new(mode, (8, 8)).save(buffer, format="PNG")
        assert decode_image(buffer.getvalue(), Geometry.square(4)).shape == (4, 4, 3)


# ----------------------------------------------------------------------------- imagefolder


def test_imagefolder_directory(folder_tree: Path, tmp_path: Path) -> None:
    data = load_dataset("imagefolder", folder_tree, tmp_path / "cache", image_size=16, progress=False)
    assert data.name == "imagefolder" and data.source == str(folder_tree.resolve())
    assert data.class_names == ["cat", "dog", "eel"] and data.num_classes == 3
    assert data.train.images.shape == (9, 16, 16, 3) and data.train.images.dtype == np.uint8
    assert data.test.images.shape == (6, 16, 16, 3)
    assert data.train.labels.dtype == np.int64
    assert data.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert data.test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    for label, color in enumerate(FOLDER_CLASSES.values()):
        pngs = data.train.images[data.train.labels == label]
        assert (pngs == np.array(color, dtype=np.uint8)).all()  # PNG is lossless: exact RGB
        jpgs = data.test.images[data.test.labels == label].astype(int)
        assert np.abs(jpgs - np.array(color)).max() <= 3
    pixels = data.train.images.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(data.mean, pixels.mean(0), atol=1e-9)
    np.testing.assert_allclose(data.std, pixels.std(0), atol=1e-9)
    manifest = json.loads((cache_entry(tmp_path / "cache") / "manifest.json").read_text())
    assert manifest["image_size"] == 16 and manifest["class_names"] == ["cat", "dog", "eel"]
    np.testing.assert_allclose(manifest["mean"], data.mean)
    assert set(manifest["files"]) == {"train_images", "train_labels", "test_images", "test_labels"}
    assert manifest["files"]["train_images"]["shape"] == [9, 16, 16, 3]
    digest = hashlib.sha256((cache_entry(tmp_path / "cache") / "train_images.npy").read_bytes())
    assert manifest["files"]["train_images"]["sha256"] == digest.hexdigest()


@pytest.mark.parametrize("arcname", ["mytree", None])
def test_imagefolder_tarball_matches_directory(folder_tree: Path, tmp_path: Path, arcname) -> None:
    archive = make_tar(folder_tree, tmp_path / "tree.tar.gz", arcname)
    from_dir = load_dataset("imagefolder", folder_tree, tmp_path / "c1", image_size=16, progress=False)
    from_tar = load_dataset("imagefolder", archive, tmp_path / "c2", image_size=16, progress=False)
    assert_same(from_dir, from_tar)
    assert from_tar.source == str(archive.resolve())
    assert from_tar.mean == pytest.approx(from_dir.mean)


def test_every_image_extension_is_one_pillow_decodes(tmp_path: Path) -> None:
    Image.init()
    for extension in sorted(IMAGE_EXTENSIONS):
        assert extension in Image.registered_extensions(), extension  # a format Pillow opens
        path = tmp_path / f"image{extension}"
        mode = "L" if extension == ".pgm" else "RGB"  # a .pgm file holds a grey image
        Image.new(mode, (40, 24), 128 if mode == "L" else (128, 128, 128)).save(path)  # format from the suffix
        array = decode_image(path, Geometry.square(16))
        assert array.shape == (16, 16, 3) and abs(float(array.mean()) - 128) < 4, extension


def test_image_folder_datasets_and_the_learn_workflow_read_the_same_files(tmp_path: Path) -> None:
    """One extension set: a .webp and a .bmp are read by both, a .txt by neither."""
    from dfcil.workflow.folder import collect_image_paths, list_class_folders, read_labelled_folder

    root = tmp_path / "tree"
    for split in ("train", "test"):
        for cls, grey in (("dark", 40), ("light", 210)):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for name in ("0.webp", "1.bmp", "2.png"):
                Image.new("RGB", (40, 24), (grey, grey, grey)).save(folder / name)
            (folder / "notes.txt").write_text("not an image")
    dataset = load_dataset("imagefolder", root, tmp_path / "cache", image_size=16, progress=False)
    learned = read_labelled_folder(root, 16)
    assert dataset.class_names == learned.class_names == ["dark", "light"] and learned.skipped == []
    assert np.array_equal(dataset.train.images, learned.train_images)
    assert np.array_equal(dataset.train.labels, learned.train_labels)
    assert np.array_equal(dataset.test.images, learned.held_out_images)
    assert len(dataset.train) == len(dataset.test) == 6
    assert [p.name for p in list_class_folders(root / "train")["dark"]] == ["0.webp", "1.bmp", "2.png"]
    assert [p.name for p in collect_image_paths([root / "test" / "light"])] == ["0.webp", "1.bmp", "2.png"]


def test_second_load_hits_cache(folder_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    first = load_dataset("imagefolder", folder_tree, tmp_path / "cache", image_size=16, progress=False)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although a valid cache exists")

    monkeypatch.setattr(Image, "open", no_decoding)
    with console_logging():  # a warning would show on stderr, as on the command line
        second = load_dataset("imagefolder", folder_tree, tmp_path / "cache", image_size=16, progress=False)
    assert_same(first, second)
    assert second.mean == first.mean and second.std == first.std
    assert capsys.readouterr().err == ""
    # a different image size is a different cache entry, so it must decode again
    with raises_data_error("decoded although"):  # decoder failures surface as DataError
        load_dataset("imagefolder", folder_tree, tmp_path / "cache", image_size=8, progress=False)


def test_an_image_rewritten_in_place_deep_in_the_tree_gets_a_fresh_cache(folder_tree: Path, tmp_path: Path) -> None:
    import os

    first = load_dataset("imagefolder", folder_tree, tmp_path / "cache", image_size=16, progress=False)
    image = folder_tree / "train" / "dog" / "0.png"  # three levels below the root
    folder_mtime = os.stat(image.parent).st_mtime_ns
    save_image(image, (255, 255, 255), size=(40, 24))  # same name, new pixels, written in place
    os.utime(image.parent, ns=(folder_mtime, folder_mtime))  # its folder looks untouched
    second = load_dataset("imagefolder", folder_tree, tmp_path / "cache", image_size=16, progress=False)
    changed = ~np.all(first.train.images == second.train.images, axis=(1, 2, 3))
    assert changed.sum() == 1  # the rewritten image, decoded again; not the stale cached pixels
    assert len(list((tmp_path / "cache").rglob("manifest.json"))) == 2  # a fresh entry beside the old


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "no_manifest", "bad_manifest"])
def test_damaged_cache_is_rebuilt(folder_tree: Path, tmp_path: Path, damage: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    first = load_dataset("imagefolder", folder_tree, cache, image_size=16, progress=False)
    entry = cache_entry(cache)
    target = entry / "train_images.npy"
    if damage == "flip":
        raw = bytearray(target.read_bytes())
        raw[-10] ^= 0xFF
        target.write_bytes(bytes(raw))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:-100])
    elif damage == "delete":
        (entry / "test_labels.npy").unlink()
    elif damage == "no_manifest":
        (entry / "manifest.json").unlink()
    else:
        (entry / "manifest.json").write_text("{not json")
    capsys.readouterr()
    with console_logging():  # warnings on stderr, as on the command line
        rebuilt = load_dataset("imagefolder", folder_tree, cache, image_size=16, progress=False)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "rebuilding" in err[0] and str(entry) in err[0], err
        assert_same(first, rebuilt)
        load_dataset("imagefolder", folder_tree, cache, image_size=16, progress=False)
    assert capsys.readouterr().err == ""


def test_large_arrays_are_memory_mapped(folder_tree: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Scaled-down thresholds exercise the memmap and sampled-checksum paths."""
    from dfcil.data import cache as cache_module
    from dfcil.data import checksum as checksum_module

    monkeypatch.setattr(cache_module, "MMAP_THRESHOLD", 1000)
    monkeypatch.setattr(checksum_module, "FULL_HASH_LIMIT", 1000)
    monkeypatch.setattr(checksum_module, "SAMPLE", 256)
    cache = tmp_path / "cache"
    built = load_dataset("imagefolder", folder_tree, cache, image_size=16, progress=False)
    assert isinstance(built.train.images, np.memmap) and not built.train.images.flags.writeable
    entry = cache_entry(cache)
    assert not list(entry.glob(".*.tmp"))
    record = json.loads((entry / "manifest.json").read_text())["files"]["train_images"]
    assert "sha256_of_size_and_64MiB_start_middle_end" in record and "sha256" not in record
    loaded = load_dataset("imagefolder", folder_tree, cache, image_size=16, progress=False)
    assert isinstance(loaded.train.images, np.memmap)
    assert_same(built, loaded)
    del built, loaded
    target = entry / "train_images.npy"
    target.write_bytes(target.read_bytes()[:-1] + b"\x01")  # same size, last byte changed
    capsys.readouterr()
    with console_logging():  # warnings on stderr, as on the command line
        load_dataset("imagefolder", folder_tree, cache, image_size=16, progress=False)
    assert "rebuilding" in capsys.readouterr().err


def test_changed_source_is_redecoded(folder_tree: Path, tmp_path: Path) -> None:
    first = load_dataset("imagefolder", folder_tree, tmp_path / "cache", image_size=16, progress=False)
    save_image(folder_tree / "train" / "dog" / "new.png", GREEN)
    second = load_dataset("imagefolder", folder_tree, tmp_path / "cache", image_size=16, progress=False)
    assert len(second.train) == len(first.train) + 1


def test_imagefolder_corrupt_image(folder_tree: Path, tmp_path: Path) -> None:
    (folder_tree / "train" / "dog" / "1.png").write_bytes(b"\x89PNG garbage")
    with raises_data_error("cannot decode image", "1.png"):
        load_dataset("imagefolder", folder_tree, tmp_path / "cache", image_size=16, progress=False)
    archive = make_tar(folder_tree, tmp_path / "t.tar.gz", "top")
    with raises_data_error("cannot decode image", "top/train/dog/1.png"):
        load_dataset("imagefolder", archive, tmp_path / "cache", image_size=16, progress=False)
    assert not list((tmp_path / "cache").rglob("manifest.json"))


def test_truncated_archive(folder_tree: Path, tmp_path: Path) -> None:
    payload = make_tar(folder_tree, tmp_path / "full.tar.gz", "top").read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(payload[: len(payload) * 2 // 3])
    with raises_data_error("cannot read archive", "cut.tar.gz"):
        load_dataset("imagefolder", cut, tmp_path / "cache", progress=False)


def test_imagefolder_bad_trees(folder_tree: Path, tmp_path: Path) -> None:
    shutil.rmtree(folder_tree / "test" / "eel")
    with raises_data_error("eel", "test"):
        load_dataset("imagefolder", folder_tree, tmp_path / "cache", progress=False)
    (folder_tree / "test" / "eel").mkdir()
    with raises_data_error("eel", "no images"):
        load_dataset("imagefolder", folder_tree, tmp_path / "cache", progress=False)
    shutil.rmtree(folder_tree / "test")
    with raises_data_error("test"):
        load_dataset("imagefolder", folder_tree, tmp_path / "cache", progress=False)


# ----------------------------------------------------------------------------- cifar100


def test_cifar100_pickle_directory(cifar_pickles: Path, tmp_path: Path) -> None:
    data = load_dataset("cifar100", cifar_pickles, tmp_path / "cache", progress=False)
    train = pickle.loads((cifar_pickles / "cifar-100-python" / "train").read_bytes())
    assert data.train.images.shape == (300, 32, 32, 3) and data.test.images.shape == (100, 32, 32, 3)
    assert data.train.labels.tolist() == train[b"fine_labels"]
    rows = train[b"data"].reshape(300, 3, 32, 32)
    for channel in range(3):  # CHW rows became HWC images
        np.testing.assert_array_equal(data.train.images[..., channel], rows[:, channel])
    assert data.class_names == list(CIFAR100_CLASSES)
    assert data.mean == (0.5071, 0.4867, 0.4408) and data.std == (0.2675, 0.2565, 0.2761)
    # root may also be the cifar-100-python folder itself
    inner = load_dataset("cifar100", cifar_pickles / "cifar-100-python", tmp_path / "cache", progress=False)
    assert_same(data, inner)


def test_cifar100_official_tarball(cifar_pickles: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "tarroot"
    root.mkdir()
    archive = make_tar(cifar_pickles / "cifar-100-python", root / "cifar-100-python.tar.gz",
                       "cifar-100-python")
    with raises_data_error("md5", str(archive.resolve())):
        load_dataset("cifar100", root, tmp_path / "cache", progress=False)
    monkeypatch.setattr(cifar_module, "MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    from_tar = load_dataset("cifar100", root, tmp_path / "cache", progress=False)
    from_dir = load_dataset("cifar100", cifar_pickles, tmp_path / "cache", progress=False)
    assert_same(from_tar, from_dir)


class _FakeResponse(io.BytesIO):
    def __init__(self, payload: bytes) -> None:
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


def test_cifar100_download(cifar_pickles: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = make_tar(cifar_pickles / "cifar-100-python", tmp_path / "payload.tar.gz",
                       "cifar-100-python").read_bytes()
    requested: list[str] = []

    def fake_urlopen(url, timeout=None):
        requested.append(url)
        return _FakeResponse(payload)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    root = tmp_path / "fresh"
    with raises_data_error("md5"):  # payload is not the official archive
        load_dataset("cifar100", root, tmp_path / "cache", download=True, progress=False)
    assert list(root.iterdir()) == []  # nothing half-written is left behind
    monkeypatch.setattr(cifar_module, "MD5", hashlib.md5(payload).hexdigest())
    data = load_dataset("cifar100", root, tmp_path / "cache", download=True, progress=False)
    assert requested[-1] == cifar_module.URL
    assert (root / "cifar-100-python.tar.gz").read_bytes() == payload
    assert len(data.train) == 300


def test_cifar100_nothing_found(tmp_path: Path) -> None:
    with raises_data_error("cifar-100-python", "cifar100-jpg.tar.gz", str(tmp_path)):
        load_dataset("cifar100", tmp_path, tmp_path / "cache", progress=False)


def test_cifar100_jpg_layouts(cifar_jpg_tree: Path, tmp_path: Path) -> None:
    data = load_dataset("cifar100", cifar_jpg_tree, tmp_path / "cache", progress=False)
    assert data.class_names == list(CIFAR100_CLASSES)
    assert data.train.images.shape == (200, 32, 32, 3) and data.test.images.shape == (100, 32, 32, 3)
    assert np.bincount(data.train.labels).tolist() == [2] * 100
    assert data.test.labels.tolist() == list(range(100))
    red = data.train.images[..., 0].reshape(200, -1).mean(1)
    np.testing.assert_allclose(red, 2 * data.train.labels, atol=3)  # label = official index
    # the same tree inside root/cifar100-jpg/, as root/cifar100-jpg.tar.gz, and as root itself
    nested = tmp_path / "nested"
    shutil.copytree(cifar_jpg_tree, nested / "cifar100-jpg")
    packed = tmp_path / "packed"
    packed.mkdir()
    archive = make_tar(cifar_jpg_tree, packed / "cifar100-jpg.tar.gz", "cifar100-jpg")
    for root in (nested, packed, archive):
        other = load_dataset("cifar100", root, tmp_path / "cache", progress=False)
        assert_same(data, other)


def test_cifar100_jpg_bad_trees(cifar_jpg_tree: Path, tmp_path: Path) -> None:
    root = tmp_path / "bad"
    shutil.copytree(cifar_jpg_tree, root)
    shutil.rmtree(root / "test" / "worm")
    with raises_data_error("worm", "test"):
        load_dataset("cifar100", root, tmp_path / "cache", progress=False)
    shutil.copytree(root / "train" / "worm", root / "test" / "worm")
    save_image(root / "train" / "zebra" / "z.jpg", RED, (32, 32))
    with raises_data_error("zebra"):
        load_dataset("cifar100", root, tmp_path / "cache", progress=False)
    archive = make_tar(root, tmp_path / "bad.tar.gz", "cifar100-jpg")
    with raises_data_error("zebra"):
        load_dataset("cifar100", archive, tmp_path / "cache", progress=False)


# ----------------------------------------------------------------------------- tiny_imagenet


def test_tiny_imagenet(tiny_root: Path, tmp_path: Path) -> None:
    data = load_dataset("tiny_imagenet", tiny_root, tmp_path / "cache", progress=False)
    assert data.class_names == ["cat", "goldfish, Carassius auratus", "n03"]  # wnids.txt order
    assert data.train.images.shape == (6, 64, 64, 3) and data.test.images.shape == (6, 64, 64, 3)
    assert data.train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert data.test.labels.tolist() == [2, 1, 0, 2, 1, 0]  # annotation order
    means = data.test.images.reshape(6, -1, 3).mean(1)
    assert np.argmax(means, axis=1).tolist() == [2, 1, 0, 2, 1, 0]  # n02 red, n01 green, n03 blue
    assert data.mean == (0.4803, 0.4481, 0.3976)
    small = load_dataset("tiny_imagenet", tiny_root / "tiny-imagenet-200", tmp_path / "cache",
                         image_size=32, progress=False)
    assert small.train.images.shape == (6, 32, 32, 3)


def test_tiny_imagenet_errors(tiny_root: Path, tmp_path: Path) -> None:
    base = tiny_root / "tiny-imagenet-200"
    annotations = base / "val" / "val_annotations.txt"
    good = annotations.read_text()
    annotations.write_text(good + "val_0.JPEG\tn77\t0\t0\t1\t1\n")
    with raises_data_error("n77"):
        load_dataset("tiny_imagenet", tiny_root, tmp_path / "cache", progress=False)
    annotations.write_text(good + "val_99.JPEG\tn01\t0\t0\t1\t1\n")
    with raises_data_error("val_99.JPEG"):
        load_dataset("tiny_imagenet", tiny_root, tmp_path / "cache", progress=False)
    annotations.write_text(good)
    shutil.rmtree(base / "train" / "n03")
    with raises_data_error("n03"):
        load_dataset("tiny_imagenet", tiny_root, tmp_path / "cache", progress=False)
    with raises_data_error("wnids.txt"):
        load_dataset("tiny_imagenet", tmp_path, tmp_path / "cache", progress=False)


# ----------------------------------------------------------------------------- imagenet100


def test_imagenet100(imagenet_root: Path, tmp_path: Path) -> None:
    data = load_dataset("imagenet100", imagenet_root, tmp_path / "cache", image_size=16, progress=False)
    assert data.class_names == [f"n{i:08d}" for i in range(100)]
    assert data.train.images.shape == (100, 16, 16, 3) and data.test.images.shape == (100, 16, 16, 3)
    assert data.train.labels.tolist() == list(range(100))
    red = data.test.images[..., 0].reshape(100, -1).mean(1)
    np.testing.assert_allclose(red, 2 * np.arange(100), atol=3)
    assert data.mean == (0.485, 0.456, 0.406) and data.std == (0.229, 0.224, 0.225)


def test_imagenet100_errors(imagenet_root: Path, tmp_path: Path) -> None:
    split = imagenet_root / "val_100.txt"
    good = split.read_text()
    lines = good.splitlines()

    def attempt(*needles: str) -> None:
        with raises_data_error(*needles):
            load_dataset("imagenet100", imagenet_root, tmp_path / "cache", image_size=16, progress=False)

    split.write_text("\n".join(lines[:-1]) + "\n")  # label 99 has no val images
    attempt("val_100.txt", "99")
    split.write_text(good + "val/n00000000/val_0.JPEG 100\n")
    attempt("val_100.txt", "100")
    split.write_text(good + "val/n00000000/missing.JPEG 0\n")
    attempt("missing.JPEG")
    split.write_text(good + "just-a-path\n")
    attempt("val_100.txt")
    split.unlink()
    attempt("val_100.txt")


# ----------------------------------------------------------------------------- the real archive


@pytest.mark.slow
@pytest.mark.skipif(not REAL_CIFAR.is_file(), reason=f"{REAL_CIFAR} not present")
def test_real_cifar100_archive(real_cifar_cache: Path) -> None:
    start = time.perf_counter()
    data = load_dataset("cifar100", REAL_CIFAR, real_cifar_cache, progress=False)
    seconds = time.perf_counter() - start
    print(f"decoded {REAL_CIFAR.name} in {seconds:.1f}s")
    assert data.train.images.shape == (50000, 32, 32, 3) and data.test.images.shape == (10000, 32, 32, 3)
    assert data.train.images.dtype == np.uint8 and data.train.labels.dtype == np.int64
    assert np.bincount(data.train.labels, minlength=100).tolist() == [500] * 100
    assert np.bincount(data.test.labels, minlength=100).tolist() == [100] * 100
    assert data.class_names[0] == "apple" and data.class_names[99] == "worm"
    assert data.class_names == list(CIFAR100_CLASSES)
    means = data.train.images.reshape(-1, 3).mean(0) / 255
    np.testing.assert_allclose(means, [0.5067, 0.4864, 0.4410], atol=0.002)
    start = time.perf_counter()
    again = load_dataset("cifar100", REAL_CIFAR, real_cifar_cache, progress=False)
    print(f"cached load in {time.perf_counter() - start:.2f}s")
    np.testing.assert_array_equal(again.train.labels, data.train.labels)
