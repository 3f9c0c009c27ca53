"""The contract between the training engine and a class-incremental method.

The engine owns the task loop (data, optimiser, schedule, phases, evaluation, logging,
checkpoints). A method only says, per task:

* :meth:`Method.prepare_task` - work before the task, with the model as it was at the end
  of the previous task (snapshot the old model, train a synthesizer, ...);
* :meth:`Method.phases` - which training phases run (a head-only phase with a frozen
  eval-mode backbone is one :class:`Phase` with ``trainable="heads"``);
* :meth:`Method.training_step` - the loss of one real batch as named, weighted
  :class:`Loss` terms (the engine sums, back-propagates and logs each term);
* :meth:`Method.aux_modules` - learnable modules of its own that join the optimiser;
* :meth:`Method.finish_task` - work after the task's training, which may read the task's real
  images once more through :attr:`RunEnv.task_batches` (EWC's Fisher, a class mean);
* :meth:`Method.state_dict` / :meth:`Method.load_state_dict` - everything needed to resume
  mid-task (old model, synthesizer, auxiliary modules).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import torch
from torch import nn

from dfcil.augment import Normalizer
from dfcil.config import TrainConfig
from dfcil.distributed import SINGLE, Distributed
from dfcil.losses import cross_entropy_seen
from dfcil.models import IncrementalClassifier, frozen_copy
from dfcil.rundir import RunDir
from dfcil.scenario import Task


@dataclass(frozen=True)
class NoOptions:
    """Options of a method that has none."""


@dataclass(frozen=True)
class Phase:
    """One training phase of a task (optimiser and schedule are created anew for each)."""

    name: str
    epochs: int
    lr: float
    schedule: Literal["multistep", "cosine", "constant"] = "constant"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    trainable: Literal["all", "heads"] = "all"  # "heads": backbone frozen and in eval mode
    optimizer: Literal["sgd", "adam"] = "sgd"  # adam: Adam with train.weight_decay (no momentum)

    @staticmethod
    def main(train: TrainConfig, name: str = "main") -> Phase:
        """The phase described by the ``train`` section of the config."""
        return Phase(
            name=name,
            epochs=train.epochs,
            lr=train.lr,
            schedule=train.schedule,
            milestones=tuple(train.milestones),
            gamma=train.gamma,
            optimizer=train.optimizer,
        )


@dataclass(frozen=True)
class Loss:
    """A named loss term: the engine minimises the sum of ``weight * value``."""

    value: torch.Tensor
    weight: float = 1.0


@dataclass
class Batch:
    """A batch of real training images of the current task (or union, for ``joint``)."""

    images: torch.Tensor  # augmented, normalised float (N, 3, H, W) on the device
    labels: torch.Tensor  # labels remapped to class-order positions, int64 (N,)


@dataclass
class StepResult:
    """Loss terms of one step, plus all-seen logits of the real images for running accuracy."""

    losses: dict[str, Loss]
    logits: torch.Tensor | None = None


class TaskBatches(Protocol):
    """The real training images of a task (those :meth:`Method.train_label_range` names), for a
    pass a method makes outside the training steps (e.g. in :meth:`Method.finish_task`).

    Yields :class:`Batch` es of ``batch_size`` (default ``train.batch_size``) images, normalised
    like the training batches; with ``augment`` they get the training augmentation (the run's
    device random numbers), with ``shuffle`` the order is drawn by the run's sampler, otherwise
    every image comes once, in a fixed order, and no random number is used (a resumed run makes
    the same pass). In a multi-process run each rank gets its slice of every batch: sum over
    ranks with ``env.dist``."""

    def __call__(self, task: Task, *, augment: bool = False, shuffle: bool = False,
                 batch_size: int | None = None) -> Iterator[Batch]:
        """The batches of ``task``'s real training images."""
        ...


def _no_task_batches(task: Task, *, augment: bool = False, shuffle: bool = False,
                     batch_size: int | None = None) -> Iterator[Batch]:
    raise RuntimeError("this RunEnv has no task data (it was made outside a Trainer)")


@dataclass
class RunEnv:
    """What a method may use from the run: device, precision, RNG and a model factory."""

    device: torch.device
    precision: Literal["bf16", "fp32"]
    channels_last: bool
    normalizer: Normalizer
    generator: torch.Generator  # random numbers on ``device`` (sampling noise, ...)
    train: TrainConfig
    make_model: Callable[[Sequence[int]], IncrementalClassifier]  # head sizes -> model on device
    image_size: int  # side of the (square) training images
    # the run directory's paths: a method writes its own files (sample grids, generators) only to
    # those it names (RunDir.sample_grid, RunDir.generator)
    artifacts: RunDir
    log: Callable[[dict[str, Any]], None]  # append a record to the run's log.jsonl
    # accuracy (%) of a model's all-seen logits on the test images of the first ``n`` classes of
    # the order: for diagnostics only (e.g. SKD's delegator check), never for training
    test_accuracy: Callable[[IncrementalClassifier, int], float] | None = None
    task_sizes: tuple[int, ...] = ()  # classes of every task of the run, in order
    dist: Distributed = SINGLE  # this process's rank in a multi-process (torchrun) run
    # call after every step of a long training inside prepare_task (a generator, a delegator)
    # with the steps done: the engine may checkpoint there, with the method's state_dict holding
    # the training in progress, and a resumed run calls prepare_task again to continue it
    prepare_progress: Callable[[int], None] = lambda step: None
    task_batches: TaskBatches = _no_task_batches  # the task's real images again (see TaskBatches)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast on the run's device when ``precision`` is bf16, else a no-op."""
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


