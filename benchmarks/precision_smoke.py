"""The smoke protocol in fp32 and in bf16 autocast: where the precision changes what a method learns.

Runs ``configs/smoke.yaml`` (2 tasks of 2 real CIFAR-100 classes, all 500 training images per
class, 3 epochs per task: the end-to-end tests' settings) for each method, precision and seed,
one torch thread each, and reports after task 2 the accuracy, old / new, and the scale of the
first task's logits on the *new* classes' test images (the mean over those images of the largest
old-class logit of the model after task 1): LwF.MC's old-class targets are the sigmoids of these
logits, which its new classes must outscore.

Usage (runs that are complete under ``--runs`` are read, not trained again)::

    DFCIL_DATA=../shared/data python benchmarks/precision_smoke.py --runs RUNS \\
        [--methods lwfmc] [--seeds 0 1 2] [--precisions fp32 bf16] [--no-write]

Writes ``benchmarks/results/precision_smoke.{json,md}`` (atomically) unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from dfcil.atomic import write_json, write_text
from dfcil.data import default_cache_dir, load_dataset, resolve_data_root
from dfcil.engine.evaluate import predict
from dfcil.engine.trainer import Trainer
from dfcil.experiment import load_experiment

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SMOKE_ARGS = ["--set", "train.epochs=3", "--set", "data.train_per_class=null", "--set", "runtime.progress=false",
              "--set", "runtime.num_threads=1"]


def train(run_dir: Path, method: str, precision: str, seed: int) -> None:
    """``dfcil run`` of the smoke protocol, unless ``run_dir`` holds a complete run."""
    if (run_dir / "metrics.json").exists() and json.loads((run_dir / "metrics.json").read_text()).get("complete"):
        return
    command = [sys.executable, "-m", "dfcil", "run", str(ROOT / "configs" / "smoke.yaml"), "-o", str(run_dir),
               "--set", f"method.name={method}", "--set", f"train.precision={precision}", "--set", f"seed={seed}",
               *SMOKE_ARGS]
    if run_dir.exists():
        command = [sys.executable, "-m", "dfcil", "run", "--resume", str(run_dir)]
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise SystemExit(f"precision_smoke: the run {run_dir} failed (exit {done.returncode}): {last}")


def first_task_logit_scale(run_dir: Path) -> float:
    """Mean over the task-2 classes' test images of the largest logit of the model after task 1."""
    experiment = load_experiment(run_dir / "config.yaml")
    data = load_dataset(experiment.config.data.dataset, resolve_data_root(None), default_cache_dir(), progress=False)
    with tempfile.TemporaryDirectory() as scratch:  # the trainer's own run folder, unused
        trainer = Trainer(experiment, Path(scratch), data)
        saved = torch.load(run_dir / "checkpoints" / "task_1.pt", map_location="cpu", weights_only=False)
        for size in saved["head_sizes"]:
            trainer.model.add_head(size)
        trainer.model.load_state_dict(saved["model"])
        first, second = trainer.scenario.tasks[0], trainer.scenario.tasks[1]
        indices = trainer.test_data.indices_of(second.start, second.stop)
        logits = predict(trainer.model, trainer.test_data.store, indices, trainer.normalizer, trainer.env, 200)[0]
    return float(logits[:, : first.stop].max(dim=1).values.mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="folder of the run directories")
    parser.add_argument("--methods", nargs="+", default=["lwfmc"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for method in args.methods:
        for precision in args.precisions:
            for seed in args.seeds:
                run_dir = args.runs / f"{method}-{precision}-s{seed}"
                train(run_dir, method, precision, seed)
                metrics = json.loads((run_dir / "metrics.json").read_text())
                session = json.loads((run_dir / "run.json").read_text())["sessions"][-1]
                rows.append({
                    "method": method, "precision": precision, "seed": seed,
                    "accuracy_per_step": metrics["accuracy_per_step"],
                    "old": metrics["old_new_accuracy"][-1]["old"], "new": metrics["old_new_accuracy"][-1]["new"],
                    "first_task_logit_scale": first_task_logit_scale(run_dir),
                    "machine": session["machine"].get("cpu_model"), "commit": session.get("commit"),
                })
                row = rows[-1]
                print(f"{method} {precision} seed {seed}: A {row['accuracy_per_step']}, old {row['old']:.1f}, "
                      f"new {row['new']:.1f}, task-1 logit scale {row['first_task_logit_scale']:.2f}")
    if args.no_write:
        return 0
    command = "python benchmarks/precision_smoke.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_json(RESULTS / "precision_smoke.json", {"command": command, "rows": rows})
    lines = ["# The smoke protocol in fp32 and bf16 (generated by benchmarks/precision_smoke.py)", "",
             f"Command: `{command}`  ", f"Machine: {rows[0]['machine']}, 1 thread; commit of the runs: "
             f"`{rows[0]['commit']}`  ", "Data: real CIFAR-100 (classes 23, 8 then 11, 7), 3 epochs per task", "",
             "| method | precision | seed | A_1 | A_2 | old | new | task-1 logit scale |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['precision']} | {r['seed']} | {r['accuracy_per_step'][0]:.1f} | "
              f"{r['accuracy_per_step'][-1]:.2f} | {r['old']:.1f} | {r['new']:.1f} | {r['first_task_logit_scale']:.2f} |"
              for r in rows]
    lines += ["", "Means over seeds:", ""]
    for method in args.methods:
        for precision in args.precisions:
            group = [r for r in rows if r["method"] == method and r["precision"] == precision]
            lines.append(f"- {method} {precision}: new {statistics.mean(r['new'] for r in group):.1f}, old "
                         f"{statistics.mean(r['old'] for r in group):.1f}, task-1 logit scale "
                         f"{statistics.mean(r['first_task_logit_scale'] for r in group):.2f}")
    lines += ["", "Task-1 logit scale: the mean, over the test images of task 2's classes, of the largest "
              "old-class logit of the model after task 1.", ""]
    write_text(RESULTS / "precision_smoke.md", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
