"""The method contract (:mod:`dfcil.methods.base`), proven for every registered method.

The equivalent of scikit-learn's ``check_estimator`` for this field: parametrised over
:data:`dfcil.methods.METHODS` (the built-ins and every installed ``dfcil.methods`` entry point),
each method is built from a tiny experiment (a generated 4-class dataset, 2 tasks, generator and
delegator budgets of a couple of steps), the real :class:`~dfcil.engine.trainer.Trainer` trains its
first task, and then, phase by phase of the second task (old model and generator paths live):

1. ``phases`` of the first and the second task are valid, and the config's main phase is there;
2. a ``training_step`` under the engine's bf16 autocast (``RunEnv.autocast``), with a channels_last
   model, gives named loss terms, each a finite scalar with a finite float weight, whose weighted
   total back-propagates to finite gradients;
3. mid-task resume is exact: the method's and the model's state, saved after a step and loaded
   into a fresh method and model built from the same experiment, with every random stream
   restored as a checkpoint restores it (:mod:`dfcil.engine.rng`), give a bit-identical next step
   (loss terms, logits, and the states after it);
4. the restored method's ``state_dict`` (diagnostics included: generator state, delegator checks,
   ...) equals the saved one, tensors by :func:`torch.equal`, and so do its ``diagnostics()``.

A plug-in method gets the same tiny budgets where its options reuse the built-in option names
(:data:`BUDGETS`, searched through nested option dataclasses).
"""

from __future__ import annotations

import dataclasses
import io
import math
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dfcil.engine import checkpoint as ckpt
from dfcil.engine.rng import capture, restore
from dfcil.engine.store import index_batches
from dfcil.engine.trainer import Trainer
from dfcil.experiment import Experiment, parse_experiment
from dfcil.methods import METHODS, Batch, Phase, StepResult
from dfcil.scenario import Task

from conftest import coloured_dataset

#: Option names (at any depth of a method's options) shrunk to a budget that runs in seconds:
#: generator steps (``synthesis.steps``), SKD's delegator iterations, their batches and log windows,
#: R-DFCIL's refinement epochs (2, so that a resume inside the refinement continues in its epoch 2),
#: the width of DGR's VAE.
BUDGETS: dict[str, int] = {
    "steps": 2,
    "iterations": 2,
    "imitate_steps": 1,
    "batch_size": 8,
    "log_every": 1,
    "lr_decay_every": 1,
    "div_pairs": 4,
    "refine_epochs": 2,
    "width": 4,  # DGR's VAE: 4 channels in its first convolution (ABD's 64 has 29 M parameters)
}
BATCH = 8  # real images per step
EPOCHS = 2  # of the main phase: a resume after epoch 1 continues in epoch 2


def tiny_options(options_type: type) -> dict[str, Any]:
    """The ``method`` config entries that set every :data:`BUDGETS` option of ``options_type``
    (a method's ``Options`` dataclass, nested option dataclasses included) to its tiny budget."""
    if not dataclasses.is_dataclass(options_type):
        return {}
    hints = typing.get_type_hints(options_type)
    overrides: dict[str, Any] = {}
    for field in dataclasses.fields(options_type):
        kind = hints.get(field.name)
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            nested = tiny_options(kind)
            if nested:
                overrides[field.name] = nested
        elif field.name in BUDGETS:
            overrides[field.name] = BUDGETS[field.name]
    return overrides


def tiny_experiment(name: str) -> Experiment:
    """A 2-task experiment of method ``name`` on the CPU: bf16 autocast and channels_last as the
    engine runs them, one thread, batches of :data:`BATCH`, :data:`EPOCHS` epochs, tiny budgets."""
    return parse_experiment({
        "data": {"dataset": "imagefolder"},
        "scenario": {"order": "identity", "num_tasks": 2},
        "train": {"epochs": EPOCHS, "batch_size": BATCH, "lr": 0.05, "schedule": "constant", "milestones": [],
                  "precision": "bf16", "channels_last": True},
        "method": {"name": name, **tiny_options(METHODS[name].Options)},
        "runtime": {"progress": False, "device": "cpu", "num_threads": 1, "checkpoint_every_s": 1e9},
    })


