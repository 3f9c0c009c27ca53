"""Shared fixtures: the real CIFAR-100 copy from ../shared/data and a per-session cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from dfcil.data import DatasetArrays, ImageArrays

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def real_data_root() -> Path | None:
    """Directory holding cifar100-jpg.tar.gz: $DFCIL_DATA, else ../shared/data beside the checkout."""
    candidates = [os.environ.get("DFCIL_DATA"), str(REPO.parent / "shared" / "data")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "cifar100-jpg.tar.gz").exists():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def cifar_env(tmp_path_factory) -> dict[str, str]:
    """Environment variables that point dfcil at the real CIFAR-100 copy and a session cache."""
    root = real_data_root()
    if root is None:
        pytest.skip("real CIFAR-100 archive not found (set DFCIL_DATA or put ../shared/data beside the repo)")
    cache = tmp_path_factory.mktemp("dfcil-cache")
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
    from dfcil.cli import main

    run_dir = tmp_path_factory.mktemp("joint") / "run"
    with pytest.MonkeyPatch.context() as patch:
        for key, value in cifar_env.items():
            patch.setenv(key, value)
        code = main(["run", str(CONFIGS / "smoke.yaml"), "-o", str(run_dir), "--set", "method.name=joint",
                     "--set", "train.epochs=5", "--set", "runtime.progress=false"])
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
