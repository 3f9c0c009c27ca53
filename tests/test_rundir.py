"""dfcil.rundir: the run directory's one owner (paths, typed log records, a run's state)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dfcil.engine.trainer import _epoch_record
from dfcil.methods import Phase
from dfcil.rundir import (
    EpochRecord,
    EvalRecord,
    OtherRecord,
    PhaseEvalRecord,
    ProgressRecord,
    RunDir,
    parse_record,
    read_log,
    run_state,
    training_seconds,
)
from dfcil.scenario import Task


def test_paths_are_the_documented_layout(tmp_path):
    files = RunDir(tmp_path)
    assert (files.config, files.run_info, files.log, files.metrics, files.suite) == tuple(
        tmp_path / name for name in ("config.yaml", "run.json", "log.jsonl", "metrics.json", "suite.json"))
    assert files.last_checkpoint == tmp_path / "checkpoints" / "last.pt"
    assert files.task_model(3) == tmp_path / "checkpoints" / "task_3.pt"
    assert files.first_task_record == tmp_path / "checkpoints" / "first_task.json"
    assert files.sample_grid(2) == tmp_path / "synthesis" / "task_2.png"
    assert files.gap_features(2) == tmp_path / "synthesis" / "task_2_features.npz"
    assert files.generator(4) == tmp_path / "generators" / "task_4.pt"
    assert not any(tmp_path.iterdir())  # naming paths creates nothing


def test_the_trainers_epoch_record_round_trips_with_its_keys_in_their_order():
    class Stats:
        loss, terms, weights, train_accuracy, images, seconds = 1.5, {"ce": 1.0, "kd": 0.5}, {"ce": 1.0, "kd": 1.0}, 40.0, 64, 2.0

    task = Task(index=1, start=2, stop=4)
    raw = _epoch_record(task, Phase("main", epochs=5, lr=0.1), 0, 3, 0.1, Stats(), threads=1)
    assert list(raw) == ["event", "task", "phase", "phase_index", "epoch", "epochs", "lr", "loss", "losses", "weights",
                         "train_accuracy", "images", "time_s", "images_per_s", "threads"]
    record = parse_record(json.loads(json.dumps(raw)))
    assert isinstance(record, EpochRecord) and record.to_json() == raw
    assert (record.task, record.epoch, record.epochs, record.images_per_s) == (2, 3, 5, 32.0)


def test_every_kind_of_record_is_typed_and_unknown_events_are_kept_as_written():
    evaluation = {"event": "eval", "task": 2, "accuracy": 40.0, "old": 30.0, "new": None, "matrix_row": [30.0, None],
                  "images": 20, "images_per_s": 100.0}
    assert parse_record(evaluation) == EvalRecord(2, 40.0, 30.0, None, [30.0, None], 20, 100.0)
    assert parse_record(evaluation).to_json() == evaluation  # type: ignore[union-attr]
    phase = {"event": "phase_eval", "task": 2, "phase": "main", "phase_index": 0, "accuracy": 1.0, "old": 2.0, "new": 3.0}
    assert parse_record(phase) == PhaseEvalRecord(2, "main", 0, 1.0, 2.0, 3.0)
    generator = parse_record({"event": "synthesis", "step": 100, "steps": 300, "bn": 0.5, "steps_per_s": 4.0, "task": 3})
    assert generator == ProgressRecord("synthesis", 3, 100, 300, 4.0, {"bn": 0.5})
    assert generator.seconds == 25.0 and generator.step_name == "generator step"  # type: ignore[union-attr]
    delegator = parse_record({"event": "delegator", "iteration": 10, "iterations_per_s": 0.5, "task": 2})
    assert delegator == ProgressRecord("delegator", 2, 10, None, 0.5, {})  # no planned count in older logs
    assert parse_record({"event": "skd_gamma", "task": 2, "gamma": 0.1}) == OtherRecord(
        "skd_gamma", 2, {"event": "skd_gamma", "task": 2, "gamma": 0.1})
    with pytest.raises(ValueError, match="'epoch' record"):
        parse_record({"event": "epoch", "task": 1})  # no phase, no epoch
    with pytest.raises(ValueError, match="JSON object"):
        parse_record([1, 2])


def test_read_log_passes_over_damaged_lines_unless_strict(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"event": "eval", "task": 1, "accuracy": 50.0}\n{not json\n\n{"event": "epoch"}\n')
    assert [type(r) for r in read_log(log)] == [EvalRecord]
    with pytest.raises(ValueError, match=r"log.jsonl:2"):
        read_log(log, strict=True)


def test_training_seconds_add_up_each_training_and_restart_after_a_resume():
    def step(count: int, rate: float, task: int = 2, event: str = "synthesis") -> ProgressRecord:
        return ProgressRecord(event, task, count, 300, rate)

    # task 2: 200 steps at 4/s (50 s), killed and resumed: 100 steps at 2/s since the restart (50 s);
    # task 3: 300 steps at 3/s (100 s); a delegator of task 3: 10 at 1/s
    records = [step(100, 5.0), step(200, 4.0), step(100, 2.0), step(150, 3.0, task=3), step(300, 3.0, task=3),
               step(10, 1.0, task=3, event="delegator")]
    assert training_seconds(records) == pytest.approx(50 + 50 + 100 + 10)
    assert training_seconds([]) == 0.0


def test_run_state(tmp_path):
    assert run_state(tmp_path / "missing") == "new"
    files = RunDir(tmp_path)
    files.config.write_text("seed: 0\n")
    assert run_state(tmp_path) == "interrupted"
    files.metrics.write_text("{damaged")
    assert run_state(files) == "interrupted"
    files.metrics.write_text(json.dumps({"complete": True}))
    assert run_state(files) == "complete"


def test_unknown_files_are_those_the_format_does_not_name(tmp_path):
    files = RunDir(tmp_path)
    for path in (files.log, files.last_checkpoint, files.task_model(2), files.sample_grid(2), files.gap_features(2),
                 files.generator(3), files.tensorboard / "events.out.tfevents.1", files.path / ".lock"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    assert files.unknown_files() == []
    (tmp_path / "synthesis" / "mine.png").write_text("x")
    (tmp_path / "notes.txt").write_text("x")
    assert files.unknown_files() == [Path("notes.txt"), Path("synthesis/mine.png")]


def test_trained_network_revision_of_a_committed_run_and_none_for_unreadable_files(tmp_path):
    committed = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "suites" / "mini-rev2"
    run = tmp_path / "run"
    shutil.copytree(committed / "method-rdfcil__seed-0", run)
    assert RunDir(run).trained_network_revision() == 2
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text("model: [unclosed\n")  # invalid YAML: load_file raises ConfigError
    assert RunDir(run).trained_network_revision() is None
    (run / "config.yaml").write_text(config)
    (run / "run.json").write_text("{not json")
    assert RunDir(run).trained_network_revision() is None
    (run / "run.json").unlink()
    assert RunDir(run).trained_network_revision() is None
