"""LwF - Learning without Forgetting (Li & Hoiem, TPAMI 2017), as run in ABD's code.

Loss = CE over all seen classes + ``kd_weight`` * KD(T) between the old model's and the
current model's old-class logits on the new task's real images, with
``KD = -sum p_old^T log p_new^T`` (batch mean, no T^2 factor; ``t_squared`` adds it).
Defaults (T = 2, weight 1) follow ABD's code (arXiv:2106.09701).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dfcil.losses import cross_entropy_seen, soft_cross_entropy
from dfcil.methods.base import Batch, Loss, Method, OldModel, Phase, RunEnv, StepResult
from dfcil.models import IncrementalClassifier
from dfcil.scenario import Task
from dfcil.schema import join, require


@dataclass(frozen=True)
class LwFOptions:
    """Options of ``lwf``."""

    temperature: float = 2.0
    kd_weight: float = 1.0
    t_squared: bool = False  # multiply the KD term by T^2 (Hinton et al.); ABD's code does not

    def validate(self, path: str) -> None:
        """Check value ranges."""
        require(self.temperature > 0, join(path, "temperature"), "must be > 0")
        require(self.kd_weight >= 0, join(path, "kd_weight"), "must be >= 0")


class LwF(Method):
    """CE on the new data plus distillation of the old model's old-class outputs."""

    name = "lwf"
    description = "Learning without Forgetting: CE + KD (T = 2) from the previous model on new data"
    Options = LwFOptions
    plain_first_task = True

    def __init__(self, options: LwFOptions, env: RunEnv) -> None:
        super().__init__(options, env)
        self.old = OldModel()

    def prepare_task(self, model: IncrementalClassifier, task: Task) -> None:
        """Freeze the model of the previous task as the teacher."""
        self.old.snapshot(model)

    def training_step(self, model: IncrementalClassifier, batch: Batch, task: Task, phase: Phase) -> StepResult:
        """CE over seen classes, plus KD on old classes after the first task."""
        logits = model(batch.images).logits
        losses = {"ce": Loss(cross_entropy_seen(logits, batch.labels, task.num_seen))}
        if task.num_old:
            teacher = self.old(batch.images).logits
            kd = soft_cross_entropy(logits[:, : task.num_old], teacher, self.options.temperature)
            weight = self.options.kd_weight * (self.options.temperature**2 if self.options.t_squared else 1.0)
            losses["kd"] = Loss(kd, weight)
        return StepResult(losses, logits)

    def state_dict(self) -> dict[str, Any]:
        """The teacher."""
        return {"old_model": self.old.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild the teacher."""
        self.old.load_state_dict(state["old_model"], self.env)
