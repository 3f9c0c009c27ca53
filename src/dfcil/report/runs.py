"""Discovery and loading of run directories (``metrics.json`` + ``config.yaml``).

A run directory may also hold ``run.json`` (provenance), ``suite.json`` (labels written by a
suite runner) and ``synthesis/task_N.png`` (synthetic-sample grids).  Damaged JSON / YAML
files raise :class:`dfcil.errors.DataError` with a one-line message naming the file in
:func:`load_run`; :func:`find_runs` lists such a run as excluded with that message instead, so
that one damaged run does not stop a report of many, and lists a run stopped in its first task
(``config.yaml`` and ``run.json``, no ``metrics.json`` yet) as incomplete.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dfcil.config import parse_config, recorded_network_revision
from dfcil.errors import ConfigError, DataError
from dfcil.rundir import CONFIG_FILE, METRICS_FILE, RUN_FILE, SUITE_FILE, RunDir
from dfcil.yamlio import safe_load

# keys a complete run's metrics.json must hold as numbers for the report to use it
REQUIRED_NUMBERS = ("last_accuracy", "average_incremental_accuracy")
# files that mark a run directory as a diagnostic rather than the method as published, and the
# row label's note for it: the replay oracle (benchmarks/replay_oracle.py) trains a data-free method
# on real old-class images in place of its synthetic ones, so it must never share the method's row
DIAGNOSTIC_FILES = {"oracle.json": "replay oracle: real old images"}


@dataclass
class RunRecord:
    """One loaded run directory.

    ``excluded`` is ``None`` for a run the aggregates use, otherwise the reason it is left
    out (e.g. ``"incomplete: 2 of 4 tasks evaluated"``).
    """

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    run_info: dict[str, Any] | None = None
    suite_labels: dict[str, str] | None = None
    suite_name: str | None = None
    suite_file: str | None = None  # the suite file that made the run (as given to `dfcil suite`)
    adopted_from: str | None = None  # the run directory a suite copied this run from
    excluded: str | None = None
    source_rank: int = 0  # index of the first path given to the report that holds this run
    diagnostic: str | None = None  # what a diagnostic run (not the method as published) changed
    older_network: str | None = None  # e.g. "network revision 1": trained before its network changed
    synthesis_grids: list[tuple[int, Path]] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The run directory's name."""
        return self.path.name

    @property
    def complete(self) -> bool:
        """Whether ``metrics.json`` says every task was trained and evaluated."""
        return bool(self.metrics.get("complete"))


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def read_json(path: Path) -> Any:
    """Parse the JSON file ``path``; a missing or damaged file raises ``DataError``."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read: {_one_line(error)}") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: damaged JSON ({error.msg} at line {error.lineno} column {error.colno})") from None


def read_yaml(path: Path) -> Any:
    """Parse the YAML file ``path``; a missing or damaged file raises ``DataError``."""
    try:
        return safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read: {_one_line(error)}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise DataError(f"{path}: damaged YAML ({_one_line(problem)}{where})") from None


def _mapping(value: Any, path: Path) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected a mapping at the top level, got {type(value).__name__}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _exclusion(metrics: dict[str, Any], path: Path) -> str | None:
    """Why a run is left out of the aggregates (``None``: it is used)."""
    start = metrics.get("start_task")
    if isinstance(start, int) and start > 1:
        return f"no run-level metrics (a data-free step starting at task {start})"
    if not metrics.get("complete"):
        rows = metrics.get("accuracy_per_step")
        tasks = metrics.get("tasks")
        if isinstance(rows, list) and isinstance(tasks, list):
            return f"incomplete: {len(rows)} of {len(tasks)} tasks evaluated"
        return "incomplete"
    for key in REQUIRED_NUMBERS:
        if not _is_number(metrics.get(key)):
            raise DataError(f"{path}: '{key}' is missing or not a finite number")
    return None


def _synthesis_grids(run_dir: Path) -> list[tuple[int, Path]]:
    folder = RunDir(run_dir).synthesis
    if not folder.is_dir():
        return []
    grids = []
    for file in folder.iterdir():
        match = re.fullmatch(r"task_(\d+)\.png", file.name)
        if match and file.is_file():
            grids.append((int(match.group(1)), file))
    return sorted(grids)


def _older_network(config: dict[str, Any], run_info: dict[str, Any] | None) -> str | None:
    """``"network revision N"`` when the run was trained with revision N of a network that its
    config now builds at a later revision (:data:`dfcil.config.NETWORK_REVISIONS`), else None
    (also when the revision cannot be told: no recorded fingerprint, or a config that no
    longer parses)."""
    recorded = (run_info or {}).get("fingerprint")
    if not isinstance(recorded, str):
        return None
    try:
        current = parse_config(config).model.network_revision
    except (ConfigError, TypeError, ValueError):
        return None
    trained = recorded_network_revision(config, recorded)
    return None if trained is None or trained == current else f"network revision {trained}"


def load_run(run_dir: Path) -> RunRecord:
    """Load one run directory into a :class:`RunRecord` (``DataError`` on damaged files)."""
    run_dir = Path(run_dir)
    metrics_file, config_file = run_dir / METRICS_FILE, run_dir / CONFIG_FILE
    metrics = _mapping(read_json(metrics_file), metrics_file)
    config = _mapping(read_yaml(config_file), config_file)
    run_info = None
    if (run_dir / RUN_FILE).is_file():
        run_info = _mapping(read_json(run_dir / RUN_FILE), run_dir / RUN_FILE)
    diagnostic_file = next((run_dir / file for file in DIAGNOSTIC_FILES if (run_dir / file).is_file()), None)
    if run_info is None and diagnostic_file is not None:
        # a diagnostic's own provenance (command, commit, machine, start) stands in for run.json
        provenance = _mapping(read_json(diagnostic_file), diagnostic_file)
        run_info = {"sessions": [{key: provenance[key] for key in ("started", "command", "commit", "machine")
                                  if key in provenance}]}
    suite_labels, suite_name, suite_file, adopted_from = None, None, None, None
    if (run_dir / SUITE_FILE).is_file():
        suite = _mapping(read_json(run_dir / SUITE_FILE), run_dir / SUITE_FILE)
        labels = suite.get("labels", {})
        if not isinstance(labels, dict):
            raise DataError(f"{run_dir / SUITE_FILE}: 'labels' must be a mapping")
        suite_labels = {str(k): str(v) for k, v in labels.items()}
        suite_name = None if suite.get("suite") is None else str(suite["suite"])
        suite_file = None if suite.get("suite_file") is None else str(suite["suite_file"])
        adopted_from = None if suite.get("adopted_from") is None else str(suite["adopted_from"])
    return RunRecord(
        path=run_dir,
        config=config,
        metrics=metrics,
        run_info=run_info,
        suite_labels=suite_labels,
        suite_name=suite_name,
        suite_file=suite_file,
        adopted_from=adopted_from,
        excluded=_exclusion(metrics, metrics_file),
        synthesis_grids=_synthesis_grids(run_dir),
        diagnostic=None if diagnostic_file is None else DIAGNOSTIC_FILES[diagnostic_file.name],
        older_network=_older_network(config, run_info),
    )


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` holds both ``metrics.json`` and ``config.yaml``."""
    return (path / METRICS_FILE).is_file() and (path / CONFIG_FILE).is_file()


