"""Before/after of R-DFCIL's angle-wise relational KD, measured in one run: autograd through the
``(B, B, B)`` relation tensors against the fused loss (``dfcil.losses.angle_relation_distillation``).

1. The loss alone, forward + backward, at batch ``B`` and R-DFCIL's projection width (ResNet-32:
   ``2 x 64``): median of ``--repeats`` calls after two warm-up calls.
2. R-DFCIL's whole stage-A training step (task 2 of the mini split, batch 128, 20 steps per
   epoch, through the engine's own epoch loop as in ``benchmarks/method_speed.py``): one trainer,
   a warm-up epoch with each loss, then ``--rounds`` epochs with each, alternating, so that drift
   of the shared machine hits both alike; median over rounds.

Both compute the same loss and gradients (``tests/test_rdfcil.py``).

Usage::

    python benchmarks/relation_loss.py [--repeats 20] [--rounds 6] [--out DIR | --no-write]

Writes ``DIR/relation_loss.{json,md}`` (default ``benchmarks/results/<precision tag>``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

import dfcil.methods.rdfcil as rdfcil_module
from dfcil.atomic import write_json, write_text
from dfcil.console import console_logging
from dfcil.engine.trainer import Trainer
from dfcil.losses import angle_relation_distillation, angle_relations
from dfcil.precision import resolve_precision
from dfcil.run import git_commit, machine_description

sys.path.insert(0, str(Path(__file__).resolve().parent))
from method_speed import config_for, random_dataset, reach_task  # noqa: E402
from step_time import rkd_seconds  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def autograd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The loss as it was: autograd through both sides' ``(B, B, B)`` cosines."""
    return (angle_relations(student) - angle_relations(teacher)).abs().mean()


IMPLEMENTATIONS: dict[str, LossFn] = {"autograd": autograd_angle_loss, "fused": angle_relation_distillation}


def step_milliseconds(work: Path, rounds: int) -> dict[str, list[float]]:
    """R-DFCIL's stage-A step (ms) with each loss as its relational KD: one trainer, one warm-up
    epoch per loss, then ``rounds`` x (one epoch per loss, alternating)."""
    trainer = Trainer(config_for("rdfcil", 2), work / "rdfcil", random_dataset())
    reach_task(trainer, 1)
    task = trainer.scenario.tasks[1]
    trainer.method.prepare_task(trainer.model, task)
    trainer.model.add_head(task.num_new)
    phase = trainer.method.phases(task)[0]
    optimizer, _ = trainer.make_optimizer(phase)
    original = rdfcil_module.angle_relation_distillation
    times: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
    try:
        for epoch in range(rounds + 1):
            for name, loss in IMPLEMENTATIONS.items():
                rdfcil_module.angle_relation_distillation = loss
                stats = trainer.train_epoch(task, phase, 1 + epoch, optimizer)
                steps = -(-stats.images // trainer.config.train.batch_size)
                if epoch > 0:  # the first is the warm-up
                    times[name].append(1000.0 * stats.seconds / steps)
                    print(name, f"{times[name][-1]:.1f} ms/step", flush=True)
    finally:
        rdfcil_module.angle_relation_distillation = original
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--width", type=int, default=128, help="projection width (ResNet-32: 2 x 64)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.repeats < 1 or args.rounds < 1:
        parser.error("--repeats and --rounds must be >= 1")
    precision = resolve_precision("auto", torch.device("cpu"))
    rows = []
    for batch in (64, 128, 256):
        times = {name: 1000.0 * rkd_seconds(batch, args.width, args.repeats, fn) for name, fn in IMPLEMENTATIONS.items()}
        rows.append({"what": f"loss alone, B={batch}", **times})
        print(rows[-1], flush=True)
    with tempfile.TemporaryDirectory() as work:
        steps = step_milliseconds(Path(work), args.rounds)
    rows.append({"what": "R-DFCIL training step, B=128", **{n: statistics.median(v) for n, v in steps.items()}})
    for row in rows:
        row["saving_ms"] = row["autograd"] - row["fused"]
    paired = sorted(a - f for a, f in zip(steps["autograd"], steps["fused"]))  # each round's two epochs
    facts = {"commit": git_commit(ROOT / "src" / "dfcil"), "machine": machine_description("cpu"),
             "precision": precision, "width": args.width, "repeats": args.repeats, "rounds": args.rounds,
             "step_ms_each_round": steps, "paired_saving_ms": paired}
    text = "\n".join([
        "# R-DFCIL relational KD: autograd through the B^3 relations against the fused loss",
        "",
        f"Produced by `{' '.join(['python benchmarks/relation_loss.py', *sys.argv[1:]])}` at commit "
        f"`{facts['commit']}` on {facts['machine']['processor']} ({facts['machine']['cpu_count']} CPU cores, "
        f"torch {facts['machine']['torch']}, {facts['machine']['torch_threads']} threads), precision {precision}. "
        f"Loss alone: forward + backward at width {args.width}, median of {args.repeats} calls. Training step: "
        f"R-DFCIL stage A, task 2 of the mini split (ResNet-32, batch 128, random pixels, engine defaults), "
        f"one trainer, median of {args.rounds} epochs of 20 steps with each loss, alternating.",
        "",
        "| measured | autograd ms | fused ms | saving ms |",
        "|---|---|---|---|",
        *[f"| {r['what']} | {r['autograd']:.1f} | {r['fused']:.1f} | {r['saving_ms']:.1f} |" for r in rows],
        "",
        f"Training step, saving within each round (autograd epoch minus the fused epoch that follows it): median "
        f"{statistics.median(paired):.1f} ms, range {paired[0]:.1f} to {paired[-1]:.1f} ms; every epoch in "
        f"`relation_loss.json`.",
        "",
    ])
    print(text)
    if not args.no_write:
        out = args.out or ROOT / "benchmarks" / "results" / ("cpu-bf16" if precision == "bf16" else "")
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "relation_loss.json", {**facts, "results": rows})
        write_text(out / "relation_loss.md", text)
    return 0


if __name__ == "__main__":
    with console_logging():  # the library's messages on stderr, as in `dfcil`
        sys.exit(main())
