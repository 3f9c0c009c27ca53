"""The real-vs-synthetic domain gap of a data-free run (the ABD paper's diagnosis).

For every task t >= 2 of a run that kept its synthetic samples (``synthesis/task_t_samples.npz``,
drawn from the generator of task t) and its model after task t (``checkpoints/task_t.pt``), the
penultimate features of three sets are compared in that model's feature space:

* real test images of the old classes (tasks 1..t-1),
* the synthetic images standing in for them,
* real test images of the task's new classes.

MID(a, b) = ||(mean_a - mean_b) / std_a|| (per-dimension std of the reference set a) and the
unbiased Gaussian-kernel MMD^2 (median-heuristic bandwidth) are reported for (real old,
synthetic) and (real old, real new): a synthetic set farther from the real old classes than
the real new classes are means the features separate domains rather than semantics. A t-SNE
map of the three sets is drawn per task.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfcil.errors import DataError

MAX_REAL = 500  # real images per set (evenly spaced), to keep t-SNE and MMD cheap


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


def _conditional_probabilities(d: np.ndarray, perplexity: float) -> np.ndarray:
    """Row-wise Gaussian affinities whose entropy matches log(perplexity) (binary search on beta)."""
    n = len(d)
    target = np.log(perplexity)
    p = np.zeros((n, n))
    for i in range(n):
        row = np.delete(d[i], i)
        low, high, beta = 0.0, np.inf, 1.0
        for _ in range(60):
            weights = np.exp(-(row - row.min()) * beta)
            total = weights.sum()
            probs = weights / total
            entropy = -np.sum(probs * np.log(np.maximum(probs, 1e-12)))
            if abs(entropy - target) < 1e-5:
                break
            if entropy > target:
                low, beta = beta, beta * 2 if high == np.inf else (beta + high) / 2
            else:
                high, beta = beta, (beta + low) / 2
        p[i, np.arange(n) != i] = probs
    return p


def tsne(x: np.ndarray, perplexity: float = 30.0, iterations: int = 500, seed: int = 0) -> np.ndarray:
    """Exact t-SNE of ``x`` (N, D) into 2-D (for a few thousand points at most).

    Symmetrised perplexity-calibrated affinities, Student-t similarities, gradient descent
    with momentum (0.5, then 0.8) and learning rate max(N / 48, 50), early exaggeration x12 for
    the first 100 iterations."""
    x = x.astype(np.float64)
    x = x - x.mean(axis=0)
    n = len(x)
    perplexity = min(perplexity, max((n - 1) / 3.0, 1.0))
    p = _conditional_probabilities(_squared_distances(x, x), perplexity)
    p = np.maximum((p + p.T) / (2.0 * n), 1e-12)
    rng = np.random.default_rng(seed)
    y = rng.normal(0.0, 1e-4, (n, 2))
    velocity = np.zeros_like(y)
    gains = np.ones_like(y)
    learning_rate = max(n / 12.0 / 4.0, 50.0)  # scikit-learn's "auto" rule; large fixed rates throw points out
    for it in range(iterations):
        exaggeration = 12.0 if it < 100 else 1.0
        num = 1.0 / (1.0 + _squared_distances(y, y))
        np.fill_diagonal(num, 0.0)
        q = np.maximum(num / num.sum(), 1e-12)
        pq = (exaggeration * p - q) * num
        gradient = 4.0 * ((np.diag(pq.sum(axis=1)) - pq) @ y)
        momentum = 0.5 if it < 250 else 0.8
        gains = np.where(np.sign(gradient) != np.sign(velocity), gains + 0.2, gains * 0.8).clip(0.01)
        velocity = momentum * velocity - learning_rate * gains * gradient
        y = y + velocity
        y = y - y.mean(axis=0)
    return y


@dataclass
class TaskGap:
    """The domain-gap figures and t-SNE map of one task."""

    task: int
    mid_real_synthetic: float
    mid_real_new: float
    mmd_real_synthetic: float
    mmd_real_new: float
    embedding: np.ndarray  # (N, 2) t-SNE of [real old, synthetic, real new]
    sizes: tuple[int, int, int]

    def to_dict(self) -> dict[str, Any]:
        """The figures, rounded."""
        return {"task": self.task, "mid_real_old_vs_synthetic": round(self.mid_real_synthetic, 3),
                "mid_real_old_vs_real_new": round(self.mid_real_new, 3),
                "mmd_real_old_vs_synthetic": round(self.mmd_real_synthetic, 4),
                "mmd_real_old_vs_real_new": round(self.mmd_real_new, 4),
                "images": {"real_old": self.sizes[0], "synthetic": self.sizes[1], "real_new": self.sizes[2]}}


def _evenly(indices: np.ndarray, limit: int) -> np.ndarray:
    if len(indices) <= limit:
        return indices
    return indices[np.linspace(0, len(indices) - 1, limit).round().astype(int)]


@torch.no_grad()
def _features(model: Any, images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    from dfcil.augment import Normalizer

    normalizer = Normalizer(tuple(mean), tuple(std), channels_last=False)  # type: ignore[arg-type]
    model.eval()
    out = []
    for start in range(0, len(images), 250):
        batch = torch.from_numpy(np.ascontiguousarray(images[start:start + 250]))
        out.append(model.features(normalizer(batch)).float().numpy())
    return np.concatenate(out)


def run_domain_gaps(run_dir: Path, config: dict[str, Any]) -> list[TaskGap]:
    """Domain gaps of every task of ``run_dir`` with kept synthetic samples.

    Raises :class:`DataError` when the run's dataset cannot be loaded (``DFCIL_DATA``) or a
    needed file is missing; returns ``[]`` for a run without synthetic samples."""
    samples = sorted(run_dir.glob("synthesis/task_*_samples.npz"))
    if not samples:
        return []
    from dfcil.config import parse_config
    from dfcil.data import default_cache_dir, load_dataset, resolve_data_root
    from dfcil.models import build_classifier
    from dfcil.scenario import build_scenario

    parsed = parse_config(config)
    dataset = load_dataset(parsed.data.dataset, resolve_data_root(parsed.data.root), default_cache_dir(),
                           image_size=parsed.data.image_size, progress=False)
    scenario = build_scenario(parsed.scenario, dataset.num_classes)
    positions = scenario.remap(dataset.test.labels)
    gaps = []
    for file in samples:
        task = int(file.name.split("_")[1])
        checkpoint = run_dir / "checkpoints" / f"task_{task}.pt"
        if not checkpoint.exists() or task < 2:
            continue
        try:
            saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
            with np.load(file) as data:
                synthetic = data["images"]
        except Exception as error:  # noqa: BLE001 - any damage is reported as one line
            raise DataError(f"cannot read {file} or {checkpoint}: {' '.join(str(error).split())}") from None
        model = build_classifier(parsed.model, saved["head_sizes"])
        model.load_state_dict(saved["model"])
        old_stop = scenario.tasks[task - 2].stop
        new = scenario.tasks[task - 1]
        real_old = _evenly(np.nonzero((positions >= 0) & (positions < old_stop))[0], MAX_REAL)
        real_new = _evenly(np.nonzero((positions >= new.start) & (positions < new.stop))[0], MAX_REAL)
        features = [_features(model, dataset.test.images[real_old], dataset.mean, dataset.std),
                    _features(model, synthetic, dataset.mean, dataset.std),
                    _features(model, dataset.test.images[real_new], dataset.mean, dataset.std)]
        gaps.append(TaskGap(
            task=task,
            mid_real_synthetic=mid(features[0], features[1]),
            mid_real_new=mid(features[0], features[2]),
            mmd_real_synthetic=mmd_unbiased(features[0], features[1]),
            mmd_real_new=mmd_unbiased(features[0], features[2]),
            embedding=tsne(np.concatenate(features)),
            sizes=(len(features[0]), len(features[1]), len(features[2])),
        ))
    return gaps


def plot_domain_gap(gap: TaskGap, title: str, path: Path) -> None:
    """Scatter of the t-SNE map (real old / synthetic / real new), the figures in the title."""
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
