"""The real-vs-synthetic domain gap of a data-free run (the ABD paper's diagnosis).

For every task t >= 2 of a run that kept its synthetic samples, the penultimate features, in the
model after task t, of three sets are compared:

* real test images of the old classes (tasks 1..t-1),
* the synthetic images standing in for them,
* real test images of the task's new classes.

The features are written at training time (``synthesis/task_t_features.npz``, see
:mod:`dfcil.engine.gap_features`), so the report reads only files of the run directory: no
dataset (``DFCIL_DATA``) and no checkpoint. For a run made before those files existed they are
recomputed from ``checkpoints/task_t.pt`` and the dataset when both are here; otherwise the task's
domain gap is listed as unavailable, with the reason.

MID(a, b) = ||(mean_a - mean_b) / std_a|| (per-dimension std of the reference set a) and the
unbiased Gaussian-kernel MMD^2 (median-heuristic bandwidth) are reported for (real old,
synthetic) and (real old, real new): a synthetic set farther from the real old classes than
the real new classes are means the features separate domains rather than semantics. A t-SNE
map of the three sets (scikit-learn, the ``dfcil[report]`` extra) is drawn per task.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfcil.engine.gap_features import MAX_REAL, GapFeatures, compute_gap_features, features_path, samples_path
from dfcil.errors import DataError, DfcilError
from dfcil.rundir import RunDir

__all__ = ["MAX_REAL", "TSNE_MISSING", "DomainGaps", "TaskGap", "mid", "mmd_unbiased", "plot_domain_gap",
           "run_domain_gaps", "task_gap", "tsne", "tsne_available", "tsne_maps", "with_tsne_maps"]


def mid(reference: np.ndarray, other: np.ndarray, eps: float = 1e-8) -> float:
    """Mean Image Distance: norm of the mean difference in units of the reference's per-dimension std."""
    std = reference.std(axis=0) + eps
    return float(np.linalg.norm((reference.mean(axis=0) - other.mean(axis=0)) / std))


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)


def mmd_unbiased(a: np.ndarray, b: np.ndarray, bandwidth: float | None = None) -> float:
    """Unbiased MMD^2 with k(x, y) = exp(-||x - y||^2 / bandwidth); bandwidth defaults to the
    median squared distance of the pooled sets. Needs at least 2 samples per set."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("MMD needs at least 2 samples in each set")
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    if bandwidth is None:
        pooled = np.concatenate([a, b])
        d = _squared_distances(pooled, pooled)
        bandwidth = float(np.median(d[np.triu_indices(len(pooled), 1)])) or 1.0
    k_aa = np.exp(-_squared_distances(a, a) / bandwidth)
    k_bb = np.exp(-_squared_distances(b, b) / bandwidth)
    k_ab = np.exp(-_squared_distances(a, b) / bandwidth)
    n, m = len(a), len(b)
    return float((k_aa.sum() - np.trace(k_aa)) / (n * (n - 1)) + (k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
                 - 2.0 * k_ab.mean())


TSNE_MISSING = "t-SNE maps need scikit-learn: pip install dfcil[report] (MID and MMD are reported without it)"


def tsne_available() -> bool:
    """Whether scikit-learn's t-SNE can be imported (the ``dfcil[report]`` extra)."""
    try:
        from sklearn.manifold import TSNE  # noqa: F401
    except ImportError:
        return False
    return True


def tsne(x: np.ndarray, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """2-D t-SNE map of ``x`` (N, D) by scikit-learn (``ImportError`` without it): PCA
    initialisation, fixed ``random_state``, ``perplexity`` clipped to (N - 1) / 3 for small N.

    Runs on one OpenMP thread. The map does not depend on the thread count (Barnes-Hut gradients
    are computed per point), and scikit-learn's threads spin-wait for a core another process
    holds: measured on a 2-core machine with training runs beside it, one map of 1,256 points
    cost 5.9 s of CPU on one thread and 17.5 s on two, for the same map. :func:`tsne_maps` runs
    several maps in parallel processes instead."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = np.asarray(x, dtype=np.float64)
    perplexity = min(perplexity, max((len(x) - 1) / 3.0, 1.0))
    with threadpool_limits(limits=1, user_api="openmp"):
        return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                    random_state=seed).fit_transform(x)


def tsne_maps(point_sets: list[np.ndarray], jobs: int = 1) -> list[np.ndarray]:
    """:func:`tsne` of every set, in order; ``jobs`` > 1 computes up to that many at once in
    separate processes (spawned: no OpenMP state is inherited). The maps are the same for any
    ``jobs``."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    if jobs == 1 or len(point_sets) < 2:
        return [tsne(x) for x in point_sets]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(point_sets)), mp_context=context) as pool:
        return list(pool.map(tsne, point_sets))


