"""Experiment suites: a grid of runs (methods x protocols x seeds, any config key as an axis).

A suite file::

    name: mini
    config: ../configs/mini.yaml        # base config, relative to the suite file
    set: {method.synthesis.steps: 300}  # optional overrides for every run (skipped where the
                                        # run's method has no such option: see below)
    axes:
      method:                           # labelled points: label -> overrides (may switch `config`)
        lwf: {method.name: lwf}
        rdfcil: {method.name: rdfcil, method.refine_epochs: 5}
      seed: [0, 1, 2]                   # a list: the axis name is the config key

Every point of the product is one run directory ``<out>/<axis>-<label>__<axis>-<label>...``
(with a ``suite.json`` naming its labels). Running the suite again skips complete runs and
resumes interrupted ones, so a suite killed halfway finishes by running the same command again.
``joint`` runs (the upper bound) go first, and every other run with the same labels on the other
axes gets ``runtime.upper_bound`` for Omega. Runs are separate ``dfcil run`` processes; ``jobs``
of them at once; a failed run is reported and does not stop the others.

Complete runs made elsewhere (e.g. by ``benchmarks/run_mini.py``) can be adopted instead of being
run again: :func:`adopt_runs` copies a run directory into the suite when its config has the same
fingerprint as a suite run's (everything but ``runtime``), and records where it came from.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfcil.atomic import write_json
from dfcil.config import apply_overrides, fingerprint, load_config, load_yaml_tree
from dfcil.errors import ConfigError
from dfcil.experiment import Experiment, parse_experiment
from dfcil.first_task import first_task_identity, has_first_task
from dfcil.runlock import is_run_locked
from dfcil.yamlio import load_file

SUITE_FILE = "suite.json"

logger = logging.getLogger(__name__)  # "[suite] ..." on the command line (dfcil.console)


@dataclass(frozen=True)
class SuiteRun:
    """One point of a suite's grid."""

    name: str  # run directory name
    labels: dict[str, str]  # axis -> label
    config: Path
    overrides: tuple[str, ...]
    experiment: Experiment = field(compare=False, repr=False)  # config + overrides, resolved

    def fingerprint(self) -> str:
        """The fingerprint of this run's resolved config (what is trained, not ``runtime``)."""
        return fingerprint(self.experiment.config)

    def first_task_key(self) -> str:
        """What determines this run's first task (:func:`dfcil.first_task.first_task_identity`),
        as a string: runs with equal keys train the same first task."""
        return json.dumps(first_task_identity(self.experiment, self.experiment.first_task_classes()), sort_keys=True)

    @property
    def is_joint(self) -> bool:
        """Whether this run is the offline upper bound (its method says so: ``Method.upper_bound``)."""
        return self.experiment.method.upper_bound


@dataclass
class Suite:
    """A parsed suite file."""

    name: str
    path: Path
    runs: list[SuiteRun] = field(default_factory=list)
    all_joint_runs: list[SuiteRun] | None = None  # of the whole grid, when ``runs`` is a selection

    @property
    def joint_runs(self) -> list[SuiteRun]:
        """The grid's joint runs (partners for Omega), also those a selection left out."""
        if self.all_joint_runs is not None:
            return self.all_joint_runs
        return [run for run in self.runs if run.is_joint]


def _format(value: Any) -> str:
    if isinstance(value, (list, dict, bool)) or value is None:
        return json.dumps(value)
    return str(value)


def _points(axis: str, spec: Any, origin: Path) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{origin}: axis '{axis}' has no values")
        return [(_format(value), {axis: value}) for value in spec]
    if isinstance(spec, dict):
        if not spec:
            raise ConfigError(f"{origin}: axis '{axis}' has no points")
        points = []
        for label, overrides in spec.items():
            if not isinstance(overrides, dict):
                raise ConfigError(f"{origin}: axis '{axis}', point '{label}': expected a mapping KEY: VALUE")
            points.append((str(label), overrides))
        return points
    raise ConfigError(f"{origin}: axis '{axis}' must be a list of values or a mapping label -> overrides")


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "._+-" else "_" for c in label)


