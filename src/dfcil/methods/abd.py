"""ABD - Always Be Dreaming (Smith et al., ICCV 2021), as in the authors' code.

One forward over B real (new task) and B synthetic images. Task-balance weights: samples of
old classes weigh r = n_old / n_seen, of new classes 1 - r; each loss is mean_i(w_i * l_i).
1. local CE on real images over the new task's heads only;
2. importance-weighted feature distillation on real + synthetic: mu * mean_i ||W (h_i - h_old_i)||^2 / n_old
   with W the old classifier rows (frozen copy), mu = 0.1 (code);
3. head fine-tuning: CE over all seen classes on all 2B features, *detached* from the main
   forward (the code runs a second train-mode forward under no_grad for the same values; we
   reuse the first, which avoids updating BN running statistics twice per step), weight 1
   (code; the paper's Table F says 0.1).
First task: plain CE. Synthesizer: :mod:`dfcil.synthesis.synthesizer` (ABD's, arXiv:2106.09701).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from dfcil.methods.base import Batch, Loss, Phase, StepResult
from dfcil.methods.replay import SyntheticReplayMethod
from dfcil.models import IncrementalClassifier
from dfcil.scenario import Task
from dfcil.schema import join, require
from dfcil.synthesis import SynthesisOptions


@dataclass(frozen=True)
class ABDOptions:
    """Options of ``abd``."""

    mu: float = 0.1  # importance-weighted feature distillation weight (paper: lambda_kd)
    ft_weight: float = 1.0  # head fine-tuning CE weight (code 1; paper Table F 0.1)
    task_balance: bool = True
    synthesis: SynthesisOptions = field(default_factory=SynthesisOptions)

    def validate(self, path: str) -> None:
        """Check value ranges."""
        require(self.mu >= 0, join(path, "mu"), "must be >= 0")
        require(self.ft_weight >= 0, join(path, "ft_weight"), "must be >= 0")


def task_balance_weights(labels: torch.Tensor, num_old: int, num_seen: int) -> torch.Tensor:
    """r = n_old / n_seen for old-class samples, 1 - r for new-class samples."""
    ratio = num_old / num_seen
    return torch.where(labels < num_old, ratio, 1.0 - ratio).float()


def importance_weighted_feature_distillation(
    features: torch.Tensor, old_features: torch.Tensor, old_weight: torch.Tensor
) -> torch.Tensor:
    """mean_i ||W (h_i - h_old_i)||^2 / n_old, W = old classifier rows (n_old x d)."""
    projected = (features.float() - old_features.float()) @ old_weight.float().t()
    return projected.pow(2).sum(dim=1).mean() / old_weight.shape[0]


class ABD(SyntheticReplayMethod):
    """Local CE on real data, importance-weighted feature KD, head fine-tuning on detached features."""

    name = "abd"
    description = "Always Be Dreaming: local CE + importance-weighted feature KD + head fine-tuning on synthetic replay"
    Options = ABDOptions
    plain_first_task = True

    def training_step(self, model: IncrementalClassifier, batch: Batch, task: Task, phase: Phase) -> StepResult:
        """The three ABD losses (plain CE in the first task)."""
        if task.num_old == 0:
            return self.plain_step(model, batch, task)
        assert self.old.model is not None
        real = len(batch.labels)
        images = self.real_and_synthetic(batch)
        old = self.old(images)
        labels = torch.cat([batch.labels, old.logits[real:, : task.num_old].argmax(dim=1)])
        out = model(images)
        if self.options.task_balance:
            weights = task_balance_weights(labels, task.num_old, task.num_seen)
        else:
            weights = torch.ones(len(labels), device=labels.device)
        local = F.cross_entropy(
            out.logits[:real, task.start : task.stop].float(), batch.labels - task.start, reduction="none"
        )
        old_weight = torch.cat([head.weight for head in self.old.model.linear_heads()])
        feature_kd = importance_weighted_feature_distillation(out.features, old.features, old_weight)
        head_logits = model.classify(out.features.detach())[:, : task.num_seen]
        head_ce = F.cross_entropy(head_logits.float(), labels, reduction="none")
        losses = {
            "local_ce": Loss((local * weights[:real]).mean()),
            "feature_kd": Loss(feature_kd, self.options.mu),
            "head_ce": Loss((head_ce * weights).mean(), self.options.ft_weight),
        }
        return StepResult(losses, out.logits[:real])
