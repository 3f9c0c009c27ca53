"""Before/after of the generators' memory layout, measured in one run: NCHW against channels_last.

The 32 px generator (ABD / R-DFCIL / DeepInversion / MFGR / SKD's delegator) at batch 128, in the
engine's precision (bf16 autocast where native, else fp32): milliseconds of sampling (eval mode, no
grad: what every data-free training step pays for its synthetic batch) and of a training step's
forward + backward (generator training). The two layouts compute the same images
(``tests/test_synthesis.py``). Median of ``--repeats`` timed calls after two warm-up calls.

Usage::

    python benchmarks/generator_layout.py [--repeats 8] [--out DIR | --no-write]

Writes ``DIR/generator_layout.{json,md}`` (default ``benchmarks/results/<precision tag>``).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

from dfcil.atomic import write_json, write_text
from dfcil.precision import resolve_precision
from dfcil.run import git_commit, machine_description
from dfcil.synthesis.generator import build_generator

ROOT = Path(__file__).resolve().parents[1]


def milliseconds(channels_last: bool, train: bool, bf16: bool, repeats: int, batch: int = 128) -> float:
    """Median milliseconds of one sampling call (``train=False``) or forward + backward."""
    torch.manual_seed(0)
    generator = build_generator(32, channels_last=channels_last).train(train)
    z = torch.randn(batch, generator.z_dim)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def call() -> None:
        with torch.set_grad_enabled(train), autocast():
            images = generator(z)
        if train:
            images.float().square().mean().backward()

    for _ in range(2):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    precision = resolve_precision("auto", torch.device("cpu"))
    rows = []
    for train in (False, True):
        nchw = milliseconds(False, train, precision == "bf16", args.repeats)
        nhwc = milliseconds(True, train, precision == "bf16", args.repeats)
        rows.append({"call": "forward + backward" if train else "sampling (no grad)", "nchw_ms": nchw,
                     "channels_last_ms": nhwc, "saving_percent": 100.0 * (1 - nhwc / nchw)})
    facts = {"commit": git_commit(ROOT / "src" / "dfcil"), "machine": machine_description("cpu"),
             "precision": precision, "batch": 128, "repeats": args.repeats}
    text = "\n".join([
        "# Generator memory layout: NCHW against channels_last",
        "",
        f"Produced by `{' '.join(['python benchmarks/generator_layout.py', *sys.argv[1:]])}` at commit `{facts['commit']}` on "
        f"{facts['machine']['processor']} ({facts['machine']['cpu_count']} CPU cores, torch {facts['machine']['torch']}, "
        f"{facts['machine']['torch_threads']} threads), precision {precision}; 32 px generator, batch 128, median of "
        f"{args.repeats} calls.",
        "",
        "| call | NCHW ms | channels_last ms | saving |",
        "|---|---|---|---|",
        *[f"| {r['call']} | {r['nchw_ms']:.0f} | {r['channels_last_ms']:.0f} | {r['saving_percent']:.0f} % |" for r in rows],
        "",
    ])
    print(text)
    if not args.no_write:
        out = args.out or ROOT / "benchmarks" / "results" / ("cpu-bf16" if precision == "bf16" else "")
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "generator_layout.json", {**facts, "results": rows})
        write_text(out / "generator_layout.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
