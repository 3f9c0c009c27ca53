"""Running a suite: complete runs adopted from elsewhere, the others as ``dfcil run`` processes,
``jobs`` at once, joint runs first, runs of one first task sharing it."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dfcil.atomic import write_json
from dfcil.config import Config, fingerprint, load_config
from dfcil.errors import ConfigError, RunDirError
from dfcil.first_task import has_first_task, recorded_identity
from dfcil.rundir import CHECKPOINTS_DIR, SUITE_FILE, RunDir, run_state
from dfcil.suite.grid import Suite, SuiteRun

logger = logging.getLogger("dfcil.suite")  # "[suite] ..." on the command line (dfcil.console)


def _suite_record(suite: Suite, run: SuiteRun, **extra: str) -> dict[str, Any]:
    """The ``suite.json`` of ``run``: suite name and file, labels, config and overrides."""
    return {"suite": suite.name, "suite_file": str(suite.path), "labels": run.labels, "config": str(run.config),
            "overrides": list(run.overrides), **extra}



def _trained_network_is_current(run_dir: Path, config: Config) -> bool:
    """Whether the run in ``run_dir`` trained the network its config builds today
    (:meth:`dfcil.rundir.RunDir.trained_network_revision`). A run whose revision cannot be told
    passes only for a network that never changed (revision 1)."""
    trained = RunDir(run_dir).trained_network_revision()
    current = config.model.network_revision
    if trained == current or (trained is None and current == 1):
        return True
    logger.info("not adopting %s: trained with %s of the %s network, which is now revision %d",
                run_dir, "an unknown revision" if trained is None else f"revision {trained}",
                config.model.network_key, current)
    return False


def _complete_runs_by_fingerprint(sources: list[Path]) -> dict[str, Path]:
    """Fingerprint -> complete run directory, over the run directories directly under ``sources``
    (the first found wins). Directories whose config no longer parses are passed over, and so are
    runs trained with an earlier revision of the network their config now builds (their config
    alone would match)."""
    found: dict[str, Path] = {}
    for source in sources:
        if not source.is_dir():
            raise ConfigError(f"--adopt: {source} is not a directory")
        for run_dir in sorted(path for path in source.iterdir() if path.is_dir()):
            if run_state(run_dir) != "complete":
                continue
            try:
                config = load_config(RunDir(run_dir).config)
            except (ConfigError, OSError):
                continue
            if _trained_network_is_current(run_dir, config):
                found.setdefault(fingerprint(config), run_dir)
    return found


def adopt_runs(suite: Suite, out: Path, sources: list[Path]) -> list[tuple[str, Path]]:
    """Copy into ``out`` every complete run under ``sources`` whose config matches a suite run that
    has not started yet (same fingerprint: every config key but ``runtime``), without its
    ``checkpoints/``. Its ``suite.json`` names the labels and ``adopted_from``. Returns the pairs
    (suite run name, source directory) adopted. Each copy lands atomically (copied beside, then
    renamed), so an interrupted adoption leaves the run ``new``. The partner joint run of a selected
    run (:func:`_partner_joint`) is a candidate too, although a selection (``--only``) may leave it
    out: :func:`execute_suite` trains it first when it is not complete, as the run's Omega needs it."""
    candidates = _complete_runs_by_fingerprint([Path(source) for source in sources])
    adopted = []
    partners = [partner for run in suite.runs if not run.is_joint
                if (partner := _partner_joint(run, suite.joint_runs)) is not None]
    for run in list({item.name: item for item in [*suite.runs, *partners]}.values()):
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
        shutil.copytree(source, staging, ignore=shutil.ignore_patterns(CHECKPOINTS_DIR))
        write_json(staging / SUITE_FILE, _suite_record(suite, run, adopted_from=str(source)))
        os.replace(staging, destination)
        adopted.append((run.name, source))
    return adopted


def _same_protocol(run: SuiteRun, joint: SuiteRun) -> bool:
    """Whether ``joint`` trains what ``run`` is measured against: same seed, data, split and network."""
    a, b = run.experiment.config, joint.experiment.config
    return (a.seed, a.data, a.scenario, a.model) == (b.seed, b.data, b.scenario, b.model)


