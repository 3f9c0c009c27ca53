"""Joint training, the upper bound ("UB" / oracle) whose accuracies feed ABD's Omega.

At task i the model is trained offline on the real data of tasks 1..i with CE over all seen
classes. By default it is re-initialised before every task, so that A_i^UB is the accuracy of
a model trained from scratch on classes 1..i as in the papers; ``from_scratch: false``
continues from the previous task's weights instead (cheaper, slightly different numbers).
"""

from __future__ import annotations

from dataclasses import dataclass

from dfcil.losses import cross_entropy_seen
from dfcil.methods.base import Batch, Loss, Method, Phase, StepResult
from dfcil.models import IncrementalClassifier
from dfcil.scenario import Task


@dataclass(frozen=True)
class JointOptions:
    """Options of ``joint``."""

    from_scratch: bool = True


class Joint(Method):
    """Upper bound: all real data of every task seen so far (not a class-incremental method)."""

    name = "joint"
    description = "upper bound: CE on the union of all seen tasks' data, retrained at each step"
    Options = JointOptions
    plain_first_task = True
    needs_old_data = True
    upper_bound = True

    def train_label_range(self, task: Task) -> tuple[int, int]:
        """All classes seen so far."""
        return 0, task.stop

    def resets_model(self, task: Task) -> bool:
        """Re-initialise before every task but the first when ``from_scratch``."""
        return self.options.from_scratch and task.index > 0

    def training_step(self, model: IncrementalClassifier, batch: Batch, task: Task, phase: Phase) -> StepResult:
        """CE over all seen classes."""
        logits = model(batch.images).logits
        return StepResult({"ce": Loss(cross_entropy_seen(logits, batch.labels, task.num_seen))}, logits)
