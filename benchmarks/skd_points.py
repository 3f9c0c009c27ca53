"""SKD's points on cifar100-mini (``suites/mini_skd.yaml``): collect the runs and tabulate them.

Copies every complete run of the suite's output folder into ``benchmarks/results/mini/skd/<run>/``
(without checkpoints, as ``benchmarks/budget_curves.py`` does) and writes
``benchmarks/results/mini/skd/README.md``: one table per split (B0: 4 tasks of 5; half base: a base
task of 10 and 2 tasks of 5), each row one run of one point, with

- A_N, the average incremental accuracy and the forgetting (``metrics.json``);
- old / new after the last task (all-class argmax on the old classes' and the last task's images);
- the task-local accuracy of every task after the last one (the argmax restricted to the image's own
  task: what the features and heads keep of each task apart from the others);
- SKD's classification weight gamma_n of every incremental task (``skd_gamma`` records; SKD's Eq. 9);
- the delegator check before every incremental task (``delegator_check``: the delegator S with T's
  classifier against T on the test images of the classes T knows; S / T);
- the classification loss and training accuracy of the last epoch of every incremental task's main
  phase: whether the new task was fitted in the protocol's epochs (the loss under its method's name:
  ``cls`` for SKD, ``local_ce`` for ABD, R-DFCIL and MFGR, ``ce`` for the others;
  :data:`CLASSIFICATION_TERMS`).

The B0 table also has the mini suite's own SKD run of each seed present (beta 5, the suite's
delegator budget: ``benchmarks/results/suites/mini-rev2``) as its reference row.

Usage::

    python benchmarks/skd_points.py RUNS [--out benchmarks/results/mini/skd]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from budget_curves import copy_run

from dfcil.atomic import write_text
from dfcil.rundir import EpochRecord, OtherRecord, RunDir
from dfcil.yamlio import load_file

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "mini" / "skd"
SUITE_REFERENCE = ROOT / "benchmarks" / "results" / "suites" / "mini-rev2"
REFERENCE_POINT = "skd (the mini suite: beta 5)"
#: The classification term of a main-phase epoch, by the names the methods log it under (first found).
CLASSIFICATION_TERMS = ("cls", "local_ce", "ce")
INTRO = """# SKD's points on cifar100-mini