@dataclass
class TaskGap:
    """The domain-gap figures and t-SNE map of one task."""

    task: int
    mid_real_synthetic: float
    mid_real_new: float
    mmd_real_synthetic: float
    mmd_real_new: float
    embedding: np.ndarray | None  # (N, 2) t-SNE of [real old, synthetic, real new]; None without scikit-learn
    sizes: tuple[int, int, int]
    points: np.ndarray | None = field(default=None, repr=False)  # the (N, D) features the map is drawn from

    def to_dict(self) -> dict[str, Any]:
        """The figures, rounded."""
        return {"task": self.task, "mid_real_old_vs_synthetic": round(self.mid_real_synthetic, 3),
                "mid_real_old_vs_real_new": round(self.mid_real_new, 3),
                "mmd_real_old_vs_synthetic": round(self.mmd_real_synthetic, 4),
                "mmd_real_old_vs_real_new": round(self.mmd_real_new, 4),
                "images": {"real_old": self.sizes[0], "synthetic": self.sizes[1], "real_new": self.sizes[2]}}


def task_gap(features: GapFeatures, with_tsne: bool = True) -> TaskGap:
    """MID, MMD (and the t-SNE map when ``with_tsne``) of one task's feature sets."""
    real_old, synthetic, real_new = features.real_old, features.synthetic, features.real_new
    points = np.concatenate([real_old, synthetic, real_new])
    return TaskGap(
        task=features.task,
        mid_real_synthetic=mid(real_old, synthetic),
        mid_real_new=mid(real_old, real_new),
        mmd_real_synthetic=mmd_unbiased(real_old, synthetic),
        mmd_real_new=mmd_unbiased(real_old, real_new),
        embedding=tsne(points) if with_tsne else None,
        sizes=features.sizes,
        points=points,
    )


@dataclass
class DomainGaps:
    """The domain gaps of one run: the tasks that have them, and why the others do not."""

    gaps: list[TaskGap] = field(default_factory=list)
    unavailable: dict[int, str] = field(default_factory=dict)  # task -> one-line reason

    def unavailable_line(self) -> str | None:
        """One line naming the tasks without a domain gap and why (None when every task has one)."""
        if not self.unavailable:
            return None
        by_reason: dict[str, list[int]] = {}
        for task, reason in sorted(self.unavailable.items()):
            by_reason.setdefault(reason, []).append(task)
        return "; ".join(f"task{'s' if len(tasks) > 1 else ''} {', '.join(map(str, tasks))}: {reason}"
                         for reason, tasks in by_reason.items())


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


class _Recomputer:
    """The fallback for runs made before the features were written at training time: the
    features recomputed from ``checkpoints/task_t.pt`` and the run's dataset (``DFCIL_DATA``),
    loaded once, on first use."""

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.config = config
        self._loaded: tuple[Any, Any, Any, np.ndarray] | None = None
        self._failure: DataError | None = None

    def _load(self) -> tuple[Any, Any, Any, np.ndarray]:
        if self._failure is not None:
            raise self._failure
        if self._loaded is None:
            from dfcil.experiment import parse_experiment

            try:
                experiment = parse_experiment(self.config)
                dataset, scenario = experiment.load_data()
            except DfcilError as error:
                self._failure = DataError(f"the dataset to recompute them cannot be loaded: {_one_line(error)}")
                raise self._failure from None
            self._loaded = (experiment.config, dataset, scenario, scenario.remap(dataset.test.labels))
        return self._loaded

    def features(self, task: int) -> GapFeatures:
        """Task ``task``'s features from its checkpoint (``DataError`` when the dataset cannot
        be loaded or a file cannot be read)."""
        from dfcil.models import build_classifier

        checkpoint = RunDir(self.run_dir).task_model(task)
        samples = samples_path(self.run_dir, task)
        parsed, dataset, scenario, positions = self._load()
        try:
            saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
            with np.load(samples) as data:
                synthetic, labels = data["images"], data["labels"]
            model = build_classifier(parsed.model, saved["head_sizes"])
            model.load_state_dict(saved["model"])
        except Exception as error:  # noqa: BLE001 - any damage is reported as one line
            raise DataError(f"cannot recompute them from {samples.name} and {checkpoint.name}: "
                            f"{_one_line(error)}") from None
        current = scenario.tasks[task - 1]
        return compute_gap_features(model, task, dataset.test.images, positions, current.start, current.stop,
                                    synthetic, labels, dataset.mean, dataset.std)


