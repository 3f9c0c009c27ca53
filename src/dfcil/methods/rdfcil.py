"""R-DFCIL - relation-guided representation learning for data-free CIL (Gao et al., ECCV 2022).

Every task after the first has two phases (arXiv:2207.09213, Sec. 3; the authors' code where it differs):

Stage A, relation-guided representation learning (the ``main`` phase of the config). The
current model runs on the real batch and on an equally large synthetic batch in two separate
train-mode forwards.

* local CE on the new task's heads, real images only;
* hard KD on synthetic images only: mean over ``B x n_old`` entries of
  ``|old_logits - current_old_logits|`` (L1); the old heads stay trainable;
* angle-wise relational KD on the real images: ``s = phi(f(x))``, ``t = psi(f_old(x))`` with
  ``phi``, ``psi`` learnable ``Linear(d, 2d)`` (new each task, in the optimiser);
* adaptive weights ``alpha = log2(n_new / 2 + 1)``, ``beta = sqrt(n_old / n_new)``:
  ``lambda_ce (1 + 1/alpha) / beta``, ``lambda_hkd alpha beta``, ``lambda_rkd alpha beta``.

Stage B, classification-head refinement (the ``refine`` phase): backbone frozen and in eval
mode, only the heads train at a constant lr (0.005), relational KD off, local CE replaced by a
class-weighted CE over the real + synthetic logits of all seen classes (weight ``lambda_ce``),
hard KD kept on (authors' code). Class weights ``w_c = total / max(count_c, 1)`` normalised by
their minimum, from the labels seen so far in the task (real labels and synthetic pseudo
labels), refreshed at the start of every refinement epoch.

Where the authors' code and the paper differ we follow the code: the weighted CE is PyTorch's
weighted mean (``sum_i w_yi l_i / sum_i w_yi``; the paper's Eq. 10 normalises by
``|X| sum_c w_c``); hard KD stays on during refinement. One deliberate difference: the refinement
phase gets a fresh SGD optimiser (the code continues the stage-A optimiser, momentum buffers
included). The first task is plain CE without refinement.

Ablations (the paper's Table 6): ``relational_kd: false``, ``hard_kd: false`` (the term is
still computed and logged with weight 0, so the synthetic forward still shapes the BatchNorm
statistics exactly as in the full method), ``head_refinement: false``; ``rkd_projection:
false`` distils relations of the raw features instead of the learnable projections.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dfcil.losses import angle_relation_distillation, local_cross_entropy
from dfcil.methods.base import Batch, Loss, Phase, RunEnv, StepResult
from dfcil.methods.replay import SyntheticReplayMethod
from dfcil.models import IncrementalClassifier
from dfcil.scenario import Task
from dfcil.schema import join, require
from dfcil.synthesis import SynthesisOptions

REFINE_PHASE = "refine"


@dataclass(frozen=True)
class RDFCILOptions:
    """Options of ``rdfcil`` (defaults: the paper and the authors' code)."""

    lambda_ce: float = 0.5  # base weight of the local CE (stage A) and the balanced CE (stage B)
    lambda_hkd: float = 0.15
    lambda_rkd: float = 0.5
    adaptive_weights: bool = True  # scale the base weights by alpha and beta (Eq. 7-8)
    hard_kd: bool = True
    relational_kd: bool = True
    rkd_projection: bool = True  # learnable Linear(d, 2d) projections; false: raw features
    head_refinement: bool = True
    refine_epochs: int = 40  # 40 on CIFAR-100 / Tiny-ImageNet, 30 on ImageNet-100
    refine_lr: float = 0.005
    synthesis: SynthesisOptions = field(default_factory=SynthesisOptions)

    def validate(self, path: str) -> None:
        """Check value ranges."""
        for name in ("lambda_ce", "lambda_hkd", "lambda_rkd"):
            require(getattr(self, name) >= 0, join(path, name), "must be >= 0")
        require(self.refine_epochs >= 1, join(path, "refine_epochs"), "must be >= 1 (use head_refinement: false to skip)")
        require(self.refine_lr > 0, join(path, "refine_lr"), "must be > 0")


@dataclass(frozen=True)
class LossWeights:
    """Weights of the three stage-A terms."""

    ce: float
    hkd: float
    rkd: float


def adaptive_loss_weights(num_old: int, num_new: int, lambda_ce: float, lambda_hkd: float,
                          lambda_rkd: float) -> LossWeights:
    """R-DFCIL Eq. 7-8: ``alpha = log2(n_new/2 + 1)``, ``beta = sqrt(n_old/n_new)``.

    Returns ``lambda_ce (1 + 1/alpha) / beta``, ``lambda_hkd alpha beta``, ``lambda_rkd alpha beta``.
    """
    if num_old < 1 or num_new < 1:
        raise ValueError(f"adaptive weights need old and new classes (got {num_old} old, {num_new} new)")
    alpha = math.log2(num_new / 2 + 1)
    beta = math.sqrt(num_old / num_new)
    return LossWeights(ce=lambda_ce * (1 + 1 / alpha) / beta, hkd=lambda_hkd * alpha * beta, rkd=lambda_rkd * alpha * beta)


def class_balance_weights(counts: torch.Tensor) -> torch.Tensor:
    """``w_c = sum(counts) / max(count_c, 1)``, divided by ``min_c w_c`` (the most frequent class gets 1)."""
    counts = counts.float()
    weights = counts.sum() / counts.clamp(min=1)
    return weights / weights.min()


def hard_kd(current_old_logits: torch.Tensor, old_logits: torch.Tensor) -> torch.Tensor:
    """R-DFCIL Eq. 2: mean absolute difference over ``B x n_old`` logits (teacher detached)."""
    if current_old_logits.shape != old_logits.shape:
        raise ValueError(f"logit shapes differ: {tuple(current_old_logits.shape)} vs {tuple(old_logits.shape)}")
    return (current_old_logits.float() - old_logits.detach().float()).abs().mean()


class RelationProjections(nn.Module):
    """The two learnable ``Linear(d, 2d)`` maps of the relational KD (current and old features)."""

    def __init__(self, feature_dim: int, device: torch.device) -> None:
        super().__init__()
        self.current = nn.Linear(feature_dim, 2 * feature_dim, device=device)
        self.old = nn.Linear(feature_dim, 2 * feature_dim, device=device)


class RDFCIL(SyntheticReplayMethod):
    """Hard KD on synthetic data, local CE and relational KD on real data; then head refinement."""

    name = "rdfcil"
    description = ("R-DFCIL: local CE + hard KD on synthetic + angle-wise relational KD, "
                   "then class-balanced head refinement")
    Options = RDFCILOptions
    plain_first_task = True

    def __init__(self, options: RDFCILOptions, env: RunEnv) -> None:
        super().__init__(options, env)
        self.options: RDFCILOptions = options
        self.projections: RelationProjections | None = None
        self.class_counts: torch.Tensor | None = None  # labels seen in this task, real + pseudo
        self.class_weights: torch.Tensor | None = None

    # --- task structure ---------------------------------------------------------------------
    def phases(self, task: Task) -> list[Phase]:
        """Representation learning, then (after the first task) head refinement."""
        main = Phase.main(self.env.train)
        if task.num_old == 0 or not self.options.head_refinement:
            return [main]
        refine = Phase(REFINE_PHASE, epochs=self.options.refine_epochs, lr=self.options.refine_lr,
                       schedule="constant", trainable="heads")
        return [main, refine]

    def loss_weights(self, task: Task) -> LossWeights:
        """Stage-A weights of ``task`` (adaptive or the base values); disabled terms weigh 0."""
        o = self.options
        if o.adaptive_weights:
            weights = adaptive_loss_weights(task.num_old, task.num_new, o.lambda_ce, o.lambda_hkd, o.lambda_rkd)
        else:
            weights = LossWeights(o.lambda_ce, o.lambda_hkd, o.lambda_rkd)
        return LossWeights(ce=weights.ce, hkd=weights.hkd if o.hard_kd else 0.0,
                           rkd=weights.rkd if o.relational_kd else 0.0)

    # --- hooks --------------------------------------------------------------------------------
    def prepare_task(self, model: IncrementalClassifier, task: Task) -> None:
        """Old model + synthesizer (base class), fresh projections and label counts."""
        super().prepare_task(model, task)
        self.projections = None
        self.class_counts = None
        self.class_weights = None
        if task.num_old == 0:
            return
        if self.options.relational_kd and self.options.rkd_projection:
            self.projections = RelationProjections(model.feature_dim, self.env.device)
        self.class_counts = torch.zeros(task.num_seen, dtype=torch.long, device=self.env.device)

    def on_epoch_start(self, model: IncrementalClassifier, task: Task, phase: Phase, epoch: int) -> None:
        """Refresh the class-balance weights from the label counts before each refinement epoch."""
        if phase.name == REFINE_PHASE and self.class_counts is not None:
            # every rank counted its own shards: the weights come from the global counts
            self.class_weights = class_balance_weights(self.env.dist.sum_in_place(self.class_counts.clone()))

    def aux_modules(self) -> nn.Module | None:
        """The relational-KD projections (stage A only)."""
        return self.projections

    def finish_task(self, model: IncrementalClassifier, task: Task) -> None:
        """Drop the generator (base class) and this task's projections."""
        super().finish_task(model, task)
        self.projections = None

    # --- training -------------------------------------------------------------------------------
    def training_step(self, model: IncrementalClassifier, batch: Batch, task: Task, phase: Phase) -> StepResult:
        """Stage-A or stage-B losses (plain CE in the first task)."""
        if task.num_old == 0:
            return self.plain_step(model, batch, task)
        assert self.old.model is not None and self.class_counts is not None
        real = len(batch.labels)
        synthetic = self.synthesizer.sample(self.old.model, real, task.num_old)
        synthetic_images = synthetic.images.to(batch.images.dtype)
        labels = torch.cat([batch.labels, synthetic.labels])
        self.class_counts.index_add_(0, labels, torch.ones_like(labels))  # no GPU sync, unlike bincount
        weights = self.loss_weights(task)
        if phase.name == REFINE_PHASE:
            return self._refinement_step(model, batch, synthetic_images, synthetic.labels, synthetic.old_logits,
                                         task, weights)

        out = model(batch.images)
        out_synthetic = model(synthetic_images)  # separate forward: batch statistics of its own
        losses = {
            "local_ce": Loss(local_cross_entropy(out.logits, batch.labels, task.start, task.stop), weights.ce),
            "hkd": Loss(hard_kd(out_synthetic.logits[:, : task.num_old], synthetic.old_logits), weights.hkd),
        }
        if self.options.relational_kd:
            old_features = self.old(batch.images).features
            student, teacher = out.features, old_features
            if self.projections is not None:
                student, teacher = self.projections.current(student), self.projections.old(teacher)
            losses["rkd"] = Loss(angle_relation_distillation(student, teacher), weights.rkd)
        return StepResult(losses, out.logits)

    def _refinement_step(self, model: IncrementalClassifier, batch: Batch, synthetic_images: torch.Tensor,
                         pseudo_labels: torch.Tensor, old_logits: torch.Tensor, task: Task,
                         weights: LossWeights) -> StepResult:
        """Class-balanced CE over all seen classes on real + synthetic, plus hard KD (heads only)."""
        assert self.class_weights is not None, "on_epoch_start sets the class weights"
        real = len(batch.labels)
        # The backbone is in eval mode here, so one forward over both batches equals two.
        logits = model(torch.cat([batch.images, synthetic_images])).logits[:, : task.num_seen]
        labels = torch.cat([batch.labels, pseudo_labels])
        balanced = F.cross_entropy(logits.float(), labels, weight=self.class_weights)
        losses = {
            "balanced_ce": Loss(balanced, self.options.lambda_ce),
            "hkd": Loss(hard_kd(logits[real:, : task.num_old], old_logits), weights.hkd),
        }
        return StepResult(losses, logits[:real])

    # --- resumable state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Old model, synthesizer, projections and this task's label counts."""
        state = super().state_dict()
        state["projections"] = None if self.projections is None else self.projections.state_dict()
        state["class_counts"] = None if self.class_counts is None else self.class_counts.cpu()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild everything :meth:`state_dict` saved."""
        super().load_state_dict(state)
        self.projections = None
        if state["projections"] is not None:
            feature_dim = state["projections"]["current.weight"].shape[1]
            self.projections = RelationProjections(feature_dim, self.env.device)
            self.projections.load_state_dict(state["projections"])
        counts = state["class_counts"]
        self.class_counts = None if counts is None else counts.to(self.env.device)
        self.class_weights = None
