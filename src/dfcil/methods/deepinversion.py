"""DeepInversion-KD, ABD's "DeepInversion" row (Yin et al., CVPR 2020; Smith et al., ICCV 2021 Eq. 8).

CE over all seen classes on real images + KD (T = 2) on old classes over real images + KD over
all seen classes on synthetic images, with the old model's probabilities zero-padded for the
new classes. Real and synthetic images share one forward. Synthesizer: ABD's
(arXiv:2106.09701).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from dfcil.losses import cross_entropy_seen, soft_cross_entropy
from dfcil.methods.base import Batch, Loss, Phase, StepResult
from dfcil.methods.replay import SyntheticReplayMethod
from dfcil.models import IncrementalClassifier
from dfcil.scenario import Task
from dfcil.schema import join, require
from dfcil.synthesis import SynthesisOptions


@dataclass(frozen=True)
class DeepInversionOptions:
    """Options of ``deepinversion``."""

    temperature: float = 2.0
    kd_weight: float = 1.0
    synthesis: SynthesisOptions = field(default_factory=SynthesisOptions)

    def validate(self, path: str) -> None:
        """Check value ranges."""
        require(self.temperature > 0, join(path, "temperature"), "must be > 0")
        require(self.kd_weight >= 0, join(path, "kd_weight"), "must be >= 0")


def padded_soft_cross_entropy(student_logits: torch.Tensor, teacher_old_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KD over all of the student's classes; the teacher's probabilities are zero for new classes."""
    p_teacher = F.softmax(teacher_old_logits.float() / temperature, dim=1)
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)[:, : p_teacher.shape[1]]
    return -(p_teacher * log_p_student).sum(dim=1).mean()


class DeepInversion(SyntheticReplayMethod):
    """LwF-style distillation on real and model-inversion synthetic images."""

    name = "deepinversion"
    description = "DeepInversion-KD: CE + KD on real data + KD over all seen classes on synthetic images"
    Options = DeepInversionOptions
    plain_first_task = True

    def training_step(self, model: IncrementalClassifier, batch: Batch, task: Task, phase: Phase) -> StepResult:
        """CE + KD(real, old classes) + KD(synthetic, all seen, zero-padded teacher)."""
        if task.num_old == 0:
            return self.plain_step(model, batch, task)
        real = len(batch.labels)
        images = self.real_and_synthetic(batch)
        teacher = self.old(images).logits[:, : task.num_old]
        logits = model(images).logits
        opts = self.options
        losses = {
            "ce": Loss(cross_entropy_seen(logits[:real], batch.labels, task.num_seen)),
            "kd_real": Loss(soft_cross_entropy(logits[:real, : task.num_old], teacher[:real], opts.temperature), opts.kd_weight),
            "kd_synthetic": Loss(padded_soft_cross_entropy(logits[real:, : task.num_seen], teacher[real:], opts.temperature), opts.kd_weight),
        }
        return StepResult(losses, logits[:real])
