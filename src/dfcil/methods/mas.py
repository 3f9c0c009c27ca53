"""MAS - Memory Aware Synapses (Aljundi et al., arXiv:1711.09601), the global version.

After each task, the importance of every parameter is estimated on the task's real training
images (:mod:`dfcil.methods.importance`): the paper's Eq. 2 with its global function
``F = l2^2`` of the output (Sec. 4.1),

``Omega_i = mean_x | d ||z(x)||_2^2 / d theta_i |``,

where the output ``z(x)`` is the vector of the logits of every class seen so far (the
concatenated heads, before any softmax: the "learned function" of a class-incremental model; no
label is used). ``estimate: batch`` (the default) computes it as the authors' code and FACIL
(arXiv:2010.15277) do: one gradient of the batch mean of ``||z||^2`` per training batch, the model
in training mode, ``|g_batch| * B`` summed and divided by the number of images; ``estimate:
per_image`` takes one gradient per image (eval mode), the equation literally, which is larger
(the absolute value is taken before the mean) and with lambda 1 diverges on this project's
schedules (smoke protocol, SGD lr 0.05, momentum 0.9: a NaN loss in the second epoch of task 2).
The estimates are added over tasks, ``Omega <- Omega + Omega_t`` (MAS's own accumulation;
``alpha: 0.5`` gives FACIL's running average ``alpha Omega + (1 - alpha) Omega_t``), and the
parameters of the end of the task become the anchors ``theta*``.

Training of task t > 1: ``L = CE + lambda sum_i Omega_i (theta_i - theta*_i)^2`` (the paper's
Eq. 3: no 1/2; the ``mas`` term is the sum, weighted by lambda) over the parameters that existed at
the end of the previous task: the backbone and the old heads, not the new head. CE is over all
seen classes as for ``finetune`` and ``lwf`` (``ce: local``: over the new classes only, as FACIL's
MAS without exemplars). lambda = 1, the paper's code's value (and FACIL's default): MFGR
(arXiv:2109.00328), which reports MAS as a baseline (its Tables 5-8), does not give its settings.

**The stability cap.** The penalty is a quadratic of curvature ``2 lambda Omega_i`` per parameter,
stepped explicitly by SGD, which is stable only while ``lr 2 lambda Omega_i < 2 (1 + momentum)``
(:mod:`dfcil.methods.anchored`). The authors' lambda 1 came with SGD lr 0.0008 and momentum 0.9
(their ``MAS.py``), which puts that bound at Omega 2,375; at lr 0.1 with momentum 0.9 (every
protocol of this project) it is 19. On mini the accumulated Omega after task 2 exceeded it on 208 of
464,144 parameters (max 67.4; all but a few are the second BatchNorm bias of a residual block, which
in the ``rdfcil`` network shifts the features linearly up to the logits), and task 3 diverged in its
first epoch (an inf loss; run ``method-mas__seed-0`` of ``suites/mini.yaml`` at commit ba5908d).
``importance_max: stable`` (the default) caps the accumulated Omega at half that bound (9.5 on mini:
313 parameters, 0.07 %, of that run's model); a capped parameter is still held with at least 14 %
(9.5 / 67.4) of its estimated stiffness, and every other parameter is unchanged. With the cap seed 0
trains every task (A_N 16.55), and halving it (4.75) gives 16.50: the result does not hinge on the
margin (``benchmarks/results/mini/FINDINGS.md``, MAS). A number caps there; null keeps the estimate
as it is (for a small lr; with Adam, whose step is normalised, ``stable`` applies no cap).

The first task is plain CE, but the importance estimated at its end is read in the second task:
a run cannot start from another method's first task (``plain_first_task`` is false).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from dfcil.methods.anchored import AnchoredPenaltyMethod, ImportanceMax, validate_penalty_options
from dfcil.methods.base import RunEnv
from dfcil.methods.importance import estimate_importance, mas_score
from dfcil.models import IncrementalClassifier
from dfcil.scenario import Task


@dataclass(frozen=True)
class MASOptions:
    """Options of ``mas`` (defaults: the MAS paper and its code)."""

    lamb: float = 1.0  # lambda of the paper's Eq. 3
    alpha: float | None = None  # null: Omega <- Omega + Omega_t; a number: alpha Omega + (1 - alpha) Omega_t
    ce: Literal["seen", "local"] = "seen"  # CE over all seen classes, or over the new ones only
    # batch: FACIL's estimate (train mode, one gradient per batch), for which lambda is set;
    # per_image: the paper's definition (eval mode, one gradient per image), a far larger estimate
    estimate: Literal["batch", "per_image"] = "batch"
    batch_size: int | None = None  # images per batch of the importance pass (None: train.batch_size)
    # cap of the accumulated Omega: stable = half the largest value SGD steps stably (see the module
    # docstring; none with Adam), a number = that value, null = no cap
    importance_max: ImportanceMax = "stable"

    def validate(self, path: str) -> None:
        """Check value ranges."""
        validate_penalty_options(self, path)


class MAS(AnchoredPenaltyMethod):
    """CE plus the quadratic penalty of the accumulated output sensitivity around the last task's weights."""

    name = "mas"
    description = "Memory Aware Synapses: CE + lambda sum Omega (theta - theta*)^2, Omega = mean |d||logits||^2/dtheta| (lambda 1)"
    Options = MASOptions
    penalty = "mas"
    scale = 1.0  # the paper's Eq. 3 has no 1/2
    state_key = "importance"

    def __init__(self, options: MASOptions, env: RunEnv) -> None:
        super().__init__(options, env)
        self.options: MASOptions = options

    def estimate(self, model: IncrementalClassifier, task: Task) -> tuple[dict[str, torch.Tensor], int]:
        """The task's output sensitivity on its real images."""
        batches = self.env.task_batches(task, batch_size=self.options.batch_size)
        return estimate_importance(self.options.estimate, model, batches, mas_score, "abs", task.num_seen,
                                   self.env.dist)