class FirstTaskDone(Exception):
    """Raised by :class:`StopsAfterFirstTask` once the first task is finished and evaluated."""


class StopsAfterFirstTask(Trainer):
    """A Trainer that writes no checkpoint and stops where it would save the end of the first task."""

    def _save(self, position: ckpt.Position, optimizer: Any = None, scheduler: Any = None) -> None:
        if position.task_done and position.task == 0:
            raise FirstTaskDone
        self._last_save = 0.0  # nothing written: the checks save the method's state themselves


def tiny_trainer(experiment: Experiment, run_dir: Path) -> StopsAfterFirstTask:
    """A Trainer of ``experiment`` on a generated 4-class dataset (8 images a class; test = train)."""
    return StopsAfterFirstTask(experiment, run_dir, coloured_dataset(classes=4, per_class=8))


def round_trip(state: Any) -> Any:
    """``state`` serialised and read back as a checkpoint is (``torch.save``, then ``torch.load``
    onto the CPU): a copy that shares no tensor with the live method."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location="cpu", weights_only=False)


def first_difference(a: Any, b: Any, path: str = "state") -> str | None:
    """Where ``a`` and ``b`` first differ (tensors: dtype, shape and values by :func:`torch.equal`;
    mappings, sequences and arrays recursively; a NaN equals a NaN), or None when they are equal."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return f"{path}: {type(a).__name__} vs {type(b).__name__}"
        if a.dtype != b.dtype or a.shape != b.shape:
            return f"{path}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        if torch.equal(a, b) or a.is_floating_point() and torch.equal(a.isnan(), b.isnan()) and torch.equal(
                a.nan_to_num(), b.nan_to_num()):
            return None
        return f"{path}: tensor values differ"
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return None if np.array_equal(a, b, equal_nan=True) else f"{path}: array values differ"
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):  # the order of a mapping's keys is no part of the state
            return f"{path}: keys {list(a)} vs {list(b)}"
        for key in a:
            found = first_difference(a[key], b[key], f"{path}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if type(a) is not type(b) or len(a) != len(b):
            return f"{path}: {type(a).__name__} of {len(a)} vs {type(b).__name__} of {len(b)}"
        for index, (x, y) in enumerate(zip(a, b)):
            found = first_difference(x, y, f"{path}[{index}]")
            if found:
                return found
        return None
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return None
    return None if type(a) is type(b) and a == b else f"{path}: {a!r} vs {b!r}"


# --- check 1: phases ------------------------------------------------------------------------------------
PHASE_TYPES = typing.get_type_hints(Phase)


def check_phases(phases: Sequence[Phase], main: Phase, what: str) -> None:
    """``phases`` is a non-empty sequence of valid, distinctly named phases that includes ``main``."""
    assert isinstance(phases, Sequence) and phases, f"{what}: no phases"
    names = [phase.name for phase in phases]
    assert len(set(names)) == len(names), f"{what}: phase names repeat: {names}"
    for phase in phases:
        assert isinstance(phase, Phase), f"{what}: {phase!r} is not a Phase"
        assert isinstance(phase.name, str) and phase.name.strip() == phase.name != "", f"{what}: name {phase.name!r}"
        assert isinstance(phase.epochs, int) and phase.epochs >= 1, f"{what} {phase.name}: epochs {phase.epochs!r}"
        assert math.isfinite(phase.lr) and phase.lr > 0, f"{what} {phase.name}: lr {phase.lr!r}"
        assert phase.schedule in typing.get_args(PHASE_TYPES["schedule"]), f"{what} {phase.name}: {phase.schedule!r}"
        assert phase.trainable in typing.get_args(PHASE_TYPES["trainable"]), f"{what} {phase.name}: {phase.trainable!r}"
        assert math.isfinite(phase.gamma) and phase.gamma > 0, f"{what} {phase.name}: gamma {phase.gamma!r}"
        milestones = list(phase.milestones)
        assert all(isinstance(m, int) and m >= 1 for m in milestones) and milestones == sorted(milestones), (
            f"{what} {phase.name}: milestones {phase.milestones!r}")
    assert main in phases, f"{what}: the config's main phase {main} is not among {phases}"


# --- check 2: one step -------------------------------------------------------------------------------------
def next_batch(trainer: Trainer, task: Task) -> Batch:
    """The first batch of a new epoch of ``task``, drawn and augmented with the Trainer's generators."""
    indices = trainer.train_data.indices_of(*trainer.method.train_label_range(task))
    batches: Iterator[torch.Tensor] = index_batches(indices, BATCH, trainer.rng.sample, device=trainer.device)
    index = next(batches)
    images = trainer.augment(trainer.train_data.store.gather(index), trainer.rng.device)
    return Batch(images, trainer.train_data.labels.to(trainer.device)[index])


def training_step(trainer: Trainer, task: Task, phase: Phase) -> tuple[StepResult, torch.Tensor]:
    """One step of the method as the engine takes it: the batch, ``training_step`` under the run's
    autocast, and the weighted total in fp32."""
    batch = next_batch(trainer, task)
    with trainer.env.autocast():
        result = trainer.method.training_step(trainer.model, batch, task, phase)
    total = sum(term.weight * term.value.float() for term in result.losses.values())
    assert isinstance(total, torch.Tensor), "no loss terms"
    if result.logits is not None:
        assert result.logits.shape[0] == len(batch.labels) and result.logits.shape[1] >= task.num_seen, (
            f"logits {tuple(result.logits.shape)} for {len(batch.labels)} images of {task.num_seen} classes")
    return result, total


def check_loss_terms(result: StepResult, what: str) -> None:
    """Named terms, each a finite floating scalar tensor with a finite float weight."""
    assert isinstance(result, StepResult) and result.losses, f"{what}: no loss terms"
    for name, term in result.losses.items():
        assert isinstance(name, str) and name, f"{what}: term name {name!r}"
        value = term.value
        assert isinstance(value, torch.Tensor) and value.dim() == 0, f"{what} {name}: not a scalar tensor: {value!r}"
        assert value.is_floating_point() and bool(torch.isfinite(value.float())), f"{what} {name}: {value!r}"
        assert isinstance(term.weight, (int, float)) and not isinstance(term.weight, bool), f"{what} {name}: weight {term.weight!r}"
        assert math.isfinite(term.weight), f"{what} {name}: weight {term.weight!r}"


def check_gradients(trainer: Trainer, total: torch.Tensor, what: str) -> None:
    """The total back-propagates: finite gradients, on at least one trainable parameter."""
    parameters = list(trainer.model.parameters())
    aux = trainer.method.aux_modules()
    if aux is not None:
        parameters += list(aux.parameters())
    for parameter in parameters:
        parameter.grad = None
    assert total.requires_grad, f"{what}: the total loss is not differentiable"
    total.backward()
    grads = [p.grad for p in parameters if p.grad is not None]
    assert grads, f"{what}: no parameter got a gradient"
    assert all(bool(torch.isfinite(g).all()) for g in grads), f"{what}: non-finite gradients"


# --- checks 3 and 4: resume --------------------------------------------------------------------------------
def resumed_copy(trainer: Trainer, experiment: Experiment, run_dir: Path) -> Trainer:
    """A fresh Trainer of the same experiment (new method and model) given ``trainer``'s method and
    model state as a checkpoint holds them; the restored state must equal the saved one (check 4)."""
    method_state = round_trip(trainer.method.state_dict())
    model_state = round_trip(trainer.model.state_dict())
    fresh = tiny_trainer(experiment, run_dir)
    fresh.model = fresh.make_model(trainer.model.head_sizes)
    fresh.model.load_state_dict(model_state)
    fresh.method.load_state_dict(round_trip(method_state))  # its own copy: the load must not alias the saved
    difference = first_difference(round_trip(fresh.method.state_dict()), method_state)
    assert difference is None, f"the restored method's state_dict differs from the saved one: {difference}"
    assert first_difference(fresh.method.diagnostics(), trainer.method.diagnostics(), "diagnostics") is None
    return fresh


def check_resume(trainer: Trainer, experiment: Experiment, task: Task, phase: Phase, run_dir: Path) -> None:
    """Save after a step, load into a fresh method and model, restore the random streams in both:
    the next step (after ``on_epoch_start`` of the next epoch, as a resumed run begins) is
    bit-identical, and so are the states it leaves."""
    rng = capture(trainer.rng.named())  # before the fresh Trainer seeds the global streams
    fresh = resumed_copy(trainer, experiment, run_dir)
    next_epoch = min(2, phase.epochs)
    steps: list[tuple[StepResult, Any, Any]] = []
    for run in (trainer, fresh):
        restore(rng, run.rng.named())
        run.set_trainable(phase)
        run.method.on_epoch_start(run.model, task, phase, next_epoch)
        result, _ = training_step(run, task, phase)
        steps.append((result, round_trip(run.method.state_dict()), round_trip(run.model.state_dict())))
    (original, original_method, original_model), (restored, restored_method, restored_model) = steps
    assert list(original.losses) == list(restored.losses), "the restored method's loss terms differ"
    for name, term in original.losses.items():
        other = restored.losses[name]
        assert torch.equal(term.value, other.value), f"{name}: {term.value.item()!r} vs {other.value.item()!r}"
        assert term.weight == other.weight, f"{name} weight: {term.weight!r} vs {other.weight!r}"
    assert first_difference(restored.logits, original.logits, "logits") is None
    difference = first_difference(restored_method, original_method, "method state after the step")
    assert difference is None, difference
    difference = first_difference(restored_model, original_model, "model state after the step")
    assert difference is None, difference


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_conforms_to_the_contract(name: str, tmp_path: Path, one_thread: None) -> None:
    experiment = tiny_experiment(name)
    trainer = tiny_trainer(experiment, tmp_path / "run")
    assert trainer.env.precision == "bf16" and trainer.env.channels_last  # the engine's autocast, channels_last
    first, second = trainer.scenario.tasks
    main = Phase.main(trainer.env.train)
    check_phases(trainer.method.phases(first), main, "task 1")
    with pytest.raises(FirstTaskDone):
        trainer.run()  # the real engine trains and evaluates task 1

    # task 2 as the engine starts it
    if trainer.method.resets_model(second):
        trainer.model = trainer.make_model(trainer.model.head_sizes)
    trainer.method.prepare_task(trainer.model, second)
    trainer.model.add_head(second.num_new)
    phases = trainer.method.phases(second)
    check_phases(phases, main, "task 2")
    convolutions = [p for p in trainer.model.parameters() if p.dim() == 4]
    assert convolutions and all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)

    for index, phase in enumerate(phases):
        what = f"task 2 {phase.name}"
        optimizer, _ = trainer.make_optimizer(phase)
        trainer.set_trainable(phase)
        trainer.method.on_epoch_start(trainer.model, second, phase, 1)
        result, total = training_step(trainer, second, phase)
        check_loss_terms(result, what)
        optimizer.zero_grad(set_to_none=True)
        check_gradients(trainer, total, what)
        optimizer.step()
        check_resume(trainer, experiment, second, phase, tmp_path / f"resumed-{index}")
    trainer.set_trainable(Phase.main(trainer.env.train))
    trainer.method.finish_task(trainer.model, second)
    # every file the method wrote is one the run directory's format names (env.artifacts)
    assert trainer.files.unknown_files() == [], f"files outside the run directory's format: {trainer.files.unknown_files()}"
