"""Checkpoints of a run directory: ``checkpoints/last.pt`` (resumable) and per-task models."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from dfcil.atomic import torch_save
from dfcil.config import Config, fingerprint, first_difference, recorded_network_revision, without_runtime
from dfcil.errors import RunDirError
from dfcil.models import IncrementalClassifier
from dfcil.rundir import RunDir
from dfcil.scenario import Scenario

FORMAT_VERSION = 1
LAST = RunDir(Path()).last_checkpoint  # relative to the run directory


@dataclass(frozen=True)
class Position:
    """Where a run stands: ``epoch`` epochs of phase ``phase`` of task ``task`` are done
    (0-based task and phase), or, with ``task_done``, task ``task`` is finished and evaluated,
    or, with ``preparing``, the task's preparation (a generator's or delegator's training before
    its first epoch) is in progress with ``preparing`` steps done."""

    task: int
    phase: int
    epoch: int
    task_done: bool
    preparing: int | None = None


@dataclass
class Checkpoint:
    """Everything needed to continue a run exactly where it stopped."""

    fingerprint: str
    position: Position
    head_sizes: list[int]
    model: dict[str, Any]
    method: dict[str, Any]
    optimizer: dict[str, Any] | None
    scheduler: dict[str, Any] | None
    rng: dict[str, Any]
    results: list[dict[str, Any]]
    wall_time_s: float
    world_size: int = 1  # processes of the run that wrote it (any count may resume it)
    config: dict[str, Any] | None = None  # the config it was trained with, runtime left out (older files: None)


def run_fingerprint(config: Config) -> str:
    """Fingerprint a checkpoint must carry to be resumed with ``config``."""
    return fingerprint(config)


def save(run_dir: Path, checkpoint: Checkpoint) -> None:
    """Atomically replace ``run_dir/checkpoints/last.pt``."""
    # shallow on purpose: dataclasses.asdict deep-copies nested dicts through their type's
    # constructor, which turns the Counter of MultiStepLR's milestones into a Counter of
    # (milestone, count) pairs, so a resumed schedule would never decay again
    payload = {field.name: getattr(checkpoint, field.name) for field in fields(checkpoint)}
    payload["position"] = asdict(checkpoint.position)
    payload["format"] = FORMAT_VERSION
    torch_save(run_dir / LAST, payload)


def read(path: Path) -> Checkpoint:
    """The checkpoint in the file ``path``, whatever run it belongs to (one-line errors)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means a bad file
        raise RunDirError(f"cannot read checkpoint {path}: {type(error).__name__}: {error}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise RunDirError(f"{path} is not a dfcil checkpoint of format {FORMAT_VERSION}")
    payload.pop("format")
    payload["position"] = Position(**payload["position"])
    payload["scheduler"] = _repair_milestones(payload.get("scheduler"))
    return Checkpoint(**payload)


def load(run_dir: Path, config: Config) -> Checkpoint | None:
    """The last checkpoint of ``run_dir`` (None when there is none), checked against ``config``."""
    path = run_dir / LAST
    if not path.exists():
        return None
    try:
        checkpoint = read(path)
    except RunDirError as error:
        # the run's first task is a complete checkpoint of its own (dfcil.first_task)
        hint = (f"; a new run can start from its first task: dfcil run {run_dir / 'config.yaml'} -o NEW_DIR "
                f"--first-task-from {run_dir}") if RunDir(run_dir).first_task_record.is_file() else \
            "; start the run again in a new directory"
        raise RunDirError(f"{error} (the run cannot be resumed{hint})") from None
    expected = run_fingerprint(config)
    if checkpoint.fingerprint != expected:
        trained = None if checkpoint.config is None else recorded_network_revision(checkpoint.config, checkpoint.fingerprint)
        if trained is not None and trained != config.model.network_revision:
            raise RunDirError(
                f"{path} was trained with revision {trained} of the {config.model.network_key} network, and this "
                f"dfcil builds revision {config.model.network_revision} (NETWORK_REVISIONS in dfcil.config): "
                "the run cannot be resumed; start it again in a new directory")
        difference = None if checkpoint.config is None else first_difference(
            checkpoint.config, without_runtime(config), ("in the checkpoint", "in the config"))
        if difference:
            raise RunDirError(f"{path} was trained with a different config than {run_dir / 'config.yaml'} "
                              f"({difference}): config.yaml edited, or the checkpoint copied from another run?")
        raise RunDirError(
            f"{path} belongs to another run (config fingerprint {checkpoint.fingerprint}, expected {expected})"
        )
    return checkpoint


def _repair_milestones(state: dict[str, Any] | None) -> dict[str, Any] | None:
    """Undo the mangling of MultiStepLR milestones in checkpoints written before the fix in
    :func:`save` (``Counter({(10, 1): 1})`` -> ``Counter({10: 1})``)."""
    if state is None:
        return None
    milestones = state.get("milestones")
    if isinstance(milestones, Counter) and milestones and all(isinstance(k, tuple) for k in milestones):
        state = {**state, "milestones": Counter({int(k[0]): int(k[1]) for k in milestones})}
    return state


def save_task_model(run_dir: Path, task_index: int, model: IncrementalClassifier, scenario: Scenario) -> None:
    """Weights of the model after ``task_index`` (for inspection and deployment)."""
    torch_save(
        RunDir(run_dir).task_model(task_index + 1),
        {
            "format": FORMAT_VERSION,
            "head_sizes": model.head_sizes,
            "class_order": scenario.order[: model.num_classes],
            "model": model.state_dict(),
        },
    )
