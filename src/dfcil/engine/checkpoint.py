"""Checkpoints of a run directory: ``checkpoints/last.pt`` (resumable) and per-task models."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from dfcil.atomic import torch_save
from dfcil.config import Config, fingerprint
from dfcil.errors import RunDirError
from dfcil.models import IncrementalClassifier
from dfcil.scenario import Scenario

FORMAT_VERSION = 1
LAST = Path("checkpoints") / "last.pt"


@dataclass(frozen=True)
class Position:
    """Where a run stands: ``epoch`` epochs of phase ``phase`` of task ``task`` are done
    (0-based task and phase), or, with ``task_done``, task ``task`` is finished and evaluated."""

    task: int
    phase: int
    epoch: int
    task_done: bool


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


def run_fingerprint(config: Config) -> str:
    """Fingerprint a checkpoint must carry to be resumed with ``config``."""
    return fingerprint(config)


def save(run_dir: Path, checkpoint: Checkpoint) -> None:
    """Atomically replace ``run_dir/checkpoints/last.pt``."""
    payload = asdict(checkpoint)
    payload["position"] = asdict(checkpoint.position)
    payload["format"] = FORMAT_VERSION
    torch_save(run_dir / LAST, payload)


def load(run_dir: Path, config: Config) -> Checkpoint | None:
    """The last checkpoint of ``run_dir`` (None when there is none), checked against ``config``."""
    path = run_dir / LAST
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means a bad file
        raise RunDirError(f"cannot read checkpoint {path}: {type(error).__name__}: {error}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise RunDirError(f"{path} is not a dfcil checkpoint of format {FORMAT_VERSION}")
    expected = run_fingerprint(config)
    if payload.get("fingerprint") != expected:
        raise RunDirError(
            f"{path} belongs to another run (config fingerprint {payload.get('fingerprint')}, expected {expected})"
        )
    payload.pop("format")
    payload["position"] = Position(**payload["position"])
    return Checkpoint(**payload)


def save_task_model(run_dir: Path, task_index: int, model: IncrementalClassifier, scenario: Scenario) -> None:
    """Weights of the model after ``task_index`` (for inspection and deployment)."""
    torch_save(
        run_dir / "checkpoints" / f"task_{task_index + 1}.pt",
        {
            "format": FORMAT_VERSION,
            "head_sizes": model.head_sizes,
            "class_order": scenario.order[: model.num_classes],
            "model": model.state_dict(),
        },
    )
