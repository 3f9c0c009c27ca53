"""Training speed when another process competes for the CPU, for each ``runtime.num_threads``.

Each measurement is a real ``dfcil run`` (the mini config's first task, finetune, a reduced
epoch) whose epoch times are read from its ``log.jsonl``; it is stopped after ``--epochs``
epochs. Three conditions per setting:

* ``quiet``: nothing else running (besides this script, which sleeps);
* ``loaded``: one CPU-bound process (a Python busy loop) running from before the start;
* ``late``: the busy loop starts after the second epoch, as when someone starts work beside a
  training run already under way.

The competitor is started in this script's session, so the kernel's per-session scheduling
groups (autogroups) treat it and the run alike. Pause any other work on the machine first
(``kill -STOP``), and run it from the repository root with the data::

    DFCIL_DATA=../shared/data python benchmarks/under_load.py [--batch 32 --batch 128]

Writes ``benchmarks/results/under_load.{json,md}`` (atomically) unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dfcil.atomic import write_json, write_text
from dfcil.run import git_commit, machine_description
from dfcil.rundir import EpochRecord, RunDir

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("1", "2", "auto")
CONDITIONS = ("quiet", "loaded", "late")
BUSY_LOOP = "while True: pass"


def _epochs(run_dir: Path) -> list[EpochRecord]:
    """The epoch records logged so far (a line being written is passed over)."""
    return [record for record in RunDir(run_dir).records() if isinstance(record, EpochRecord)]


def measure(setting: str, condition: str, batch: int, per_class: int, epochs: int, work: Path,
            timeout_s: float) -> dict[str, Any]:
    """Epoch times of one run of ``setting`` threads under ``condition``."""
    run_dir = work / f"{setting}-{condition}-b{batch}"
    command = [sys.executable, "-m", "dfcil", "run", str(ROOT / "configs" / "mini.yaml"), "-o", str(run_dir),
               "--set", "method.name=finetune", "--set", f"runtime.num_threads={setting}",
               "--set", "runtime.progress=false", "--set", f"train.batch_size={batch}",
               "--set", f"data.train_per_class={per_class}", "--set", "runtime.checkpoint_every_s=1e9"]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    competitor = None
    if condition == "loaded":
        competitor = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
        time.sleep(1.0)
    run = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and run.poll() is None:
            done = _epochs(run_dir)
            if condition == "late" and competitor is None and len(done) >= 2:
                competitor = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
            if len(done) >= epochs:
                break
            time.sleep(0.2)
    finally:
        run.kill()
        _, stderr = run.communicate()
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    records = _epochs(run_dir)[:epochs]
    if not records:
        raise SystemExit(f"under_load: no epoch from {setting}/{condition}: {stderr.strip()[-500:]}")
    seconds = [r.time_s for r in records]
    # late: the epochs after the competitor started (the third on), else all but the first (warm-up)
    timed = seconds[2:] if condition == "late" else seconds[1:]
    return {"setting": setting, "condition": condition, "batch": batch, "epoch_s": seconds,
            "threads": [r.threads for r in records], "median_s": statistics.median(timed),
            "images": records[0].images}


def markdown(results: list[dict[str, Any]], facts: dict[str, Any]) -> str:
    lines = ["# Training speed with a CPU-bound process beside it", "",
             f"Produced by `{facts['command']}` at commit {facts['commit']} on {facts['machine']['cpu_model']} "
             f"({facts['machine']['cpu_count']} CPUs), {facts['when']}. Each cell: median epoch seconds of a "
             "`dfcil run` of the mini config's first task (finetune), and in brackets how many times slower "
             "than the fastest quiet setting at that batch size; threads: the count torch used per epoch "
             "(for `late`, the epochs after the competitor started are timed). Ideal under load with one "
             "of two cores taken is about 2x (half the CPU); much more is a collapse.", ""]
    for batch in sorted({r["batch"] for r in results}):
        rows = [r for r in results if r["batch"] == batch]
        best = min(r["median_s"] for r in rows if r["condition"] == "quiet")
        lines += [f"## batch {batch} ({rows[0]['images']} images an epoch)", "",
                  "| runtime.num_threads | " + " | ".join(CONDITIONS) + " |", "|---|---|---|---|"]
        for setting in SETTINGS:
            cells = []
            for condition in CONDITIONS:
                match = [r for r in rows if r["setting"] == setting and r["condition"] == condition]
                if not match:
                    cells.append("-")
                    continue
                r = match[0]
                threads = "/".join(str(t) for t in r["threads"])
                cells.append(f"{r['median_s']:.2f} s ({r['median_s'] / best:.1f}x; threads {threads})")
            lines.append(f"| {setting} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, action="append", help="batch sizes (default 32 and 128)")
    parser.add_argument("--per-class", type=int, default=200, help="training images per class (5 classes)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per measurement at most")
    parser.add_argument("--setting", action="append", choices=SETTINGS, help="runtime.num_threads values (default all)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="dfcil-under-load-") as tmp:
        for batch in args.batch or [32, 128]:
            for setting in args.setting or SETTINGS:
                for condition in CONDITIONS:
                    result = measure(setting, condition, batch, args.per_class, args.epochs, Path(tmp), args.timeout)
                    print(json.dumps(result), flush=True)
                    results.append(result)
    facts = {"command": "python benchmarks/under_load.py " + " ".join(sys.argv[1:]), "commit": git_commit(ROOT),
             "machine": machine_description("cpu"), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    text = markdown(results, facts)
    print(text)
    if not args.no_write:
        out = ROOT / "benchmarks" / "results"
        write_json(out / "under_load.json", {"facts": facts, "results": results})
        write_text(out / "under_load.md", text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
