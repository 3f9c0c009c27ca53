"""The task loop that every method runs in.

Per task: (re-initialise for ``joint``) -> ``method.prepare_task`` -> add the task's head ->
each phase of ``method.phases`` (new SGD optimiser and schedule; epochs of whole-batch
device-side augmentation and the method's loss terms) -> ``method.finish_task`` ->
task-agnostic evaluation on all seen classes -> the domain-gap features of a task whose
synthetic samples were kept (``synthesis/task_t_features.npz``, :mod:`dfcil.engine.gap_features`)
-> ``metrics.json`` and a checkpoint.

A checkpoint is written atomically after every task, at the end of every phase and after every
epoch that ends at least ``runtime.checkpoint_every_s`` (default 30 s) after the last one,
holding the model, the method state (old model, synthesizer, auxiliary modules), optimiser,
scheduler, every RNG state and the results so far, so a killed run resumes from its last
checkpoint and, on the CPU with a fixed seed, ends with exactly the metrics of an
uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from dfcil.atomic import write_json
from dfcil.augment import Normalizer, TrainAugment
from dfcil.config import without_runtime
from dfcil.data import DatasetArrays
from dfcil.distributed import SINGLE, Distributed
from dfcil.engine import checkpoint as ckpt
from dfcil.engine.epoch import (
    EpochContext,
    EpochStats,
    StepRunner,
    build_optimizer,
    set_trainable,
    split_tensors,
    train_epoch,
)
from dfcil.engine.evaluate import predict, predict_logits
from dfcil.engine.gap_features import write_task_features
from dfcil.engine.results import RunResults, TaskEvaluation, evaluate_task
from dfcil.engine.rng import RunGenerators
from dfcil.engine.store import index_batches
from dfcil.engine.threads import ThreadPolicy
from dfcil.errors import ConfigError, DataError
from dfcil.experiment import Experiment
from dfcil.first_task import first_task_identity, save_first_task
from dfcil.methods import Batch, Method, Phase, RunEnv
from dfcil.models import IncrementalClassifier, build_classifier
from dfcil.precision import resolve_precision
from dfcil.rundir import EpochRecord, EvalRecord, PhaseEvalRecord, RunDir
from dfcil.runlog import RunLog
from dfcil.scenario import Scenario, Task
from dfcil.tensorboard_sink import TensorBoardSink

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device: {name} requested but CUDA is not available")
    return device


class Trainer:
    """Runs one experiment into one run directory (see module docstring)."""

    def __init__(self, experiment: Experiment, run_dir: Path, dataset: DatasetArrays,
                 upper_bound: list[float] | None = None, scenario: Scenario | None = None, start_task: int = 0,
                 dist: Distributed = SINGLE):
        """``experiment``: the resolved config (:func:`dfcil.experiment.resolve`); ``scenario``
        replaces its scenario over ``dataset`` (any task sizes); ``start_task`` > 0 trains from that
        task on, starting from the model given to :meth:`load_model` (the earlier tasks' classes
        need no images: data-free steps). ``dist``: this process's rank in a torchrun run (see
        :mod:`dfcil.distributed`); ranks other than 0 should get a scratch ``run_dir`` and write no
        checkpoints or metrics."""
        config = experiment.config
        self.experiment = experiment
        self.config = config
        self.run_dir = run_dir
        self.files = RunDir(run_dir)
        self.dataset = dataset
        self.upper_bound = upper_bound
        self.dist = dist
        self.device = resolve_device(dist.device_name(config.runtime.device))
        self.threads = ThreadPolicy(config.runtime.num_threads)
        self.threads.start()
        if self.device.type == "cuda":
            # every step has the same shapes: let cuDNN time its algorithms once and keep the fastest
            torch.backends.cudnn.benchmark = True
        # the RNG policy (dfcil.engine.rng.RunGenerators): global streams seeded here, the sampler's
        # permutation shared by every rank, a rank's own numbers (augmentation, noise) from `device`
        self.rng = RunGenerators.create(config.seed, self.device, dist.enabled, dist.rank)
        self.scenario = scenario if scenario is not None else experiment.scenario_for(dataset.num_classes)
        if not 0 <= start_task < len(self.scenario.tasks):
            raise ConfigError(f"start task {start_task} is outside the scenario's {len(self.scenario.tasks)} tasks")
        self.start_task = start_task
        self.train_data = split_tensors(dataset.train.images, dataset.train.labels, self.scenario, self.device,
                                        config.data.train_per_class)
        self.test_data = split_tensors(dataset.test.images, dataset.test.labels, self.scenario, self.device)
        self._check_class_coverage()
        self.normalizer = Normalizer(dataset.mean, dataset.std, config.train.channels_last)
        self.augment = TrainAugment(self.normalizer, config.data.crop_padding, config.data.flip)
        self.log = RunLog(self.files.log)
        self.env = RunEnv(
            device=self.device,
            precision=resolve_precision(config.train.precision, self.device),
            channels_last=config.train.channels_last,
            normalizer=self.normalizer,
            generator=self.rng.device,
            train=config.train,
            make_model=self.make_model,
            image_size=int(dataset.train.images.shape[1]),
            artifacts=self.files,
            log=self._method_log,
            test_accuracy=self._test_accuracy if start_task == 0 else None,  # no test data of earlier classes
            task_sizes=tuple(t.num_new for t in self.scenario.tasks),
            dist=dist,
            prepare_progress=self._prepare_progress,
            task_batches=self._task_batches,
        )
        self.method: Method = experiment.build_method(self.env)
        self.epoch_context = EpochContext(
            data=self.train_data, augment=self.augment, generators=self.rng, env=self.env, train=config.train,
            dist=dist, threads=self.threads, progress=config.runtime.progress, num_tasks=len(self.scenario.tasks),
        )
        self.model = self.make_model([])
        self.results = RunResults()
        self.wall_time_s = 0.0
        self._last_save = -math.inf  # time.monotonic() of the last checkpoint
        self._run_step: StepRunner = lambda closure: closure()
        self._preparing: int | None = None  # index of the task whose prepare_task is running
        self._finishing: int | None = None  # index of the task whose finish_task is running
        self._clock = (0.0, time.perf_counter())  # (wall time of earlier sessions, this session's start)

    # ------------------------------------------------------------------------------------
    def _check_class_coverage(self) -> None:
        first_class = self.scenario.tasks[self.start_task].start
        for name, split in (("train", self.train_data), ("test", self.test_data)):
            counts = torch.bincount(split.labels, minlength=self.scenario.num_classes)
            empty = torch.nonzero(counts[first_class:] == 0).flatten() + first_class
            if len(empty):
                original = self.scenario.order[int(empty[0])]
                raise DataError(
                    f"class {self.dataset.class_names[original]!r} (index {original}) has no {name} images"
                )

    def make_model(self, head_sizes: Sequence[int]) -> IncrementalClassifier:
        """A freshly initialised model with heads of ``head_sizes``, on the run's device."""
        model = build_classifier(self.config.model, head_sizes)
        model.to(self.device)
        if self.config.train.channels_last:
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to's overloads omit memory_format
        if self.config.train.compile:
            # In place: state_dict keys and growing heads are unaffected. Static shapes: a batch
            # size seen for the first time (the last batch of an epoch) compiles its own graph
            # rather than turning every later step into a slower dynamic-shape graph.
            model.backbone.compile(dynamic=False, mode=self.config.train.compile_mode)
        return model

    def load_model(self, head_sizes: list[int], state: dict[str, torch.Tensor]) -> None:
        """Start from a trained model (heads of ``head_sizes``); see ``start_task``."""
        if sum(head_sizes) != self.scenario.tasks[self.start_task].start:
            raise ConfigError(f"the model knows {sum(head_sizes)} classes but task {self.start_task + 1} of the "
                              f"scenario starts at class {self.scenario.tasks[self.start_task].start}")
        model = self.make_model(head_sizes)
        model.load_state_dict(state)
        self.model = model

    def first_task_identity(self) -> dict[str, Any]:
        """What determines this run's first task (:func:`dfcil.first_task.first_task_identity`)."""
        first = self.scenario.tasks[0]
        return first_task_identity(self.experiment, self.scenario.order[first.start : first.stop])

    # ------------------------------------------------------------------------------------
    def make_optimizer(self, phase: Phase) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """The optimiser and schedule of ``phase`` (:func:`dfcil.engine.epoch.build_optimizer`)."""
        return build_optimizer(self.model, self.method.aux_modules(), phase, self.config.train)

    def set_trainable(self, phase: Phase) -> None:
        """Train mode and gradients for what ``phase`` trains (:func:`dfcil.engine.epoch.set_trainable`)."""
        set_trainable(self.model, self.method.aux_modules(), phase)

    def train_epoch(self, task: Task, phase: Phase, epoch: int, optimizer: torch.optim.Optimizer) -> EpochStats:
        """One epoch of ``phase`` of ``task`` (:func:`dfcil.engine.epoch.train_epoch`), with the step
        runner of the phase the task loop is in (DDP's in a multi-process run)."""
        return train_epoch(self.model, self.method, self.epoch_context, task, phase, epoch, optimizer, self._run_step)

    def _step_runner(self, phase: Phase) -> StepRunner:
        """Runs a training step's loss closure (under DDP in a multi-process run)."""
        self.set_trainable(phase)
        modules: list[torch.nn.Module] = [self.model]
        aux = self.method.aux_modules()
        if aux is not None and phase.trainable == "all":
            modules.append(aux)
        return self.dist.step_runner(modules, self.device)

    def _task_batches(self, task: Task, *, augment: bool = False, shuffle: bool = False,
                      batch_size: int | None = None) -> Iterator[Batch]:
        """:class:`dfcil.methods.base.TaskBatches`: the real training images of ``task``."""
        indices = self.train_data.indices_of(*self.method.train_label_range(task))
        size = batch_size or self.config.train.batch_size
        labels = self.train_data.labels.to(self.device)
        if shuffle:
            batches: Iterator[torch.Tensor] = index_batches(indices, size, self.rng.sample, device=self.device)
        else:
            indices = indices.to(self.device)
            batches = (indices[start : start + size] for start in range(0, len(indices), size))
        for index in batches:
            index = self.dist.shard(index)
            if not len(index):
                continue
            raw = self.train_data.store.gather(index)
            images = self.augment(raw, self.rng.device) if augment else self.normalizer(raw)
            yield Batch(images, labels[index])

    # ------------------------------------------------------------------------------------
    def _test_accuracy(self, model: IncrementalClassifier, num_classes: int) -> float:
        """Accuracy (%) of ``model`` on the test images of the first ``num_classes`` classes."""
        indices = self.test_data.indices_of(0, num_classes)
        logits = self.dist.gather_rows(predict_logits(model, self.test_data.store, self.dist.shard(indices),
                                                      self.normalizer, self.env, self.config.train.eval_batch_size,
                                                      fixed_batch=self.config.train.compile))
        labels = self.test_data.labels[indices]
        return 100.0 * float((logits[:, :num_classes].argmax(dim=1) == labels).float().mean())

    def test_evaluation(self, task: Task) -> tuple[TaskEvaluation, int, float]:
        """The model's evaluation on the test images of every class seen by ``task``: the
        evaluation, the number of images and the seconds it took (no random numbers used)."""
        indices = self.test_data.indices_of(0, task.stop)
        start = time.perf_counter()
        logits, features = predict(
            self.model, self.test_data.store, self.dist.shard(indices), self.normalizer, self.env,
            self.config.train.eval_batch_size, fixed_batch=self.config.train.compile,
        )
        logits, features = self.dist.gather_rows(logits), self.dist.gather_rows(features)
        seconds = time.perf_counter() - start
        labels = self.test_data.labels[indices].numpy()
        return evaluate_task(logits, labels, self.scenario, task, features), len(indices), seconds

    def evaluate(self, task: Task) -> None:
        """Evaluate on the test images of every class seen by ``task``; log and keep the result."""
        evaluation, images, seconds = self.test_evaluation(task)
        self.results.evaluations.append(evaluation)
        self.log.append(EvalRecord(
            task=task.index + 1, accuracy=evaluation.accuracy, old=evaluation.old, new=evaluation.new,
            matrix_row=evaluation.matrix_row, images=images, images_per_s=images / max(seconds, 1e-9),
        ).to_json())
        if not self.dist.is_main:
            return
        scope = (f"{task.num_seen} seen classes" if self.start_task == 0
                 else f"the test images of its {task.num_new} classes (earlier classes have none here)")
        logger.info("task %d/%d: accuracy on %s %.2f (old %s, new %s)", task.index + 1, len(self.scenario.tasks), scope,
                 evaluation.accuracy, _fmt(evaluation.old), _fmt(evaluation.new))

    def _evaluate_phase(self, task: Task, phase: Phase, phase_index: int) -> None:
        """Log the test accuracy at the end of a phase that another phase of the task follows
        (``phase_eval`` records: e.g. R-DFCIL before its head refinement, so that the refinement's
        gain is measured). Uses no random numbers and changes no state: the run is the same."""
        evaluation = self.test_evaluation(task)[0]
        self.log.append(PhaseEvalRecord(task=task.index + 1, phase=phase.name, phase_index=phase_index,
                                        accuracy=evaluation.accuracy, old=evaluation.old,
                                        new=evaluation.new).to_json())

    def _write_gap_features(self, task: Task) -> None:
        """``synthesis/task_t_features.npz`` of a task whose synthetic samples were kept: the
        features ``dfcil report`` needs for the domain gap (:mod:`dfcil.engine.gap_features`; no
        random numbers used, no state changed: the run is the same)."""
        test = self.dataset.test
        write_task_features(self.run_dir, self.model, task.index + 1, test.images, self.scenario.remap(test.labels),
                            task.start, task.stop, self.dataset.mean, self.dataset.std)

    def metrics(self) -> dict[str, Any]:
        """``metrics.json`` content for the tasks evaluated so far."""
        complete = len(self.results.evaluations) == len(self.scenario.tasks) - self.start_task
        if self.start_task > 0:
            # a data-free step of a deployed model: the earlier tasks left no evaluation and
            # no test data, so the run-level metrics (matrix, forgetting, ...) do not exist
            return {"complete": complete, "method": self.config.method_name, "start_task": self.start_task + 1,
                    "evaluations": self.results.state_dict(), "wall_time_s": round(self.wall_time_s, 3)}
        out = self.results.summary(self.scenario, self.dataset.class_names, self.upper_bound)
        out.update(
            {
                "complete": complete,
                "method": self.config.method_name,
                "seed": self.config.seed,
                "dataset": self.dataset.name,
                "class_order": self.scenario.order,
                "tasks": [self.scenario.order[t.start : t.stop] for t in self.scenario.tasks],
                "wall_time_s": round(self.wall_time_s, 3),
            }
        )
        diagnostics = self.method.diagnostics()
        if diagnostics:
            out["method_diagnostics"] = diagnostics
        return out

    def _method_log(self, record: dict[str, Any]) -> None:
        """A method's log record: into ``log.jsonl``, and a generator's or delegator's progress
        also as a message (one line per logged window) when ``runtime.progress`` is on. A record
        logged inside ``finish_task`` is marked ``finish_task: true`` (and gets the task): a resume
        from the task's last epoch checkpoint drops it and the redone ``finish_task`` logs it again."""
        if self._finishing is not None:
            record = {**record, "task": record.get("task", self._finishing + 1), "finish_task": True}
        self.log.append(record)
        if not (self.config.runtime.progress and self.dist.is_main) or record.get("event") not in ("synthesis", "delegator"):
            return
        done, total = (record["step"], record.get("steps")) if "step" in record else (record["iteration"], None)
        rate = record.get("steps_per_s", record.get("iterations_per_s"))
        what = "generator step" if record["event"] == "synthesis" else "delegator iteration"
        # a data-free generator reports the old model's confidence and coverage; DGR's VAE has none
        inverted = (f" old-model confidence {record['confidence']:.3f} coverage {record.get('coverage', math.nan):.2f}"
                    if "confidence" in record else "")
        logger.info(f"task {record.get('task', '?')} {what} {done}/{total or '?'}: loss {record.get('total', math.nan):.4f}"
                    + inverted + (f" {rate:.2f}/s" if rate else ""))

    def _prepare_progress(self, steps_done: int) -> None:
        """A method's long preparation (generator training) did a step: checkpoint it when the
        last checkpoint is ``runtime.checkpoint_every_s`` old, so that a kill loses no more."""
        if self._preparing is None:
            return
        self.threads.at_safe_point()
        if time.monotonic() - self._last_save >= self.config.runtime.checkpoint_every_s:
            base_wall, session_start = self._clock
            self.wall_time_s = base_wall + time.perf_counter() - session_start
            self._save(ckpt.Position(task=self._preparing, phase=0, epoch=0, task_done=False, preparing=steps_done))

    def _save(self, position: ckpt.Position, optimizer: Any = None, scheduler: Any = None) -> None:
        self._last_save = time.monotonic()
        if not self.dist.is_main:
            return
        ckpt.save(
            self.run_dir,
            ckpt.Checkpoint(
                fingerprint=ckpt.run_fingerprint(self.config),
                position=position,
                head_sizes=self.model.head_sizes,
                model=self.model.state_dict(),
                method=self.method.state_dict(),
                optimizer=None if optimizer is None else optimizer.state_dict(),
                scheduler=None if scheduler is None else scheduler.state_dict(),
                rng=self.rng.capture(),
                results=self.results.state_dict(),
                wall_time_s=self.wall_time_s,
                world_size=self.dist.world_size,
                config=without_runtime(self.config),
            ),
        )

    # ------------------------------------------------------------------------------------
    def run(self, resume: ckpt.Checkpoint | None = None) -> dict[str, Any]:
        """Train every task (continuing from ``resume``) and return the final metrics. With
        ``runtime.tensorboard`` the log also goes to ``RUN_DIR/tensorboard/`` (:mod:`dfcil.tensorboard_sink`)."""
        try:
            return self._run(resume)
        finally:
            self.log.close()  # its sinks: written out however the session ends

    def _run(self, resume: ckpt.Checkpoint | None) -> dict[str, Any]:
        session_start = time.perf_counter()
        base_wall = 0.0
        position = ckpt.Position(task=self.start_task - 1, phase=0, epoch=0, task_done=True)
        opt_state = sched_state = None
        if resume is not None:
            position = resume.position
            self.model = self.make_model(resume.head_sizes)
            self.model.load_state_dict(resume.model)
            self.method.load_state_dict(resume.method)
            self.results = RunResults.from_state(resume.results)
            base_wall = resume.wall_time_s
            opt_state, sched_state = resume.optimizer, resume.scheduler
            self.log.truncate_after(position)
            reseed = None
            if self.dist.enabled or resume.world_size > 1:
                # a rank's own stream cannot come back from rank 0's checkpoint (and the process
                # count may have changed): re-seed it from the rank and the resume position
                salt = 1 + position.task * 10_000 + position.phase * 1_000 + position.epoch
                reseed = (self.config.seed, self.dist.rank, salt)
            self.rng.restore(resume.rng, reseed)
        else:
            self.log.truncate_after(position)  # a fresh start keeps no stale records
        if self.config.runtime.tensorboard and self.dist.is_main:
            self.log.attach(TensorBoardSink(self.run_dir))  # gets the records kept, then each new one

        def tick() -> None:
            self.wall_time_s = base_wall + time.perf_counter() - session_start

        self._clock = (base_wall, session_start)
        first_task = position.task + 1 if position.task_done else position.task
        for task in self.scenario.tasks[first_task:]:
            mid_task = resume is not None and not position.task_done and task.index == position.task
            mid_preparation = mid_task and position.preparing is not None
            if not mid_task or mid_preparation:
                if self.method.resets_model(task) and not mid_preparation:
                    self.model = self.make_model(self.model.head_sizes)
                # after a kill inside it, prepare_task continues the training its restored state holds
                self._preparing = task.index
                try:
                    self.method.prepare_task(self.model, task)
                finally:
                    self._preparing = None
                self.model.add_head(task.num_new)
                # a resumed run must not redo prepare_task (e.g. generator training)
                self._save(ckpt.Position(task=task.index, phase=0, epoch=0, task_done=False))
                mid_task = False
            phases = self.method.phases(task)
            first_phase = position.phase if mid_task else 0
            for phase_index in range(first_phase, len(phases)):
                phase = phases[phase_index]
                optimizer, scheduler = self.make_optimizer(phase)
                self._run_step = self._step_runner(phase)
                first_epoch = 1
                if mid_task and phase_index == position.phase:
                    if opt_state is not None:
                        assert sched_state is not None  # saved together with the optimiser's (see _save)
                        optimizer.load_state_dict(opt_state)
                        scheduler.load_state_dict(sched_state)
                    first_epoch = position.epoch + 1
                for epoch in range(first_epoch, phase.epochs + 1):
                    self.method.on_epoch_start(self.model, task, phase, epoch)
                    lr = optimizer.param_groups[0]["lr"]
                    stats = self.train_epoch(task, phase, epoch, optimizer)
                    scheduler.step()
                    tick()
                    # the record first: a kill between the two leaves a record after the checkpoint,
                    # which a resume drops and redoes; the other way round it would lose the record
                    self.log.append(_epoch_record(task, phase, phase_index, epoch, lr, stats, self.threads.threads))
                    # a GPU trains an epoch in a second or two, and a data-free method's checkpoint
                    # (old model, generator) is tens of MB: not after every one of them
                    if (epoch == phase.epochs
                            or time.monotonic() - self._last_save >= self.config.runtime.checkpoint_every_s):
                        here = ckpt.Position(task=task.index, phase=phase_index, epoch=epoch, task_done=False)
                        self._save(here, optimizer, scheduler)
                    if not (self.config.runtime.progress and self.dist.is_main):
                        continue
                    logger.info("task %d %s epoch %d/%d: loss %.4f acc %s %.0f img/s", task.index + 1, phase.name, epoch,
                             phase.epochs, stats.loss, _fmt(stats.train_accuracy), stats.images / max(stats.seconds, 1e-9))
                if phase_index < len(phases) - 1:
                    self._evaluate_phase(task, phase, phase_index)
            self.set_trainable(Phase.main(self.config.train))
            self._finishing = task.index
            try:
                self.method.finish_task(self.model, task)
            finally:
                self._finishing = None
            self.dist.check_replicas(self.model, f"task {task.index + 1}")
            self.evaluate(task)
            if self.dist.is_main:
                self._write_gap_features(task)
            tick()
            self._save(ckpt.Position(task=task.index, phase=0, epoch=0, task_done=True))
            if self.dist.is_main:
                ckpt.save_task_model(self.run_dir, task.index, self.model, self.scenario)
                write_json(self.files.metrics, self.metrics())
                if task.index == 0:
                    save_first_task(self.run_dir, self.first_task_identity())
            position = ckpt.Position(task=task.index, phase=0, epoch=0, task_done=True)
            resume = None
        tick()
        final = self.metrics()
        if self.dist.is_main:
            write_json(self.files.metrics, final)
        return final


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _epoch_record(task: Task, phase: Phase, phase_index: int, epoch: int, lr: float, stats: EpochStats,
                  threads: int) -> dict[str, Any]:
    return EpochRecord(
        task=task.index + 1, phase=phase.name, phase_index=phase_index, epoch=epoch,
        epochs=phase.epochs,  # of this phase: a partial log still tells the whole run's length
        lr=lr, loss=stats.loss, losses=stats.terms, weights=stats.weights, train_accuracy=stats.train_accuracy,
        images=stats.images, time_s=round(stats.seconds, 4), images_per_s=stats.images / max(stats.seconds, 1e-9),
        threads=threads,  # torch's CPU threads at the end of the epoch (runtime.num_threads)
    ).to_json()
