"""Class orders and task splits of the class-incremental protocols.

Class orders are reproducible bit-for-bit with the published code:

* ``abd`` (ABD / R-DFCIL seeds 0, 1, 2): ``random.seed(s); random.shuffle(list(range(C)))``;
* ``icarl`` (iCaRL / LUCIR / PODNet / SKD, seed 1993): ``np.random.seed(s); np.random.permutation(C)``;
* ``identity`` (MFGR's code) and ``explicit`` lists.

Labels are remapped to positions in the order, so task ``t`` owns the contiguous label range
``[offsets[t], offsets[t + 1])``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dfcil.config import ScenarioConfig
from dfcil.errors import ConfigError

DEFAULT_ORDER_SEEDS = {"abd": 0, "icarl": 1993}


def class_order(config: ScenarioConfig, num_classes: int) -> list[int]:
    """Original class indices in learning order (before taking ``subset``)."""
    if config.order == "explicit":
        order = list(config.class_order or [])
        if len(set(order)) != len(order):
            raise ConfigError("scenario.class_order: contains repeated classes")
        bad = [c for c in order if not 0 <= c < num_classes]
        if bad:
            raise ConfigError(f"scenario.class_order: class {bad[0]} is outside 0..{num_classes - 1}")
        return order
    if config.order == "identity":
        return list(range(num_classes))
    seed = DEFAULT_ORDER_SEEDS[config.order] if config.order_seed is None else config.order_seed
    if config.order == "abd":
        order = list(range(num_classes))
        random.Random(seed).shuffle(order)
        return order
    return [int(c) for c in np.random.RandomState(seed).permutation(num_classes)]


def task_sizes(config: ScenarioConfig, num_classes: int) -> list[int]:
    """Number of classes of each task for ``num_classes`` classes in use."""
    n, base = config.num_tasks, config.base_classes
    if base == 0:
        if num_classes % n:
            raise ConfigError(
                f"scenario: {num_classes} classes cannot be split into {n} equal tasks (B0)"
            )
        return [num_classes // n] * n
    if base >= num_classes:
        raise ConfigError(f"scenario.base_classes: {base} leaves no class for later tasks of {num_classes}")
    if n == 1:
        raise ConfigError("scenario.num_tasks: a base task needs at least one more task (num_tasks >= 2)")
    rest = num_classes - base
    if rest % (n - 1):
        raise ConfigError(
            f"scenario: {rest} classes after the base task of {base} cannot be split into {n - 1} equal tasks"
        )
    return [base] + [rest // (n - 1)] * (n - 1)


def check_split(config: ScenarioConfig, num_classes: int | None) -> None:
    """Reject impossible splits at config time (``num_classes`` None: dataset not known yet)."""
    used = config.subset
    if config.order == "explicit" and used is None:
        used = len(config.class_order or [])
    if num_classes is not None:
        if used is not None and used > num_classes:
            raise ConfigError(f"scenario needs {used} classes but the dataset has {num_classes}")
        used = used or num_classes
    if config.order == "explicit" and config.subset is not None and config.subset > len(config.class_order or []):
        raise ConfigError(f"scenario.subset: {config.subset} exceeds the explicit class_order length")
    if used is None:
        return
    if config.num_tasks > used:
        raise ConfigError(f"scenario.num_tasks: {config.num_tasks} tasks for only {used} classes")
    task_sizes(config, used)


@dataclass(frozen=True)
class Task:
    """One task of a scenario: its index and the label range it introduces."""

    index: int
    start: int  # first label of this task (= number of old classes)
    stop: int  # one past its last label (= number of classes seen after it)

    @property
    def num_old(self) -> int:
        """Classes learned in earlier tasks."""
        return self.start

    @property
    def num_new(self) -> int:
        """Classes this task introduces."""
        return self.stop - self.start

    @property
    def num_seen(self) -> int:
        """Classes seen once this task is learned."""
        return self.stop


@dataclass(frozen=True)
class Scenario:
    """A resolved class-incremental scenario over one dataset."""

    order: list[int]  # original class index of each label position
    tasks: list[Task]

    @property
    def num_classes(self) -> int:
        """Classes used by the whole scenario."""
        return len(self.order)

    @property
    def offsets(self) -> list[int]:
        """Task boundaries [0, stop_0, stop_1, ...]."""
        return [0] + [t.stop for t in self.tasks]

    def class_to_task(self) -> np.ndarray:
        """Task index of every remapped label."""
        owner = np.empty(self.num_classes, dtype=np.int64)
        for task in self.tasks:
            owner[task.start : task.stop] = task.index
        return owner

    def remap(self, labels: np.ndarray) -> np.ndarray:
        """Map original labels to positions in the order (-1 for classes not in use)."""
        lookup = np.full(max(max(self.order) + 1, int(labels.max(initial=0)) + 1), -1, dtype=np.int64)
        lookup[np.asarray(self.order)] = np.arange(len(self.order))
        return lookup[labels]


def scenario_from_sizes(sizes: Sequence[int], order: Sequence[int] | None = None) -> Scenario:
    """The scenario whose tasks have ``sizes`` classes, in turn, over ``order`` (the original
    class of each label position; default: the identity order of ``sum(sizes)`` classes)."""
    tasks, start = [], 0
    for index, size in enumerate(sizes):
        tasks.append(Task(index=index, start=start, stop=start + size))
        start += size
    if order is not None and len(order) != start:
        raise ValueError(f"{len(order)} classes in the order, {start} in the tasks")
    return Scenario(order=list(range(start)) if order is None else list(order), tasks=tasks)


def build_scenario(config: ScenarioConfig, num_classes: int) -> Scenario:
    """Resolve order, subset and split for a dataset with ``num_classes`` classes."""
    check_split(config, num_classes)
    order = class_order(config, num_classes)
    if config.subset is not None:
        order = order[: config.subset]
    return scenario_from_sizes(task_sizes(config, len(order)), order)
