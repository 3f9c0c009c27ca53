"""Class-incremental learning metrics (pure NumPy).

Conventions:

* Accuracies are percentages in ``[0, 100]``.
* The accuracy matrix ``A`` is a list of rows (or a 2-D array) where
  ``A[i][n]`` is the accuracy after learning task ``i`` on the test data of
  task ``n`` (0-based), and ``None`` / NaN where ``n > i``.  Rows may also be
  ragged (row ``i`` of length ``i + 1``).
* ``acc_per_step[i]`` is the accuracy on the test data of all classes seen
  after learning task ``i`` (``A_{i+1}`` in 1-based papers).

Invalid inputs (mismatched lengths, out-of-range values) raise ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

AccuracyMatrix = Sequence[Sequence[float | None]] | NDArray[np.floating]


# ----------------------------------------------------------------------------- validation


def _as_labels(values: ArrayLike, name: str) -> NDArray[np.integer]:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _pair(predictions: ArrayLike, labels: ArrayLike) -> tuple[NDArray[np.integer], NDArray[np.integer]]:
    preds = _as_labels(predictions, "predictions")
    labs = _as_labels(labels, "labels")
    if preds.shape != labs.shape:
        raise ValueError(
            f"predictions and labels differ in length ({preds.shape[0]} vs {labs.shape[0]})"
        )
    return preds, labs


def _percent(correct: NDArray[np.bool_]) -> float | None:
    """Mean of a boolean array in percent, or None when it is empty."""
    if correct.size == 0:
        return None
    return float(correct.mean() * 100.0)


def _check_accuracy(value: float, what: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 100.0:  # also rejects NaN
        raise ValueError(f"{what} must be an accuracy in [0, 100], got {value}")
    return value


def _accuracy_sequence(values: Sequence[float] | ArrayLike, name: str) -> list[float]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {array.shape}")
    return [_check_accuracy(v, f"{name}[{i}]") for i, v in enumerate(array.tolist())]


def _lower_triangle(matrix: AccuracyMatrix) -> list[list[float]]:
    """Validate an accuracy matrix and return its rows truncated to ``A[i][0..i]``."""
    rows = list(matrix)
    if not rows:
        raise ValueError("the accuracy matrix has no row")
    triangle: list[list[float]] = []
    for i, row in enumerate(rows):
        entries = list(row)
        if len(entries) < i + 1:
            raise ValueError(f"row {i} of the accuracy matrix needs at least {i + 1} entries")
        kept: list[float] = []
        for n, value in enumerate(entries):
            missing = value is None or (
                isinstance(value, (float, np.floating)) and math.isnan(value)
            )
            if n <= i:
                if missing:
                    raise ValueError(f"A[{i}][{n}] is missing")
                assert value is not None
                kept.append(_check_accuracy(float(value), f"A[{i}][{n}]"))
            elif not missing:
                raise ValueError(f"A[{i}][{n}] must be None/NaN (task {n} not yet learned)")
        triangle.append(kept)
    return triangle


# ----------------------------------------------------------------------------- accuracies


def accuracy(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Top-1 accuracy in percent: ``100 * mean(predictions == labels)``.

    Raises ``ValueError`` for empty or length-mismatched inputs.
    """
    preds, labs = _pair(predictions, labels)
    result = _percent(preds == labs)
    if result is None:
        raise ValueError("accuracy of an empty set of predictions is undefined")
    return result


def accuracy_matrix_row(
    predictions: ArrayLike,
    labels: ArrayLike,
    class_to_task: Sequence[int] | ArrayLike,
    task_index: int,
) -> list[float | None]:
    """Row ``A[task_index][0..task_index]`` of the accuracy matrix.

    Definition (Chaudhry et al., 2018, "Riemannian Walk", Sec. 4): ``A[i][n]``
    is the accuracy of the model after task ``i`` on the test samples of task
    ``n``, measured with the all-seen-classes ("task-agnostic") prediction.

    Args:
        predictions: predicted class positions (in the class order) of the test
            samples of every class seen after task ``task_index``.
        labels: their true class positions.
        class_to_task: ``class_to_task[c]`` is the task that introduced class
            position ``c``.
        task_index: the 0-based task just learned.

    Returns:
        ``task_index + 1`` accuracies in percent, ``None`` for a task without
        test samples.
    """
    preds, labs = _pair(predictions, labels)
    if task_index < 0:
        raise ValueError(f"task_index must be >= 0, got {task_index}")
    mapping = _as_labels(class_to_task, "class_to_task")
    if labs.size and (labs.min() < 0 or labs.max() >= mapping.size):
        raise ValueError(f"labels must lie in [0, {mapping.size}) to be mapped to a task")
    tasks = mapping[labs]
    if tasks.size and (tasks.min() < 0 or tasks.max() > task_index):
        raise ValueError(f"labels belong to tasks outside 0..{task_index}")
    correct = preds == labs
    return [_percent(correct[tasks == n]) for n in range(task_index + 1)]


