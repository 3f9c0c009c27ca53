"""Where every run of a suite stands (``dfcil suite --status``) and the run time it still needs."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfcil.rundir import EpochRecord, ProgressRecord, RunDir, run_state, training_seconds
from dfcil.suite.grid import Suite, SuiteRun


def run_progress(run_dir: Path) -> dict[str, Any]:
    """Where one suite run stands: ``state`` (complete / running / interrupted / new), ``at`` (the last
    logged epoch or generator step, e.g. ``task 2 main epoch 7``, ``task 3 generator step 200``),
    ``minutes`` (wall time of a complete run, else the summed time of its logged epochs and
    generator training, as far as logged) and ``last_accuracy``."""
    files = RunDir(run_dir)
    state = run_state(files)
    progress: dict[str, Any] = {"state": state, "at": "-", "minutes": None, "last_accuracy": None}
    try:
        records = files.records()
    except OSError:
        records = []
    seconds = 0.0
    for record in records:
        if isinstance(record, EpochRecord):
            progress["at"] = f"task {record.task} {record.phase} epoch {record.epoch}"
            seconds += record.time_s
        elif isinstance(record, ProgressRecord):
            progress["at"] = f"task {record.task} {record.step_name} {record.count}"
    seconds += training_seconds([r for r in records if isinstance(r, ProgressRecord)])
    if seconds:
        progress["minutes"] = seconds / 60
    metrics = files.read_metrics() if state == "complete" else None
    if metrics is not None:
        progress["at"] = "done"
        if isinstance(metrics.get("wall_time_s"), (int, float)):
            progress["minutes"] = metrics["wall_time_s"] / 60
        progress["last_accuracy"] = metrics.get("last_accuracy")
    return progress


def _is_adopted(run_dir: Path) -> bool:
    """Whether a suite copied this run from elsewhere (``suite.json``'s ``adopted_from``)."""
    try:
        return json.loads(RunDir(run_dir).suite.read_text()).get("adopted_from") is not None
    except (OSError, ValueError, AttributeError):
        return False


def _sibling_key(run: SuiteRun) -> tuple[tuple[str, str], ...]:
    """A run's labels on every axis but ``seed``: runs with the same key do the same work."""
    return tuple((axis, label) for axis, label in run.labels.items() if axis != "seed")


@dataclass(frozen=True)
class TimeLeft:
    """The estimated run time a suite still needs, from :func:`estimate_time_left`."""

    minutes: float  # summed over the runs with an estimate (run time, not wall time)
    estimated: int  # unfinished runs with an estimate
    unknown: tuple[str, ...]  # unfinished runs without one (no complete sibling run)


def estimate_time_left(suite: Suite, out: Path, progress: dict[str, dict[str, Any]] | None = None,
                       grid: Suite | None = None) -> TimeLeft:
    """Estimate the minutes of run time ``suite``'s unfinished runs under ``out`` still need.

    A run is expected to take the median minutes of the complete runs made here that differ from it
    only in ``seed`` (adopted runs were timed on another machine and do not count); an interrupted or
    running one needs that less the minutes it has logged (at least 0). ``progress`` maps run names
    to :func:`run_progress` results already computed; ``grid`` is the whole suite when ``suite`` is
    a selection (its other complete runs count too)."""
    known_progress = dict(progress or {})

    def progress_of(run: SuiteRun) -> dict[str, Any]:
        if run.name not in known_progress:
            known_progress[run.name] = run_progress(out / run.name)
        return known_progress[run.name]

    durations: dict[tuple[tuple[str, str], ...], list[float]] = {}
    for run in (grid or suite).runs:
        state = progress_of(run)
        if state["state"] == "complete" and state["minutes"] and not _is_adopted(out / run.name):
            durations.setdefault(_sibling_key(run), []).append(float(state["minutes"]))
    minutes, estimated, unknown = 0.0, 0, []
    for run in suite.runs:
        state = progress_of(run)
        if state["state"] == "complete":
            continue
        known = durations.get(_sibling_key(run))
        if not known:
            unknown.append(run.name)
            continue
        minutes += max(statistics.median(known) - float(state["minutes"] or 0.0), 0.0)
        estimated += 1
    return TimeLeft(minutes, estimated, tuple(unknown))


def _hours_or_minutes(minutes: float) -> str:
    """``42 min`` under an hour, else ``3.5 h``."""
    return f"{minutes:.0f} min" if minutes < 60 else f"{minutes / 60:.1f} h"


def _time_left_line(left: TimeLeft, jobs: int) -> str:
    """One line that states :class:`TimeLeft`, with the wall time at ``jobs`` runs at once."""
    if not left.estimated and not left.unknown:
        return "time left: none, every run is complete"
    parts = []
    if left.estimated:
        wall = f" ({_hours_or_minutes(left.minutes / jobs)} of wall time at --jobs {jobs})" if jobs > 1 else ""
        parts.append(f"time left: about {_hours_or_minutes(left.minutes)} of run time in {left.estimated} "
                     f"runs{wall}, from the complete runs here that differ only in seed")
    if left.unknown and left.estimated:
        parts.append(f"{len(left.unknown)} runs have no such run to go by")
    elif left.unknown:
        parts.append(f"time left: unknown for the {len(left.unknown)} unfinished runs "
                     "(no complete run here that differs from one only in seed)")
    return "; ".join(parts)


def status_table(suite: Suite, out: Path, jobs: int = 1, grid: Suite | None = None) -> str:
    """A plain-text table of every run of ``suite`` under ``out`` with :func:`run_progress`, then
    the count of runs in each state and the estimated time left (:func:`estimate_time_left`, from
    the complete runs of ``grid``, the whole suite, if ``suite`` is a selection) with the wall time
    that makes at ``jobs`` runs at once."""
    rows = [("run", "state", "at", "minutes", "A_N")]
    counts: dict[str, int] = {}
    progress_by_run: dict[str, dict[str, Any]] = {}
    for run in suite.runs:
        progress = progress_by_run[run.name] = run_progress(out / run.name)
        counts[progress["state"]] = counts.get(progress["state"], 0) + 1
        minutes = "-" if progress["minutes"] is None else f"{progress['minutes']:.1f}"
        accuracy = progress["last_accuracy"]
        rows.append((run.name, progress["state"], progress["at"], minutes,
                     "-" if not isinstance(accuracy, (int, float)) else f"{accuracy:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.append(", ".join(f"{counts.get(state, 0)} {state}" for state in ("complete", "running", "interrupted", "new"))
                 + f" of {len(suite.runs)} runs in {out}")
    lines.append(_time_left_line(estimate_time_left(suite, out, progress_by_run, grid), max(jobs, 1)))
    return "\n".join(lines)

