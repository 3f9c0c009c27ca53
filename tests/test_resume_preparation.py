"""Exact resume for every method: a run killed inside a generator's or SKD's delegator's training
(before the task's first epoch), or inside the last phase of task 2 (R-DFCIL: its refinement), or
inside DGR's generator training (in finish_task, after the task's last epoch), resumes there and
ends exactly as the run that was never killed: weights, metrics and log."""

from __future__ import annotations

import pytest
import torch

from dfcil.engine import checkpoint as ckpt
from dfcil.engine.trainer import Trainer
from dfcil.experiment import parse_experiment

from conftest import coloured_dataset

GENERATOR = {"synthesis": {"steps": 6, "batch_size": 8, "log_every": 1}}
METHODS = {
    "abd": GENERATOR,
    "deepinversion": GENERATOR,
    "rdfcil": {**GENERATOR, "refine_epochs": 1},
    "mfgr": GENERATOR,
    "skd": {"delegator": {"iterations": 6, "batch_size": 8, "log_every": 1, "lr_decay_every": 4}},
}
KILL_AT = 3  # generator steps done in task 2 when the run is killed


def _config(method: str, epochs: int = 1, options: dict | None = None):
    return parse_experiment({
        "data": {"dataset": "imagefolder"},
        "scenario": {"order": "identity", "num_tasks": 2},
        "train": {"epochs": epochs, "batch_size": 16, "lr": 0.05, "schedule": "multistep", "milestones": [1],
                  "precision": "fp32"},
        "method": {"name": method, **(METHODS[method] if options is None else options)},
        "runtime": {"progress": False, "device": "cpu", "num_threads": 1, "checkpoint_every_s": 0},
    })


class Killed(Exception):
    pass


class KilledInsideTheGenerator(Trainer):
    def _prepare_progress(self, steps_done: int) -> None:
        super()._prepare_progress(steps_done)  # the checkpoint is written first
        if self._preparing == 1 and steps_done == KILL_AT:
            raise Killed


def _without_wall_time(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "wall_time_s"}


def _without_times(records: list[dict]) -> list[dict]:
    timed = ("time_s", "images_per_s", "steps_per_s", "iterations_per_s", "seconds")
    return [{k: v for k, v in r.items() if k not in timed} for r in records]


def _kill_and_resume(experiment, killed: type[Trainer], tmp_path) -> tuple[ckpt.Checkpoint, Trainer]:
    """Run ``experiment`` uninterrupted and as ``killed`` (which raises Killed), resume the latter
    from its checkpoint in a fresh Trainer, and check that both end identically: the whole
    metrics.json (diagnostics too), every weight and the log (timings aside)."""
    config = experiment.config
    reference = Trainer(experiment, tmp_path / "reference", coloured_dataset())
    expected = reference.run()
    run_dir = tmp_path / "killed"
    with pytest.raises(Killed):
        killed(experiment, run_dir, coloured_dataset()).run()
    checkpoint = ckpt.load(run_dir, config)
    assert checkpoint is not None
    resumed = Trainer(experiment, run_dir, coloured_dataset())
    metrics = resumed.run(resume=checkpoint)
    assert _without_wall_time(metrics) == _without_wall_time(expected)
    final, reference_weights = resumed.model.state_dict(), reference.model.state_dict()
    assert all(torch.equal(final[k], reference_weights[k]) for k in final), f"{config.method_name}: weights differ"
    # every record after the kill is redone once; the generator's loss terms too, except the
    # first window after the resume (log_every 1: one step, so the same values)
    assert _without_times(resumed.log.records) == _without_times(reference.log.records)
    return checkpoint, resumed


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_kill_inside_generator_training_resumes_exactly(method, tmp_path):
    checkpoint, resumed = _kill_and_resume(_config(method), KilledInsideTheGenerator, tmp_path)
    assert checkpoint.position == ckpt.Position(task=1, phase=0, epoch=0, task_done=False, preparing=KILL_AT)
    if method == "skd":  # the delegator's training: student, both optimisers and the lr schedules
        training = checkpoint.method["delegator"]["training"]
        assert training["iterations_done"] == KILL_AT and training["delegator_optimizer"]["state"]
        assert [s["last_epoch"] for s in training["schedules"]] == [KILL_AT] * len(training["schedules"])
    else:
        assert checkpoint.method["synthesizer"]["steps_done"] == KILL_AT
        assert checkpoint.method["synthesizer"]["optimizer"]["state"]  # Adam's moments of the steps done
    steps = [r.get("step", r.get("iteration")) for r in resumed.log.records if r["event"] in ("synthesis", "delegator")]
    assert steps == list(range(1, 7))


