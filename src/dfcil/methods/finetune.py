"""Finetune ("Base" in ABD, lower bound): cross-entropy over all seen classes on real data."""

from __future__ import annotations

from dfcil.methods.base import Batch, Method, Phase, StepResult, seen_cross_entropy_step
from dfcil.models import IncrementalClassifier
from dfcil.scenario import Task


class Finetune(Method):
    """Trains on each new task's data with plain CE; nothing protects old classes."""

    name = "finetune"
    description = "lower bound: cross-entropy over all seen classes on the new task's data only"
    plain_first_task = True

    def training_step(self, model: IncrementalClassifier, batch: Batch, task: Task, phase: Phase) -> StepResult:
        """CE over the classes seen so far."""
        return seen_cross_entropy_step(model, batch, task)
