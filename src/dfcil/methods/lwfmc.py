"""LwF.MC - iCaRL's representation-learning loss without exemplars (Rebuffi et al.,
arXiv:1611.07725, Alg. 3), as ABD runs it as a baseline (arXiv:2106.09701, Appendix A, Tables A,
C and E; its code's ``LWF_MC`` learner).

Every task, on the real images of the new classes, with ``z`` the logits of all seen classes
and ``sigma`` the logistic sigmoid:

``L = mean_batch sum_{c < n_seen} BCE(sigma(z_c), t_c)``, ``BCE(p, t) = -t log p - (1 - t) log(1 - p)``,

with targets ``t_c = sigma(z_old_c)`` (the frozen old model's logit, eval mode) for the old classes
``c < n_old`` and ``t_c = [y == c]`` (one-hot) for the new ones (Alg. 3: classification and
distillation terms in one binary cross-entropy). The first task is the same BCE with one-hot
targets only, not a softmax CE: ``plain_first_task`` is false. As in ABD's code the BCE is summed
over the classes and averaged over the batch (``reduction: mean`` also averages over the classes);
it is computed from the logits (``binary_cross_entropy_with_logits``, float32), which ABD's
``BCELoss(sigmoid(z))`` equals up to its clamping of ``log`` at -100. No other hyper-parameter:
ABD's script runs it with the schedule of every other method (``--mu`` is unused by LwF.MC).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from dfcil.methods.base import Batch, Loss, Method, OldModel, Phase, RunEnv, StepResult
from dfcil.models import IncrementalClassifier
from dfcil.scenario import Task


@dataclass(frozen=True)
class LwFMCOptions:
    """Options of ``lwfmc``."""

    # sum_classes: summed over the classes, mean over the batch (ABD's code); mean: over both
    reduction: Literal["sum_classes", "mean"] = "sum_classes"

    def validate(self, path: str) -> None:
        """Nothing to check beyond the types."""


def lwf_mc_targets(labels: torch.Tensor, num_seen: int, old_logits: torch.Tensor | None) -> torch.Tensor:
    """Targets ``(N, num_seen)`` in float32: one-hot of ``labels``, with the first
    ``old_logits.shape[1]`` columns replaced by ``sigmoid(old_logits)`` (detached)."""
    targets = F.one_hot(labels, num_seen).float()
    if old_logits is not None:
        num_old = old_logits.shape[1]
        if not 0 < num_old < num_seen:
            raise ValueError(f"need 0 < old classes < seen classes (got {num_old}, {num_seen})")
        targets[:, :num_old] = torch.sigmoid(old_logits.detach().float())
    return targets


def lwf_mc_loss(logits: torch.Tensor, labels: torch.Tensor, num_seen: int, old_logits: torch.Tensor | None,
                reduction: Literal["sum_classes", "mean"] = "sum_classes") -> torch.Tensor:
    """The sigmoid BCE of the first ``num_seen`` columns of ``logits`` against
    :func:`lwf_mc_targets` (``old_logits`` None: one-hot only), summed over the classes and
    averaged over the batch (``sum_classes``) or averaged over both (``mean``); float32."""
    seen = logits[:, :num_seen].float()
    bce = F.binary_cross_entropy_with_logits(seen, lwf_mc_targets(labels, num_seen, old_logits), reduction="none")
    return bce.sum(dim=1).mean() if reduction == "sum_classes" else bce.mean()


class LwFMC(Method):
    """Sigmoid BCE over all seen classes: one-hot targets for the new, the old model's sigmoids for the old."""

    name = "lwfmc"
    description = "LwF.MC (iCaRL without exemplars): sigmoid BCE over seen classes, old-class targets from the previous model"
    Options = LwFMCOptions
    plain_first_task = False  # its first task trains with the sigmoid BCE, not the softmax CE

    def __init__(self, options: LwFMCOptions, env: RunEnv) -> None:
        super().__init__(options, env)
        self.options: LwFMCOptions = options
        self.old = OldModel()

    def prepare_task(self, model: IncrementalClassifier, task: Task) -> None:
        """Freeze the model of the previous task as the teacher."""
        self.old.snapshot(model)

    def training_step(self, model: IncrementalClassifier, batch: Batch, task: Task, phase: Phase) -> StepResult:
        """The BCE with the old model's sigmoids as the old classes' targets (one-hot only in task 1)."""
        logits = model(batch.images).logits
        old_logits = self.old(batch.images).logits[:, : task.num_old] if task.num_old else None
        loss = lwf_mc_loss(logits, batch.labels, task.num_seen, old_logits, self.options.reduction)
        return StepResult({"bce": Loss(loss)}, logits)

    def state_dict(self) -> dict[str, Any]:
        """The teacher."""
        return {"old_model": self.old.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild the teacher."""
        self.old.load_state_dict(state["old_model"], self.env)