def load_suite(path: Path) -> Suite:
    """Parse and validate a suite file: every run's config is resolved and checked now, so a
    typo fails before the first run starts."""
    path = Path(path)
    data = load_file(path, "suite")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a suite is a mapping with name, config, axes")
    unknown = sorted(set(data) - {"name", "config", "set", "axes"})
    if unknown:
        raise ConfigError(f"{path}: unknown suite key '{unknown[0]}' (expected name, config, set, axes)")
    if "config" not in data or not isinstance(data.get("axes"), dict) or not data["axes"]:
        raise ConfigError(f"{path}: a suite needs 'config' (a config file) and 'axes' (at least one)")
    shared = data.get("set") or {}
    if not isinstance(shared, dict):
        raise ConfigError(f"{path}: 'set' must be a mapping KEY: VALUE")
    axes = [(axis, _points(axis, spec, path)) for axis, spec in data["axes"].items()]
    suite = Suite(str(data.get("name") or path.stem), path)
    seen: set[str] = set()
    used_shared: set[str] = set()
    for combination in itertools.product(*[points for _, points in axes]):
        labels = {axis: label for (axis, _), (label, _) in zip(axes, combination)}
        merged: dict[str, Any] = {}
        for _, point in combination:
            merged.update(point)
        config = path.parent / str(merged.pop("config", data["config"]))
        name = "__".join(f"{_safe(axis)}-{_safe(label)}" for axis, label in labels.items())
        if name in seen:
            raise ConfigError(f"{path}: two points give the same run name {name}")
        seen.add(name)
        overrides = tuple(f"{key}={_format(value)}" for key, value in merged.items())
        raw = load_yaml_tree(config)
        method = apply_overrides(raw, list(overrides)).get("method", {}).get("name")
        # shared overrides apply to the runs whose method accepts them (e.g. generator steps)
        for key, value in shared.items():
            candidate = apply_overrides(raw, [*overrides, f"{key}={_format(value)}"])
            try:
                parse_experiment(candidate)
            except ConfigError:
                if key.startswith("method."):
                    continue
                raise
            overrides += (f"{key}={_format(value)}",)
            used_shared.add(key)
        try:
            experiment = parse_experiment(apply_overrides(raw, list(overrides)))
        except ConfigError as error:
            raise ConfigError(f"{path}: run {name} ({method}): {error}") from None
        suite.runs.append(SuiteRun(name, labels, config.resolve(), overrides, experiment))
    unused = sorted(set(shared) - used_shared)
    if unused:
        raise ConfigError(f"{path}: set: '{unused[0]}' is accepted by none of the suite's runs")
    return suite


def run_state(run_dir: Path) -> str:
    """``complete``, ``running`` (a live process holds the run's lock), ``interrupted``
    (resumable) or ``new``."""
    metrics = run_dir / "metrics.json"
    if metrics.exists():
        try:
            if json.loads(metrics.read_text()).get("complete"):
                return "complete"
        except ValueError:
            pass
    if is_run_locked(run_dir):
        return "running"
    return "interrupted" if (run_dir / "config.yaml").exists() else "new"


def _suite_record(suite: Suite, run: SuiteRun, **extra: str) -> dict[str, Any]:
    """The ``suite.json`` of ``run``: suite name and file, labels, config and overrides."""
    return {"suite": suite.name, "suite_file": str(suite.path), "labels": run.labels, "config": str(run.config),
            "overrides": list(run.overrides), **extra}


def select_runs(suite: Suite, patterns: list[str]) -> Suite:
    """``suite`` restricted to the runs whose name matches one of the shell-style ``patterns``
    (``method-rdfcil__*``, ``*__seed-[01]``); all of them when ``patterns`` is empty. A pattern
    that matches no run is an error (a typo would otherwise run nothing, silently)."""
    if not patterns:
        return suite
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(run.name, pattern) for run in suite.runs):
            raise ConfigError(f"--only {pattern}: matches none of the suite's runs (e.g. {suite.runs[0].name})")
    kept = [run for run in suite.runs if any(fnmatch.fnmatchcase(run.name, p) for p in patterns)]
    return Suite(suite.name, suite.path, kept, all_joint_runs=suite.joint_runs)


def _complete_runs_by_fingerprint(sources: list[Path]) -> dict[str, Path]:
    """Fingerprint -> complete run directory, over the run directories directly under ``sources``
    (the first found wins). Directories whose config no longer parses are passed over."""
    found: dict[str, Path] = {}
    for source in sources:
        if not source.is_dir():
            raise ConfigError(f"--adopt: {source} is not a directory")
        for run_dir in sorted(path for path in source.iterdir() if path.is_dir()):
            if run_state(run_dir) != "complete":
                continue
            try:
                config = load_config(run_dir / "config.yaml")
            except (ConfigError, OSError):
                continue
            found.setdefault(fingerprint(config), run_dir)
    return found


def adopt_runs(suite: Suite, out: Path, sources: list[Path]) -> list[tuple[str, Path]]:
    """Copy into ``out`` every complete run under ``sources`` whose config matches a suite run that
    has not started yet (same fingerprint: every config key but ``runtime``), without its
    ``checkpoints/``. Its ``suite.json`` names the labels and ``adopted_from``. Returns the pairs
    (suite run name, source directory) adopted. Each copy lands atomically (copied beside, then
    renamed), so an interrupted adoption leaves the run ``new``."""
    candidates = _complete_runs_by_fingerprint([Path(source) for source in sources])
    adopted = []
    for run in suite.runs:
        destination = out / run.name
        if run_state(destination) != "new":
            continue
        source = candidates.get(run.fingerprint())
        if source is None:
            continue
        if destination.exists():  # a run the suite prepared but never started: suite.json only
            shutil.rmtree(destination)
        staging = out / f".{run.name}.adopting"
        shutil.rmtree(staging, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, staging, ignore=shutil.ignore_patterns("checkpoints"))
        write_json(staging / SUITE_FILE, _suite_record(suite, run, adopted_from=str(source)))
        os.replace(staging, destination)
        adopted.append((run.name, source))
    return adopted


