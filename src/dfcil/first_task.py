"""A completed first task, shared between runs that would train it identically.

In a B0 protocol every method of one seed trains the same first task: plain cross-entropy on the
first task's classes, with the same data, class order, network, schedule and seed (ABD's code
pretrains it once for all its methods). A run writes ``checkpoints/first_task.pt`` (its full
checkpoint at the end of task 1) and ``checkpoints/first_task.json`` (what determined that task:
:func:`first_task_identity`); ``dfcil run ... --first-task-from RUN_DIR`` then starts a new run at
task 2 from it, after checking that the identities are equal (a one-line error names the first
difference otherwise). The new run gets the donor's network, evaluation, random-number streams,
task-1 log records and ``task_1.pt``, and its own method's state as freshly created: exactly what
training task 1 itself would have left, for a method whose first task is plain CE
(``Method.plain_first_task``), up to the floating-point effects of a different machine or thread
count (as for ``--resume``). ``run.json`` records where the first task came from.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfcil.atomic import write_json
from dfcil.config import config_to_dict, drop_later_defaults, first_difference, without_runtime  # noqa: F401 - first_difference re-exported
from dfcil.engine import checkpoint as ckpt
from dfcil.errors import RunDirError
from dfcil.experiment import Experiment
from dfcil.rundir import RunDir

if TYPE_CHECKING:
    from dfcil.engine.trainer import Trainer

CHECKPOINT = RunDir(Path()).first_task_checkpoint  # relative to the run directory
RECORD = RunDir(Path()).first_task_record


def first_task_identity(experiment: Experiment, first_task_classes: list[int] | None) -> dict[str, Any]:
    """Everything that determines a run's first task (``runtime`` excluded, as for resumes).

    ``first_task_classes`` are the dataset labels of task 1 in class order; where they are not
    known (no data loaded, a dataset of unknown size) the whole ``scenario`` section stands in
    for them, which only matches runs of the same scenario. A method whose first task is plain CE
    contributes only that fact; any other method contributes its whole section."""
    config = experiment.config
    data = drop_later_defaults(config_to_dict(config))
    model = {**data["model"], "network_revision": config.model.network_revision}
    identity: dict[str, Any] = {"seed": data["seed"], "data": data["data"], "model": model, "train": data["train"]}
    if first_task_classes is None:
        identity["scenario"] = data["scenario"]
    else:
        identity["first_task_classes"] = [int(label) for label in first_task_classes]
    identity["method"] = "plain CE" if experiment.method.plain_first_task else data["method"]
    return identity


def save_first_task(run_dir: Path, identity: dict[str, Any]) -> None:
    """Keep the checkpoint just written at the end of task 1 as the run's shareable first task."""
    shutil.copyfile(run_dir / ckpt.LAST, run_dir / f"{CHECKPOINT}.tmp")
    (run_dir / f"{CHECKPOINT}.tmp").replace(run_dir / CHECKPOINT)
    write_json(run_dir / RECORD, {"identity": identity})  # last: its presence means both are there


def has_first_task(run_dir: Path) -> bool:
    """Whether ``run_dir`` has a completed first task that other runs can start from."""
    return (run_dir / RECORD).is_file() and (run_dir / CHECKPOINT).is_file()


def recorded_identity(donor: Path) -> dict[str, Any]:
    """The identity stored with ``donor``'s first task (one-line error when there is none)."""
    if not has_first_task(donor):
        raise RunDirError(f"--first-task-from: {donor} has no completed first task to share ({RECORD})")
    try:
        return json.loads((donor / RECORD).read_text())["identity"]
    except (OSError, ValueError, KeyError) as error:
        raise RunDirError(f"--first-task-from: cannot read {donor / RECORD}: {error}") from None


def adopt_first_task(donor: Path, trainer: Trainer) -> ckpt.Checkpoint:
    """The checkpoint that starts ``trainer``'s new run at task 2 from ``donor``'s first task.

    On the main process it also writes the new run's task-1 log records, ``task_1.pt``, its
    own first-task files and ``last.pt``, so that the run can be resumed
    (and shared) from the moment it starts."""
    identity = recorded_identity(donor)
    mine = trainer.first_task_identity()
    difference = first_difference(identity, mine)
    if difference:
        raise RunDirError(f"--first-task-from: the first task of {donor} was trained differently ({difference})")
    donor_checkpoint = ckpt.read(donor / CHECKPOINT)
    if donor_checkpoint.position != ckpt.Position(task=0, phase=0, epoch=0, task_done=True):
        raise RunDirError(f"--first-task-from: {donor / CHECKPOINT} is not a checkpoint at the end of task 1")
    checkpoint = replace(
        donor_checkpoint,
        fingerprint=ckpt.run_fingerprint(trainer.config),
        config=without_runtime(trainer.config),
        method=trainer.method.state_dict(),  # the state the method was created with
        optimizer=None,
        scheduler=None,
    )
    if trainer.dist.is_main:
        records = [json.loads(line) for line in RunDir(donor).log.read_text().splitlines() if line.strip()]
        for record in records:
            if record.get("task") == 1:
                trainer.log.append(record)
        mine_files = RunDir(trainer.run_dir)
        mine_files.checkpoints.mkdir(parents=True, exist_ok=True)
        if RunDir(donor).task_model(1).exists():
            shutil.copyfile(RunDir(donor).task_model(1), mine_files.task_model(1))
        ckpt.save(trainer.run_dir, checkpoint)
        save_first_task(trainer.run_dir, mine)
    return checkpoint