def _partner_joint(run: SuiteRun, joints: list[SuiteRun]) -> SuiteRun | None:
    """The joint run whose labels equal ``run``'s on every axis except the method's, and which
    trains the same protocol (:func:`_same_protocol`): in a suite whose one axis names whole
    points, e.g. ``b10-abd`` and ``b10-joint``, only the joint of the run's own split qualifies."""
    for joint in joints:
        differing = [axis for axis in run.labels if run.labels[axis] != joint.labels.get(axis)]
        if (len(differing) == 1 and any(item.startswith("method.name=") for item in joint.overrides)
                and _same_protocol(run, joint)):
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


def first_task_donors(sources: list[Path]) -> dict[str, Path]:
    """First-task key (:meth:`SuiteRun.first_task_key`) -> a run directory with that completed
    first task, over ``sources``: run directories, or folders whose sub-directories are runs (the
    first found wins). The key is the identity the donor recorded with its first task
    (:mod:`dfcil.first_task`), so only a run that would train the identical first task uses it."""
    found: dict[str, Path] = {}
    for source in sources:
        if not source.is_dir():
            raise ConfigError(f"--first-task-from: {source} is not a directory")
        candidates = [source] if has_first_task(source) else sorted(p for p in source.iterdir() if p.is_dir())
        for run_dir in candidates:
            if not has_first_task(run_dir):
                continue
            try:
                identity = recorded_identity(run_dir)
            except RunDirError:
                continue  # an unreadable record: that run trains its own first task
            found.setdefault(json.dumps(identity, sort_keys=True), run_dir)
    return found


def execute_suite(suite: Suite, out: Path, jobs: int = 1, dry_run: bool = False,
                  grid: Suite | None = None, first_task_from: list[Path] | None = None) -> dict[str, list[str]]:
    """Run every run of ``suite`` not yet complete; return the names by outcome
    (``skipped``, ``done``, ``failed``, ``running_elsewhere``: runs another process was training,
    e.g. a second suite over the same output, left to it). Console output of each run: ``<out>/logs/<name>.log``.
    ``grid``: the whole suite when ``suite`` is a selection of it (``--only``): a selected run
    starts from the completed first task of any run of the grid under ``out`` that shares it.
    ``first_task_from``: run directories (or folders of them) outside the suite whose completed
    first tasks a new run may start from when none of the suite's own has it yet
    (:func:`first_task_donors`), e.g. another suite's runs of the same seed and split.

    Joint runs start first; any other run starts as soon as a job slot is free and its partner
    joint run (the one that gives its Omega) has ended, so no slot idles while a joint runs. A
    selected run's partner joint run that is not complete, nor training in another process, is
    trained too, first, even when the selection leaves it out: without it the run has no Omega."""
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    outside_donors = first_task_donors(list(first_task_from or []))
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
    # a selected run (--only) whose partner joint run is neither complete nor training elsewhere:
    # that joint run is trained first, although the selection left it out (it gives the run's Omega)
    partners: list[SuiteRun] = []
    for run in pending:
        partner = None if run.is_joint else _partner_joint(run, joints)
        if (partner is not None and all(item.name != partner.name for item in pending + partners)
                and run_state(out / partner.name) not in ("complete", "running")):
            partners.append(partner)
            logger.info("%s first: it gives the Omega of %s", partner.name, run.name)
    pending[:0] = partners
    threads = threads_per_job(jobs)
    # runs that train the same first task share it: the first of a group to start trains it, the
    # others start from it once it is done (dfcil.first_task)
    every_run = ({run.name: run for run in (grid.runs if grid is not None else [])} | {r.name: r for r in suite.runs}
                 | {r.name: r for r in pending})
    keys = {name: run.first_task_key() for name, run in every_run.items()}
    groups: dict[str, list[SuiteRun]] = {}
    for name, run in every_run.items():
        groups.setdefault(keys[name], []).append(run)

    def first_task_donor(run: SuiteRun) -> Path | None:
        """A run directory of ``run``'s group with a completed first task, for a new run."""
        if run_state(out / run.name) != "new":
            return None
        return next((out / other.name for other in groups[keys[run.name]]
                     if other is not run and has_first_task(out / other.name)), outside_donors.get(keys[run.name]))

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
