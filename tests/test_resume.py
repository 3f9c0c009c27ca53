"""Killing a run at any moment loses at most the current epoch; --resume ends identically."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# a multistep schedule whose milestones fall after the kill point: the resumed scheduler must
# still decay (checkpoints once lost MultiStepLR's milestones and kept the lr for good)
ARGS = ["--set", "method.name=lwf", "--set", "train.epochs=4", "--set", "runtime.progress=false",
        "--set", "runtime.num_threads=1", "--set", "data.train_per_class=60",
        "--set", "train.schedule=multistep", "--set", "train.milestones=[2,3]", "--set", "train.lr=0.1"]


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


def epoch_lrs(run_dir: Path) -> list[tuple[int, int, float]]:
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [(r["task"], r["epoch"], round(r["lr"], 8)) for r in records if r["event"] == "epoch"]


def comparable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "wall_time_s"}


@pytest.mark.slow
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
    assert epoch_lrs(interrupted) == epoch_lrs(reference)
    assert [lr for task, _, lr in epoch_lrs(reference) if task == 2] == [0.1, 0.1, 0.01, 0.001]
    sessions = json.loads((interrupted / "run.json").read_text())["sessions"]
    assert len(sessions) == 2 and sessions[1]["resumed_from"]["task"] == 1

    # resuming a complete run does nothing and keeps the results
    again = dfcil(["run", "--resume", str(interrupted)], env)
    assert again.returncode == 0 and "already complete" in again.stderr
    assert comparable(json.loads((interrupted / "metrics.json").read_text())) == comparable(a)


def test_checkpoints_keep_multistep_milestones_and_repair_old_ones(tmp_path):
    from collections import Counter

    import torch

    from dfcil.engine import checkpoint as ckpt

    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [10, 15], 0.1)
    state = ckpt.Checkpoint(fingerprint="f", position=ckpt.Position(0, 0, 7, False), head_sizes=[2], model={},
                            method={}, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), rng={},
                            results=[], wall_time_s=0.0)
    ckpt.save(tmp_path, state)
    saved = torch.load(tmp_path / ckpt.LAST, weights_only=False)
    assert saved["scheduler"]["milestones"] == Counter({10: 1, 15: 1})
    assert saved["position"] == {"task": 0, "phase": 0, "epoch": 7, "task_done": False, "preparing": None}
    # checkpoints written before the fix hold Counter({(10, 1): 1, (15, 1): 1})
    mangled = {**saved["scheduler"], "milestones": Counter({(10, 1): 1, (15, 1): 1})}
    assert ckpt._repair_milestones(mangled)["milestones"] == Counter({10: 1, 15: 1})
    assert ckpt._repair_milestones(None) is None


def test_a_checkpoint_of_an_earlier_network_revision_is_refused_by_name(tmp_path, monkeypatch):
    import dfcil.config
    from dfcil.config import parse_config, without_runtime
    from dfcil.engine import checkpoint as ckpt
    from dfcil.errors import RunDirError

    config = parse_config({"model": {"resnet32_variant": "rdfcil"}})
    with monkeypatch.context() as before_the_change:  # resnet32/rdfcil's forward at revision 1
        before_the_change.setattr(dfcil.config, "NETWORK_REVISIONS", {})
        old_fingerprint = ckpt.run_fingerprint(config)
    state = ckpt.Checkpoint(fingerprint=old_fingerprint, position=ckpt.Position(0, 0, 3, False), head_sizes=[2],
                            model={}, method={}, optimizer=None, scheduler=None, rng={}, results=[], wall_time_s=0.0,
                            config=without_runtime(config))
    ckpt.save(tmp_path, state)
    with pytest.raises(RunDirError, match=r"revision 1 of the resnet32/rdfcil network, and this dfcil builds revision 2"):
        ckpt.load(tmp_path, config)
    ckpt.save(tmp_path, ckpt.Checkpoint(**{**state.__dict__, "fingerprint": "0123456789abcdef"}))
    with pytest.raises(RunDirError, match="belongs to another run"):  # not a revision: the old message
        ckpt.load(tmp_path, config)