#: why a task has no features file (the same words for every task, so that one line names them all)
STALE = "no features file (synthesis/task_t_features.npz: a run made before they were written at training time)"


def _task_number(file: Path) -> int | None:
    try:
        return int(file.name.split("_")[1])
    except (IndexError, ValueError):
        return None


def run_domain_gaps(run_dir: Path, config: dict[str, Any], with_tsne: bool = True) -> DomainGaps:
    """Domain gaps of every task t >= 2 of ``run_dir`` with kept synthetic samples.

    Reads ``synthesis/task_t_features.npz`` (written at training time: no dataset or checkpoint
    needed). A run made before those files existed falls back to recomputing the features from
    ``checkpoints/task_t.pt`` and the dataset; where either is missing (a suite's adopted copy, a
    committed result in a fresh clone) the task is listed in ``unavailable`` with a one-line
    reason. No t-SNE maps unless ``with_tsne`` (see :func:`tsne_available`)."""
    synthesis = RunDir(run_dir).synthesis
    tasks = sorted({t for f in synthesis.glob("task_*_samples.npz") if (t := _task_number(f)) is not None and t >= 2}
                   | {t for f in synthesis.glob("task_*_features.npz") if (t := _task_number(f)) is not None and t >= 2})
    result = DomainGaps()
    recomputer = _Recomputer(Path(run_dir), config)
    for task in tasks:
        path = features_path(run_dir, task)
        try:
            if path.exists():
                try:
                    features = GapFeatures.load(path)
                except Exception as error:  # noqa: BLE001 - any damage is reported as one line
                    raise DataError(f"cannot read {path.name}: {_one_line(error)}") from None
            elif not RunDir(run_dir).task_model(task).exists():
                raise DataError(f"{STALE} and no checkpoint (checkpoints/task_t.pt) to recompute them from")
            else:
                try:
                    features = recomputer.features(task)
                except DataError as error:
                    raise DataError(f"{STALE} and {error}") from None
            if min(features.sizes) < 2:
                raise DataError(f"too few images to compare (real old, synthetic, real new: {features.sizes})")
            result.gaps.append(task_gap(features, with_tsne))
        except DataError as error:
            result.unavailable[task] = _one_line(error)
    return result


def with_tsne_maps(results: list[DomainGaps], jobs: int = 1) -> None:
    """Give every task gap of ``results`` that has no t-SNE map its map (in place), computing
    all of them together, ``jobs`` at a time (see :func:`tsne_maps`)."""
    pending: list[tuple[DomainGaps, int, np.ndarray]] = [
        (result, index, gap.points) for result in results for index, gap in enumerate(result.gaps)
        if gap.embedding is None and gap.points is not None]
    maps = tsne_maps([points for _, _, points in pending], jobs)
    for (result, index, _), embedding in zip(pending, maps):
        result.gaps[index] = replace(result.gaps[index], embedding=embedding)


def plot_domain_gap(gap: TaskGap, title: str, path: Path) -> None:
    """Scatter of the t-SNE map (real old / synthetic / real new), the figures in the title
    (``ValueError`` for a gap without a map)."""
    if gap.embedding is None:
        raise ValueError(f"task {gap.task}: no t-SNE map to draw")
    from dfcil.report.plots import new_figure, save_figure, tight_layout

    figure = new_figure(6.5, 6.0)
    axes = figure.add_subplot()
    bounds = np.cumsum((0,) + gap.sizes)
    for (start, stop), name, colour in zip(zip(bounds[:-1], bounds[1:]),
                                           ("real, old classes", "synthetic (old classes)", "real, new classes"),
                                           ("tab:blue", "tab:red", "tab:green")):
        points = gap.embedding[start:stop]
        axes.scatter(points[:, 0], points[:, 1], s=6, alpha=0.6, label=f"{name} ({stop - start})", color=colour)
    axes.set_xticks([])
    axes.set_yticks([])
    axes.legend(loc="best", fontsize=8)
    axes.set_title(f"{title}\ntask {gap.task}: MID real-old vs synthetic {gap.mid_real_synthetic:.2f}, "
                   f"vs real-new {gap.mid_real_new:.2f}\nMMD² {gap.mmd_real_synthetic:.3f} vs {gap.mmd_real_new:.3f}",
                   fontsize=9)
    tight_layout(figure)
    save_figure(figure, path)
