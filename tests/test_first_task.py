"""A run started from another run's completed first task ends exactly as if it had trained it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dfcil.cli import main
from dfcil.engine.trainer import Trainer
from dfcil.errors import RunDirError
from dfcil.experiment import parse_experiment
from dfcil.first_task import adopt_first_task, first_difference, first_task_identity, has_first_task

from conftest import coloured_dataset

TINY_GENERATOR = {"synthesis": {"steps": 2, "batch_size": 8, "log_every": 1}}
METHODS = {
    "lwf": {},
    "joint": {},
    "deepinversion": TINY_GENERATOR,
    "abd": TINY_GENERATOR,
    "rdfcil": {**TINY_GENERATOR, "refine_epochs": 1},
    "mfgr": TINY_GENERATOR,
    "skd": {"delegator": {"iterations": 2, "batch_size": 8, "log_every": 1}},
}


def _config(method: str, **train: object):
    return parse_experiment({
        "data": {"dataset": "imagefolder"},
        "scenario": {"order": "identity", "num_tasks": 2},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.05, "schedule": "constant", "milestones": [],
                  "precision": "fp32", **train},
        "method": {"name": method, **METHODS.get(method, {})},
        "runtime": {"progress": False, "device": "cpu", "num_threads": 1},
    })


def _without_times(records: list[dict]) -> list[dict]:
    timed = ("time_s", "images_per_s", "steps_per_s", "iterations_per_s", "seconds")
    return [{k: v for k, v in r.items() if k not in timed} for r in records]


@pytest.fixture(scope="module")
def donor(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("donor")
    Trainer(_config("finetune"), run_dir, coloured_dataset()).run()
    return run_dir


@pytest.mark.parametrize(
    "method",  # these take over 20 s each: slow; the others stay in the quick lane
    [pytest.param(m, marks=pytest.mark.slow) if m in ("abd", "deepinversion", "rdfcil", "skd") else m
     for m in sorted(METHODS)],
)
def test_a_run_from_finetunes_first_task_equals_the_run_that_trains_it(method, donor, tmp_path):
    assert has_first_task(donor)
    scratch = Trainer(_config(method), tmp_path / "scratch", coloured_dataset())
    expected = scratch.run()
    adopted = Trainer(_config(method), tmp_path / "adopted", coloured_dataset())
    checkpoint = adopt_first_task(donor, adopted)
    metrics = adopted.run(resume=checkpoint)
    assert metrics["accuracy_matrix"] == expected["accuracy_matrix"]
    assert metrics["per_class_accuracy_per_step"] == expected["per_class_accuracy_per_step"]
    final, reference = adopted.model.state_dict(), scratch.model.state_dict()
    assert final.keys() == reference.keys()
    assert all(torch.equal(final[k], reference[k]) for k in final), f"{method}: weights differ"
    # the log holds the donor's first task and the same second task
    assert _without_times(adopted.log.records) == _without_times(
        [r for r in scratch.log.records if r.get("task") != 1 or r["event"] in ("epoch", "eval")])
    assert (tmp_path / "adopted" / "checkpoints" / "task_1.pt").exists()
    assert has_first_task(tmp_path / "adopted")  # it can share the first task in turn


def test_a_different_first_task_is_refused_naming_the_difference(donor, tmp_path):
    trainer = Trainer(_config("rdfcil", lr=0.1), tmp_path / "run", coloured_dataset())
    with pytest.raises(RunDirError, match=r"train\.lr: 0\.05 there, 0\.1 here"):
        adopt_first_task(donor, trainer)
    assert not (tmp_path / "run" / "log.jsonl").exists()  # nothing written
    with pytest.raises(RunDirError, match="no completed first task"):
        adopt_first_task(tmp_path, trainer)


def test_identity_holds_what_determines_the_first_task():
    rdfcil, abd = _config("rdfcil"), _config("abd")
    assert first_task_identity(rdfcil, [0, 1]) == first_task_identity(abd, [0, 1])
    assert first_task_identity(rdfcil, [0, 1]) != first_task_identity(rdfcil, [1, 0])
    assert "train.epochs: 1 there, 2 here" == first_difference(
        first_task_identity(rdfcil, [0, 1]), first_task_identity(_config("rdfcil", epochs=2), [0, 1]))
    # without the classes (no data loaded), the scenario section stands in for them
    assert first_task_identity(rdfcil, None)["scenario"]["num_tasks"] == 2
    assert first_task_identity(rdfcil, [0, 1])["model"]["network_revision"] == 2


def test_cli_starts_from_a_first_task_and_says_so_in_run_json(cifar, tmp_path, capsys):
    common = ["--set", "runtime.progress=false", "--set", "method.synthesis.steps=2",
              "--set", "data.train_per_class=40"]
    smoke = str(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")
    assert main(["run", smoke, "-o", str(tmp_path / "donor"), "--set", "method.name=abd", *common]) == 0
    assert main(["run", smoke, "-o", str(tmp_path / "run"), "--set", "method.name=rdfcil", *common,
                 "--set", "method.refine_epochs=1", "--first-task-from", str(tmp_path / "donor")]) == 0
    session = json.loads((tmp_path / "run" / "run.json").read_text())["sessions"][0]
    assert session["first_task_from"]["run_dir"] == str((tmp_path / "donor").resolve())
    donor_metrics = json.loads((tmp_path / "donor" / "metrics.json").read_text())
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["complete"] and metrics["accuracy_matrix"][0] == donor_metrics["accuracy_matrix"][0]
    capsys.readouterr()
    # refusals: one line, exit 2, nothing started
    assert main(["run", smoke, "-o", str(tmp_path / "other"), "--set", "method.name=rdfcil", *common,
                 "--set", "train.lr=0.1", "--first-task-from", str(tmp_path / "donor")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.lr" in err[0], err
    assert not (tmp_path / "other" / "config.yaml").exists()
    assert main(["run", "--resume", str(tmp_path / "run"), "--first-task-from", str(tmp_path / "donor")]) == 2
    assert main(["run", smoke, "-o", str(tmp_path / "x"), "--first-task-from", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no completed first task" in err[-1]
