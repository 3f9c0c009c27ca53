"""Killing a run at any moment loses at most the current epoch; --resume ends identically."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

ARGS = ["--set", "method.name=lwf", "--set", "train.epochs=4", "--set", "runtime.progress=false",
        "--set", "runtime.num_threads=1", "--set", "data.train_per_class=60"]


def dfcil(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dfcil", *args], env=env, capture_output=True, text=True, timeout=600)


def epoch_records(run_dir: Path) -> list[tuple[int, int]]:
    path = run_dir / "log.jsonl"
    if not path.exists():
        return []
    try:
        records = [json.loads(line) for line in path.read_text().splitlines()]
    except json.JSONDecodeError:
        return []
    return [(r["task"], r["epoch"]) for r in records if r["event"] == "epoch"]


def comparable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "wall_time_s"}


def test_sigkill_then_resume_gives_identical_metrics(cifar_env, tmp_path):
    env = {**os.environ, **cifar_env}
    reference = tmp_path / "reference"
    done = dfcil(["run", str(CONFIGS / "smoke.yaml"), "-o", str(reference), *ARGS], env)
    assert done.returncode == 0, done.stderr

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(
        [sys.executable, "-m", "dfcil", "run", str(CONFIGS / "smoke.yaml"), "-o", str(interrupted), *ARGS],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.time() + 300
    # kill in the middle of task 2 (after its first epoch): the old model, optimiser and RNG
    # states must all come back from the checkpoint
    while (2, 1) not in epoch_records(interrupted):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not json.loads((interrupted / "metrics.json").read_text())["complete"]
    assert (2, 4) not in epoch_records(interrupted)

    resumed = dfcil(["run", "--resume", str(interrupted)], env)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((reference / "metrics.json").read_text())
    b = json.loads((interrupted / "metrics.json").read_text())
    assert comparable(a) == comparable(b)
    assert epoch_records(interrupted) == epoch_records(reference)
    sessions = json.loads((interrupted / "run.json").read_text())["sessions"]
    assert len(sessions) == 2 and sessions[1]["resumed_from"]["task"] == 1

    # resuming a complete run does nothing and keeps the results
    again = dfcil(["run", "--resume", str(interrupted)], env)
    assert again.returncode == 0 and "already complete" in again.stderr
    assert comparable(json.loads((interrupted / "metrics.json").read_text())) == comparable(a)