class Method:
    """Base class of every method; subclasses set ``name``, ``description`` and ``Options``."""

    name: ClassVar[str]
    description: ClassVar[str]
    #: Whether the first task is plain CE over its classes (the engine's main phase, the same random
    #: numbers as finetune) and the method's state after it is never read before the second task
    #: rebuilds it: such a run can start from another's first task (:mod:`dfcil.first_task`).
    plain_first_task: ClassVar[bool] = False
    #: Whether it trains on the real images of earlier tasks (not data-free: ``dfcil learn``
    #: refuses it for a step that adds classes to a model, which has no such images).
    needs_old_data: ClassVar[bool] = False
    #: Whether its accuracies are the offline upper bound that ABD's Omega divides by (a suite
    #: runs it first and hands it to the other runs of its point).
    upper_bound: ClassVar[bool] = False
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Any, env: RunEnv) -> None:
        self.options = options
        self.env = env

    # --- task structure -------------------------------------------------------------------
    def train_label_range(self, task: Task) -> tuple[int, int]:
        """Labels whose real training images are available in ``task`` (default: its own)."""
        return task.start, task.stop

    def resets_model(self, task: Task) -> bool:
        """Whether the engine re-initialises the model before ``task`` (offline upper bound)."""
        return False

    def phases(self, task: Task) -> list[Phase]:
        """Training phases of ``task``; default: the main phase from the config."""
        return [Phase.main(self.env.train)]

    # --- hooks ----------------------------------------------------------------------------
    def prepare_task(self, model: IncrementalClassifier, task: Task) -> None:
        """Called once before ``task``, while ``model`` still has only the old heads."""

    def on_epoch_start(self, model: IncrementalClassifier, task: Task, phase: Phase, epoch: int) -> None:
        """Called before each epoch (1-based) of each phase."""

    def finish_task(self, model: IncrementalClassifier, task: Task) -> None:
        """Called after the last phase of ``task``, before evaluation."""

    def training_step(self, model: IncrementalClassifier, batch: Batch, task: Task, phase: Phase) -> StepResult:
        """Loss terms for one batch. Runs under the engine's autocast context."""
        raise NotImplementedError

    def aux_modules(self) -> nn.Module | None:
        """Learnable modules owned by the method, optimised in phases with ``trainable="all"``."""
        return None

    def diagnostics(self) -> dict[str, Any]:
        """Method-specific figures for ``metrics.json`` (under ``method_diagnostics``); keep
        them in :meth:`state_dict` so that a resumed run still reports them."""
        return {}

    # --- resumable state --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Method state needed to resume mid-task."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


def seen_cross_entropy_step(model: IncrementalClassifier, batch: Batch, task: Task) -> StepResult:
    """The plain step: CE over the classes seen so far on real data (finetune, and every
    method's first task)."""
    logits = model(batch.images).logits
    return StepResult({"ce": Loss(cross_entropy_seen(logits, batch.labels, task.num_seen))}, logits)


class OldModel:
    """The frozen model of the end of the previous task (eval mode, no gradients).

    Holds ``None`` during the first task. Serialises to its head sizes and weights so that a
    resumed run rebuilds exactly the same teacher.
    """

    def __init__(self) -> None:
        self.model: IncrementalClassifier | None = None

    def snapshot(self, model: IncrementalClassifier) -> None:
        """Freeze a copy of ``model`` (or clear it when the model has no head yet)."""
        self.model = frozen_copy(model) if model.num_tasks > 0 else None

    def __call__(self, images: torch.Tensor) -> Any:
        """Forward of the frozen model without gradients."""
        assert self.model is not None, "no old model during the first task"
        with torch.no_grad():
            return self.model(images)

    def state_dict(self) -> dict[str, Any] | None:
        """Head sizes and weights, or None."""
        if self.model is None:
            return None
        return {"head_sizes": self.model.head_sizes, "weights": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any] | None, env: RunEnv) -> None:
        """Rebuild the frozen model from :meth:`state_dict`."""
        if state is None:
            self.model = None
            return
        model = env.make_model(state["head_sizes"])
        model.load_state_dict(state["weights"])
        self.model = frozen_copy(model)

