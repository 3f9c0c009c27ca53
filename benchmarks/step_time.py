"""Time per training step of a run, by task and phase, relative to its first task.

The first task of every method here is plain cross-entropy on real images, i.e. exactly a
``finetune`` step, so the ratio of a later phase's step time to the first task's is the cost of
the method's extra work *measured in the same run* (same machine, same process). Reads the
per-epoch records of ``log.jsonl`` (time_s and images of each epoch) and the run's batch size.

Also reports the generator training of each task (seconds, from the synthesizer's log
records) and its share of the run's wall-clock time (``wall_time_s`` of ``metrics.json``).

Optionally (``--rkd``) times the relational-KD loss alone (forward + backward) at the run's
batch size and R-DFCIL's projection width, to show it is not what makes a step expensive.

Usage::

    python benchmarks/step_time.py runs/mini/rdfcil-s0 [--per-task] [--rkd]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from dfcil.losses import angle_relation_distillation
from dfcil.rundir import EpochRecord, ProgressRecord, RunDir


def step_times(run_dir: Path, per_task: bool = False) -> tuple[int, dict[tuple[str, str], list[float]]]:
    """Batch size and the seconds per step of every epoch, grouped by (task group, phase):
    task 1 and tasks 2+ together, or (``per_task``) every task on its own."""
    files = RunDir(run_dir)
    config = yaml.safe_load(files.config.read_text())
    batch_size = int(config["train"]["batch_size"])
    groups: dict[tuple[str, str], list[float]] = {}
    for record in files.records(strict=True):
        if not isinstance(record, EpochRecord):
            continue
        steps = math.ceil(record.images / batch_size)
        task = f"task {record.task}" if per_task or record.task == 1 else "tasks 2+"
        groups.setdefault((task, record.phase), []).append(record.time_s / steps)
    return batch_size, groups


def generator_seconds(run_dir: Path) -> dict[int, float]:
    """Seconds of generator training per task: steps / (cumulative steps per second) of the
    last synthesis record of each task."""
    seconds: dict[int, float] = {}
    for record in RunDir(run_dir).records(strict=True):
        if isinstance(record, ProgressRecord) and record.event == "synthesis" and record.seconds is not None:
            seconds[record.task] = record.seconds
    return seconds


def rkd_seconds(batch_size: int, width: int, repeats: int = 20,
                loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = angle_relation_distillation) -> float:
    """Median seconds of one forward + backward of the angle-wise relational KD ``loss`` on random
    embeddings (seeded), after two warm-up calls."""
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(batch_size, width, generator=generator, requires_grad=True)
    teacher = torch.randn(batch_size, width, generator=generator, requires_grad=True)
    samples = []
    for _ in range(repeats + 2):
        start = time.perf_counter()
        loss(student, teacher).backward()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples[2:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--per-task", action="store_true", help="one row per task instead of tasks 2+ together")
    parser.add_argument("--rkd", action="store_true", help="also time the relational-KD loss alone")
    parser.add_argument("--rkd-width", type=int, default=128, help="projection width 2d (ResNet-32: 128)")
    args = parser.parse_args()
    batch_size, groups = step_times(args.run_dir, args.per_task)
    base = statistics.median(groups[("task 1", "main")])
    print(f"{args.run_dir}: batch {batch_size}, median over epochs")
    print("| tasks | phase | epochs | ms / step | x first task |")
    print("|---|---|---|---|---|")
    for (task, phase), values in groups.items():
        median = statistics.median(values)
        print(f"| {task} | {phase} | {len(values)} | {1000 * median:.1f} | {median / base:.2f} |")
    generator = generator_seconds(args.run_dir)
    if generator:
        metrics = RunDir(args.run_dir).read_metrics()
        wall = metrics.get("wall_time_s") if metrics else None
        total = sum(generator.values())
        print("generator training: " + ", ".join(f"task {t} {s / 60:.1f} min" for t, s in sorted(generator.items()))
              + f"; total {total / 60:.1f} min" + (f" = {100 * total / wall:.0f} % of the run's {wall / 60:.1f} min"
                                                  if wall else ""))
    if args.rkd:
        seconds = rkd_seconds(batch_size, args.rkd_width)
        print(f"relational KD loss alone (B={batch_size}, width {args.rkd_width}, fwd+bwd, "
              f"{torch.get_num_threads()} threads): {1000 * seconds:.1f} ms = {seconds / base:.2f} x a first-task step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