def is_started_run_dir(path: Path) -> bool:
    """Whether ``path`` is a run that has started but not yet written ``metrics.json`` (stopped or
    still running in its first task): ``config.yaml`` and ``run.json`` without ``metrics.json``."""
    return (path / CONFIG_FILE).is_file() and (path / RUN_FILE).is_file() and not (path / METRICS_FILE).exists()


def _unusable_run(run_dir: Path, reason: str) -> RunRecord:
    """The record of a run the report lists but cannot use (its labels from ``config.yaml``
    where that file is readable)."""
    try:
        config = _mapping(read_yaml(run_dir / CONFIG_FILE), run_dir / CONFIG_FILE)
    except DataError:
        config = {}
    return RunRecord(path=run_dir, config=config, metrics={}, excluded=reason)


def load_run_or_reason(run_dir: Path) -> RunRecord:
    """:func:`load_run`, except that a run whose files are damaged, or that has not finished
    its first task, comes back excluded with the reason instead of stopping the report."""
    if is_started_run_dir(run_dir):
        return _unusable_run(run_dir, "incomplete: stopped in task 1 (no metrics.json yet)")
    try:
        return load_run(run_dir)
    except DataError as error:
        return _unusable_run(run_dir, f"damaged: {error}")


def _run_dirs_under(root: Path) -> list[Path]:
    if is_run_dir(root) or is_started_run_dir(root):
        return [root]
    found = []
    for current, dirs, _files in os.walk(root):
        here = Path(current)
        if here != root and (is_run_dir(here) or is_started_run_dir(here)):
            found.append(here)
            dirs[:] = []  # a run directory's sub-folders (checkpoints, synthesis) hold no runs
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return found


