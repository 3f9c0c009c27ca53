"""SKD - self-distilled knowledge delegator ("Self-distilled Knowledge Delegator for
Exemplar-free Class Incremental Learning", Ye & Bors; equation numbers below are that paper's).

Before every incremental task, the delegator (:mod:`dfcil.synthesis.delegator`) is trained by
imitate & explore against the frozen current model T with a re-initialised student S. The
paper's delegator check follows: the accuracy of S with T's classifier against T's own on the
test images of the classes T knows (logged and kept in ``metrics.json`` under
``method_diagnostics.delegator_check``; test data serve only this diagnostic).

Incremental stage: the model continues from T with its plain linear head widened by the new
classes. Each step concatenates the real batch with as many delegator images (pseudo labels
``argmax T``) and passes them through the model in one forward:

* ``L_cls`` = CE over all seen classes (real: true labels; pseudo: T's labels);
* ``L_fc``  = ``1 - cos(nor(F_T(x)), nor(F(x)))`` over the whole mixed batch;
* ``L = gamma_n * L_cls + L_fc``, ``gamma_n = beta / (N * sum_{i<=n} |C_i|)``, beta = 5, where
  n counts the incremental tasks so far, N the incremental tasks of the run, and the sum runs
  over the incremental tasks' classes (base classes excluded).

beta is the paper's constant for its own protocol (CIFAR-100 B50 in 5 tasks of 10: gamma_1 =
5 / (5 * 10) = 0.1), not a scale-free weight: with few, small tasks the same beta gives a much
larger gamma_1 (mini B0, 3 tasks of 5: 5 / 15 = 0.33; mini's half-base split, 2 tasks of 5:
5 / 10 = 0.5). ``beta: 1.5`` (mini B0) and ``beta: 1.0`` (mini half-base) give the paper's
gamma_1 = 0.1 and its 1/n decay (``suites/mini_skd.yaml``).

The delegator continues from task to task (SKD's continual delegator: the one exception to the
rule that no generator outlives its task; ``delegator.continual: false`` trains a new one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from dfcil.losses import cross_entropy_seen
from dfcil.methods.base import Batch, Loss, Method, OldModel, RunEnv, StepResult, seen_cross_entropy_step
from dfcil.models import IncrementalClassifier, frozen_copy
from dfcil.scenario import Task
from dfcil.schema import join, require
from dfcil.synthesis.delegator import DelegatorOptions, KnowledgeDelegator, feature_cosine_discrepancy
from dfcil.synthesis.synthesizer import save_sample_grid


@dataclass(frozen=True)
class SKDOptions:
    """Options of ``skd``."""

    beta: float = 5.0
    delegator: DelegatorOptions = field(default_factory=DelegatorOptions)
    delegator_check: bool = True  # evaluate S (with T's classifier) against T after each delegator training

    def validate(self, path: str) -> None:
        """Check value ranges."""
        require(self.beta > 0, join(path, "beta"), "must be > 0")
        self.delegator.validate(join(path, "delegator"))


def classification_weight(beta: float, num_incremental_tasks: int, incremental_class_counts: list[int]) -> float:
    """``gamma_n = beta / (N * sum_{i=1..n} |C_i|)``: N incremental tasks in the run, and the class
    counts of the incremental tasks learned so far including the current one (base excluded)."""
    if num_incremental_tasks < 1 or not incremental_class_counts or min(incremental_class_counts) < 1:
        raise ValueError("need N >= 1 and at least one incremental task with >= 1 class")
    return beta / (num_incremental_tasks * sum(incremental_class_counts))


class SKD(Method):
    """Imitate & explore delegator, then CE + feature consolidation on real + pseudo images."""

    name = "skd"
    description = "SKD: knowledge delegator trained by imitate & explore with a re-initialised student; CE + feature consolidation"
    Options = SKDOptions
    plain_first_task = True

    def __init__(self, options: SKDOptions, env: RunEnv) -> None:
        super().__init__(options, env)
        self.options: SKDOptions = options
        self.old = OldModel()
        self.delegator = KnowledgeDelegator(options.delegator, env.image_size, env.device, env.autocast,
                                            env.generator, env.channels_last, env.dist)
        self.checks: list[dict[str, Any]] = []
        self.gamma: float | None = None
        # the student of a delegator training a checkpoint interrupted, rebuilt when the state is
        # loaded (before the run's random streams are restored, so building it draws nothing)
        self._student_in_progress: IncrementalClassifier | None = None

    # ------------------------------------------------------------------------------------------
    def prepare_task(self, model: IncrementalClassifier, task: Task) -> None:
        """Snapshot T, train the delegator against it, check it, save a grid of its images."""
        self.old.snapshot(model)
        if task.num_old == 0 or self.old.model is None:
            return
        teacher = self.old.model
        student = self._student_in_progress or self.env.make_model(teacher.head_sizes)  # random initialisation
        self._student_in_progress = None
        log = lambda record: self.env.log({**record, "task": task.index + 1})  # noqa: E731
        self.delegator.train(teacher, student, task.num_old, log, progress=self.env.prepare_progress)
        if self.options.delegator_check and self.env.test_accuracy is not None:
            self.checks = [c for c in self.checks if c["task"] != task.index + 1]
            check = delegator_check(teacher, student, task.num_old, self.env)
            check["task"] = task.index + 1
            self.checks.append(check)
            log({"event": "delegator_check", **check})
        save_sample_grid(lambda: self._pseudo_batch(256), task.num_old, self.env.image_size,
                         self.env.artifacts.sample_grid(task.index + 1),
                         self.env.normalizer.denormalize)

    def _pseudo_batch(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.old.model is not None
        images = self.delegator.generate(count)
        with self.env.autocast():
            labels = self.old(images).logits[:, : self.old.model.num_classes].argmax(dim=1)
        return images, labels

    def on_epoch_start(self, model: IncrementalClassifier, task: Task, phase: Any, epoch: int) -> None:
        """Log gamma_n once per task."""
        if task.num_old == 0 or epoch != 1:
            return
        self.gamma = self.task_gamma(task)
        self.env.log({"event": "skd_gamma", "task": task.index + 1, "gamma": self.gamma})

    def task_gamma(self, task: Task) -> float:
        """gamma_n of ``task`` from the scenario's task sizes."""
        incremental = self.env.task_sizes[1:]
        return classification_weight(self.options.beta, len(incremental), list(incremental[: task.index]))

    def training_step(self, model: IncrementalClassifier, batch: Batch, task: Task, phase: Any) -> StepResult:
        """Plain CE in the first task; gamma_n * CE + feature consolidation afterwards."""
        if task.num_old == 0:
            return seen_cross_entropy_step(model, batch, task)
        real = len(batch.labels)
        images = torch.cat([batch.images, self.delegator.generate(real).to(batch.images.dtype)])
        teacher = self.old(images)  # one forward gives the pseudo labels and the features to keep
        labels = torch.cat([batch.labels, teacher.logits[real:, : task.num_old].argmax(dim=1)])
        out = model(images)
        teacher_features = teacher.features
        gamma = self.gamma if self.gamma is not None else self.task_gamma(task)
        losses = {
            "cls": Loss(cross_entropy_seen(out.logits, labels, task.num_seen), gamma),
            "feature_consolidation": Loss(feature_cosine_discrepancy(teacher_features, out.features), 1.0),
        }
        return StepResult(losses, out.logits[:real])

    def diagnostics(self) -> dict[str, Any]:
        """The delegator check of every task."""
        return {"delegator_check": list(self.checks)} if self.checks else {}

    # ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Old model, delegator (continual across tasks) and the checks so far."""
        return {"old_model": self.old.state_dict(), "delegator": self.delegator.state_dict(),
                "checks": list(self.checks)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.old.load_state_dict(state["old_model"], self.env)
        self.delegator.load_state_dict(state["delegator"])
        self.checks = list(state.get("checks", []))
        self._student_in_progress = None
        training = self.delegator.resume_states
        if training is not None and self.old.model is not None:
            self._student_in_progress = self.env.make_model(self.old.model.head_sizes)
            self._student_in_progress.load_state_dict(training["student"])


def delegator_check(teacher: IncrementalClassifier, student: IncrementalClassifier, num_old: int,
                    env: RunEnv) -> dict[str, float]:
    """The paper's check: test accuracy on T's classes of T, and of S's features with T's classifier."""
    assert env.test_accuracy is not None
    grafted = frozen_copy(student)
    for mine, theirs in zip(grafted.linear_heads(), teacher.linear_heads()):
        mine.weight.data.copy_(theirs.weight.data)
    teacher_accuracy = env.test_accuracy(teacher, num_old)
    student_accuracy = env.test_accuracy(grafted, num_old)
    return {"teacher_accuracy": teacher_accuracy, "student_accuracy": student_accuracy,
            "gap": teacher_accuracy - student_accuracy}