The points of `suites/mini_skd.yaml` (its comments give the reasons): SKD's classification weight
at the paper's gamma_1 = 0.1 (beta 1.5 on B0, 1.0 on the half-base split), the delegator at three
times the iterations without the early lr cut (600), and with DFAD's BatchNorm eps (1e-5 for 0.8);
on the half-base split (SKD's protocol in small) every other method too. Network revision 2
(R-DFCIL's ResNet-32) throughout. What they show: `../FINDINGS.md`, "SKD at the paper's
classification weight". The last-epoch column gives each method's own classification term, unweighted:
SKD's `cls` and joint's `ce` are CE over all seen classes; ABD's, R-DFCIL's and MFGR's `local_ce` is CE over
the new task's classes only (lower for the same fit); the training accuracy is the all-class argmax
on the real training images in every row."""


def read_point(run_dir: Path) -> dict[str, Any] | None:
    """The figures of one complete run (None when it is not complete)."""
    files = RunDir(run_dir)
    metrics = files.read_metrics()
    if metrics is None or not metrics.get("complete"):
        return None
    scenario = load_file(files.config).get("scenario") or {}
    gamma: dict[int, float] = {}
    check: dict[int, tuple[float, float]] = {}
    last_epoch: dict[int, EpochRecord] = {}
    for record in files.records(strict=True):
        if isinstance(record, OtherRecord) and record.task is not None:
            if record.event == "skd_gamma":
                gamma[record.task] = float(record.fields["gamma"])
            elif record.event == "delegator_check":
                check[record.task] = (float(record.fields["student_accuracy"]),
                                      float(record.fields["teacher_accuracy"]))
        elif isinstance(record, EpochRecord) and record.phase == "main":
            last_epoch[record.task] = record  # the task's last main-phase epoch wins
    incremental = range(2, len(metrics["accuracy_per_step"]) + 1)
    fit: list[tuple[float, float] | None] = []
    for task in incremental:
        epoch = last_epoch.get(task)
        loss = None if epoch is None else next(
            (epoch.losses[term] for term in CLASSIFICATION_TERMS if term in epoch.losses), None)
        fit.append(None if epoch is None or loss is None or epoch.train_accuracy is None
                   else (loss, epoch.train_accuracy))
    final = metrics["old_new_accuracy"][-1]
    return {
        "name": run_dir.name,
        "seed": metrics["seed"],
        "base": int(scenario.get("base_classes") or 0),
        "last": metrics["last_accuracy"],
        "average": metrics["average_incremental_accuracy"],
        "forgetting": metrics.get("forgetting"),
        "old": final["old"],
        "new": final["new"],
        "task_local": metrics["task_local_accuracy"][-1],
        "gamma": [gamma.get(task) for task in incremental],
        "check": [check.get(task) for task in incremental],
        "fit": fit,
        "minutes": metrics["wall_time_s"] / 60,
    }


def point_label(run_dir: Path) -> str:
    """``b0-skd-beta-1.5`` of ``seed-0__point-b0-skd-beta-1.5``."""
    return run_dir.name.split("__point-", 1)[1] if "__point-" in run_dir.name else run_dir.name


def collect(runs: Path | None, out: Path) -> list[tuple[str, dict[str, Any]]]:
    """Copy the complete ``seed-<s>__point-<p>`` runs under ``runs`` into ``out`` and read every
    run there, with the mini suite's SKD run of each seed present: ``(point, figures)`` pairs."""
    sources = sorted(runs.glob("seed-*__point-*")) if runs is not None else []
    for run_dir in sources:
        if read_point(run_dir) is not None:
            copy_run(run_dir, out)
    points = [(point_label(run_dir), figures) for run_dir in sorted(out.glob("seed-*__point-*"))
              if (figures := read_point(run_dir)) is not None]
    for seed in sorted({figures["seed"] for _, figures in points}):
        reference = read_point(SUITE_REFERENCE / f"method-skd__seed-{seed}")
        if reference is not None:
            points.append((REFERENCE_POINT, reference))
    return points


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _per_task(values: list[Any], cell: Any, separator: str = " / ") -> str:
    """One cell of per-task values (``-`` for a task without one; ``-`` alone when none has)."""
    if all(value is None for value in values):
        return "-"
    return separator.join("-" if value is None else cell(value) for value in values)


def table(points: list[tuple[str, dict[str, Any]]], base: int) -> list[str]:
    """The rows of one split (``base`` classes in the first task; 0: equal tasks), the reference
    row first, then by point and seed."""
    rows = sorted(((label, figures) for label, figures in points if figures["base"] == base),
                  key=lambda item: (item[0] != REFERENCE_POINT, item[0], item[1]["seed"]))
    lines = ["| point | seed | A_N | avg. inc. | forgetting | old / new | task-local after the last task "
             "| gamma, tasks 2.. | delegator check S / T, tasks 2.. | last epoch: classification loss / train acc., tasks 2.. "
             "| minutes |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, f in rows:
        lines.append(
            f"| {label} | {f['seed']} | {f['last']:.2f} | {f['average']:.2f} | {_number(f['forgetting'], 1)} "
            f"| {_number(f['old'], 1)} / {_number(f['new'], 1)} "
            f"| {_per_task(f['task_local'], lambda v: f'{v:.1f}')} "
            f"| {_per_task(f['gamma'], lambda v: f'{v:.3f}')} "
            f"| {_per_task(f['check'], lambda v: f'{v[0]:.1f}/{v[1]:.1f}', '; ')} "
            f"| {_per_task(f['fit'], lambda v: f'{v[0]:.2f}/{v[1]:.1f}', '; ')} | {f['minutes']:.0f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="?", help="output folder of `dfcil suite suites/mini_skd.yaml`")
    parser.add_argument("--out", type=Path, default=OUT, help="results folder (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.runs is not None and not args.runs.is_dir():
        print(f"skd_points: error: {args.runs} is not a directory", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    points = collect(args.runs, args.out)
    parts = [INTRO]
    for base, title in ((0, "B0: 4 tasks of 5 (`configs/mini.yaml`)"),
                        (10, "Half base: 10 classes, then 2 tasks of 5 (`scenario.base_classes: 10`)")):
        if any(figures["base"] == base for _, figures in points):
            parts += ["", f"## {title}", "", *table(points, base)]
    parts += ["", "Each `seed-<s>__point-<p>` run here is a complete run of `DFCIL_DATA=../shared/data dfcil suite "
              "suites/mini_skd.yaml -o RUNS --jobs 1 --first-task-from MINI_SUITE_RUNS --only 'seed-<s>__point-<p>'` "
              "(the point's overrides: `suites/mini_skd.yaml`), copied without checkpoints (config, log, metrics, "
              "run.json with command, commit and machine), and this file is written by "
              "`python benchmarks/skd_points.py RUNS`. Data: the real CIFAR-100 (`cifar100-jpg.tar.gz`). "
              "Minutes are wall time on a shared machine (other jobs ran beside every run): not cost figures.", ""]
    write_text(args.out / "README.md", "\n".join(parts))
    print(args.out / "README.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
