"""The run directory's on-disk format, in one place.

A run directory holds::

    config.yaml          the resolved config (``dfcil run --resume`` reads it)
    run.json             how it was made: command, commit, machine, sessions
    log.jsonl            one JSON record per line: epochs, evaluations, generator steps, ...
    metrics.json         the results so far (``complete``: true at the end)
    suite.json           the labels of a suite run (``dfcil suite``)
    checkpoints/         last.pt (resume), task_<t>.pt (the model after task t), first_task.*
    synthesis/           sample grids task_<t>.png, domain-gap samples and features (.npz)
    generators/          a replay method's generator after each task
    tensorboard/         the optional TensorBoard event files

:class:`RunDir` names every one of these paths; :func:`read_log` turns ``log.jsonl`` into typed
records (:class:`EpochRecord`, :class:`EvalRecord`, :class:`PhaseEvalRecord`,
:class:`ProgressRecord` for a generator's or delegator's training, :class:`OtherRecord`) that
``dfcil suite --status``, the campaign and ``benchmarks/run_projection.py`` read instead of
parsing keys by hand; :func:`run_state` says where a run stands.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from dfcil.config import recorded_network_revision
from dfcil.errors import ConfigError
from dfcil.runlock import is_run_locked
from dfcil.yamlio import load_file

CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
LOG_FILE = "log.jsonl"
METRICS_FILE = "metrics.json"
SUITE_FILE = "suite.json"
CHECKPOINTS_DIR = "checkpoints"
SYNTHESIS_DIR = "synthesis"
GENERATORS_DIR = "generators"
TENSORBOARD_DIR = "tensorboard"

RunState = Literal["complete", "running", "interrupted", "new"]

#: every file the format names, relative to the run directory (``.lock``: :mod:`dfcil.runlock`)
_KNOWN = re.compile("|".join([
    *(re.escape(name) for name in (CONFIG_FILE, RUN_FILE, LOG_FILE, METRICS_FILE, SUITE_FILE, ".lock")),
    rf"{CHECKPOINTS_DIR}/(last|first_task|task_\d+)\.pt", rf"{CHECKPOINTS_DIR}/first_task\.json",
    rf"{SYNTHESIS_DIR}/task_\d+(\.png|_samples\.npz|_features\.npz)",
    rf"{GENERATORS_DIR}/task_\d+\.pt", rf"{TENSORBOARD_DIR}/.+",
]))


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory (nothing is read or created by naming them)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        """``config.yaml``."""
        return self.path / CONFIG_FILE

    @property
    def run_info(self) -> Path:
        """``run.json``."""
        return self.path / RUN_FILE

    @property
    def log(self) -> Path:
        """``log.jsonl``."""
        return self.path / LOG_FILE

    @property
    def metrics(self) -> Path:
        """``metrics.json``."""
        return self.path / METRICS_FILE

    @property
    def suite(self) -> Path:
        """``suite.json``."""
        return self.path / SUITE_FILE

    @property
    def checkpoints(self) -> Path:
        """``checkpoints/``."""
        return self.path / CHECKPOINTS_DIR

    @property
    def last_checkpoint(self) -> Path:
        """``checkpoints/last.pt``: what a resume continues from."""
        return self.checkpoints / "last.pt"

    def task_model(self, task: int) -> Path:
        """``checkpoints/task_<task>.pt``: the model after task ``task`` (1-based)."""
        return self.checkpoints / f"task_{task}.pt"

    @property
    def first_task_checkpoint(self) -> Path:
        """``checkpoints/first_task.pt``: the completed first task (:mod:`dfcil.first_task`)."""
        return self.checkpoints / "first_task.pt"

    @property
    def first_task_record(self) -> Path:
        """``checkpoints/first_task.json``: what determined the first task."""
        return self.checkpoints / "first_task.json"

    @property
    def synthesis(self) -> Path:
        """``synthesis/``: synthetic-sample grids and the domain-gap files."""
        return self.path / SYNTHESIS_DIR

    def sample_grid(self, task: int) -> Path:
        """``synthesis/task_<task>.png``: the synthetic samples a method drew before task ``task``."""
        return self.synthesis / f"task_{task}.png"

    def gap_samples(self, task: int) -> Path:
        """``synthesis/task_<task>_samples.npz``: the synthetic samples kept for the domain gap."""
        return self.synthesis / f"task_{task}_samples.npz"

    def gap_features(self, task: int) -> Path:
        """``synthesis/task_<task>_features.npz``: the features the report's domain gap reads."""
        return self.synthesis / f"task_{task}_features.npz"

    def generator(self, task: int) -> Path:
        """``generators/task_<task>.pt``: a replay method's generator trained before task ``task``."""
        return self.path / GENERATORS_DIR / f"task_{task}.pt"

    @property
    def tensorboard(self) -> Path:
        """``tensorboard/``: the event files of ``runtime.tensorboard``."""
        return self.path / TENSORBOARD_DIR

    def unknown_files(self) -> list[Path]:
        """Files under the run directory that the format does not name (relative paths, sorted): a
        method that writes past :attr:`RunEnv.artifacts` leaves some (``tests/test_conformance.py``)."""
        if not self.path.is_dir():
            return []
        unknown = []
        for file in sorted(self.path.rglob("*")):
            relative = file.relative_to(self.path)
            if file.is_file() and not _KNOWN.fullmatch(relative.as_posix()):
                unknown.append(relative)
        return unknown

    def read_metrics(self) -> dict[str, Any] | None:
        """``metrics.json`` as a dict, or None when it is missing, unreadable or not an object."""
        try:
            data = json.loads(self.metrics.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def trained_network_revision(self) -> int | None:
        """The network revision the run trained: :func:`dfcil.config.recorded_network_revision` of
        ``config.yaml`` as written and the fingerprint ``run.json`` recorded; None when either file
        is missing or unreadable, or no revision matches (a run made since its network last changed
        has today's revision, one made before keeps its older one)."""
        try:
            info = json.loads(self.run_info.read_text())
            written = load_file(self.config)
        except (OSError, ValueError, ConfigError):  # load_file says ConfigError for bad YAML
            return None
        recorded = info.get("fingerprint") if isinstance(info, dict) else None
        if not isinstance(recorded, str) or not isinstance(written, dict):
            return None
        return recorded_network_revision(written, recorded)

    def records(self, strict: bool = False) -> list[LogRecord]:
        """The typed records of ``log.jsonl`` (see :func:`read_log`); none when there is no log."""
        if not self.log.exists():
            return []
        return read_log(self.log, strict=strict)


def run_state(run_dir: Path | RunDir) -> RunState:
    """``complete`` (``metrics.json`` says so), ``running`` (a live process holds the run's lock),
    ``interrupted`` (a config is there: resumable) or ``new``."""
    folder = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    metrics = folder.read_metrics()
    if metrics is not None and metrics.get("complete"):
        return "complete"
    if is_run_locked(folder.path):
        return "running"
    return "interrupted" if folder.config.exists() else "new"


# --- the records of log.jsonl ---------------------------------------------------------------------
def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of one phase of one task (``"event": "epoch"``)."""

    event: ClassVar[str] = "epoch"
    task: int  # 1-based
    phase: str
    phase_index: int
    epoch: int  # 1-based, within the phase
    epochs: int | None  # the phase's length (None in logs older than the field)
    lr: float
    loss: float | None  # the weighted sum, mean over the epoch's images (None: not logged)
    losses: dict[str, float]  # each named term (unweighted), mean over the epoch's images
    weights: dict[str, float]
    train_accuracy: float | None
    images: int
    time_s: float
    images_per_s: float
    threads: int | None  # torch's CPU threads at the end of the epoch

    def to_json(self) -> dict[str, Any]:
        """The line written to ``log.jsonl`` (keys in the order they have always had)."""
        return {"event": self.event, "task": self.task, "phase": self.phase, "phase_index": self.phase_index,
                "epoch": self.epoch, "epochs": self.epochs, "lr": self.lr, "loss": self.loss,
                "losses": self.losses, "weights": self.weights, "train_accuracy": self.train_accuracy,
                "images": self.images, "time_s": self.time_s, "images_per_s": self.images_per_s,
                "threads": self.threads}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> EpochRecord:
        """Parse a line (KeyError / TypeError / ValueError when it is not an epoch record)."""
        return cls(task=int(raw["task"]), phase=str(raw["phase"]), phase_index=int(raw.get("phase_index", 0)),
                   epoch=int(raw["epoch"]), epochs=None if raw.get("epochs") is None else int(raw["epochs"]),
                   lr=float(raw.get("lr", math.nan)), loss=_number(raw.get("loss")),
                   losses={str(k): float(v) for k, v in (raw.get("losses") or {}).items()},
                   weights={str(k): float(v) for k, v in (raw.get("weights") or {}).items()},
                   train_accuracy=_number(raw.get("train_accuracy")), images=int(raw.get("images", 0)),
                   time_s=float(raw.get("time_s") or 0.0), images_per_s=float(raw.get("images_per_s") or 0.0),
                   threads=None if raw.get("threads") is None else int(raw["threads"]))


@dataclass(frozen=True)
class EvalRecord:
    """The test evaluation at the end of a task (``"event": "eval"``)."""

    event: ClassVar[str] = "eval"
    task: int
    accuracy: float
    old: float | None
    new: float | None
    matrix_row: list[float | None]
    images: int
    images_per_s: float

    def to_json(self) -> dict[str, Any]:
        """The line written to ``log.jsonl``."""
        return {"event": self.event, "task": self.task, "accuracy": self.accuracy, "old": self.old, "new": self.new,
                "matrix_row": self.matrix_row, "images": self.images, "images_per_s": self.images_per_s}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> EvalRecord:
        """Parse a line."""
        return cls(task=int(raw["task"]), accuracy=float(raw["accuracy"]), old=_number(raw.get("old")),
                   new=_number(raw.get("new")), matrix_row=[_number(v) for v in raw.get("matrix_row") or []],
                   images=int(raw.get("images", 0)), images_per_s=float(raw.get("images_per_s") or 0.0))


@dataclass(frozen=True)
class PhaseEvalRecord:
    """The test evaluation at the end of a phase another phase follows (``"event": "phase_eval"``:
    e.g. R-DFCIL before its refinement)."""

    event: ClassVar[str] = "phase_eval"
    task: int
    phase: str
    phase_index: int
    accuracy: float
    old: float | None
    new: float | None

    def to_json(self) -> dict[str, Any]:
        """The line written to ``log.jsonl``."""
        return {"event": self.event, "task": self.task, "phase": self.phase, "phase_index": self.phase_index,
                "accuracy": self.accuracy, "old": self.old, "new": self.new}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> PhaseEvalRecord:
        """Parse a line."""
        return cls(task=int(raw["task"]), phase=str(raw["phase"]), phase_index=int(raw["phase_index"]),
                   accuracy=float(raw["accuracy"]), old=_number(raw.get("old")), new=_number(raw.get("new")))


#: event -> (the key of its step count, the key of its rate, what one step is called)
PROGRESS_EVENTS: dict[str, tuple[str, str, str]] = {
    "synthesis": ("step", "steps_per_s", "generator step"),
    "delegator": ("iteration", "iterations_per_s", "delegator iteration"),
}


@dataclass(frozen=True)
class ProgressRecord:
    """A window of a training a method runs before a task's first epoch: a generator
    (``"event": "synthesis"``) or SKD's delegator (``"delegator"``). ``count`` steps are done of
    ``planned`` (None in logs older than the field), at ``rate`` steps per second since the
    training (re)started; ``values`` holds its loss terms and diagnostics."""

    event: str
    task: int
    count: int
    planned: int | None
    rate: float | None
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def step_name(self) -> str:
        """What one step is called (``generator step``, ``delegator iteration``)."""
        return PROGRESS_EVENTS[self.event][2]

    @property
    def seconds(self) -> float | None:
        """Seconds of training its rate implies for the steps done (None without a rate)."""
        return self.count / self.rate if self.rate else None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ProgressRecord:
        """Parse a line of one of :data:`PROGRESS_EVENTS`."""
        event = str(raw["event"])
        count_key, rate_key, _ = PROGRESS_EVENTS[event]
        planned_key = "steps" if event == "synthesis" else "iterations"
        count = raw[count_key]
        if not isinstance(count, (int, float)) or isinstance(count, bool):
            raise TypeError(f"{count_key} is not a number")
        rate = _number(raw.get(rate_key))
        planned = raw.get(planned_key)
        values = {k: v for k, v in raw.items() if k not in ("event", "task", count_key, rate_key, planned_key)}
        return cls(event=event, task=int(raw["task"]), count=int(count),
                   planned=int(planned) if isinstance(planned, (int, float)) else None,
                   rate=rate if rate and rate > 0 else None, values=values)


def training_seconds(records: list[ProgressRecord]) -> float:
    """Seconds of generator / delegator training that ``records`` (in log order) account for.

    A training logs its step count and its rate since it (re)started: its time is count / rate at its
    last record; a count that falls, or another training, starts a new one (e.g. after a resume)."""
    seconds = 0.0
    current: tuple[str, int] | None = None
    count, current_seconds = 0, 0.0
    for record in records:
        key = (record.event, record.task)
        if key != current or record.count <= count:
            seconds += current_seconds
            current_seconds = 0.0
        current, count = key, record.count
        if record.seconds is not None:
            current_seconds = record.seconds
    return seconds + current_seconds


@dataclass(frozen=True)
class OtherRecord:
    """Any other record (a method's own, e.g. ``refine``, ``replay_oracle``), kept as written."""

    event: str | None
    task: int | None
    fields: dict[str, Any]


LogRecord = EpochRecord | EvalRecord | PhaseEvalRecord | ProgressRecord | OtherRecord
_TYPED: dict[str, Any] = {"epoch": EpochRecord, "eval": EvalRecord, "phase_eval": PhaseEvalRecord,
                          **{event: ProgressRecord for event in PROGRESS_EVENTS}}


def parse_record(raw: Any) -> LogRecord:
    """The typed record of one parsed ``log.jsonl`` line (ValueError when it is not an object or a
    known event lacks a field it needs)."""
    if not isinstance(raw, dict):
        raise ValueError(f"a log record is a JSON object, got {type(raw).__name__}")
    event = raw.get("event")
    typed = _TYPED.get(event) if isinstance(event, str) else None
    if typed is None:
        task = raw.get("task")
        return OtherRecord(event if isinstance(event, str) else None,
                           int(task) if isinstance(task, int) and not isinstance(task, bool) else None, dict(raw))
    try:
        return typed.from_json(raw)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"a {event!r} record without a valid {error}") from None


def read_log(path: Path, strict: bool = False) -> list[LogRecord]:
    """The typed records of the ``log.jsonl`` at ``path``. A line that is not JSON or not a valid
    record raises ValueError (naming the line) with ``strict``; otherwise it is passed over (a
    status display must not fail on one damaged line)."""
    records: list[LogRecord] = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(parse_record(json.loads(line)))
        except ValueError as error:
            if strict:
                raise ValueError(f"{path}:{number}: {error}") from None
    return records
