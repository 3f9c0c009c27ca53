"""Penultimate features for the real-vs-synthetic domain gap, written at the end of a task.

At the end of every task t >= 2 of a run that kept synthetic samples
(``synthesis/task_t_samples.npz``, drawn from the generator of task t), the model after task t
embeds three sets, and ``synthesis/task_t_features.npz`` keeps their features (float32):

* ``real_old``: up to :data:`MAX_REAL` evenly spaced real test images of the old classes,
* ``synthetic``: the kept synthetic images (the ones standing in for the old classes),
* ``real_new``: up to :data:`MAX_REAL` evenly spaced real test images of the task's new classes,

with their class positions (``*_labels``; the synthetic images' are the old model's predictions)
and the test images' indices in the dataset's test split (``*_index``). Only test images and
synthetic images are embedded: the data-free rule holds. ``dfcil report`` reads these files,
so it needs neither the dataset nor the checkpoints (:mod:`dfcil.report.domain_gap`).

The features come from the model in eval mode, without gradients, in float32 (no autocast) and
without a compiled graph; no random numbers are used and no model state changes, so writing them
leaves the run exactly as it would have been.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfcil.atomic import atomic_write
from dfcil.models import IncrementalClassifier
from dfcil.rundir import RunDir

MAX_REAL = 500  # real images per set (evenly spaced), to keep t-SNE and MMD cheap
BATCH = 250  # images per forward
FORMAT = 1

_ARRAYS = ("real_old", "synthetic", "real_new", "real_old_labels", "synthetic_labels", "real_new_labels",
           "real_old_index", "real_new_index")


def samples_path(run_dir: Path, task: int) -> Path:
    """The kept synthetic samples of task ``task`` (1-based)."""
    return RunDir(run_dir).gap_samples(task)


def features_path(run_dir: Path, task: int) -> Path:
    """The domain-gap features of task ``task`` (1-based)."""
    return RunDir(run_dir).gap_features(task)


def evenly(indices: np.ndarray, limit: int) -> np.ndarray:
    """``indices`` when it has at most ``limit`` entries, else ``limit`` evenly spaced ones of them
    (the first and the last included)."""
    if len(indices) <= limit:
        return indices
    return indices[np.linspace(0, len(indices) - 1, limit).round().astype(int)]


def select_real(positions: np.ndarray, num_old: int, new_stop: int, limit: int = MAX_REAL) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the real test images of the old classes (positions ``[0, num_old)``) and of the
    new classes (``[num_old, new_stop)``), up to ``limit`` each, evenly spaced in test-split order.

    ``positions`` are the test labels remapped to positions in the class order (-1: unused class)."""
    old = np.nonzero((positions >= 0) & (positions < num_old))[0]
    new = np.nonzero((positions >= num_old) & (positions < new_stop))[0]
    return evenly(old, limit), evenly(new, limit)


@contextlib.contextmanager
def _eager() -> Iterator[None]:
    """Run a compiled backbone as plain PyTorch (no new graph for these batch sizes), where the
    installed torch can (``torch.compiler.set_stance``, torch >= 2.6)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is None:
        yield
        return
    with set_stance("force_eager"):
        yield


@torch.no_grad()
def penultimate_features(model: IncrementalClassifier, images: np.ndarray, mean: tuple[float, ...],
                         std: tuple[float, ...], batch_size: int = BATCH) -> np.ndarray:
    """float32 (N, feature_dim) backbone features of uint8 NHWC ``images``, normalised with the
    dataset's ``mean`` / ``std``, by ``model`` in eval mode on its own device (its training mode
    is restored afterwards)."""
    from dfcil.augment import Normalizer

    normalizer = Normalizer(tuple(mean), tuple(std), channels_last=False)  # type: ignore[arg-type]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        with _eager():
            for start in range(0, len(images), batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
                out.append(model.features(normalizer(batch)).float().cpu().numpy())
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, model.feature_dim), np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


@dataclass(frozen=True)
class GapFeatures:
    """The three feature sets of one task (see the module docstring)."""

    task: int
    real_old: np.ndarray
    synthetic: np.ndarray
    real_new: np.ndarray
    real_old_labels: np.ndarray
    synthetic_labels: np.ndarray
    real_new_labels: np.ndarray
    real_old_index: np.ndarray
    real_new_index: np.ndarray

    @property
    def sizes(self) -> tuple[int, int, int]:
        """Rows of ``real_old``, ``synthetic`` and ``real_new``."""
        return len(self.real_old), len(self.synthetic), len(self.real_new)

    def save(self, path: Path) -> None:
        """Write the sets to ``path`` (compressed npz, atomically)."""
        arrays = {name: getattr(self, name) for name in _ARRAYS}

        def write(handle: Any) -> None:
            np.savez_compressed(handle, format=np.int64(FORMAT), task=np.int64(self.task), **arrays)

        atomic_write(path, write)

    @classmethod
    def load(cls, path: Path) -> GapFeatures:
        """Read a file written by :meth:`save` (``KeyError`` / ``ValueError`` / ``OSError`` when
        damaged)."""
        with np.load(path) as data:
            if int(data["format"]) != FORMAT:
                raise ValueError(f"unknown features format {int(data['format'])}")
            return cls(task=int(data["task"]), **{name: data[name] for name in _ARRAYS})


def compute_gap_features(model: IncrementalClassifier, task: int, test_images: np.ndarray, positions: np.ndarray,
                         num_old: int, new_stop: int, synthetic: np.ndarray, synthetic_labels: np.ndarray,
                         mean: tuple[float, ...], std: tuple[float, ...]) -> GapFeatures:
    """The features of task ``task`` (1-based; old classes ``[0, num_old)``, new ``[num_old,
    new_stop)``) in ``model``: test images chosen by :func:`select_real` from ``test_images``
    (labels remapped to ``positions``), and the uint8 NHWC ``synthetic`` images."""
    old_index, new_index = select_real(positions, num_old, new_stop)
    return GapFeatures(
        task=task,
        real_old=penultimate_features(model, test_images[old_index], mean, std),
        synthetic=penultimate_features(model, synthetic, mean, std),
        real_new=penultimate_features(model, test_images[new_index], mean, std),
        real_old_labels=positions[old_index].astype(np.int64),
        synthetic_labels=np.asarray(synthetic_labels, dtype=np.int64),
        real_new_labels=positions[new_index].astype(np.int64),
        real_old_index=old_index.astype(np.int64),
        real_new_index=new_index.astype(np.int64),
    )


def write_task_features(run_dir: Path, model: IncrementalClassifier, task: int, test_images: np.ndarray,
                        positions: np.ndarray, num_old: int, new_stop: int, mean: tuple[float, ...],
                        std: tuple[float, ...]) -> Path | None:
    """Write ``synthesis/task_<task>_features.npz`` of a run that kept task ``task``'s synthetic
    samples; returns its path, or None when there are no samples or fewer than 2 images in a set
    (a data-free step whose test split lacks the old classes)."""
    samples = samples_path(run_dir, task)
    if task < 2 or not samples.exists():
        return None
    with np.load(samples) as data:
        synthetic, labels = data["images"], data["labels"]
    old_index, new_index = select_real(positions, num_old, new_stop)
    if min(len(old_index), len(new_index), len(synthetic)) < 2:
        return None
    features = compute_gap_features(model, task, test_images, positions, num_old, new_stop, synthetic, labels,
                                    mean, std)
    path = features_path(run_dir, task)
    features.save(path)
    return path