GENERATOR_EVENTS = {"synthesis": ("step", "steps_per_s", "generator step"),
                    "delegator": ("iteration", "iterations_per_s", "delegator iteration")}


def run_progress(run_dir: Path) -> dict[str, Any]:
    """Where one suite run stands: ``state`` (complete / running / interrupted / new), ``at`` (the last
    logged epoch or generator step, e.g. ``task 2 main epoch 7``, ``task 3 generator step 200``),
    ``minutes`` (wall time of a complete run, else the summed time of its logged epochs and
    generator training, as far as logged) and ``last_accuracy``."""
    state = run_state(run_dir)
    progress: dict[str, Any] = {"state": state, "at": "-", "minutes": None, "last_accuracy": None}
    seconds = 0.0
    try:
        lines = (run_dir / "log.jsonl").read_text().splitlines()
    except OSError:
        lines = []
    # a generator phase logs its step count and rate since its start: its time is count / rate at
    # its last record; a count that falls (or another phase) starts a new phase (e.g. after a resume)
    phase: tuple[Any, ...] | None = None
    phase_count, phase_seconds = 0.0, 0.0
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        event = record.get("event")
        if event == "epoch":
            progress["at"] = f"task {record.get('task')} {record.get('phase')} epoch {record.get('epoch')}"
            seconds += float(record.get("time_s") or 0.0)
        elif event in GENERATOR_EVENTS:
            count_key, rate_key, name = GENERATOR_EVENTS[event]
            count, rate = record.get(count_key), record.get(rate_key)
            if not isinstance(count, (int, float)):
                continue
            key = (event, record.get("task"))
            if key != phase or count <= phase_count:
                seconds += phase_seconds
                phase_seconds = 0.0
            phase, phase_count = key, float(count)
            if isinstance(rate, (int, float)) and rate > 0:
                phase_seconds = count / rate
            progress["at"] = f"task {record.get('task')} {name} {count}"
    seconds += phase_seconds
    if seconds:
        progress["minutes"] = seconds / 60
    if state == "complete":
        metrics = json.loads((run_dir / "metrics.json").read_text())
        progress["at"] = "done"
        if isinstance(metrics.get("wall_time_s"), (int, float)):
            progress["minutes"] = metrics["wall_time_s"] / 60
        progress["last_accuracy"] = metrics.get("last_accuracy")
    return progress


def _is_adopted(run_dir: Path) -> bool:
    """Whether a suite copied this run from elsewhere (``suite.json``'s ``adopted_from``)."""
    try:
        return json.loads((run_dir / SUITE_FILE).read_text()).get("adopted_from") is not None
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


def _partner_joint(run: SuiteRun, joints: list[SuiteRun]) -> SuiteRun | None:
    """The joint run whose labels equal ``run``'s on every axis except the method's."""
    for joint in joints:
        differing = [axis for axis in run.labels if run.labels[axis] != joint.labels.get(axis)]
        if len(differing) == 1 and any(item.startswith("method.name=") for item in joint.overrides):
            return joint
    return None


def command_for(run: SuiteRun, out: Path, joints: list[SuiteRun], threads: int | None = None,
                first_task_from: Path | None = None) -> list[str]:
    """The ``dfcil run`` command line of ``run`` (a resume when it was interrupted); ``threads``
    sets ``runtime.num_threads`` unless the run's own overrides do; a new run starts from the
    completed first task of the run directory ``first_task_from`` when one is given."""
    run_dir = out / run.name
    extra = ["--set", "runtime.progress=false"]
    if threads is not None and not any(item.startswith("runtime.num_threads=") for item in run.overrides):
        extra += ["--set", f"runtime.num_threads={threads}"]
    if run_state(run_dir) == "interrupted":
        return [sys.executable, "-m", "dfcil", "run", "--resume", str(run_dir), *extra]
    command = [sys.executable, "-m", "dfcil", "run", str(run.config), "-o", str(run_dir),
               *[arg for item in run.overrides for arg in ("--set", item)], *extra]
    partner = None if run.is_joint else _partner_joint(run, joints)
    if partner is not None and run_state(out / partner.name) == "complete":
        command += ["--set", f"runtime.upper_bound={out / partner.name}"]
    if first_task_from is not None:
        command += ["--first-task-from", str(first_task_from)]
    return command


