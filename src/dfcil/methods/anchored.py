"""The common form of EWC and MAS: CE plus a quadratic penalty that anchors the parameters at
the end of the last task, weighted by an importance estimated after every task.

Training of task t > 1: ``L = CE + lambda * scale * sum_i Omega_i (theta_i - theta*_i)^2`` over the
parameters that existed at the end of task t - 1 (the backbone and the old heads, never the new
head); ``scale`` is 1/2 for EWC (Kirkpatrick et al.'s ``lambda/2``) and 1 for MAS. After every task
the method estimates the task's importance on its real images (:mod:`dfcil.methods.importance`),
merges it into the accumulated importance, caps that (``importance_max``) and anchors at the
current weights.

**The stability cap.** The penalty is a quadratic of curvature ``2 lambda scale Omega_i`` in each
parameter, stepped explicitly by SGD, which stays stable only while ``lr * curvature < 2 (1 +
momentum)`` (``2 (1 + momentum) / (1 + 2 momentum)`` with Nesterov), whatever the other losses do
(:func:`~dfcil.methods.importance.stable_importance_max`). ``importance_max: stable`` caps the
accumulated importance at half that bound; a number caps there; null leaves it as estimated. With
Adam, whose step is normalised, ``stable`` applies no cap.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch

from dfcil.methods.base import Batch, Loss, Method, Phase, RunEnv, StepResult
from dfcil.methods.importance import AnchoredImportance, stable_importance_max, task_cross_entropy
from dfcil.models import IncrementalClassifier
from dfcil.scenario import Task
from dfcil.schema import join, require

#: The type of the ``importance_max`` option: ``stable``, a positive number, or null.
ImportanceMax = float | Literal["stable"] | None


def validate_penalty_options(options: Any, path: str) -> None:
    """Check the options EWC and MAS share: ``lamb``, ``alpha``, ``batch_size``, ``importance_max``."""
    require(options.lamb >= 0, join(path, "lamb"), "must be >= 0")
    require(options.alpha is None or 0 <= options.alpha < 1, join(path, "alpha"), "must be in [0, 1) or null")
    require(options.batch_size is None or options.batch_size >= 1, join(path, "batch_size"), "must be >= 1")
    require(not isinstance(options.importance_max, float) or options.importance_max > 0,
            join(path, "importance_max"), "must be > 0, stable or null")


class AnchoredPenaltyMethod(Method):
    """CE plus ``lambda * scale * sum Omega (theta - theta*)^2`` from the second task on.

    A subclass sets ``penalty`` (the loss's name in the log), ``scale`` and ``state_key`` (the
    importance's key in the diagnostics and the state), and implements :meth:`estimate`. Its
    options have ``lamb``, ``alpha``, ``ce`` and ``importance_max``.
    """

    penalty: ClassVar[str]
    scale: ClassVar[float]
    state_key: ClassVar[str]
    plain_first_task = False  # the importance of the first task is read in the second

    def __init__(self, options: Any, env: RunEnv) -> None:
        super().__init__(options, env)
        self.anchored = AnchoredImportance(options.alpha)

    def estimate(self, model: IncrementalClassifier, task: Task) -> tuple[dict[str, torch.Tensor], int]:
        """This task's importance of every parameter, by name, and the number of images it used."""
        raise NotImplementedError

    def estimate_clamp(self) -> float | None:
        """The value each task's estimate is clamped at before merging (None: not clamped)."""
        return None

    def importance_cap(self) -> float | None:
        """The value the accumulated importance is capped at (``importance_max``), if any."""
        if self.options.importance_max == "stable":
            return stable_importance_max(self.env.train, self.options.lamb * self.scale)
        value: float | None = self.options.importance_max
        return value

    def training_step(self, model: IncrementalClassifier, batch: Batch, task: Task, phase: Phase) -> StepResult:
        """CE, plus lambda * scale * the penalty after the first task."""
        logits = model(batch.images).logits
        losses = {"ce": Loss(task_cross_entropy(logits, batch.labels, task, self.options.ce))}
        if task.num_old and self.anchored.ready:
            losses[self.penalty] = Loss(self.scale * self.anchored.penalty(model), self.options.lamb)
        return StepResult(losses, logits)

    def finish_task(self, model: IncrementalClassifier, task: Task) -> None:
        """Estimate the task's importance on its real images, merge and cap it, anchor at the current weights."""
        current, images = self.estimate(model, task)
        self.anchored.update(model, current, images, task.index + 1, self.estimate_clamp(), self.importance_cap())

    def diagnostics(self) -> dict[str, Any]:
        """Per task: the estimate's mean and max (before merging), its image count, the share the
        clamp cut, and the accumulated importance's max before the cap and the share the cap cut."""
        return {self.state_key: [dict(e) for e in self.anchored.estimates]} if self.anchored.estimates else {}

    def state_dict(self) -> dict[str, Any]:
        """The accumulated importance, the anchors and the estimates' summary."""
        return {self.state_key: self.anchored.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.anchored.load_state_dict(state[self.state_key], self.env.device)
