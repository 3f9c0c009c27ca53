"""One epoch of training, the seam between the task loop (:mod:`dfcil.engine.trainer`) and what
happens inside an epoch: the data an epoch draws from, the optimiser and schedule of a phase,
what a phase trains, and the epoch itself. Benchmarks that time or probe epochs call these
directly (``benchmarks/method_speed.py``, ``throughput.py``, ``relation_loss.py``)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from dfcil.augment import TrainAugment
from dfcil.config import TrainConfig
from dfcil.distributed import Distributed
from dfcil.engine.rng import RunGenerators
from dfcil.engine.store import ImageStore, index_batches, num_batches
from dfcil.engine.threads import ThreadPolicy
from dfcil.errors import DfcilError
from dfcil.methods import Batch, Method, Phase, RunEnv
from dfcil.models import IncrementalClassifier
from dfcil.scenario import Scenario, Task

#: runs a training step's loss closure (under DDP in a multi-process run): (closure) -> its result
StepRunner = Callable[[Callable[[], Any]], Any]


@dataclass
class SplitTensors:
    """Images and remapped labels of one split, restricted to the scenario's classes."""

    store: ImageStore
    labels: torch.Tensor  # int64 on the CPU (positions in the class order)

    def indices_of(self, start: int, stop: int) -> torch.Tensor:
        """Indices of samples whose label lies in ``[start, stop)``."""
        return torch.nonzero((self.labels >= start) & (self.labels < stop)).flatten()


def first_per_class(positions: np.ndarray, limit: int) -> np.ndarray:
    """Indices (ascending) of the first ``limit`` samples of every label in ``positions``."""
    order = np.argsort(positions, kind="stable")
    ordered = positions[order]
    rank = np.arange(len(ordered)) - np.searchsorted(ordered, ordered, side="left")
    return np.sort(order[rank < limit])


def split_tensors(images: np.ndarray, labels: np.ndarray, scenario: Scenario, device: torch.device,
                  per_class: int | None = None) -> SplitTensors:
    """The images and class-order labels of a split, restricted to ``scenario``'s classes (and to
    the first ``per_class`` images of each, when given), kept where :class:`ImageStore` decides."""
    positions = scenario.remap(labels)
    keep = np.nonzero(positions >= 0)[0]
    if per_class is not None:
        keep = keep[first_per_class(positions[keep], per_class)]
    if len(keep) != len(labels):
        images = images[keep]
        positions = positions[keep]
    return SplitTensors(ImageStore(images, device), torch.from_numpy(positions.astype(np.int64)))


@dataclass
class EpochStats:
    """What one epoch of training measured."""

    loss: float
    terms: dict[str, float]
    weights: dict[str, float]
    train_accuracy: float | None
    images: int
    seconds: float


@dataclass
class EpochContext:
    """What every epoch of a run draws on besides the model and the method."""

    data: SplitTensors  # the training split
    augment: TrainAugment
    generators: RunGenerators
    env: RunEnv
    train: TrainConfig
    dist: Distributed
    threads: ThreadPolicy
    progress: bool  # a progress bar (on a terminal, on the main process)
    num_tasks: int  # for the progress bar's label


def build_optimizer(model: IncrementalClassifier, aux: nn.Module | None, phase: Phase,
                    train: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimiser of ``phase`` (SGD with ``train``'s momentum, weight decay and Nesterov, or Adam
    with ``train``'s weight decay as L2) and its learning-rate schedule, over what the phase trains:
    the heads, or the model and the method's ``aux`` modules."""
    if phase.trainable == "heads":
        params = list(model.head_parameters())
    else:
        params = list(model.parameters())
        if aux is not None:
            params += list(aux.parameters())
    optimizer: torch.optim.Optimizer
    if phase.optimizer == "adam":
        optimizer = torch.optim.Adam(params, lr=phase.lr, weight_decay=train.weight_decay)
    else:
        optimizer = torch.optim.SGD(
            params, lr=phase.lr, momentum=train.momentum, weight_decay=train.weight_decay, nesterov=train.nesterov
        )
    scheduler: torch.optim.lr_scheduler.LRScheduler
    if phase.schedule == "multistep":
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(phase.milestones), phase.gamma)
    elif phase.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=phase.epochs)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return optimizer, scheduler

def set_trainable(model: IncrementalClassifier, aux: nn.Module | None, phase: Phase) -> None:
    """Train mode and gradients for what ``phase`` trains: with ``trainable="heads"`` the backbone
    is frozen and in eval mode (its BatchNorm statistics stay)."""
    heads_only = phase.trainable == "heads"
    for parameter in model.backbone_parameters():
        parameter.requires_grad_(not heads_only)
    model.train()
    if heads_only:
        model.backbone.eval()
    if aux is not None:
        aux.train()