# DGR trains its generator in finish_task (task 1's replays in task 2): a small VAE, 6 steps
DGR = {"generator": {"steps": 6, "batch_size": 8, "log_every": 1, "width": 4}}
EVERY_METHOD = {"finetune": {}, "lwf": {}, "joint": {}, "lwfmc": {}, "ewc": {}, "mas": {}, **METHODS,
                "rdfcil": {**GENERATOR, "refine_epochs": 2}, "pass": {}, "dgr": DGR}


class KilledInTheLastPhase(Trainer):
    """Killed right after the checkpoint of the first epoch of task 2's last phase."""

    def _save(self, position, optimizer=None, scheduler=None) -> None:
        super()._save(position, optimizer, scheduler)
        last_phase = len(self.method.phases(self.scenario.tasks[1])) - 1
        if position == ckpt.Position(task=1, phase=last_phase, epoch=1, task_done=False):
            raise Killed


@pytest.mark.parametrize(
    "method",  # the generator methods take 20-40 s each: slow; the others stay in the quick lane
    [pytest.param(m, marks=pytest.mark.slow) if m in METHODS else m for m in sorted(EVERY_METHOD)],
)
def test_a_kill_inside_the_last_phase_of_task_2_resumes_exactly(method, tmp_path):
    config = _config(method, epochs=2, options=EVERY_METHOD[method])
    checkpoint, resumed = _kill_and_resume(config, KilledInTheLastPhase, tmp_path)
    assert checkpoint.position.task == 1 and checkpoint.position.epoch == 1
    assert checkpoint.optimizer is not None and checkpoint.scheduler is not None
    if method == "rdfcil":  # killed inside the refinement, as the position said
        refine = [r["epoch"] for r in resumed.log.records if r["event"] == "epoch" and r["phase"] == "refine"]
        assert checkpoint.position.phase == 1 and refine == [1, 2]


class KilledInsideFinishTask(Trainer):
    """Killed inside task 1's finish_task, after DGR's generator step KILL_AT (and its record)."""

    def _method_log(self, record) -> None:
        super()._method_log(record)
        if record.get("event") == "synthesis" and record.get("task") == 1 and record["step"] == KILL_AT:
            raise Killed


def test_a_kill_inside_dgr_generator_training_in_finish_task_resumes_exactly(tmp_path):
    """finish_task writes no checkpoint: the run resumes from the task's last epoch checkpoint, trains
    the generator again from its first step with the same random numbers, and ends as the run that
    was never killed (its records of the killed training are dropped, not doubled)."""
    checkpoint, resumed = _kill_and_resume(_config("dgr", epochs=2, options=DGR), KilledInsideFinishTask, tmp_path)
    assert checkpoint.position == ckpt.Position(task=0, phase=0, epoch=2, task_done=False)
    assert checkpoint.method["generator"] is None and checkpoint.method["trainings"] == []
    steps = [(r["task"], r["step"]) for r in resumed.log.records if r["event"] == "synthesis"]
    assert steps == [(1, step) for step in range(1, 7)]  # none after the last task
    assert resumed.method.state_dict()["trainings"][0]["steps"] == 6
