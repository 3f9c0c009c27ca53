"""Shared fixtures: the real CIFAR-100 copy from ../shared/data and a per-session cache."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from dfcil.data import DatasetArrays, ImageArrays

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``-n auto`` in pyproject.toml: one worker per core) each worker's torch,
    and the processes its tests start, get cores / workers threads: on the 2-core CPU a lone
    1-thread process trains at about 70 % of the 2-thread speed, so two 1-thread workers get more
    done than one 2-thread process, and oversubscribed threads would be slower than either."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


# The longest tests (minutes on the 2-core CPU) start first so that no worker is left running one
# of them alone at the end; the other end-to-end (`slow`) tests follow, then the rest.
LONGEST_FIRST = (
    "test_workflow.py::test_data_free_step_keeps_old_cifar_classes_far_above_finetune",
    "test_distributed.py::test_two_processes_match_one_and_checkpoints_cross_process_counts",
    "test_skd.py::test_delegator_training_makes_the_student_agree_with_the_teacher",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest-first order: with ``--dist load --maxschedchunk 1`` a free worker takes the next
    test, so this is longest-processing-time-first scheduling."""
    def rank(item: pytest.Item) -> int:
        for index, name in enumerate(LONGEST_FIRST):
            if item.nodeid.endswith(name):
                return index
        return len(LONGEST_FIRST) + (0 if item.get_closest_marker("slow") else 1)

    items.sort(key=rank)  # stable: file order within a rank


def real_data_root() -> Path | None:
    """Directory holding cifar100-jpg.tar.gz: $DFCIL_DATA, else ../shared/data beside the checkout."""
    candidates = [os.environ.get("DFCIL_DATA"), str(REPO.parent / "shared" / "data")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "cifar100-jpg.tar.gz").exists():
            return Path(candidate)
    return None


def shared_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A directory shared by every pytest-xdist worker of this session (the session's own temporary
    directory when there are no workers), so session fixtures are computed once, not per worker."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    path = base / name
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def cifar_env(tmp_path_factory) -> dict[str, str]:
    """Environment variables that point dfcil at the real CIFAR-100 copy and a session cache
    (decoded once, by the first worker that needs it)."""
    from filelock import FileLock

    from dfcil.data import load_dataset

    root = real_data_root()
    if root is None:
        pytest.skip("real CIFAR-100 archive not found (set DFCIL_DATA or put ../shared/data beside the repo)")
    cache = shared_dir(tmp_path_factory, "dfcil-cache")
    with FileLock(str(cache) + ".lock"):
        load_dataset("cifar100", root, cache, progress=False)
    return {"DFCIL_DATA": str(root), "DFCIL_CACHE": str(cache)}


@pytest.fixture
def cifar(cifar_env, monkeypatch) -> dict[str, str]:
    """``cifar_env`` applied to this process's environment."""
    for key, value in cifar_env.items():
        monkeypatch.setenv(key, value)
    return cifar_env


@pytest.fixture(scope="session")
def joint_smoke_run(cifar_env, tmp_path_factory) -> Path:
    """One ``joint`` run of ``configs/smoke.yaml`` (5 epochs per task), shared by the tests that
    need an upper bound or a trained 4-class model of real images."""
    from filelock import FileLock

    from dfcil.cli import main

    run_dir = shared_dir(tmp_path_factory, "joint") / "run"
    with FileLock(str(run_dir) + ".lock"):
        if not (run_dir / "metrics.json").exists():
            with pytest.MonkeyPatch.context() as patch:
                for key, value in cifar_env.items():
                    patch.setenv(key, value)
                code = main(["run", str(CONFIGS / "smoke.yaml"), "-o", str(run_dir), "--set", "method.name=joint",
                             "--set", "train.epochs=5", "--set", "runtime.progress=false",
                             "--set", "train.precision=fp32"])  # as the runs of test_end_to_end
            assert code == 0
    return run_dir


def coloured_dataset(classes: int = 4, per_class: int = 24) -> DatasetArrays:
    """A tiny learnable dataset: 32x32 noise images whose brightness depends on the class.

    Train and test are the same images. Import it with ``from conftest import coloured_dataset``.
    """
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(classes), per_class).astype(np.int64)
    images = (rng.integers(0, 60, (len(labels), 32, 32, 3)) + labels[:, None, None, None] * 60).astype(np.uint8)
    split = ImageArrays(images, labels)
    return DatasetArrays(name="tiny", train=split, test=split, class_names=[f"c{i}" for i in range(classes)],
                         mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), source="synthetic")


def write_coloured_tree(root: Path, classes: int = 4, per_class: int = 6) -> Path:
    """An image-folder dataset at ``root``: ``train/`` and ``test/`` each with ``classes`` folders of
    ``per_class`` 32 px PNG noise images whose brightness is set by the class. Returns ``root``.
    Import it with ``from conftest import write_coloured_tree``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray((rng.integers(0, 50, (32, 32, 3)) + 60 * c).astype(np.uint8)).save(folder / f"{i}.png")
    return root


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` as module ``name`` (registered in ``sys.modules``, where
    dataclasses look their module up). Import it with ``from conftest import load_benchmark``."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch on one thread (bit-exact CPU kernels), the caller's count restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
