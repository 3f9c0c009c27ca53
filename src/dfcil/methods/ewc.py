"""EWC - Elastic Weight Consolidation (Kirkpatrick et al., arXiv:1612.00796), in the online
(running-Fisher) form of FACIL's class-incremental EWC (Masana et al., arXiv:2010.15277).

After each task, the diagonal Fisher information of the model on the task's real training images
(:mod:`dfcil.methods.importance`), ``F_i = E_x (d log p(y_x | x) / d theta_i)^2`` with
``p = softmax`` of the seen classes' logits, is estimated as FACIL's code does it
(``estimate: batch``): one gradient of the batch-mean log-likelihood per training batch, the
model in training mode, ``g_batch^2 * B`` summed over the batches and divided by the number of
images. ``estimate: per_image`` takes the definition literally (one gradient per image, eval
mode); on a trained ResNet-32 its values are 30 to 1000 times larger (measured on the smoke
protocol's first task), so lambda must shrink with it. ``y_x`` is the model's own prediction
``argmax p`` (``fisher_labels: predicted``: Kirkpatrick et al. define the Fisher under the
model's distribution and FACIL's default ``max_pred`` takes its mode; ``true``: the image's label,
the empirical Fisher, as PyCIL).

Each task's estimate is clamped at ``fisher_max`` = 1e-4 (PyCIL's EWC, arXiv:2112.12533:
``fishermax``), then merged into one running Fisher ``F <- alpha F + (1 - alpha) F_t`` (FACIL's
``alpha`` 0.5; F starts from 0, so after the first task ``F = (1 - alpha) F_1``; ``alpha: null``
adds them), and the parameters of the end of the task become the anchors ``theta*`` (one anchor,
the latest, not one per task as in Kirkpatrick et al.'s Eq. 3 for several tasks). The clamp is
what keeps SGD stable: an importance ``F_i`` gives the penalty a curvature ``lambda F_i``, and
SGD with momentum 0.9 diverges once ``lr * lambda * F_i > 3.8``; without it FACIL's lambda 5000
diverges on this project's schedules (smoke protocol, lr 0.05: the loss is infinite in the second
epoch of task 2, where the largest F_i is about 0.02). ``fisher_max: null`` is FACIL unclamped. The
accumulated Fisher is also capped at half the stable value (``importance_max: stable``, as MAS; see
:mod:`dfcil.methods.anchored`: ``F < 0.5 * 3.8 / (lr lambda)``, 0.0038 at lr 0.1), which the clamp
already keeps it far below; without the clamp, the cap is what keeps SGD stable.

Training of task t > 1: ``L = CE + lambda/2 sum_i F_i (theta_i - theta*_i)^2`` (Kirkpatrick et al.
Eq. 3; the ``ewc`` term is the sum with the 1/2, weighted by lambda) over the parameters that
existed at the end of the previous task: the backbone and the old heads, not the new head. CE is
over all seen classes as for ``finetune`` and ``lwf`` (``ce: local``: over the new classes only, as
FACIL's and PyCIL's EWC without exemplars; FACIL also freezes the old heads, here they stay
trainable, held by the penalty). lambda = 5000: FACIL's value. No paper that reports EWC as a
data-free class-incremental baseline and that this project follows (SKD shows it in its Fig. 5
only, without settings) gives its hyper-parameters, so FACIL's, the usual class-incremental
implementation, are the defaults, with PyCIL's clamp.

The first task is plain CE, but the Fisher estimated at its end is read in the second task: a
run cannot start from another method's first task (``plain_first_task`` is false).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from dfcil.methods.anchored import AnchoredPenaltyMethod, ImportanceMax, validate_penalty_options
from dfcil.methods.base import RunEnv
from dfcil.methods.importance import estimate_importance, fisher_score
from dfcil.models import IncrementalClassifier
from dfcil.scenario import Task
from dfcil.schema import join, require


@dataclass(frozen=True)
class EWCOptions:
    """Options of ``ewc`` (defaults: FACIL's EWC, arXiv:2010.15277)."""

    lamb: float = 5000.0  # lambda of Kirkpatrick et al.'s Eq. 3
    # each task's Fisher clamped at this value (PyCIL's fishermax); null: not clamped (FACIL)
    fisher_max: float | None = 1e-4
    alpha: float | None = 0.5  # running Fisher F <- alpha F + (1 - alpha) F_t; null: F <- F + F_t
    fisher_labels: Literal["predicted", "true"] = "predicted"  # y of log p(y|x): argmax p, or the label
    ce: Literal["seen", "local"] = "seen"  # CE over all seen classes, or over the new ones only
    # batch: FACIL's estimate (train mode, one gradient per batch), for which lambda is set;
    # per_image: the paper's definition (eval mode, one gradient per image), a far larger estimate
    estimate: Literal["batch", "per_image"] = "batch"
    batch_size: int | None = None  # images per batch of the Fisher pass (None: train.batch_size)
    # cap of the accumulated Fisher: stable = half the largest value SGD steps stably (none with
    # Adam), a number = that value, null = no cap
    importance_max: ImportanceMax = "stable"

    def validate(self, path: str) -> None:
        """Check value ranges."""
        validate_penalty_options(self, path)
        require(self.fisher_max is None or self.fisher_max > 0, join(path, "fisher_max"), "must be > 0 or null")


class EWC(AnchoredPenaltyMethod):
    """CE plus the quadratic penalty of the running diagonal Fisher around the last task's weights."""

    name = "ewc"
    description = "Elastic Weight Consolidation: CE + lambda/2 sum F (theta - theta*)^2, running diagonal Fisher (FACIL, lambda 5000)"
    Options = EWCOptions
    penalty = "ewc"
    scale = 0.5  # lambda/2
    state_key = "fisher"

    def __init__(self, options: EWCOptions, env: RunEnv) -> None:
        super().__init__(options, env)
        self.options: EWCOptions = options

    def estimate(self, model: IncrementalClassifier, task: Task) -> tuple[dict[str, torch.Tensor], int]:
        """The task's diagonal Fisher on its real images."""
        batches = self.env.task_batches(task, batch_size=self.options.batch_size)
        return estimate_importance(self.options.estimate, model, batches, fisher_score(self.options.fisher_labels),
                                   "square", task.num_seen, self.env.dist)

    def estimate_clamp(self) -> float | None:
        """PyCIL's ``fishermax``: each task's Fisher is clamped at ``fisher_max``."""
        return self.options.fisher_max
