"""benchmarks/run_projection.py: a whole run's time from the log of its first part."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import load_benchmark


def load_script():
    return load_benchmark("run_projection")


def epoch(task: int, phase: str, number: int, of: int, seconds: float) -> dict:
    return {"event": "epoch", "task": task, "phase": phase, "epoch": number, "epochs": of, "loss": 1.0, "time_s": seconds}


RECORDS = [
    epoch(1, "main", 1, 10, 1.2), epoch(1, "main", 2, 10, 0.8),            # task 1: 10 x 1.0 s
    {"event": "eval", "task": 1, "accuracy": 50.0},
    {"event": "synthesis", "task": 2, "step": 50, "steps": 1000, "steps_per_s": 8.0},
    {"event": "synthesis", "task": 2, "step": 100, "steps": 1000, "steps_per_s": 10.0},  # 100 s
    epoch(2, "main", 1, 10, 3.0),                                           # 10 x 3 s
    epoch(2, "refine", 1, 4, 0.5),                                          # 4 x 0.5 s
]


def test_projection_hand_values():
    projection = load_script().project(RECORDS, num_tasks=4)
    # task 1: 10 s; task 2: 100 + 30 + 2 = 132 s; tasks 3 and 4 like task 2
    assert projection.seconds == pytest.approx(10 + 3 * 132)
    assert projection.parts["task 2 generator"] == pytest.approx(100)
    assert projection.parts["task 4 (as task 2)"] == pytest.approx(132)
    assert (projection.measured_epochs, projection.planned_epochs) == (4, 10 + 14 * 3)


def test_no_projection_before_the_second_task():
    projection = load_script().project(RECORDS[:3], num_tasks=4)
    assert projection.seconds is None and projection.parts == {"task 1 main": pytest.approx(10)}


def test_command_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"scenario": {"num_tasks": 4}}))
    monkeypatch.setattr("sys.argv", ["run_projection.py", str(tmp_path)])
    assert load_script().main() == 0
    assert "projected run: 6.8 min (4 of 52 epochs measured" in capsys.readouterr().out


def test_command_line_rejects_a_directory_that_is_not_a_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["run_projection.py", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        load_script().main()
    assert exit_info.value.code == 2 and "log.jsonl does not exist" in capsys.readouterr().err
    (tmp_path / "log.jsonl").write_text("{not json\n")
    (tmp_path / "config.yaml").write_text("scenario: {num_tasks: 4}\n")
    with pytest.raises(SystemExit) as exit_info:
        load_script().main()
    assert exit_info.value.code == 2 and "unreadable log or config" in capsys.readouterr().err


def test_skds_delegator_training_is_projected_like_a_generator():
    records = [*RECORDS[:3],
               {"event": "delegator", "task": 2, "iteration": 20, "iterations": 200, "iterations_per_s": 0.5},
               epoch(2, "main", 1, 10, 3.0)]
    projection = load_script().project(records, num_tasks=2)
    # task 1: 10 s; task 2: 200 / 0.5 = 400 s of delegator training + 10 x 3 s
    assert projection.parts["task 2 delegator"] == pytest.approx(400)
    assert projection.seconds == pytest.approx(10 + 400 + 30)
