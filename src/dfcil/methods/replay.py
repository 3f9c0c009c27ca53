"""Shared base of the model-inversion methods: old model + a per-task synthesizer.

Before each task after the first: snapshot the old model, train a generator against it (no
data), save a grid of what it dreams. During the task: sample synthetic batches. After the
task: discard the generator (data-free discipline; ``synthesis.keep_generator`` saves it).
"""

from __future__ import annotations

from typing import Any

import torch

from dfcil.atomic import torch_save
from dfcil.methods.base import Batch, Method, OldModel, RunEnv, StepResult, seen_cross_entropy_step
from dfcil.models import IncrementalClassifier
from dfcil.scenario import Task
from dfcil.synthesis import Synthesizer


class SyntheticReplayMethod(Method):
    """A method that distils from the old model on synthetic images (subclasses add the losses).

    Subclass ``Options`` must have a ``synthesis`` field: a generator-training section
    (:class:`dfcil.synthesis.synthesizer.GeneratorTrainingOptions`, e.g. ``SynthesisOptions``),
    whose ``objective()`` gives the generator its loss terms.
    """

    def __init__(self, options: Any, env: RunEnv) -> None:
        super().__init__(options, env)
        self.old = OldModel()
        self.synthesizer = Synthesizer(
            options.synthesis, env.image_size, env.device, env.autocast, env.generator, env.channels_last, env.dist
        )

    def prepare_task(self, model: IncrementalClassifier, task: Task) -> None:
        """Snapshot the old model and train the synthesizer on it (tasks 2..N)."""
        self.old.snapshot(model)
        if task.num_old == 0 or self.old.model is None:
            return
        log = lambda record: self.env.log({**record, "task": task.index + 1})  # noqa: E731
        self.synthesizer.train(self.old.model, task.num_old, log, self.env.train.batch_size,
                               progress=self.env.prepare_progress)
        self.synthesizer.save_grid(
            self.old.model, task.num_old, self.env.artifacts.sample_grid(task.index + 1),
            self.env.normalizer.denormalize,
        )

    def plain_step(self, model: IncrementalClassifier, batch: Batch, task: Task) -> StepResult:
        """The first task's step: CE over the seen classes on real data."""
        return seen_cross_entropy_step(model, batch, task)

    def real_and_synthetic(self, batch: Batch) -> torch.Tensor:
        """The real batch followed by as many fresh synthetic images (one forward for both)."""
        synthetic = self.synthesizer.generate(len(batch.labels)).to(batch.images.dtype)
        return torch.cat([batch.images, synthetic])

    def finish_task(self, model: IncrementalClassifier, task: Task) -> None:
        """Discard this task's generator (or save it when asked to keep it)."""
        if self.options.synthesis.keep_generator and self.synthesizer.generator is not None:
            torch_save(self.env.artifacts.generator(task.index + 1), self.synthesizer.state_dict())
        self.synthesizer.discard()

    def state_dict(self) -> dict[str, Any]:
        """Old model and synthesizer."""
        return {"old_model": self.old.state_dict(), "synthesizer": self.synthesizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild old model and synthesizer."""
        self.old.load_state_dict(state["old_model"], self.env)
        self.synthesizer.load_state_dict(state["synthesizer"])
