"""The reproduction campaign: R-DFCIL then ABD on CIFAR-100 B0 N=5 at the papers' budgets, on a CPU.

``run`` trains (or resumes) the runs in order in one fixed folder outside the work tree, at the
lowest CPU priority and with one torch thread (a run with two threads on a machine whose other core
is busy trained 40-60x slower: OpenMP regions waiting for a descheduled thread); ABD starts from
R-DFCIL's completed first task (:mod:`dfcil.first_task`: the same first task, trained once). A kill
loses at most ``runtime.checkpoint_every_s`` (30 s) of training, inside a generator's training too.
``status`` writes where the campaign stands (tasks done, time so far, the projected whole run from
``benchmarks/run_projection.py``) to ``benchmarks/results/cifar100-b0-n5/README.md``, and keeps
R-DFCIL's completed first task in the repository (``first-task-s0/``, the checkpoint at the end of
task 1: 1.9 MB), from which a later ``run`` on a fresh machine starts both runs at task 2.

While the first task trains, ``status`` also carries the first run's task-1 state in the
repository (``first-task-in-progress/``: ``last.pt``, 3.8 MB, and the run's log), and ``run`` on a
fresh machine resumes it, so a first task longer than one session still completes.

Only the first task is kept: the machine this was written on loses everything outside the git
checkout between sessions of at most 3 hours, and the resumable state of a later task is too
large for git to carry from session to session: the generator's 8.4 M parameters (33.7 MB) plus,
while it trains, their Adam moments (67.4 MB), and two ResNet-32s with SGD momentum (5.7 MB),
rewritten every 30 s. One generator training at the papers' 5,000 steps outlasts such a session on
its own. The papers' budgets need the GPU there (``benchmarks/gpu_session.sh MODE=full``); on a
machine that keeps its disk, ``run`` carries the runs to the end.

Usage::

    DFCIL_DATA=../shared/data nohup python benchmarks/campaign.py run > /work/campaign/console.log 2>&1 &
    python benchmarks/campaign.py status         # rewrite the results README from the run folders
    kill -STOP <pid> / kill -CONT <pid>           # pause it while measuring speed

``--root`` (default ``$DFCIL_CAMPAIGN`` or ``/work/campaign``) is the fixed folder of the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_projection import project  # noqa: E402

from dfcil.atomic import write_text  # noqa: E402
from dfcil.first_task import CHECKPOINT, RECORD, has_first_task  # noqa: E402
from dfcil.rundir import (  # noqa: E402
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    LOG_FILE,
    RUN_FILE,
    EpochRecord,
    EvalRecord,
    ProgressRecord,
    RunDir,
    training_seconds,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "cifar100" / "b0_n5.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "cifar100-b0-n5"
DEFAULT_ROOT = Path(os.environ.get("DFCIL_CAMPAIGN", "/work/campaign"))
#: the first task kept in the repository (see keep_first_task)
KEPT_FIRST_TASK = RESULTS / "first-task-s0"
#: the first run's state while its first task trains (see carry_first_task): git carries it
#: from session to session until the first task completes and is kept
CARRIED_FIRST_TASK = RESULTS / "first-task-in-progress"
#: what a carried run directory holds besides checkpoints/last.pt
CARRIED_FILES = (CONFIG_FILE, RUN_FILE, LOG_FILE)
#: (run name, overrides, run whose first task it starts from): the papers' budgets are the
#: configs' and methods' defaults (160 epochs, 5,000 generator steps, 40 refinement epochs)
RUNS: list[tuple[str, list[str], str | None]] = [
    ("rdfcil-s0", ["method.name=rdfcil", "seed=0", "scenario.order_seed=0"], None),
    ("abd-s0", ["method.name=abd", "seed=0", "scenario.order_seed=0"], "rdfcil-s0"),
]
PUBLISHED = {"rdfcil-s0": "R-DFCIL 50.47 ± 0.43 (its Table 1)",
             "abd-s0": "ABD 47.36 ± 0.48 as rerun by R-DFCIL (ABD's paper: 43.9)"}


def _state(run_dir: Path) -> str:
    files = RunDir(run_dir)
    metrics = files.read_metrics()
    if metrics is not None and metrics.get("complete"):
        return "complete"
    return "started" if files.config.exists() else "new"


def keep_first_task(root: Path, kept: Path = KEPT_FIRST_TASK) -> Path | None:
    """Copy the first run's completed first task into ``kept`` (once), where git carries it.

    ``kept`` gets what ``--first-task-from`` reads: the task-1 records of ``log.jsonl``,
    ``checkpoints/first_task.pt`` (the checkpoint at the end of task 1: network, evaluation and
    random-number streams, no optimiser state) and ``checkpoints/first_task.json`` (written last:
    its presence means the rest is there), plus ``config.yaml`` and ``run.json`` for the record.
    Returns ``kept`` when it holds a first task, None while the first task is still training."""
    if has_first_task(kept):
        return kept
    source = root / RUNS[0][0]
    if not has_first_task(source):
        return None
    (kept / CHECKPOINTS_DIR).mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_FILE, RUN_FILE):
        if (source / name).exists():
            write_text(kept / name, (source / name).read_text())
    records = [line for line in RunDir(source).log.read_text().splitlines()
               if line.strip() and json.loads(line).get("task") == 1]
    write_text(RunDir(kept).log, "".join(line + "\n" for line in records))
    shutil.copyfile(source / CHECKPOINT, kept / f"{CHECKPOINT}.tmp")
    (kept / f"{CHECKPOINT}.tmp").replace(kept / CHECKPOINT)
    write_text(kept / RECORD, (source / RECORD).read_text())
    return kept


def carry_first_task(root: Path, carried: Path = CARRIED_FIRST_TASK, kept: Path = KEPT_FIRST_TASK) -> Path | None:
    """Copy the first run's directory into ``carried`` while its first task is still training.

    A first task at the papers' budget (160 epochs, about 2 hours on one core here) does not fit
    a session that shares the CPU; the machine keeps nothing outside the git checkout between
    sessions, so without this every session trains it again from epoch 1. ``carried`` gets
    ``checkpoints/last.pt`` (network, SGD momentum, schedule, random-number streams: 3.8 MB) and
    the run's ``config.yaml``, ``run.json`` and ``log.jsonl``; :func:`run_campaign` resumes from
    it on a fresh machine. The checkpoint is copied before the log, so the copy's log can only
    run ahead of its checkpoint (a resume drops and redoes those records), never behind. The copy
    is built beside ``carried`` and renamed into place. Once the first task is complete (kept by
    :func:`keep_first_task`, or in the run folder) ``carried`` is removed and None returned; None
    too while the run has no checkpoint yet."""
    source = root / RUNS[0][0]
    if has_first_task(kept) or has_first_task(source):
        if carried.exists():
            shutil.rmtree(carried)
        return None
    last = RunDir(source).last_checkpoint
    if not last.exists():
        return carried if RunDir(carried).last_checkpoint.exists() else None
    building = carried.with_name(carried.name + ".partial")
    if building.exists():
        shutil.rmtree(building)
    RunDir(building).checkpoints.mkdir(parents=True)
    shutil.copyfile(last, RunDir(building).last_checkpoint)
    for name in CARRIED_FILES:
        if (source / name).exists():
            shutil.copyfile(source / name, building / name)
    if carried.exists():
        shutil.rmtree(carried)
    building.replace(carried)
    return carried


def lowest_autogroup_priority() -> None:
    """Give the calling process's scheduling group the lowest priority (nice 19), where the kernel
    groups processes by session (``/proc/sys/kernel/sched_autogroup_enabled``).

    With autogroups a process's nice value only ranks it against processes of its own session:
    every other session (a terminal, another agent's shell, a CI job) gets an equal share of the
    CPU whatever its processes' nice values. Measured here: a test run of another session got 65 %
    of a core against 33 % for a nice-0 training run of the campaign's session. So the campaign runs
    each `dfcil run` in a new session (``start_new_session``) and sets that session's group to nice
    19 here, in the child before it executes. Where autogroups are off or the file is missing it
    does nothing: ``nice -n 19`` alone then ranks the process."""
    try:
        Path("/proc/self/autogroup").write_text("19")
    except OSError:
        pass


def _restore_carried(run_dir: Path, carried: Path, kept: Path) -> bool:
    """Put the carried first run back in ``run_dir`` (a fresh machine); True when it did."""
    if run_dir.exists() or has_first_task(kept) or not RunDir(carried).last_checkpoint.exists():
        return False
    shutil.copytree(carried, run_dir)
    return True


def _first_task_donor(root: Path, first_task_from: str | None, kept: Path) -> Path | None:
    if first_task_from is not None and has_first_task(root / first_task_from):
        return root / first_task_from
    return kept if has_first_task(kept) else None


def run_campaign(root: Path, kept: Path = KEPT_FIRST_TASK, carried: Path = CARRIED_FIRST_TASK) -> int:
    """Train or resume every run in order (each its own `dfcil run` process, niced, one thread).

    A new run starts at task 2 from the first task of the run named in RUNS, or else from the
    first task kept in the repository (:func:`keep_first_task`), when there is one. On a fresh
    machine the first run resumes from its carried first task (:func:`carry_first_task`)."""
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    if _restore_carried(root / RUNS[0][0], carried, kept):
        print(f"campaign: {RUNS[0][0]} continues from the first task carried in {carried}", flush=True)
    for name, overrides, first_task_from in RUNS:
        run_dir = root / name
        state = _state(run_dir)
        if state == "complete":
            continue
        command = ["nice", "-n", "19", sys.executable, "-m", "dfcil", "run"]
        if state == "started":
            command += ["--resume", str(run_dir)]
        else:
            command += [str(CONFIG), "-o", str(run_dir), *[a for o in overrides for a in ("--set", o)]]
            donor = _first_task_donor(root, first_task_from, kept)
            if donor is not None:
                command += ["--first-task-from", str(donor)]
        command += ["--set", "runtime.num_threads=1", "--set", "runtime.progress=false"]
        print("+", " ".join(command), flush=True)
        code = subprocess.run(command, env=env, check=False, start_new_session=True,
                              preexec_fn=lowest_autogroup_priority).returncode
        if code != 0:
            print(f"campaign: {name} stopped with exit {code}", file=sys.stderr)
            return code
    return 0


def _run_summary(run_dir: Path) -> dict[str, Any]:
    files = RunDir(run_dir)
    if not files.log.exists():
        return {"state": "not started"}
    records = files.records()
    num_tasks = int(yaml.safe_load(files.config.read_text())["scenario"]["num_tasks"])
    evals = [r for r in records if isinstance(r, EvalRecord)]
    epochs = [r for r in records if isinstance(r, EpochRecord)]
    spent = sum(r.time_s for r in epochs) + training_seconds([r for r in records if isinstance(r, ProgressRecord)])
    projection = project(records, num_tasks)
    return {
        "state": _state(run_dir),
        "tasks_done": len(evals),
        "num_tasks": num_tasks,
        "accuracy_per_task": [round(r.accuracy, 2) for r in evals],
        "position": _position(records),
        "logged_hours": spent / 3600,
        "projected_hours": None if projection.seconds is None else projection.seconds / 3600,
        "first_task_from": next((s["first_task_from"].get("run_dir") for s in _session_records(run_dir)
                                 if s.get("first_task_from")), None),
    }


def _position(records: list[Any]) -> str | None:
    """Where the run's log ends: its last epoch (``task 1 main epoch 160/160``) or, when a training
    that precedes a task's epochs was logged after it, that training's progress (``task 2 generator
    step 300/5000``)."""
    for record in reversed(records):
        if isinstance(record, EpochRecord):
            return f"task {record.task} {record.phase} epoch {record.epoch}/{record.epochs or '?'}"
        if isinstance(record, ProgressRecord):
            return f"task {record.task} {record.step_name} {record.count}/{record.planned or '?'}"
    return None


def _kept_lines(kept: Path, carried: Path = CARRIED_FIRST_TASK) -> list[str]:
    if not has_first_task(kept):
        lines = ["No first task is kept in the repository yet (`first-task-s0/` appears when R-DFCIL's",
                 "first task completes and `status` runs)."]
        if RunDir(carried).last_checkpoint.exists():
            epochs = [r for r in RunDir(carried).records() if isinstance(r, EpochRecord)]
            where = f"epoch {epochs[-1].epoch}/{epochs[-1].epochs}" if epochs else "its start"
            size = RunDir(carried).last_checkpoint.stat().st_size / 1e6
            lines += [f"Its state at {where} is carried in `{carried.relative_to(ROOT)}/` ({size:.1f} MB,",
                      "rewritten by `status`): `run` on a fresh machine resumes the first task from there."]
        return lines + [""]
    evals = [r for r in RunDir(kept).records() if isinstance(r, EvalRecord)]
    accuracy = f"{evals[-1].accuracy:.2f} %" if evals else "not logged"
    size = (kept / CHECKPOINT).stat().st_size / 1e6
    return [f"R-DFCIL's first task (160 epochs, accuracy on its 20 classes {accuracy}) is kept in",
            f"`{kept.relative_to(ROOT)}/` ({size:.1f} MB): `run` on a fresh machine starts both runs at task 2",
            "from it (`--first-task-from`, identity checked).", ""]


def _feasibility_lines(root: Path, kept: Path) -> list[str]:
    """Why the campaign cannot finish on this CPU, from the rates in the runs' logs."""
    records = [record for name, _, _ in RUNS for record in RunDir(root / name).records()]
    epochs = [r.time_s for r in records if isinstance(r, EpochRecord) and r.task == 1]
    rates = [r.rate for r in records if isinstance(r, ProgressRecord) and r.event == "synthesis" and r.rate]
    state_mb = max((RunDir(root / name).last_checkpoint.stat().st_size / 1e6 for name, _, _ in RUNS
                    if RunDir(root / name).last_checkpoint.exists()
                    and _run_summary(root / name)["tasks_done"] >= 1), default=None)
    sessions = _sessions(root / RUNS[0][0])
    lines = ["Where it can fail: nothing promises that this machine keeps anything outside the git",
             "checkout from one session (at most 3 hours) to the next."]
    restarted = _restarted_from_kept(root / RUNS[0][0], kept)
    if restarted is not None:
        lines.append(f"The run folder was lost: {RUNS[0][0]}, which trained the kept first task, was started again "
                     f"from it on {restarted} (its first session's `first_task_from` in `run.json`); what it had "
                     "trained after task 1 was lost with the folder.")
    if len(sessions) > 1:
        lines.append(f"{'Since then' if restarted else 'So far'} the run folder has survived: {RUNS[0][0]} ran in "
                     f"{len(sessions)} sessions ({sessions[0]} to {sessions[-1]}, `run.json`), each resuming it "
                     "where the last stopped.")
    if epochs:
        lines.append(f"A first-task epoch took {statistics.median(epochs):.0f} s (median of {len(epochs)}, one thread, "
                     f"niced) on the machine that trained it: {160 * statistics.median(epochs) / 3600:.1f} h for task 1.")
    if rates:
        lines.append(f"The generator trains at {statistics.median(rates):.2f} steps/s (median of {len(rates)} records): "
                     f"{5000 / statistics.median(rates) / 3600:.1f} h for one task's 5,000 steps, longer than a session.")
    if state_mb is not None:
        lines.append(f"The resumable state after task 1 is {state_mb:.0f} MB (`last.pt`, rewritten every 30 s), "
                     "too large to commit every session.")
    return lines + ["Should the folder be lost, only the first task is carried in git (above); a GPU",
                    "(`benchmarks/gpu_session.sh MODE=full`, calls of at most 560 s, each resuming the last) would",
                    "run it instead.", ""]


def _session_records(run_dir: Path) -> list[dict]:
    """The ``sessions`` of a run's ``run.json`` (none when it has no ``run.json``)."""
    files = RunDir(run_dir)
    return json.loads(files.run_info.read_text()).get("sessions", []) if files.run_info.exists() else []


def _started(session: dict) -> str:
    return str(session.get("started", "?"))[:16].replace("T", " ")


def _restarted_from_kept(run_dir: Path, kept: Path) -> str | None:
    """When the campaign's first run, which trains its own first task, started instead from the
    first task kept in the repository (``YYYY-MM-DD HH:MM``): the folder that trained it was lost."""
    sessions = _session_records(run_dir)
    donor = (sessions[0].get("first_task_from") or {}).get("run_dir") if sessions else None
    if donor is None or Path(donor).resolve() != kept.resolve():
        return None
    return _started(sessions[0])


def _sessions(run_dir: Path) -> list[str]:
    """When each session of a run started (``run.json``), as ``YYYY-MM-DD HH:MM``."""
    return [_started(session) for session in _session_records(run_dir)]


def write_status(root: Path, kept: Path = KEPT_FIRST_TASK) -> Path:
    """Rewrite the results README with where every run of the campaign stands."""
    lines = [
        "# CIFAR-100 B0 N=5 at the papers' budgets (the reproduction campaign)",
        "",
        "`python benchmarks/campaign.py run` trains R-DFCIL then ABD on `configs/cifar100/b0_n5.yaml`",
        "(seed 0, class order seed 0; ResNet-32 as in R-DFCIL's code, 160 epochs per task, 5,000",
        "generator steps per task, R-DFCIL's 40 refinement epochs) in the background on the CPU,",
        "resuming within a session; ABD starts from R-DFCIL's first task. This file is rewritten by",
        "`python benchmarks/campaign.py status` whenever work is committed.",
        "",
        *_kept_lines(kept),
        *_feasibility_lines(root, kept),
        f"Status at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, run folder `{root}`:",
        "",
        "| run | state | tasks done | accuracy after each task | where | hours logged | projected run (hours) | published |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, _, _ in RUNS:
        summary = _run_summary(root / name)
        if summary["state"] == "not started":
            lines.append(f"| {name} | not started | 0 | | | | | {PUBLISHED[name]} |")
            continue
        projected = "-" if summary["projected_hours"] is None else f"{summary['projected_hours']:.1f}"
        lines.append(
            f"| {name} | {summary['state']} | {summary['tasks_done']} of {summary['num_tasks']} "
            f"| {' / '.join(map(str, summary['accuracy_per_task'])) or '-'} | {summary['position'] or '-'} "
            f"| {summary['logged_hours']:.1f} | {projected} | {PUBLISHED[name]} |")
    lines += ["", "Hours logged: epoch and generator time in the run's log (evaluation and checkpoints left",
              "out), as wall time: at nice 19 the time the campaign waited behind other work counts, so",
              "a session that ran heavy foreground jobs logs long epochs; the median above is the better",
              "rate. The projection (whole run, same machine) needs an epoch of task 2 logged.", ""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text(RESULTS / "README.md", "\n".join(lines))
    return RESULTS / "README.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("run", "status"),
                        help="run: train or resume the runs; status: rewrite the results README and keep "
                             "a completed first task in the repository")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="the runs' folder (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.action == "run":
        return run_campaign(args.root)
    kept = keep_first_task(args.root)
    carried = carry_first_task(args.root)
    print(write_status(args.root))
    if kept is not None:
        print(f"first task kept in {kept}")
    if carried is not None:
        print(f"first task in progress carried in {carried}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
