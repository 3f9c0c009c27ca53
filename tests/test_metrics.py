"""Tests for dfcil.metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dfcil.metrics import (
    accuracy,
    accuracy_by_similarity,
    accuracy_matrix_row,
    average_incremental_accuracy,
    forgetting,
    forgetting_per_task,
    last_accuracy,
    nearest_class_cosine,
    old_new_accuracy,
    omega,
    per_class_accuracy,
    task_local_accuracy,
)

# 5 classes in 3 tasks: task 0 = {0, 1}, task 1 = {2, 3}, task 2 = {4}.
CLASS_TO_TASK = [0, 0, 1, 1, 2]
#        sample:  0  1  2  3  4  5  6  7
LABELS = np.array([0, 1, 2, 3, 4, 4, 0, 2])
PREDS = np.array([0, 1, 3, 3, 4, 0, 0, 2])
# correct:        y  y  n  y  y  n  y  y   -> 6 / 8


def test_accuracy() -> None:
    assert accuracy(PREDS, LABELS) == pytest.approx(75.0)  # 6 of 8
    assert accuracy([1, 2], [1, 2]) == 100.0
    assert accuracy([0], [1]) == 0.0


def test_accuracy_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="length"):
        accuracy([0, 1, 2], [0, 1])
    with pytest.raises(ValueError):
        accuracy([], [])
    with pytest.raises(ValueError, match="integer"):
        accuracy([0.2, 0.8], [0, 1])
    with pytest.raises(ValueError, match="1-D"):
        accuracy(np.zeros((2, 3), dtype=int), [0, 1])


def test_accuracy_matrix_row() -> None:
    # task 0: samples 0, 1, 6 all correct            -> 100
    # task 1: samples 2 (wrong), 3, 7 (right)         -> 2/3 = 66.67
    # task 2: samples 4 (right), 5 (wrong)            -> 50
    row = accuracy_matrix_row(PREDS, LABELS, CLASS_TO_TASK, task_index=2)
    assert row == pytest.approx([100.0, 200.0 / 3.0, 50.0])
    # After task 1 only classes 0..3 are tested; a task without samples is None.
    seen = LABELS < 4
    assert accuracy_matrix_row(PREDS[seen], LABELS[seen], CLASS_TO_TASK, 1) == pytest.approx(
        [100.0, 200.0 / 3.0]
    )
    assert accuracy_matrix_row([0], [0], CLASS_TO_TASK, 1) == [100.0, None]


def test_accuracy_matrix_row_rejects_future_classes() -> None:
    with pytest.raises(ValueError, match="tasks outside"):
        accuracy_matrix_row(PREDS, LABELS, CLASS_TO_TASK, task_index=1)
    with pytest.raises(ValueError):
        accuracy_matrix_row([0, 7], [0, 7], CLASS_TO_TASK, task_index=2)
    with pytest.raises(ValueError, match="length"):
        accuracy_matrix_row([0], [0, 1], CLASS_TO_TASK, task_index=0)


def test_last_and_average_incremental_accuracy() -> None:
    steps = [90.0, 75.0, 70.0]
    assert last_accuracy(steps) == 70.0
    # (90 + 75 + 70) / 3 = 235 / 3 = 78.333...
    assert average_incremental_accuracy(steps) == pytest.approx(235.0 / 3.0)
    assert average_incremental_accuracy([64.0]) == 64.0
    with pytest.raises(ValueError):
        average_incremental_accuracy([])
    with pytest.raises(ValueError):
        last_accuracy([50.0, 101.0])
    with pytest.raises(ValueError):
        average_incremental_accuracy([-1.0])


# A[i][n]: after task i, on task n.
MATRIX = [
    [40.0, None, None],
    [70.0, 90.0, None],
    [55.0, 60.0, 80.0],
]
# task 0: max(A[0][0], A[1][0]) - A[2][0] = max(40, 70) - 55 = 15
# task 1: max(A[1][1])          - A[2][1] = 90 - 60         = 30
# forgetting = (15 + 30) / 2 = 22.5


def test_forgetting_hand_computed() -> None:
    assert forgetting_per_task(MATRIX) == pytest.approx([15.0, 30.0])
    assert forgetting(MATRIX) == pytest.approx(22.5)


def test_forgetting_accepts_ragged_rows_and_nan_arrays() -> None:
    ragged = [[40.0], [70.0, 90.0], [55.0, 60.0, 80.0]]
    assert forgetting(ragged) == pytest.approx(22.5)
    array = np.array([[40.0, np.nan, np.nan], [70.0, 90.0, np.nan], [55.0, 60.0, 80.0]])
    assert forgetting(array) == pytest.approx(22.5)


def test_forgetting_negative_is_backward_transfer() -> None:
    # task 0: 50 - 60 = -10 (the task got better)
    assert forgetting([[50.0], [60.0, 80.0]]) == pytest.approx(-10.0)


def test_forgetting_single_task() -> None:
    assert forgetting([[88.0]]) is None
    assert forgetting_per_task([[88.0]]) == []


def test_forgetting_rejects_bad_matrices() -> None:
    with pytest.raises(ValueError, match="missing"):
        forgetting([[40.0], [None, 90.0]])
    with pytest.raises(ValueError, match="not yet learned"):
        forgetting([[40.0, 10.0], [70.0, 90.0]])
    with pytest.raises(ValueError, match="at least"):
        forgetting([[40.0], [70.0]])
    with pytest.raises(ValueError):
        forgetting([[140.0], [70.0, 90.0]])
    with pytest.raises(ValueError):
        forgetting([])


def test_omega() -> None:
    # (80/90 + 60/75) / 2 = (0.8889 + 0.8) / 2 = 0.8444 -> 84.444 %
    assert omega([80.0, 60.0], [90.0, 75.0]) == pytest.approx(100.0 * 76.0 / 90.0)
    upper = [92.0, 81.5, 77.25]
    assert omega(upper, upper) == pytest.approx(100.0)


def test_omega_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="steps"):
        omega([80.0, 60.0], [90.0])
    with pytest.raises(ValueError):
        omega([80.0], [0.0])
    with pytest.raises(ValueError):
        omega([180.0], [90.0])


def test_old_new_accuracy() -> None:
    # old (label < 2): samples 0, 1, 6 -> 3/3 = 100
    # new: samples 2 (n), 3 (y), 4 (y), 5 (n), 7 (y) -> 3/5 = 60
    assert old_new_accuracy(PREDS, LABELS, num_old=2) == pytest.approx({"old": 100.0, "new": 60.0})
    assert old_new_accuracy(PREDS, LABELS, num_old=0) == {"old": None, "new": 75.0}
    assert old_new_accuracy(PREDS, LABELS, num_old=5) == {"old": 75.0, "new": None}
    with pytest.raises(ValueError, match="length"):
        old_new_accuracy(PREDS, LABELS[:-1], num_old=2)


def test_per_class_accuracy() -> None:
    # class 0: samples 0, 6 -> 100; class 1: 100; class 2: samples 2 (n), 7 (y) -> 50;
    # class 3: 100; class 4: samples 4 (y), 5 (n) -> 50; class 5: no sample -> None
    assert per_class_accuracy(PREDS, LABELS, num_classes=6) == [100.0, 100.0, 50.0, 100.0, 50.0, None]
    with pytest.raises(ValueError):
        per_class_accuracy(PREDS, LABELS, num_classes=4)


def test_task_local_accuracy() -> None:
    offsets = [0, 2, 5]
    logits = np.array(
        [
            [3.0, 1.0, 9.0, 0.0, 0.0],  # label 0: local argmax of [3, 1] -> 0 (right)
            [5.0, 1.0, 0.0, 0.0, 0.0],  # label 1: local argmax of [5, 1] -> 0 (wrong)
            [9.0, 0.0, 1.0, 2.0, 0.0],  # label 3: local argmax of [1, 2, 0] -> 3 (right)
            [9.0, 9.0, 0.0, 1.0, 5.0],  # label 4: local argmax of [0, 1, 5] -> 4 (right)
        ]
    )
    labels = np.array([0, 1, 3, 4])
    # task 0: 1/2 = 50; task 1: 2/2 = 100 (while the global argmax gets all four wrong)
    assert task_local_accuracy(logits, labels, offsets) == [50.0, 100.0]
    assert accuracy(logits.argmax(axis=1), labels) == 0.0
    assert task_local_accuracy(logits[:2], labels[:2], offsets) == [50.0, None]
    with pytest.raises(ValueError):
        task_local_accuracy(logits, labels[:3], offsets)
    with pytest.raises(ValueError):
        task_local_accuracy(logits, labels, [0, 2, 6])
    with pytest.raises(ValueError):
        task_local_accuracy(logits, labels, [0, 2, 2, 5])


def test_results_are_plain_floats() -> None:
    value = accuracy(PREDS, LABELS)
    assert type(value) is float and not math.isnan(value)
    assert type(forgetting(MATRIX)) is float


def test_nearest_class_cosine_by_hand():
    # class means: 0 -> (1, 0.1), 1 -> (0.05, 1), 2 -> (-1, 0); class 3 has no samples
    features = np.array([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0], [0.1, 1.0], [-1.0, 0.0]])
    labels = np.array([0, 0, 1, 1, 2])
    cos01 = (1 * 0.05 + 0.1 * 1) / (math.hypot(1, 0.1) * math.hypot(0.05, 1))  # 0.14907
    cos02 = -1 / math.hypot(1, 0.1)  # -0.99504
    cos12 = -0.05 / math.hypot(0.05, 1)  # -0.04994
    result = nearest_class_cosine(features, labels, 4)
    assert result[0] == pytest.approx(max(cos01, cos02))
    assert result[1] == pytest.approx(max(cos01, cos12))
    assert result[2] == pytest.approx(max(cos02, cos12)) == pytest.approx(-0.049938, abs=1e-6)
    assert result[3] is None
    # one class alone has no neighbour; mean features equal up to scale give cosine 1
    assert nearest_class_cosine(features[:2], labels[:2], 2) == [None, None]
    assert nearest_class_cosine(np.array([[1.0, 2.0], [3.0, 6.0]]), np.array([0, 1]), 2) == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError):
        nearest_class_cosine(features, labels, 2)


def test_accuracy_by_similarity_groups_most_similar_first():
    accuracies = [10.0, 20.0, None, 40.0, 50.0, 60.0, 70.0]
    similarity = [0.9, 0.1, 0.95, 0.5, 0.8, 0.3, None]
    groups = accuracy_by_similarity(accuracies, similarity, groups=2)
    # known: 0 (0.9), 1 (0.1), 3 (0.5), 4 (0.8), 5 (0.3) -> sorted 0, 4, 3 | 5, 1
    assert [g["classes"] for g in groups] == [[0, 4, 3], [5, 1]]
    assert groups[0]["accuracy"] == pytest.approx((10 + 50 + 40) / 3)
    assert groups[1]["accuracy"] == pytest.approx((60 + 20) / 2)
    assert (groups[0]["min_cosine"], groups[0]["max_cosine"]) == (0.5, 0.9)
    assert len(accuracy_by_similarity([1.0, 2.0], [0.1, 0.2], groups=5)) == 2
    # a one-class first task: the old class has no neighbour, so there is nothing to group
    assert accuracy_by_similarity([80.0, None], [None, None]) == []
    assert accuracy_by_similarity([], []) == []
    with pytest.raises(ValueError):
        accuracy_by_similarity([1.0], [0.1, 0.2])


def test_task_evaluation_separates_old_class_discrimination_from_new_class_bias():
    import torch

    from dfcil.config import ScenarioConfig
    from dfcil.engine.results import evaluate_task
    from dfcil.scenario import build_scenario

    scenario = build_scenario(ScenarioConfig(order="identity", num_tasks=2), 4)
    task = scenario.tasks[1]  # old classes 0, 1; new 2, 3
    #                     logits over classes 0..3             label  all-seen  among old
    logits = torch.tensor([[2.0, 1.0, 3.0, 0.0],  # 0      wrong (2)  right (0)
                           [1.0, 2.0, 0.0, 0.0],  # 0      wrong (1)  wrong (1)
                           [0.0, 1.0, 0.0, 5.0],  # 1      wrong (3)  right (1)
                           [0.0, 0.0, 4.0, 1.0]])  # 2     right      -
    labels = np.array([0, 0, 1, 2])
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    evaluation = evaluate_task(logits, labels, scenario, task, features)
    assert evaluation.per_class == [0.0, 0.0, 100.0, None]
    assert evaluation.per_old_class_among_old == [50.0, 100.0]
    assert evaluation.nearest_cosine[0] == pytest.approx(math.sqrt(0.5))
    assert evaluation.nearest_cosine[3] is None
    first = evaluate_task(logits[:3, :2], labels[:3], scenario, scenario.tasks[0])
    assert first.per_old_class_among_old is None and first.nearest_cosine is None
