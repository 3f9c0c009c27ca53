"""How long a whole run takes, projected from the log of a part of it.

A full paper run is too long for a short lease of a GPU machine; its first minutes tell what
the rest costs. From ``RUN_DIR/log.jsonl`` (epoch records carry their phase's length, generator
records the planned steps) and ``RUN_DIR/config.yaml`` (how many tasks):

* every (task, phase) that has started: its mean epoch time x its planned epochs;
* every generator (or SKD delegator) training that has logged: planned steps / its steps per
  second;
* tasks not started yet: like the last started task after the first (every incremental task of
  an equal split costs the same per epoch; the generator steps too), so at least one epoch of
  task 2 must be in the log for a projection of the whole run.

Evaluation, checkpoints and start-up are left out (seconds in a CIFAR run); ``--wall`` compares
with ``metrics.json``'s ``wall_time_s`` where the run has finished.

Usage::

    python benchmarks/run_projection.py RUN_DIR
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dfcil.rundir import EpochRecord, LogRecord, ProgressRecord, RunDir, parse_record, read_log

#: a training before a task's first epoch (log event) -> its name among the task's parts
TRAINING_PARTS = {"synthesis": "generator", "delegator": "delegator"}


@dataclass
class Projection:
    """Projected seconds of a run, with the parts they come from."""

    seconds: float | None  # None when no task after the first has started
    parts: dict[str, float] = field(default_factory=dict)  # "task 2 main", "task 2 generator", ...
    measured_epochs: int = 0
    planned_epochs: int = 0


def _typed(records: Sequence[LogRecord | dict[str, Any]]) -> list[LogRecord]:
    return [parse_record(r) if isinstance(r, dict) else r for r in records]


def task_costs(records: Sequence[LogRecord | dict[str, Any]]) -> dict[int, dict[str, float]]:
    """Per started task: projected seconds of each phase and of its generator (or SKD's delegator)
    training, from typed log records (:mod:`dfcil.rundir`; parsed dicts are typed first)."""
    typed = _typed(records)
    epochs: dict[tuple[int, str], list[EpochRecord]] = {}
    training: dict[tuple[int, str], ProgressRecord] = {}
    for record in typed:
        if isinstance(record, EpochRecord):
            epochs.setdefault((record.task, record.phase), []).append(record)
        elif isinstance(record, ProgressRecord):
            training[(record.task, record.event)] = record  # the last record has the steadiest rate
    costs: dict[int, dict[str, float]] = {}
    for (task, phase), done in epochs.items():
        mean = statistics.mean(r.time_s for r in done)
        costs.setdefault(task, {})[phase] = mean * (done[-1].epochs or len(done))  # older logs: as done
    for (task, event), record in training.items():
        if record.rate is None:
            continue
        planned = record.planned or record.count  # older logs: as done
        costs.setdefault(task, {})[TRAINING_PARTS[event]] = planned / record.rate
    return costs


def project(records: Sequence[LogRecord | dict[str, Any]], num_tasks: int) -> Projection:
    """The whole run's projected seconds from the records of its first part."""
    typed = _typed(records)
    costs = task_costs(typed)
    parts = {f"task {task} {name}": seconds for task, named in sorted(costs.items()) for name, seconds in named.items()}
    epochs = [r for r in typed if isinstance(r, EpochRecord)]
    planned: dict[tuple[int, str], int] = {}
    for r in epochs:
        key = (r.task, r.phase)
        planned[key] = r.epochs or planned.get(key, 0) + 1
    later = [task for task in costs if task > 1 and any(name not in TRAINING_PARTS.values() for name in costs[task])]
    if not later:
        return Projection(None, parts, len(epochs), sum(planned.values()))
    template = costs[max(later)]
    total = sum(sum(named.values()) for named in costs.values())
    template_epochs = sum(n for (task, _), n in planned.items() if task == max(later))
    missing = [task for task in range(2, num_tasks + 1) if task not in costs]
    for task in missing:
        parts[f"task {task} (as task {max(later)})"] = sum(template.values())
    total += len(missing) * sum(template.values())
    return Projection(total, parts, len(epochs), sum(planned.values()) + len(missing) * template_epochs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args()
    files = RunDir(args.run_dir)
    log, config = files.log, files.config
    for path in (log, config):
        if not path.exists():
            parser.error(f"{path} does not exist (not a dfcil run directory?)")
    try:
        records = read_log(log, strict=True)
        num_tasks = int(yaml.safe_load(config.read_text())["scenario"]["num_tasks"])
        projection = project(records, num_tasks)
    except (ValueError, KeyError, TypeError, yaml.YAMLError) as error:
        parser.error(f"{args.run_dir}: unreadable log or config ({type(error).__name__}: {error})")
    for name, seconds in projection.parts.items():
        print(f"{name}: {seconds:.0f} s")
    if projection.seconds is None:
        print("no epoch of task 2 yet: the incremental tasks' cost is unknown")
        return 0
    print(f"projected run: {projection.seconds / 60:.1f} min ({projection.measured_epochs} of "
          f"{projection.planned_epochs} epochs measured; evaluation and checkpoints left out)")
    metrics = files.read_metrics()
    if metrics is not None:
        wall = metrics.get("wall_time_s")
        if isinstance(wall, (int, float)):
            print(f"metrics.json wall_time_s so far: {wall / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