def old_new_accuracy(
    predictions: ArrayLike, labels: ArrayLike, num_old: int
) -> dict[str, float | None]:
    """Accuracy on old and on new classes (all-seen prediction), in percent.

    Old samples are those with ``label < num_old``, new ones the rest (the
    "old / new" split used by e.g. R-DFCIL, Gao et al., 2022, Fig. 1). A part
    without samples is ``None``.

    Returns:
        ``{"old": acc_old, "new": acc_new}``.
    """
    preds, labs = _pair(predictions, labels)
    if num_old < 0:
        raise ValueError(f"num_old must be >= 0, got {num_old}")
    correct = preds == labs
    is_old = labs < num_old
    return {"old": _percent(correct[is_old]), "new": _percent(correct[~is_old])}


def per_class_accuracy(
    predictions: ArrayLike, labels: ArrayLike, num_classes: int
) -> list[float | None]:
    """Accuracy in percent of each class ``0..num_classes-1`` (recall); ``None`` when absent."""
    preds, labs = _pair(predictions, labels)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if labs.size and (labs.min() < 0 or labs.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    correct = preds == labs
    return [_percent(correct[labs == c]) for c in range(num_classes)]


def task_local_accuracy(
    logits: ArrayLike, labels: ArrayLike, task_offsets: Sequence[int]
) -> list[float | None]:
    """Per-task accuracy with the argmax restricted to the task's own classes.

    For task ``t`` with classes ``task_offsets[t]:task_offsets[t+1]``, the
    samples of that task are classified among those classes only (the
    "task-incremental" or "local" accuracy of van de Ven & Tolias, 2019). A
    diagnostic: the gap to :func:`accuracy_matrix_row` measures inter-task
    confusion. ``None`` for a task without test samples.
    """
    scores = np.asarray(logits)
    labs = _as_labels(labels, "labels")
    if scores.ndim != 2 or scores.shape[0] != labs.shape[0]:
        raise ValueError(
            f"logits must have shape (len(labels), C) = ({labs.shape[0]}, C), got {scores.shape}"
        )
    offsets = [int(o) for o in task_offsets]
    if len(offsets) < 2 or offsets[0] != 0 or any(b <= a for a, b in zip(offsets, offsets[1:])):
        raise ValueError(f"task_offsets must start at 0 and increase strictly, got {offsets}")
    if offsets[-1] > scores.shape[1]:
        raise ValueError(f"task_offsets end at {offsets[-1]} but logits have {scores.shape[1]} columns")
    if labs.size and (labs.min() < 0 or labs.max() >= offsets[-1]):
        raise ValueError(f"labels must lie in [0, {offsets[-1]})")
    result: list[float | None] = []
    for start, stop in zip(offsets, offsets[1:]):
        mask = (labs >= start) & (labs < stop)
        local_pred = scores[mask, start:stop].argmax(axis=1) + start
        result.append(_percent(local_pred == labs[mask]))
    return result


# ----------------------------------------------------------------------------- summaries


def last_accuracy(acc_per_step: Sequence[float]) -> float:
    """Accuracy after the last task, ``A_N`` (percent)."""
    return _accuracy_sequence(acc_per_step, "acc_per_step")[-1]


def average_incremental_accuracy(acc_per_step: Sequence[float]) -> float:
    """Average incremental accuracy ``(1/N) * sum_{i=1..N} A_i`` (Rebuffi et al., 2017, iCaRL).

    ``A_i`` is the accuracy on all classes seen after task ``i``; the first
    task's ``A_1`` is included, as in R-DFCIL (Gao et al., 2022).
    """
    values = _accuracy_sequence(acc_per_step, "acc_per_step")
    return float(np.mean(values))


def forgetting_per_task(matrix: AccuracyMatrix) -> list[float]:
    """Forgetting of each task but the last (Chaudhry et al., 2018, Eq. 7).

    With ``N`` rows, for each task ``n`` in ``0..N-2``:
    ``f_n = max_{i in [n, N-1)} A[i][n] - A[N-1][n]``, the drop from the best
    accuracy ever reached on task ``n`` before the last step to its final
    accuracy. Positive means forgotten; negative means the task improved
    (backward transfer). Values lie in ``[-100, 100]``. Empty when ``N == 1``.
    """
    rows = _lower_triangle(matrix)
    last = len(rows) - 1
    return [max(rows[i][n] for i in range(n, last)) - rows[last][n] for n in range(last)]


def forgetting(matrix: AccuracyMatrix) -> float | None:
    """Average forgetting: mean of :func:`forgetting_per_task` over tasks ``0..N-2``.

    Chaudhry et al., 2018 ("Riemannian Walk"), Eq. 7-8. Positive = forgot.
    ``None`` when the matrix has a single row (nothing can be forgotten yet).
    """
    per_task = forgetting_per_task(matrix)
    if not per_task:
        return None
    return float(np.mean(per_task))


def omega(acc_per_step: Sequence[float], upper_bound_acc_per_step: Sequence[float]) -> float:
    """ABD's Omega: mean accuracy normalised by the upper bound's, in percent.

    ``Omega = 100 * (1/N) * sum_i A_i / A_i^UB`` (Kemker et al., 2018; used by
    ABD, Smith et al., 2021), where ``A_i^UB`` is the accuracy of the jointly
    trained upper bound on the same classes. The upper bound itself scores
    100; a method beating it may exceed 100.

    Raises:
        ValueError: sequences of different lengths, values outside [0, 100],
            or a zero upper-bound accuracy.
    """
    values = _accuracy_sequence(acc_per_step, "acc_per_step")
    bounds = _accuracy_sequence(upper_bound_acc_per_step, "upper_bound_acc_per_step")
    if len(values) != len(bounds):
        raise ValueError(
            f"acc_per_step has {len(values)} steps, upper_bound_acc_per_step {len(bounds)}"
        )
    if any(b == 0.0 for b in bounds):
        raise ValueError("an upper-bound accuracy of 0 cannot normalise Omega")
    return float(100.0 * np.mean([v / b for v, b in zip(values, bounds)]))


def nearest_class_cosine(features: ArrayLike, labels: ArrayLike, num_classes: int) -> list[float | None]:
    """For each class ``0..num_classes-1``, the cosine similarity between its mean feature and
    the closest mean feature of another class (1 = indistinguishable means, 0 = orthogonal).

    ``features`` is ``(N, d)``, ``labels`` ``(N,)``. ``None`` for a class without samples, or
    when fewer than two classes have samples. High values mark classes the feature space
    keeps close together (e.g. boy / girl / man), low values distinct ones: MFGR's
    fine-grained argument is that LwF loses the former much more.
    """
    feats = np.asarray(features, dtype=np.float64)
    labs = np.asarray(labels)
    if feats.ndim != 2 or labs.ndim != 1 or len(feats) != len(labs):
        raise ValueError(f"need (N, d) features and (N,) labels, got {feats.shape} and {labs.shape}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if labs.size and (labs.min() < 0 or labs.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    present = [c for c in range(num_classes) if np.any(labs == c)]
    out: list[float | None] = [None] * num_classes
    if len(present) < 2:
        return out
    means = np.stack([feats[labs == c].mean(axis=0) for c in present])
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    unit = means / np.maximum(norms, 1e-12)
    cosine = unit @ unit.T
    np.fill_diagonal(cosine, -np.inf)
    for row, c in enumerate(present):
        out[c] = float(cosine[row].max())
    return out


def accuracy_by_similarity(
    accuracies: Sequence[float | None], similarity: Sequence[float | None], groups: int = 3
) -> list[dict[str, Any]]:
    """Mean accuracy of classes grouped by their :func:`nearest_class_cosine`.

    The classes with both values known are sorted from most similar to their nearest
    neighbour to least and cut into ``groups`` groups of (nearly) equal size, the larger
    groups first. Each group reports ``classes`` (positions), ``min_cosine``, ``max_cosine``
    and ``accuracy`` (the unweighted mean of the classes' accuracies, percent).
    """
    if len(accuracies) != len(similarity):
        raise ValueError(f"{len(accuracies)} accuracies for {len(similarity)} similarities")
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    known = [c for c in range(len(accuracies)) if accuracies[c] is not None and similarity[c] is not None]
    known.sort(key=lambda c: (-float(similarity[c]), c))  # type: ignore[arg-type]
    out: list[dict[str, Any]] = []
    if not known:  # e.g. a one-class first task: no class has a nearest neighbour
        return out
    for members in np.array_split(np.asarray(known, dtype=np.int64), min(groups, len(known))):
        if not len(members):
            continue
        cos = [float(similarity[c]) for c in members]
        out.append(
            {
                "classes": [int(c) for c in members],
                "min_cosine": min(cos),
                "max_cosine": max(cos),
                "accuracy": float(np.mean([accuracies[c] for c in members])),
            }
        )
    return out
