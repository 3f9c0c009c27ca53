"""Collects per-task evaluations and turns them into the ``metrics.json`` of a run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dfcil import metrics
from dfcil.scenario import Scenario, Task


@dataclass
class TaskEvaluation:
    """Everything the metrics need from the evaluation after one task."""

    matrix_row: list[float | None]
    accuracy: float
    old: float | None
    new: float | None
    task_local: list[float | None]  # None for a task without test images
    per_class: list[float | None]
    nearest_cosine: list[float | None] | None = None  # per seen class; None in checkpoints before it existed
    per_old_class_among_old: list[float | None] | None = None  # argmax over old classes only; None at task 1


def evaluate_task(logits: torch.Tensor, labels: np.ndarray, scenario: Scenario, task: Task,
                  features: torch.Tensor | None = None) -> TaskEvaluation:
    """Metrics of one evaluation: ``logits`` (all seen classes) and, optionally, penultimate
    ``features`` of test images with ``labels``."""
    predictions = logits.argmax(dim=1).numpy()
    owner = scenario.class_to_task()
    among_old = None
    if task.num_old:
        # discrimination between the old classes alone, free of the bias towards the new ones
        is_old = labels < task.num_old
        among_old = metrics.per_class_accuracy(logits[torch.from_numpy(is_old), : task.num_old].argmax(dim=1).numpy(),
                                               labels[is_old], task.num_old)
    old_new = metrics.old_new_accuracy(predictions, labels, task.num_old)
    return TaskEvaluation(
        matrix_row=metrics.accuracy_matrix_row(predictions, labels, owner, task.index),
        accuracy=metrics.accuracy(predictions, labels),
        old=old_new["old"],
        new=old_new["new"],
        task_local=metrics.task_local_accuracy(logits.numpy(), labels, scenario.offsets[: task.index + 2]),
        per_class=metrics.per_class_accuracy(predictions, labels, task.num_seen),
        nearest_cosine=None if features is None else metrics.nearest_class_cosine(features.numpy(), labels,
                                                                                   task.num_seen),
        per_old_class_among_old=among_old,
    )


@dataclass
class RunResults:
    """Evaluations so far (serialisable into a checkpoint as a plain dict)."""

    evaluations: list[TaskEvaluation] = field(default_factory=list)

    def state_dict(self) -> list[dict[str, Any]]:
        """Plain-data form."""
        return [vars(e).copy() for e in self.evaluations]

    @classmethod
    def from_state(cls, state: list[dict[str, Any]]) -> RunResults:
        """Inverse of :meth:`state_dict`."""
        return cls([TaskEvaluation(**e) for e in state])

    def summary(
        self,
        scenario: Scenario,
        class_names: list[str],
        upper_bound: list[float] | None = None,
    ) -> dict[str, Any]:
        """The metrics of the tasks evaluated so far (see :mod:`dfcil.metrics`)."""
        evals = self.evaluations
        n_tasks = len(scenario.tasks)
        matrix = [e.matrix_row + [None] * (n_tasks - len(e.matrix_row)) for e in evals]
        per_step = [e.accuracy for e in evals]
        out: dict[str, Any] = {
            "accuracy_matrix": matrix,
            "accuracy_per_step": per_step,
            "last_accuracy": metrics.last_accuracy(per_step) if per_step else None,
            "average_incremental_accuracy": metrics.average_incremental_accuracy(per_step) if per_step else None,
            "forgetting": metrics.forgetting([e.matrix_row for e in evals]) if evals else None,
            "forgetting_per_task": metrics.forgetting_per_task([e.matrix_row for e in evals]) if evals else [],
            "old_new_accuracy": [
                {"step": i + 1, "old": e.old, "new": e.new} for i, e in enumerate(evals)
            ],
            "task_local_accuracy": [e.task_local for e in evals],
        }
        if evals:
            last = evals[-1]
            out["per_class_accuracy"] = [
                {"position": p, "class": scenario.order[p], "name": class_names[scenario.order[p]], "accuracy": acc}
                for p, acc in enumerate(last.per_class)
            ]
            out["per_class_accuracy_per_step"] = [e.per_class for e in evals]
            out["nearest_class_cosine_per_step"] = [e.nearest_cosine for e in evals]
            out["per_old_class_accuracy_among_old_per_step"] = [e.per_old_class_among_old for e in evals]
            if len(evals) >= 2 and evals[-2].nearest_cosine is not None:
                # old classes of the last step, grouped by how close the old model (after the
                # previous task) kept them to their nearest other class
                old = len(evals[-2].per_class)
                out["old_accuracy_by_similarity"] = metrics.accuracy_by_similarity(
                    last.per_class[:old], evals[-2].nearest_cosine, groups=3)
                if last.per_old_class_among_old is not None:
                    out["old_accuracy_among_old_by_similarity"] = metrics.accuracy_by_similarity(
                        last.per_old_class_among_old, evals[-2].nearest_cosine, groups=3)
        if upper_bound is not None and per_step:
            out["omega"] = metrics.omega(per_step, upper_bound[: len(per_step)])
            out["upper_bound_accuracy_per_step"] = upper_bound
        return out
