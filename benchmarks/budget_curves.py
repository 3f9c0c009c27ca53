"""Budget curves on cifar100-mini: collect the runs of ``suites/mini_budget.yaml`` and tabulate them.

Copies every complete run of the suite's output folder into ``benchmarks/results/mini/budget/<run>/``
(without checkpoints; with ``synthesis/``, the sample grids and domain-gap features the report
reads, so that a suite adopting the run keeps them) and writes
``benchmarks/results/mini/budget/README.md``:
one table per factor (the network, R-DFCIL's refinement budget, the generator budget), each row the
mean ± standard deviation over the seeds present of

- A_N: accuracy on all 20 classes after the last task;
- old / new: accuracy on the old classes' and on the last task's test images (all-class argmax);
- old among old: the old classes' accuracy when the argmax is restricted to the old classes
  (what the feature extractor and the old heads kept, without the bias towards the new heads);
- the refinement gain after each task (R-DFCIL: accuracy after its head refinement minus the
  accuracy logged before it, the ``phase_eval`` record);
- the old model's mean confidence on generated batches at the generator's last logged step,
  per task.

Rows for the network before the fix (revision 1: a ReLU after every residual addition but the
last) come from the committed mini suite, ``benchmarks/results/suites/mini``.

Usage::

    python benchmarks/budget_curves.py RUNS [ORACLE_RUNS ...] [--out benchmarks/results/mini/budget]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from dfcil.atomic import write_text
from dfcil.rundir import (
    CONFIG_FILE,
    LOG_FILE,
    METRICS_FILE,
    RUN_FILE,
    SUITE_FILE,
    EvalRecord,
    OtherRecord,
    PhaseEvalRecord,
    ProgressRecord,
    RunDir,
)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "mini" / "budget"
OLD_NETWORK_SUITE = ROOT / "benchmarks" / "results" / "suites" / "mini"
ORACLE_FILE = "oracle.json"  # a replay-oracle run's record (benchmarks/replay_oracle.py)
KEPT_FILES = (METRICS_FILE, CONFIG_FILE, RUN_FILE, LOG_FILE, SUITE_FILE, ORACLE_FILE)

#: Tables: (title, what it varies, [(row label, budget label or old-network method)]); a budget
#: label ``name@s`` keeps seed ``s`` only (the oracle runs exist for seed 0)
FACTORS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("Network", "R-DFCIL's ResNet-32 before (revision 1, 30 ReLUs: the committed mini suite) and after "
     "the fix (revision 2, 16 ReLUs, heads from N(0, 0.001^2)); today's mini budget",
     [("abd, network rev. 1", "old:abd"), ("abd, network rev. 2", "abd-gen-300"),
      ("rdfcil, network rev. 1", "old:rdfcil"), ("rdfcil, network rev. 2", "rdfcil-gen-300")]),
    ("Refinement budget", "R-DFCIL's head refinement: 5 epochs at lr 0.005 (100 steps, sum of lr 0.5); "
     "the authors' sum of lr with the same steps (lr 0.04, sum 4.0); the papers' 40 epochs (800 "
     "steps at 0.005, sum 4.0). abd has no refinement: its row is the reference",
     [("abd", "abd-gen-300"), ("rdfcil, refine 5 ep. x 0.005", "rdfcil-gen-300"),
      ("rdfcil, refine 5 ep. x 0.04", "rdfcil-gen-300-refine-lr-0.04"),
      ("rdfcil, refine 40 ep. x 0.005", "rdfcil-gen-300-refine-40")]),
    ("Generator budget", "generator steps per task: today's 300, 1,000, and the papers' 5,000",
     [("abd, 300 steps", "abd-gen-300"), ("abd, 1,000 steps", "abd-gen-1000"), ("abd, 5,000 steps", "abd-gen-5000"),
      ("rdfcil, 300 steps", "rdfcil-gen-300"), ("rdfcil, 1,000 steps", "rdfcil-gen-1000"),
      ("rdfcil, 5,000 steps", "rdfcil-gen-5000")]),
    ("Replay oracle", "the best synthetic images there can be: each method's synthetic batches replaced by real "
     "training images of the old classes (`benchmarks/replay_oracle.py`: no generator, unaugmented, labelled "
     "by the old model's argmax as synthetic images are; not data-free, a diagnostic). The confidence column "
     "is the old model's mean confidence on those real images",
     [("abd, generator (300 steps)", "abd-gen-300@0"), ("abd, real old images", "oracle-abd"),
      ("rdfcil, generator (300 steps)", "rdfcil-gen-300@0"), ("rdfcil, real old images", "oracle-rdfcil")]),
]


def read_run(run_dir: Path) -> dict[str, Any] | None:
    """The figures of one complete run (None when it is not complete)."""
    files = RunDir(run_dir)
    metrics = files.read_metrics()
    if metrics is None or not metrics.get("complete"):
        return None
    log = files.records(strict=True)
    final = metrics["old_new_accuracy"][-1]
    among_old = metrics["per_old_class_accuracy_among_old_per_step"][-1]
    before = {r.task: r.accuracy for r in log if isinstance(r, PhaseEvalRecord)}
    after = {r.task: r.accuracy for r in log if isinstance(r, EvalRecord)}
    confidence: dict[int, float] = {}
    for record in log:  # the last logged step of a task wins
        if isinstance(record, ProgressRecord) and record.event == "synthesis" and "confidence" in record.values:
            confidence[record.task] = record.values["confidence"]
        elif (isinstance(record, OtherRecord) and record.event == "replay_oracle" and record.task is not None
              and "confidence" in record.fields):
            confidence[record.task] = record.fields["confidence"]
    tasks = len(metrics["accuracy_per_step"])
    return {
        "seed": metrics["seed"],
        "last": metrics["last_accuracy"],
        "old": final["old"],
        "new": final["new"],
        "old_among_old": statistics.fmean(among_old),
        "accuracy_per_step": metrics["accuracy_per_step"],
        "refine_gain": [after[t] - before[t] if t in before else None for t in range(2, tasks + 1)],
        "confidence": [confidence.get(t) for t in range(2, tasks + 1)],
        "minutes": metrics["wall_time_s"] / 60,
        "name": run_dir.name,
        "provenance": _provenance(run_dir),
    }


def _provenance(run_dir: Path) -> str:
    """Commit, machine, threads, precision and shared first task of a run (its ``run.json``, or the
    ``oracle.json`` of a replay-oracle run)."""
    oracle = run_dir / ORACLE_FILE
    if oracle.exists():
        record = json.loads(oracle.read_text())
        return f"commit {str(record.get('commit'))[:7]}, {record.get('machine', '?')}, `{record.get('command', '?')}`"
    run_file = RunDir(run_dir).run_info
    if not run_file.exists():
        return "-"
    sessions = json.loads(run_file.read_text()).get("sessions", [])
    if not sessions:
        return "-"
    first = sessions[0]
    machine = first.get("machine", {})
    parts = [f"commit {str(first.get('commit'))[:7]}",
             f"{machine.get('cpu_model', '?')} ({machine.get('cpu_count', '?')} cores, "
             f"{machine.get('torch_threads', '?')} thread)", str(first.get("precision", "?")),
             f"{len(sessions)} session(s)"]
    donor = first.get("first_task_from")
    if donor:
        parts.append(f"first task from {Path(donor['run_dir']).name}")
    return ", ".join(parts)


def _mean_std(values: list[float | None]) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    if len(present) == 1:
        return f"{present[0]:.2f}"
    return f"{statistics.fmean(present):.2f} ± {statistics.stdev(present):.2f}"


def _per_task(runs: list[dict[str, Any]], key: str, digits: int) -> str:
    columns = list(zip(*[run[key] for run in runs]))
    cells = []
    for column in columns:
        present = [v for v in column if v is not None]
        cells.append(f"{statistics.fmean(present):+.{digits}f}" if present and key == "refine_gain"
                     else f"{statistics.fmean(present):.{digits}f}" if present else "-")
    return " / ".join(cells)


def copy_run(run_dir: Path, out: Path) -> Path:
    """Copy a run directory into ``out/<its name>`` without checkpoints: :data:`KEPT_FILES` and
    ``synthesis/`` (sample grids and domain-gap features, what the report reads). The copy is
    built beside and renamed into place, so an interrupted copy leaves the old one or none.
    Returns the copy (``run_dir`` itself when it already lies in ``out``). A run that a suite
    adopted from the copy itself (its ``suite.json``'s ``adopted_from``) is not copied back: the
    copy would only gain a record that it was adopted from itself."""
    target = out / run_dir.name
    if run_dir.resolve() == target.resolve() or _adopted_from(run_dir) == target.resolve():
        return target
    staging = out / f".{run_dir.name}.copying"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in KEPT_FILES:
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, staging / name)
    synthesis = RunDir(run_dir).synthesis
    if synthesis.is_dir():
        shutil.copytree(synthesis, RunDir(staging).synthesis)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def _adopted_from(run_dir: Path) -> Path | None:
    """Where a suite copied ``run_dir`` from (``suite.json``'s ``adopted_from``, relative to the
    repository root when relative, as ``dfcil suite`` run there records it), or None."""
    try:
        source = json.loads((run_dir / SUITE_FILE).read_text()).get("adopted_from")
    except (OSError, ValueError):
        return None
    if not isinstance(source, str):
        return None
    path = Path(source)
    return (path if path.is_absolute() else ROOT / path).resolve()


def collect(runs_roots: list[Path], out: Path) -> dict[str, list[dict[str, Any]]]:
    """Copy the complete runs under ``runs_roots`` into ``out`` and read them (with those already
    in ``out``), by budget label."""
    by_budget: dict[str, list[dict[str, Any]]] = {}
    sources = [p for root in (*runs_roots, out) if root.is_dir() for p in sorted(root.iterdir())
               if RunDir(p).suite.exists() or (p / ORACLE_FILE).exists()]
    seen: set[str] = set()
    for run_dir in sources:
        if run_dir.name in seen:
            continue
        figures = read_run(run_dir)
        if figures is None:
            continue
        seen.add(run_dir.name)
        copy_run(run_dir, out)
        if (run_dir / ORACLE_FILE).exists():  # seed-<s>__oracle-<method> (benchmarks/replay_oracle.py)
            label = run_dir.name.split("__", 1)[1]
        else:
            label = json.loads(RunDir(run_dir).suite.read_text())["labels"]["budget"]
        by_budget.setdefault(label, []).append(figures)
    for method in ("abd", "rdfcil"):
        old_runs = [read_run(p) for p in sorted(OLD_NETWORK_SUITE.glob(f"method-{method}__seed-*"))]
        by_budget[f"old:{method}"] = [run for run in old_runs if run is not None]
    return by_budget


def tables(by_budget: dict[str, list[dict[str, Any]]]) -> str:
    """The README's factor tables."""
    parts = []
    for title, description, rows in FACTORS:
        parts += [f"## {title}", "", description + ".", "",
                  "| run | seeds | A_N | old / new | old among old | refinement gain, tasks 2 / 3 / 4 "
                  "| generator confidence, tasks 2 / 3 / 4 | minutes |",
                  "|---|---|---|---|---|---|---|---|"]
        for label, budget in rows:
            budget, _, seed = budget.partition("@")  # "label@0": that seed's run only
            runs = sorted((run for run in by_budget.get(budget, []) if not seed or run["seed"] == int(seed)),
                          key=lambda run: run["seed"])
            if not runs:
                parts.append(f"| {label} | not run | | | | | | |")
                continue
            seeds = ", ".join(str(run["seed"]) for run in runs)
            gain = _per_task(runs, "refine_gain", 2) if any(g is not None for r in runs for g in r["refine_gain"]) else "-"
            parts.append(
                f"| {label} | {seeds} | {_mean_std([r['last'] for r in runs])} "
                f"| {_mean_std([r['old'] for r in runs])} / {_mean_std([r['new'] for r in runs])} "
                f"| {_mean_std([r['old_among_old'] for r in runs])} | {gain} "
                f"| {_per_task(runs, 'confidence', 3)} | {statistics.fmean(r['minutes'] for r in runs):.1f} |"
            )
        parts.append("")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+",
                        help="output folders of `dfcil suite suites/mini_budget.yaml` and of benchmarks/replay_oracle.py")
    parser.add_argument("--out", type=Path, default=OUT, help="results folder (default: %(default)s)")
    args = parser.parse_args(argv)
    for folder in args.runs:
        if not folder.is_dir():
            print(f"budget_curves: error: {folder} is not a directory", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    by_budget = collect(args.runs, args.out)
    header = (ROOT / "benchmarks" / "results" / "mini" / "budget" / "HEADER.md")
    intro = header.read_text() if header.exists() else "# Budget curves on cifar100-mini\n\n"
    runs = sorted((run for budget, group in by_budget.items() if not budget.startswith("old:") for run in group),
                  key=lambda run: run["name"])
    sources = ["## Runs", "",
               "Each complete run of `DFCIL_DATA=../shared/data dfcil suite suites/mini_budget.yaml -o RUNS "
               "--jobs 1 --only PATTERN` (seed 0: `'*seed-0*gen-300*'`, then `'seed-0__budget-*-gen-1000'`; seeds 1 "
               "and 2: `'seed-[12]__budget-*-gen-300'`) and of `DFCIL_DATA=../shared/data python "
               "benchmarks/replay_oracle.py abd rdfcil -o ORACLE_RUNS --set runtime.num_threads=1` is copied here "
               "without checkpoints (its config, log, metrics and run.json or oracle.json), and this file is "
               "written by `python benchmarks/budget_curves.py RUNS ORACLE_RUNS`. "
               "Data: the real CIFAR-100 (`cifar100-jpg.tar.gz`), cifar100-mini protocol (`configs/mini.yaml`). "
               "Minutes are wall time on a shared machine (other jobs ran beside every run): not cost figures.", "",
               "| run | provenance |", "|---|---|", *(f"| {run['name']} | {run['provenance']} |" for run in runs), ""]
    write_text(args.out / "README.md", intro + tables(by_budget) + "\n" + "\n".join(sources))
    print(args.out / "README.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
