"""benchmarks/campaign.py: the first task kept in the repository starts the runs on a fresh machine."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from dfcil.atomic import write_text
from dfcil.config import config_to_dict
from dfcil.engine import checkpoint as ckpt
from dfcil.engine.trainer import Trainer
from dfcil.experiment import parse_experiment
from dfcil.first_task import CHECKPOINT, adopt_first_task, has_first_task

from conftest import coloured_dataset, load_benchmark


def load_script():
    return load_benchmark("campaign")


def _config(method: str):
    extra = {"synthesis": {"steps": 2, "batch_size": 8, "log_every": 1}, "refine_epochs": 1} if method == "rdfcil" else {}
    return parse_experiment({
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
    assert campaign.run_campaign(tmp_path / "fresh", kept, tmp_path / "nothing-carried") == 0
    # nothing kept or carried: train task 1
    assert all("--first-task-from" not in command and "--resume" not in command for command in commands)
    (kept / "checkpoints").mkdir(parents=True)
    for name in ("first_task.pt", "first_task.json"):
        (kept / "checkpoints" / name).write_text("x")
    commands.clear()
    assert campaign.run_campaign(tmp_path / "fresher", kept, tmp_path / "nothing-carried") == 0
    assert [c[c.index("--first-task-from") + 1] for c in commands] == [str(kept)] * len(campaign.RUNS)
    assert all(c[:3] == ["nice", "-n", "19"] for c in commands)


class Killed(Exception):
    pass


class KilledInTheFirstTask(Trainer):
    """Killed right after the checkpoint of the first epoch of task 1 (of 2 epochs)."""

    def _save(self, position, optimizer=None, scheduler=None) -> None:
        super()._save(position, optimizer, scheduler)
        if position == ckpt.Position(task=0, phase=0, epoch=1, task_done=False):
            raise Killed


def test_a_first_task_carried_to_a_fresh_machine_ends_as_an_uninterrupted_one(tmp_path, monkeypatch):
    campaign = load_script()
    tree = config_to_dict(_config("rdfcil").config)
    # a checkpoint at every epoch (the campaign's: every 30 s)
    experiment = parse_experiment({**tree, "train": {**tree["train"], "epochs": 2},
                           "runtime": {**tree["runtime"], "checkpoint_every_s": 0}})
    kept, carried = tmp_path / "repo" / "first-task-s0", tmp_path / "repo" / "first-task-in-progress"
    name = campaign.RUNS[0][0]
    config = experiment.config
    expected = Trainer(experiment, tmp_path / "reference", coloured_dataset()).run()

    old_root = tmp_path / "session-1"
    assert campaign.carry_first_task(old_root, carried, kept) is None  # no run yet: nothing to carry
    with pytest.raises(Killed):
        KilledInTheFirstTask(experiment, old_root / name, coloured_dataset()).run()
    write_text(old_root / name / "config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False))
    assert campaign.carry_first_task(old_root, carried, kept) == carried
    assert (carried / "checkpoints" / "last.pt").read_bytes() == (old_root / name / "checkpoints" / "last.pt").read_bytes()

    # the next session: a fresh machine with nothing but the repository; `run` resumes the copy
    new_root = tmp_path / "session-2"
    commands: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", lambda command, **_: commands.append(command) or
                        subprocess.CompletedProcess(command, 0))
    assert campaign.run_campaign(new_root, kept, carried) == 0
    assert commands[0][commands[0].index("--resume") + 1] == str(new_root / name)
    checkpoint = ckpt.load(new_root / name, config)
    assert checkpoint is not None and checkpoint.position.task == 0 and checkpoint.position.epoch == 1
    metrics = Trainer(experiment, new_root / name, coloured_dataset()).run(resume=checkpoint)
    assert {k: v for k, v in metrics.items() if k != "wall_time_s"} == \
        {k: v for k, v in expected.items() if k != "wall_time_s"}

    # once the first task is complete, the carried copy goes and the first task is kept instead
    assert campaign.keep_first_task(new_root, kept) == kept
    assert campaign.carry_first_task(new_root, carried, kept) is None and not carried.exists()
    commands.clear()
    assert campaign.run_campaign(tmp_path / "session-3", kept, carried) == 0
    assert all("--resume" not in c and c[c.index("--first-task-from") + 1] == str(kept) for c in commands)


def test_the_campaign_runs_in_a_session_of_its_own_at_the_lowest_priority():
    """With autogroups on, nice only ranks a process within its session: each run gets a session of
    its own whose group is at nice 19 (below every other session's work)."""
    enabled = Path("/proc/sys/kernel/sched_autogroup_enabled")
    own = Path("/proc/self/autogroup")
    if not (enabled.exists() and enabled.read_text().strip() == "1" and own.exists() and own.read_text().split()):
        # a CI container can have the file but autogroups off: it then reads empty (seen in CI)
        pytest.skip("this kernel does not group processes by session (autogroups off or unreadable)")
    campaign = load_script()
    child = subprocess.run(["cat", "/proc/self/autogroup"], start_new_session=True,
                           preexec_fn=campaign.lowest_autogroup_priority, capture_output=True, text=True, check=True)
    mine = Path("/proc/self/autogroup").read_text().split()[0]
    group, nice = child.stdout.split()[0], child.stdout.split()[-1]
    assert group != mine and nice == "19", child.stdout


def test_status_says_when_the_first_run_was_started_again_from_the_kept_first_task(tmp_path):
    campaign = load_script()
    kept, run_dir = tmp_path / "kept", tmp_path / "campaign" / campaign.RUNS[0][0]
    run_dir.mkdir(parents=True)
    session = {"started": "2026-12-07T20:59:13+0000", "first_task_from": None}
    write_text(run_dir / "run.json", json.dumps({"sessions": [session]}))
    assert campaign._restarted_from_kept(run_dir, kept) is None  # it trained its own first task
    lines = campaign._feasibility_lines(run_dir.parent, kept)
    assert not any("was lost" in line for line in lines)
    session["first_task_from"] = {"run_dir": str(tmp_path / "elsewhere")}
    write_text(run_dir / "run.json", json.dumps({"sessions": [session]}))
    assert campaign._restarted_from_kept(run_dir, kept) is None  # another donor: not the kept one
    session["first_task_from"] = {"run_dir": str(kept)}
    later = {"started": "2026-12-08T09:00:00+0000"}
    write_text(run_dir / "run.json", json.dumps({"sessions": [session, later]}))
    assert campaign._restarted_from_kept(run_dir, kept) == "2026-12-07 20:59"
    text = " ".join(campaign._feasibility_lines(run_dir.parent, kept))
    assert "The run folder was lost" in text and "on 2026-12-07 20:59" in text
    assert "Since then the run folder has survived" in text and "2 sessions" in text


def test_status_places_a_run_in_its_generator_training_after_the_last_epoch(tmp_path):
    campaign = load_script()
    run_dir = tmp_path / campaign.RUNS[0][0]
    run_dir.mkdir()
    write_text(run_dir / "config.yaml", yaml.safe_dump({"scenario": {"num_tasks": 5}}))
    epoch = {"event": "epoch", "task": 1, "phase": "main", "phase_index": 0, "epoch": 160, "epochs": 160, "lr": 0.001,
             "loss": 0.02, "losses": {"ce": 0.02}, "weights": {"ce": 1.0}, "train_accuracy": 99.6, "images": 10000,
             "time_s": 1081.5, "images_per_s": 9.2, "threads": 1}
    evaluation = {"event": "eval", "task": 1, "accuracy": 82.4, "old": None, "new": 82.4, "matrix_row": [82.4],
                  "images": 2000, "images_per_s": 400.0}
    synthesis = {"event": "synthesis", "task": 2, "step": 300, "steps": 5000, "content": 2.99, "total": 3.38,
                 "steps_per_s": 0.035}
    log = run_dir / "log.jsonl"
    write_text(log, "\n".join(json.dumps(r) for r in (epoch, evaluation)) + "\n")
    summary = campaign._run_summary(run_dir)
    assert summary["position"] == "task 1 main epoch 160/160" and summary["tasks_done"] == 1
    write_text(log, "\n".join(json.dumps(r) for r in (epoch, evaluation, synthesis)) + "\n")
    assert campaign._run_summary(run_dir)["position"] == "task 2 generator step 300/5000"
    later = {**epoch, "task": 2, "epoch": 1}
    write_text(log, "\n".join(json.dumps(r) for r in (epoch, evaluation, synthesis, later)) + "\n")
    assert campaign._run_summary(run_dir)["position"] == "task 2 main epoch 1/160"