def threads_per_job(jobs: int, cores: int | None = None) -> int | None:
    """CPU threads for each of ``jobs`` concurrent runs: the cores shared out (at least 1), or
    None (torch's default) for a single job. Two 1-thread runs on 2 cores train more images per
    second in total than one 2-thread run, and 2-thread runs side by side would oversubscribe."""
    if jobs <= 1:
        return None
    return max(1, (cores or os.cpu_count() or 1) // jobs)


def execute_suite(suite: Suite, out: Path, jobs: int = 1, dry_run: bool = False,
                  grid: Suite | None = None) -> dict[str, list[str]]:
    """Run every run of ``suite`` not yet complete; return the names by outcome
    (``skipped``, ``done``, ``failed``, ``running_elsewhere``: runs another process was training,
    e.g. a second suite over the same output, left to it). Console output of each run: ``<out>/logs/<name>.log``.
    ``grid``: the whole suite when ``suite`` is a selection of it (``--only``): a selected run
    starts from the completed first task of any run of the grid under ``out`` that shares it.

    Joint runs start first; any other run starts as soon as a job slot is free and its partner
    joint run (the one that gives its Omega) has ended, so no slot idles while a joint runs."""
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    outcome: dict[str, list[str]] = {"skipped": [], "done": [], "failed": [], "running_elsewhere": []}
    joints = suite.joint_runs
    pending = []

    def set_aside(run: SuiteRun) -> bool:
        """Whether ``run`` is complete or trained by another process (recorded in ``outcome``)."""
        state = run_state(out / run.name)
        if state == "complete":
            outcome["skipped"].append(run.name)
        elif state == "running":
            outcome["running_elsewhere"].append(run.name)
            logger.info("skip %s: another process is training it", run.name)
        return state in ("complete", "running")

    for run in [run for run in suite.runs if run.is_joint] + [run for run in suite.runs if not run.is_joint]:
        if not set_aside(run):
            pending.append(run)
    threads = threads_per_job(jobs)
    # runs that train the same first task share it: the first of a group to start trains it, the
    # others start from it once it is done (dfcil.first_task)
    every_run = {run.name: run for run in (grid.runs if grid is not None else [])} | {r.name: r for r in suite.runs}
    keys = {name: run.first_task_key() for name, run in every_run.items()}
    groups: dict[str, list[SuiteRun]] = {}
    for name, run in every_run.items():
        groups.setdefault(keys[name], []).append(run)

    def first_task_donor(run: SuiteRun) -> Path | None:
        """A run directory of ``run``'s group with a completed first task, for a new run."""
        if run_state(out / run.name) != "new":
            return None
        return next((out / other.name for other in groups[keys[run.name]]
                     if other is not run and has_first_task(out / other.name)), None)

    if dry_run:
        for run in pending:
            print(" ".join(command_for(run, out, joints, threads, first_task_donor(run))))
        return outcome
    active: list[tuple[SuiteRun, subprocess.Popen[bytes], Any, float]] = []

    def waiting(run: SuiteRun) -> bool:
        if run_state(out / run.name) == "new" and first_task_donor(run) is None and any(
            keys[item[0].name] == keys[run.name] for item in active
        ):
            return True  # a run of its group is training the shared first task
        partner = None if run.is_joint else _partner_joint(run, joints)
        if partner is None:
            return False
        unfinished = {item.name for item in pending} | {item[0].name for item in active}
        return partner.name in unfinished or run_state(out / partner.name) == "running"

    while pending or active:
        while len(active) < jobs:
            ready = next((item for item in pending if not waiting(item)), None)
            if ready is None:
                break
            run = ready
            pending.remove(run)
            if set_aside(run):  # another suite got to it while this one waited
                continue
            run_dir = out / run.name
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(run_dir / SUITE_FILE, _suite_record(suite, run))
            (out / "logs").mkdir(parents=True, exist_ok=True)
            log = open(out / "logs" / f"{run.name}.log", "ab")  # noqa: SIM115 - closed when the run ends
            command = command_for(run, out, joints, threads, first_task_donor(run))
            log.write(("+ " + " ".join(command) + "\n").encode())
            log.flush()
            logger.info("start %s", run.name)
            active.append((run, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log, time.time()))
        time.sleep(0.5)
        for item in list(active):
            run, process, log, started = item
            code = process.poll()
            if code is None:
                continue
            log.close()
            active.remove(item)
            minutes = (time.time() - started) / 60
            if code == 0 and run_state(out / run.name) == "complete":
                outcome["done"].append(run.name)
                logger.info("done %s (%.1f min)", run.name, minutes)
            else:
                outcome["failed"].append(run.name)
                last = _last_line(out / "logs" / f"{run.name}.log")
                logger.error("FAILED %s (exit %s): %s", run.name, code, last)
    return outcome


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""
