"""runtime.tensorboard: the run log as TensorBoard events in RUN_DIR/tensorboard/."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from dfcil.cli import main
from dfcil.config import fingerprint, load_config
from dfcil.errors import ConfigError
from dfcil.runlog import RunLog
from dfcil.tensorboard_sink import TENSORBOARD_DIR, TensorBoardSink, record_scalars

from conftest import write_coloured_tree


@pytest.fixture
def tiny_config(tmp_path, monkeypatch) -> Path:
    """A 2-task ABD run (2 epochs a task, 4 generator steps) on 4 classes x 6 images of 32 px."""
    tree = write_coloured_tree(tmp_path / "tree")
    monkeypatch.setenv("DFCIL_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "tiny.yaml"
    config.write_text(
        f"data: {{dataset: imagefolder, root: {tree}}}\n"
        "scenario: {order: identity, num_tasks: 2}\n"
        "train: {epochs: 2, batch_size: 8, lr: 0.05, schedule: constant, milestones: [], precision: fp32}\n"
        "method: {name: abd, synthesis: {steps: 4, batch_size: 8, log_every: 2}}\n"
        "runtime: {progress: false, device: cpu, num_threads: 1}\n"
    )
    return config


def test_scalars_of_each_kind_of_record():
    epoch = {"event": "epoch", "task": 2, "phase": "main", "phase_index": 0, "epoch": 1, "epochs": 2, "lr": 0.05,
             "loss": 1.5, "losses": {"ce": 1.0, "kd": 0.5}, "weights": {"ce": 1.0, "kd": 2.0},
             "train_accuracy": None, "images": 24, "time_s": 0.1, "images_per_s": 240.0}
    assert sorted(record_scalars(epoch, 3)) == sorted([
        ("loss/total", 1.5, 3), ("train/lr", 0.05, 3), ("train/images_per_s", 240.0, 3), ("train/task", 2.0, 3),
        ("loss/ce", 1.0, 3), ("loss/kd", 0.5, 3), ("loss_weight/ce", 1.0, 3), ("loss_weight/kd", 2.0, 3)])
    synthesis = {"event": "synthesis", "step": 20, "steps": 40, "total": 3.0, "confidence": 0.9, "task": 2}
    assert sorted(record_scalars(synthesis, 0)) == [("synthesis/task_2/confidence", 0.9, 20),
                                                    ("synthesis/task_2/total", 3.0, 20)]
    evaluation = {"event": "eval", "task": 1, "accuracy": 80.0, "old": None, "new": 80.0, "matrix_row": [80.0]}
    assert sorted(record_scalars(evaluation, 2)) == [("eval/accuracy", 80.0, 1), ("eval/new", 80.0, 1)]
    phase = {"event": "phase_eval", "task": 2, "phase": "main", "phase_index": 0, "accuracy": 50.0}
    assert record_scalars(phase, 2) == [("phase_eval/main/accuracy", 50.0, 2)]
    assert record_scalars({"event": "skd_gamma", "task": 3, "gamma": 0.25}, 0) == [("skd_gamma/gamma", 0.25, 3)]


def test_a_missing_tensorboard_package_stops_the_run_in_one_line(tiny_config, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    run_dir = tmp_path / "run"
    assert main(["run", str(tiny_config), "-o", str(run_dir), "--set", "runtime.tensorboard=true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dfcil: error: runtime.tensorboard: true needs the tensorboard package")
    assert "pip install 'dfcil[tensorboard]'" in err[0]
    assert not run_dir.exists()  # stopped before anything was loaded or written
    with pytest.raises(ConfigError, match="needs the tensorboard package"):
        TensorBoardSink(tmp_path / "other")


def test_the_run_log_reads_back_from_tensorboard(tiny_config, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    assert main(["run", str(tiny_config), "-o", str(run_dir), "--set", "runtime.tensorboard=true"]) == 0
    run = json.loads((run_dir / "run.json").read_text())
    assert run["fingerprint"] == fingerprint(load_config(tiny_config))  # the sink is not part of what is trained
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    metrics = json.loads((run_dir / "metrics.json").read_text())

    def events() -> EventAccumulator:
        accumulator = EventAccumulator(str(run_dir / TENSORBOARD_DIR))
        accumulator.Reload()
        return accumulator

    def series(accumulator: EventAccumulator, tag: str) -> list[tuple[int, float]]:
        return [(event.step, event.value) for event in accumulator.Scalars(tag)]

    accumulator = events()
    epochs = [r for r in records if r["event"] == "epoch"]
    assert len(epochs) == 4  # 2 tasks x 2 epochs
    loss = series(accumulator, "loss/total")
    assert [step for step, _ in loss] == [1, 2, 3, 4]
    assert [value for _, value in loss] == pytest.approx([r["loss"] for r in epochs], rel=1e-6)
    for term in epochs[-1]["losses"]:  # task 2's loss terms (ABD's distillation among them)
        assert series(accumulator, f"loss/{term}")[-1][1] == pytest.approx(epochs[-1]["losses"][term], rel=1e-6)
    accuracy = series(accumulator, "eval/accuracy")
    assert [step for step, _ in accuracy] == [1, 2]
    assert [value for _, value in accuracy] == pytest.approx(metrics["accuracy_per_step"], rel=1e-6)
    generator = [r for r in records if r["event"] == "synthesis"]
    assert [step for step, _ in series(accumulator, "synthesis/task_2/total")] == [r["step"] for r in generator] == [2, 4]
    assert [step for step, _ in series(accumulator, "synthesis/task_2/confidence")] == [2, 4]
    assert (run_dir / "synthesis" / "task_2.png").exists()
    assert [image.step for image in accumulator.Images("samples")] == [2]
    # rebuilt from the log (what a resume does): the same events, nothing twice
    log = RunLog(run_dir / "log.jsonl")
    log.attach(TensorBoardSink(run_dir))
    log.close()
    again = events()
    assert series(again, "loss/total") == loss and series(again, "eval/accuracy") == accuracy
    assert len(list((run_dir / TENSORBOARD_DIR).glob("events.out.tfevents.*"))) == 1
