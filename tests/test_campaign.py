"""benchmarks/campaign.py: the first task kept in the repository starts the runs on a fresh machine."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dfcil.config import parse_config
from dfcil.engine.trainer import Trainer
from dfcil.first_task import CHECKPOINT, adopt_first_task, has_first_task

from conftest import coloured_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "campaign.py"


def load_script():
    spec = importlib.util.spec_from_file_location("campaign", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _config(method: str):
    extra = {"synthesis": {"steps": 2, "batch_size": 8, "log_every": 1}, "refine_epochs": 1} if method == "rdfcil" else {}
    return parse_config({
        "data": {"dataset": "imagefolder"},
        "scenario": {"order": "identity", "num_tasks": 2},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.05, "schedule": "constant", "milestones": [],
                  "precision": "fp32"},
        "method": {"name": method, **extra},
        "runtime": {"progress": False, "device": "cpu", "num_threads": 1},
    })


@pytest.mark.slow
def test_the_kept_first_task_starts_a_run_as_the_original_does(tmp_path):
    campaign = load_script()
    root, kept = tmp_path / "campaign", tmp_path / "repo" / "first-task-s0"
    assert campaign.keep_first_task(root, kept) is None  # nothing to keep yet
    source = root / campaign.RUNS[0][0]
    Trainer(_config("finetune"), source, coloured_dataset()).run()  # both tasks: the log has task 2 too
    assert campaign.keep_first_task(root, kept) == kept
    assert has_first_task(kept)
    assert (kept / CHECKPOINT).read_bytes() == (source / CHECKPOINT).read_bytes()
    tasks = {json.loads(line)["task"] for line in (kept / "log.jsonl").read_text().splitlines()}
    assert tasks == {1}
    metrics = []
    for donor in (source, kept):
        trainer = Trainer(_config("rdfcil"), tmp_path / f"from-{donor.name}", coloured_dataset())
        metrics.append(trainer.run(resume=adopt_first_task(donor, trainer)))
    assert metrics[0]["accuracy_matrix"] == metrics[1]["accuracy_matrix"]
    assert campaign.keep_first_task(root, kept) == kept  # kept once, not rewritten


def test_runs_on_a_fresh_machine_start_from_the_kept_first_task(tmp_path, monkeypatch):
    campaign = load_script()
    kept = tmp_path / "kept"
    commands: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", lambda command, **_: commands.append(command) or
                        subprocess.CompletedProcess(command, 0))
    assert campaign.run_campaign(tmp_path / "fresh", kept) == 0
    assert all("--first-task-from" not in command for command in commands)  # nothing kept: train task 1
    (kept / "checkpoints").mkdir(parents=True)
    for name in ("first_task.pt", "first_task.json"):
        (kept / "checkpoints" / name).write_text("x")
    commands.clear()
    assert campaign.run_campaign(tmp_path / "fresher", kept) == 0
    assert [c[c.index("--first-task-from") + 1] for c in commands] == [str(kept)] * len(campaign.RUNS)
    assert all(c[:3] == ["nice", "-n", "19"] for c in commands)