def train_epoch(model: IncrementalClassifier, method: Method, context: EpochContext, task: Task, phase: Phase,
                epoch: int, optimizer: torch.optim.Optimizer, run_step: StepRunner) -> EpochStats:
    """One epoch of ``phase`` of ``task``: the task's real images (those ``method.train_label_range``
    names) in the order ``context.generators.sample`` draws, augmented on the device, the method's
    loss terms summed by weight, back-propagated through ``run_step`` (DDP's runner in a
    multi-process run) and stepped by ``optimizer``; returns what the epoch measured (every
    rank's figures summed in a multi-process run). Raises :class:`DfcilError` when the loss is
    not finite."""
    set_trainable(model, method.aux_modules(), phase)
    indices = context.data.indices_of(*method.train_label_range(task))
    batch_size = context.train.batch_size
    total_batches = num_batches(len(indices), batch_size)
    sums: dict[str, torch.Tensor] = {}
    weights: dict[str, float] = {}
    loss_sum = torch.zeros((), device=context.env.device)
    correct = torch.zeros((), device=context.env.device, dtype=torch.long)
    scored = 0
    images_seen = 0
    desc = f"task {task.index + 1}/{context.num_tasks} {phase.name} {epoch}/{phase.epochs}"
    # a bar only on a terminal: into a file or pipe it writes a line per update, and the
    # epoch's summary line below says the same once
    bar = tqdm(total=total_batches, desc=desc, leave=False,
               disable=not (context.progress and context.dist.is_main and sys.stderr.isatty()),
               file=sys.stderr, dynamic_ncols=True)
    start = time.perf_counter()
    shown = -math.inf  # when the progress bar last showed the running loss
    labels_on_device = context.data.labels.to(context.env.device)  # batches index it where they are
    for step, index in enumerate(index_batches(indices, batch_size, context.generators.sample, device=context.env.device)):
        if context.dist.enabled:
            if len(index) < context.dist.world_size:
                continue  # a last batch too small to give every rank an image (all ranks skip it)
            index = context.dist.shard(index)
        if context.train.compile:
            # a new training iteration: CUDA-graph replays (compile_mode reduce-overhead) may
            # reuse the memory of the last step's outputs, which nothing holds on to any more
            torch.compiler.cudagraph_mark_step_begin()
        images = context.augment(context.data.store.gather(index), context.generators.device)
        labels = labels_on_device[index]

        def losses() -> tuple[torch.Tensor, Any]:
            with context.env.autocast():
                result = method.training_step(model, Batch(images, labels), task, phase)  # noqa: B023 - called in this iteration
            total = sum(term.weight * term.value.float() for term in result.losses.values())
            assert isinstance(total, torch.Tensor)
            return total, result

        total, result = run_step(losses)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        context.threads.at_safe_point()  # runtime.num_threads auto: a clock read, a decision every few s
        n = len(index)
        images_seen += n
        loss_sum += total.detach() * n
        for name, term in result.losses.items():
            value = term.value.detach().float() * n
            sums[name] = sums[name] + value if name in sums else value
            weights[name] = float(term.weight)
        if result.logits is not None:
            correct += (result.logits.detach().argmax(1) == labels).sum()
            scored += n
        bar.update(1)
        # reading the running loss waits for the device: at most once per second
        if bar.disable is False and (time.perf_counter() - shown >= 1.0 or step + 1 == total_batches):
            shown = time.perf_counter()
            postfix = {"loss": f"{float(loss_sum) / images_seen:.3f}"}
            if scored:
                postfix["acc"] = f"{100.0 * float(correct) / scored:.1f}"
            bar.set_postfix(postfix)
    bar.close()
    if context.dist.enabled:  # every rank logs the figures of the global batches
        names = sorted(sums)
        zero = torch.zeros((), device=context.env.device)
        totals = context.dist.sum_in_place(torch.stack(
            [loss_sum.float(), correct.float(), torch.tensor(float(scored), device=context.env.device),
             torch.tensor(float(images_seen), device=context.env.device), *[sums.get(n, zero).float() for n in names]]))
        loss_sum, correct = totals[0], totals[1]
        scored, images_seen = int(totals[2]), int(totals[3])
        sums = dict(zip(names, totals[4:]))
    loss = float(loss_sum) / max(images_seen, 1)  # reading it waits for the device's queued steps
    seconds = time.perf_counter() - start
    if not math.isfinite(loss):
        raise DfcilError(f"task {task.index + 1} {phase.name} epoch {epoch}: loss is {loss} (diverged)")
    return EpochStats(
        loss=loss,
        terms={k: float(v) / max(images_seen, 1) for k, v in sums.items()},
        weights=weights,
        train_accuracy=100.0 * float(correct) / scored if scored else None,
        images=images_seen,
        seconds=seconds,
    )