def find_runs(paths: list[Path]) -> list[RunRecord]:
    """Every run directory under ``paths`` (recursively; a path may be a run directory itself).

    Results are sorted by path and de-duplicated; a path that does not exist raises
    ``DataError``.  Incomplete and damaged runs are returned too, with ``excluded`` set.  Each run's
    ``source_rank`` is the index in ``paths`` of the first path it was found under.
    """
    seen: dict[Path, int] = {}
    for rank, path in enumerate(paths):
        path = Path(path)
        if path.is_file() and path.name in (METRICS_FILE, CONFIG_FILE):
            path = path.parent
        if not path.is_dir():
            raise DataError(f"{path}: no such run directory or folder")
        for run_dir in _run_dirs_under(path):
            seen.setdefault(run_dir.resolve(), rank)
    records = []
    for run_dir in sorted(seen):
        record = load_run_or_reason(_relative_to_cwd(run_dir))
        record.source_rank = seen[run_dir]
        records.append(record)
    return exclude_copies(records)


def _run_identity(record: RunRecord) -> tuple[str, ...] | None:
    """What makes two run directories copies of one run: the config fingerprint, the start time
    and command of the first session (``run.json``) and the whole ``metrics.json``; None for
    runs without provenance."""
    info = record.run_info or {}
    sessions = info.get("sessions")
    if not info.get("fingerprint") or not isinstance(sessions, list) or not sessions or not isinstance(sessions[0], dict):
        return None
    return (str(info["fingerprint"]), str(sessions[0].get("started")), str(sessions[0].get("command")),
            json.dumps(record.metrics, sort_keys=True))


def exclude_copies(records: list[RunRecord]) -> list[RunRecord]:
    """Exclude all but one directory of each run found more than once (e.g. a run a suite
    adopted, given to the report beside its original), so that no run counts twice. The copy
    kept is one with suite labels (it groups with its suite); among several, the one under the
    path given first to the report (a run two suites adopted groups with the suite given first);
    then the first by path."""
    by_identity: dict[tuple[str, ...], list[RunRecord]] = {}
    for record in records:
        identity = _run_identity(record)
        if identity is not None:
            by_identity.setdefault(identity, []).append(record)
    for copies in by_identity.values():
        if len(copies) < 2:
            continue
        keep = min(copies, key=lambda r: (not r.suite_labels, r.source_rank, str(r.path)))
        for record in copies:
            if record is not keep and record.excluded is None:
                record.excluded = f"a copy of the same run as {keep.path}"
    return records


def _relative_to_cwd(path: Path) -> Path:
    """``path`` relative to the working directory when it lies below it (so that reports name
    run directories the same way on every machine), else unchanged."""
    try:
        return path.relative_to(Path.cwd().resolve())
    except ValueError:
        return path
