"""`dfcil suite`: grid expansion, skip / resume, failures that do not stop the others."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

import dfcil.config
import dfcil.suite.execute
from dfcil.cli import main
from dfcil.config import apply_overrides, config_to_dict, fingerprint, load_yaml_tree, parse_config
from dfcil.console import console_logging
from dfcil.errors import ConfigError
from dfcil.runlock import hold_run_lock
from dfcil.suite import (
    adopt_runs,
    estimate_time_left,
    execute_suite,
    load_suite,
    run_state,
    select_runs,
    status_table,
    threads_per_job,
)

from conftest import write_coloured_tree

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_tree(tmp_path) -> Path:
    """train/ and test/ folders of 4 classes x 6 images of 32 px, brightness set by the class."""
    return write_coloured_tree(tmp_path / "tree")


def _write_suite(tmp_path: Path, tree: Path, axes: str, extra: str = "") -> Path:
    (tmp_path / "base.yaml").write_text(
        f"data: {{dataset: imagefolder, root: {tree}}}\n"
        "scenario: {order: identity, num_tasks: 2}\n"
        "train: {epochs: 1, batch_size: 8, milestones: []}\n"
    )
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"name: tiny\nconfig: base.yaml\n{extra}axes:\n{axes}")
    return suite


def test_grid_names_and_overrides(tmp_path, tiny_tree):
    suite = load_suite(_write_suite(
        tmp_path, tiny_tree,
        "  method:\n    ft: {method.name: finetune}\n    lwf: {method.name: lwf}\n  seed: [0, 1]\n",
        extra="set: {method.temperature: 3.0}\n",
    ))
    assert [r.name for r in suite.runs] == ["method-ft__seed-0", "method-ft__seed-1",
                                             "method-lwf__seed-0", "method-lwf__seed-1"]
    assert suite.runs[3].labels == {"method": "lwf", "seed": "1"}
    # the shared method option reaches lwf (which has it) and not finetune (which does not)
    assert "method.temperature=3.0" in suite.runs[2].overrides
    assert not any(o.startswith("method.temperature") for o in suite.runs[0].overrides)


def test_bad_suites_fail_before_any_run(tmp_path, tiny_tree):
    with pytest.raises(ConfigError, match="unknown suite key 'axis'"):
        load_suite(_write_suite(tmp_path, tiny_tree, "  seed: [0]\n", extra="axis: {}\n"))
    with pytest.raises(ConfigError, match="method-ft__seed-0.*train.epochs"):
        load_suite(_write_suite(tmp_path, tiny_tree, "  method:\n    ft: {method.name: finetune, train.epochs: 0}\n"
                                "  seed: [0]\n"))
    with pytest.raises(ConfigError, match="accepted by none"):
        load_suite(_write_suite(tmp_path, tiny_tree, "  seed: [0]\n", extra="set: {method.nonsense: 1}\n"))


@pytest.mark.slow
def test_suite_runs_skips_resumes_and_reports_failures(tmp_path, tiny_tree, capsys):
    axes = ("  method:\n    ft: {method.name: finetune}\n    joint: {method.name: joint}\n"
            "    broken: {method.name: finetune, data.root: /nonexistent/data}\n  seed: [0]\n")
    suite_file = _write_suite(tmp_path, tiny_tree, axes)
    out = tmp_path / "out"
    outcome = execute_suite(load_suite(suite_file), out, jobs=2)
    assert sorted(outcome["done"]) == ["method-ft__seed-0", "method-joint__seed-0"]
    assert outcome["failed"] == ["method-broken__seed-0"]
    assert "does not exist" in (out / "logs" / "method-broken__seed-0.log").read_text()
    ft = out / "method-ft__seed-0"
    assert json.loads((ft / "suite.json").read_text())["labels"] == {"method": "ft", "seed": "0"}
    metrics = json.loads((ft / "metrics.json").read_text())
    assert metrics["complete"] and "omega" in metrics  # the joint run of the same seed gave Omega

    # a second call skips what is complete; an interrupted run is resumed, not restarted
    (ft / "metrics.json").unlink()
    assert run_state(ft) == "interrupted"
    assert main(["suite", str(suite_file), "-o", str(out)]) == 1  # the broken run still fails
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["skipped"] == 1 and summary["done"] == 1 and summary["failed_runs"] == ["method-broken__seed-0"]
    assert "--resume" in (out / "logs" / "method-ft__seed-0.log").read_text()
    assert json.loads((ft / "metrics.json").read_text())["last_accuracy"] == metrics["last_accuracy"]


def _fake_complete_run(run_dir: Path, config: dict, accuracy: float, recorded: str | None = None) -> None:
    """A finished run directory as ``dfcil run`` leaves it, with a checkpoint not to be copied;
    ``run.json`` records ``recorded`` as the fingerprint (default: the config's fingerprint today)."""
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"x" * 10)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    recorded = fingerprint(parse_config(config)) if recorded is None else recorded
    (run_dir / "run.json").write_text(json.dumps({"fingerprint": recorded, "sessions": []}))
    (run_dir / "metrics.json").write_text(json.dumps({"complete": True, "last_accuracy": accuracy}))
    (run_dir / "log.jsonl").write_text("{}\n")


def test_adopt_copies_complete_runs_with_the_same_config(tmp_path, tiny_tree, capsys):
    suite_file = _write_suite(tmp_path, tiny_tree, "  method:\n    ft: {method.name: finetune}\n  seed: [0, 1, 2]\n")
    suite = load_suite(suite_file)
    resolved = {run.name: config_to_dict(parse_config(apply_overrides(load_yaml_tree(run.config), list(run.overrides))))
                for run in suite.runs}
    source = tmp_path / "elsewhere"
    # seed 0: same config except runtime options (not part of what is trained) -> adopted
    same = dict(resolved["method-ft__seed-0"], runtime={"num_threads": 1, "progress": False})
    _fake_complete_run(source / "ft-s0", same, 55.0)
    # seed 1: same config but the run never finished -> not adopted
    _fake_complete_run(source / "ft-s1", resolved["method-ft__seed-1"], 11.0)
    (source / "ft-s1" / "metrics.json").write_text(json.dumps({"complete": False}))
    # seed 2 of a run with another learning rate -> not adopted
    other = resolved["method-ft__seed-2"]
    other["train"]["lr"] = other["train"]["lr"] * 2
    _fake_complete_run(source / "ft-s2-lr", other, 22.0)

    out = tmp_path / "out"
    (out / "method-ft__seed-0").mkdir(parents=True)  # prepared by an earlier call, never started
    assert adopt_runs(suite, out, [source]) == [("method-ft__seed-0", source / "ft-s0")]
    adopted = out / "method-ft__seed-0"
    assert run_state(adopted) == "complete" and not (adopted / "checkpoints").exists()
    assert json.loads((adopted / "metrics.json").read_text())["last_accuracy"] == 55.0
    record = json.loads((adopted / "suite.json").read_text())
    assert record["labels"] == {"method": "ft", "seed": "0"} and record["adopted_from"] == str(source / "ft-s0")
    assert not list(out.glob(".*adopting"))
    # adopting again changes nothing; the suite then runs only the two others
    assert adopt_runs(suite, out, [source]) == []
    execute_suite(suite, out, dry_run=True)
    commands = capsys.readouterr().out.strip().splitlines()
    assert len(commands) == 2 and all("seed=0" not in line for line in commands)
    with pytest.raises(ConfigError, match="not a directory"):
        adopt_runs(suite, out, [tmp_path / "missing"])


def test_adopt_passes_over_runs_trained_with_an_earlier_network_revision(tmp_path, tiny_tree, monkeypatch):
    # the config builds resnet32/rdfcil, whose forward changed (revision 2): a run made before the
    # change has the same config.yaml, but its run.json recorded the revision-1 fingerprint
    suite = load_suite(_write_suite(tmp_path, tiny_tree, "  method:\n    ft: {method.name: finetune}\n  seed: [0, 1, 2]\n"))
    assert suite.runs[0].experiment.config.model.network_revision == 2
    resolved = [config_to_dict(parse_config(apply_overrides(load_yaml_tree(run.config), list(run.overrides))))
                for run in suite.runs]
    with monkeypatch.context() as before_the_change:
        before_the_change.setattr(dfcil.config, "NETWORK_REVISIONS", {})
        revision_1 = fingerprint(parse_config(resolved[0]))
    assert revision_1 != fingerprint(parse_config(resolved[0]))
    source = tmp_path / "elsewhere"
    _fake_complete_run(source / "ft-s0-old", resolved[0], 50.0, recorded=revision_1)
    _fake_complete_run(source / "ft-s1", resolved[1], 51.0)  # trained with today's network
    _fake_complete_run(source / "ft-s2-unknown", resolved[2], 52.0)
    (source / "ft-s2-unknown" / "run.json").unlink()  # no provenance: its network cannot be told
    out = tmp_path / "out"
    assert adopt_runs(suite, out, [source]) == [("method-ft__seed-1", source / "ft-s1")]


def test_adopt_takes_the_partner_joint_of_a_selection_too(tmp_path, tiny_tree, capsys):
    # --only 'method-ft__seed-1' leaves the joint run of seed 1 out of the selection, but the suite
    # trains it first (it gives Omega): a complete one elsewhere is adopted instead of retrained,
    # and the other seed's joint run is not
    grid = load_suite(_write_suite(tmp_path, tiny_tree, "  method:\n    ft: {method.name: finetune}\n"
                                   "    joint: {method.name: joint}\n  seed: [0, 1]\n"))
    resolved = {run.name: config_to_dict(parse_config(apply_overrides(load_yaml_tree(run.config), list(run.overrides))))
                for run in grid.runs}
    source = tmp_path / "elsewhere"
    _fake_complete_run(source / "joint-s0", resolved["method-joint__seed-0"], 90.0)
    _fake_complete_run(source / "joint-s1", resolved["method-joint__seed-1"], 91.0)
    selection = select_runs(grid, ["method-ft__seed-1"])
    assert [run.name for run in selection.runs] == ["method-ft__seed-1"]
    out = tmp_path / "out"
    assert adopt_runs(selection, out, [source]) == [("method-joint__seed-1", source / "joint-s1")]
    assert run_state(out / "method-joint__seed-1") == "complete"
    execute_suite(selection, out, dry_run=True, grid=grid)
    commands = capsys.readouterr().out.strip().splitlines()
    assert len(commands) == 1 and "method.name=finetune" in commands[0]
    assert f"runtime.upper_bound={out / 'method-joint__seed-1'}" in commands[0]


def test_a_point_axis_pairs_each_run_with_the_joint_of_its_own_split(tmp_path, tiny_tree):
    # one axis of whole points (as suites/mini_skd.yaml): every run differs from both joints in that
    # axis alone; its partner is the joint of the same split, and a split without one has none
    suite = load_suite(_write_suite(
        tmp_path, tiny_tree,
        "  seed: [0]\n  point:\n    b0-joint: {method.name: joint}\n    b0-ft: {method.name: finetune}\n"
        "    b1-joint: {method.name: joint, scenario.base_classes: 2, scenario.num_tasks: 3}\n"
        "    b1-ft: {method.name: finetune, scenario.base_classes: 2, scenario.num_tasks: 3}\n"
        "    b0-ft-seed: {method.name: finetune, seed: 5}\n"))
    runs = {run.labels["point"]: run for run in suite.runs}
    partner = dfcil.suite.execute._partner_joint
    joints = suite.joint_runs
    assert [run.labels["point"] for run in joints] == ["b0-joint", "b1-joint"]
    assert partner(runs["b0-ft"], joints) is runs["b0-joint"]
    assert partner(runs["b1-ft"], joints) is runs["b1-joint"]
    assert partner(runs["b0-ft-seed"], joints) is None


def test_scheduler_keeps_every_slot_busy_and_waits_only_for_the_partner_joint(tmp_path, tiny_tree, monkeypatch):
    """Fake processes (no training): a run starts when a slot is free and its own joint run has
    ended, even while another seed's joint run is still going; runs share the cores out."""
    suite = load_suite(_write_suite(tmp_path, tiny_tree, "  method:\n    ft: {method.name: finetune}\n"
                                    "    joint: {method.name: joint}\n  seed: [0, 1]\n"))
    out = tmp_path / "out"
    polls_to_finish = {"method-joint__seed-0": 1, "method-joint__seed-1": 6}
    started: list[tuple[str, list[str], list[str]]] = []  # name, command, names running then
    running: dict[str, int] = {}

    class FakeProcess:
        def __init__(self, command, stdout=None, stderr=None):
            flag = "-o" if "-o" in command else "--resume"
            self.name = Path(command[command.index(flag) + 1]).name
            started.append((self.name, command, sorted(running)))
            running[self.name] = polls_to_finish.get(self.name, 2)

        def poll(self):
            running[self.name] -= 1
            if running[self.name] > 0:
                return None
            del running[self.name]
            (out / self.name / "metrics.json").write_text(json.dumps({"complete": True}))
            (out / self.name / "config.yaml").write_text("{}")
            return 0

    monkeypatch.setattr(dfcil.suite.execute.subprocess, "Popen", FakeProcess)
    monkeypatch.setattr(dfcil.suite.execute.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(dfcil.suite.execute.os, "cpu_count", lambda: 2)
    outcome = execute_suite(suite, out, jobs=2)
    assert sorted(outcome["done"]) == sorted(run.name for run in suite.runs)
    order = [name for name, _, _ in started]
    assert order[:2] == ["method-joint__seed-0", "method-joint__seed-1"]
    # ft seed 0 starts while joint seed 1 still runs, with joint seed 0's Omega; ft seed 1 after joint seed 1
    name, command, others = started[2]
    assert name == "method-ft__seed-0" and others == ["method-joint__seed-1"]
    assert f"runtime.upper_bound={out / 'method-joint__seed-0'}" in command
    assert order.index("method-ft__seed-1") > order.index("method-joint__seed-1")
    assert all("runtime.num_threads=1" in command for _, command, _ in started)
    # --only: a selection without the joint runs still gets their Omega and does not wait for them
    started.clear()
    for run in suite.runs:
        if not run.is_joint:
            (out / run.name / "metrics.json").unlink()
    selected = select_runs(suite, ["method-ft__seed-1"])
    assert [run.name for run in selected.runs] == ["method-ft__seed-1"]
    for run in suite.runs:  # the ft runs are new again (never started)
        if not run.is_joint:
            (out / run.name / "config.yaml").unlink()
    execute_suite(selected, out, jobs=2)
    assert [name for name, _, _ in started] == ["method-ft__seed-1"]
    assert f"runtime.upper_bound={out / 'method-joint__seed-1'}" in started[0][1]
    # --only without a joint run that is not complete: that joint run is trained first
    started.clear()
    (out / "method-ft__seed-1" / "metrics.json").unlink()
    (out / "method-ft__seed-1" / "config.yaml").unlink()
    (out / "method-joint__seed-1" / "metrics.json").unlink()
    (out / "method-joint__seed-1" / "config.yaml").unlink()
    outcome = execute_suite(selected, out, jobs=2)
    assert [name for name, _, _ in started] == ["method-joint__seed-1", "method-ft__seed-1"]
    assert f"runtime.upper_bound={out / 'method-joint__seed-1'}" in started[1][1]
    assert sorted(outcome["done"]) == ["method-ft__seed-1", "method-joint__seed-1"]
    # both seeds' joint runs missing: trained first, in the grid's order
    started.clear()
    for run in suite.runs:
        for name in ("metrics.json", "config.yaml"):
            (out / run.name / name).unlink(missing_ok=True)
    execute_suite(select_runs(suite, ["method-ft__*"]), out, jobs=1)
    assert [name for name, _, _ in started] == ["method-joint__seed-0", "method-joint__seed-1",
                                                "method-ft__seed-0", "method-ft__seed-1"]
    assert [r.name for r in select_runs(suite, ["*seed-0", "method-joint__*"]).runs] == [
        "method-ft__seed-0", "method-joint__seed-0", "method-joint__seed-1"]
    with pytest.raises(ConfigError, match="matches none of the suite's runs"):
        select_runs(suite, ["method-lwf__*"])
    assert threads_per_job(1) is None and threads_per_job(2, cores=2) == 1 and threads_per_job(4, cores=2) == 1
    assert threads_per_job(2, cores=16) == 8


def test_status_shows_where_each_run_stands(tmp_path, tiny_tree, capsys):
    suite_file = _write_suite(tmp_path, tiny_tree, "  seed: [0, 1, 2]\n")
    suite = load_suite(suite_file)
    out = tmp_path / "out"
    done, started = out / "seed-0", out / "seed-1"
    _fake_complete_run(done, {}, 61.25)
    (done / "metrics.json").write_text(json.dumps({"complete": True, "last_accuracy": 61.25, "wall_time_s": 90.0}))
    started.mkdir(parents=True)
    (started / "config.yaml").write_text("{}")
    (started / "log.jsonl").write_text(
        json.dumps({"event": "epoch", "task": 1, "phase": "main", "epoch": 1, "time_s": 30.0}) + "\n"
        + json.dumps({"event": "synthesis", "task": 2, "step": 10}) + "\n"
        + json.dumps({"event": "epoch", "task": 2, "phase": "main", "epoch": 3, "time_s": 60.0}) + "\n")
    lines = status_table(suite, out).splitlines()
    assert lines[1].split() == ["seed-0", "complete", "done", "1.5", "61.25"]
    assert lines[2].split() == ["seed-1", "interrupted", "task", "2", "main", "epoch", "3", "1.5", "-"]
    assert lines[3].split() == ["seed-2", "new", "-", "-", "-"]
    # generator training counts too: 200 steps at 2/s (a first attempt cut off at step 100 at
    # 1/s, then the resumed run's attempt), then 30 delegator iterations at 0.5/s
    with open(started / "log.jsonl", "a") as log:
        for record in ({"event": "synthesis", "task": 3, "step": 100, "steps_per_s": 1.0},
                       {"event": "synthesis", "task": 3, "step": 100, "steps_per_s": 2.0},
                       {"event": "synthesis", "task": 3, "step": 200, "steps_per_s": 2.0},
                       {"event": "delegator", "task": 3, "iteration": 30, "iterations_per_s": 0.5}):
            log.write(json.dumps(record) + "\n")
    assert status_table(suite, out).splitlines()[2].split() == [
        "seed-1", "interrupted", "task", "3", "delegator", "iteration", "30", "5.8", "-"]  # (90 + 100 + 100 + 60) s / 60
    assert lines[-2] == f"1 complete, 0 running, 1 interrupted, 1 new of 3 runs in {out}"
    assert lines[-1] == "time left: about 2 min of run time in 2 runs, from the complete runs here that differ only in seed"
    with hold_run_lock(started):  # a process training it now
        assert status_table(suite, out).splitlines()[2].split()[:2] == ["seed-1", "running"]
    assert run_state(started) == "interrupted"
    assert main(["suite", str(suite_file), "-o", str(out), "--status"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:2] == ["seed-0", "complete"]
    assert not (out / "seed-2").exists()  # --status starts nothing


def test_time_left_is_estimated_from_complete_runs_that_differ_only_in_seed(tmp_path, tiny_tree, capsys):
    suite_file = _write_suite(tmp_path, tiny_tree, "  method:\n    ft: {method.name: finetune}\n"
                              "    lwf: {method.name: lwf}\n    joint: {method.name: joint}\n  seed: [0, 1, 2, 3]\n")
    suite = load_suite(suite_file)
    out = tmp_path / "out"

    def complete(name: str, minutes: float, adopted: bool = False) -> None:
        _fake_complete_run(out / name, {}, 50.0)
        (out / name / "metrics.json").write_text(json.dumps({"complete": True, "wall_time_s": 60.0 * minutes}))
        if adopted:
            (out / name / "suite.json").write_text(json.dumps({"adopted_from": "elsewhere"}))

    complete("method-ft__seed-0", 40.0)
    complete("method-ft__seed-1", 60.0)
    complete("method-ft__seed-2", 200.0)  # median of 40, 60, 200: 60
    complete("method-lwf__seed-0", 10.0, adopted=True)  # timed elsewhere: no estimate for lwf
    for seed in range(4):
        complete(f"method-joint__seed-{seed}", 30.0)
    interrupted = out / "method-ft__seed-3"
    interrupted.mkdir()
    (interrupted / "config.yaml").write_text("{}")
    (interrupted / "log.jsonl").write_text(
        json.dumps({"event": "epoch", "task": 1, "phase": "main", "epoch": 1, "time_s": 900.0}) + "\n")
    left = estimate_time_left(suite, out)
    assert left.minutes == pytest.approx(60.0 - 15.0) and left.estimated == 1
    assert left.unknown == ("method-lwf__seed-1", "method-lwf__seed-2", "method-lwf__seed-3")
    complete("method-lwf__seed-1", 100.0)
    complete("method-lwf__seed-2", 140.0)  # median of 100, 140: 120 for lwf seed 3
    left = estimate_time_left(suite, out)
    assert left.minutes == pytest.approx(45.0 + 120.0) and left.estimated == 2 and left.unknown == ()
    assert status_table(suite, out, jobs=2).splitlines()[-1] == (
        "time left: about 2.8 h of run time in 2 runs (1.4 h of wall time at --jobs 2), "
        "from the complete runs here that differ only in seed")
    (interrupted / "log.jsonl").write_text(
        json.dumps({"event": "epoch", "task": 2, "phase": "main", "epoch": 9, "time_s": 6000.0}) + "\n")
    assert estimate_time_left(suite, out).minutes == pytest.approx(120.0)  # past its estimate: 0 left
    selected = select_runs(suite, ["method-lwf__seed-3"])
    assert main(["suite", str(suite_file), "-o", str(out), "--status", "--only", "method-lwf__seed-3"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (  # the other lwf runs outside the selection count
        "time left: about 2.0 h of run time in 1 runs, from the complete runs here that differ only in seed")
    assert estimate_time_left(selected, out).unknown == ("method-lwf__seed-3",)  # without the grid
    complete("method-lwf__seed-3", 1.0)
    complete("method-ft__seed-3", 1.0)
    assert status_table(suite, out).splitlines()[-1] == "time left: none, every run is complete"


def test_shipped_suites_are_valid():
    mini = load_suite(REPO / "suites" / "mini.yaml")
    assert len(mini.runs) == 14 * 3  # 13 methods + MFGR's own LwF baseline (mfgr-lwf)
    skd = load_suite(REPO / "suites" / "mini_skd.yaml")  # bn_eps 1.0e-5 reaches the run as a number
    assert len(skd.runs) == 13 * 3
    # the half-base points take their Omega from the half-base joint run of their seed; the B0
    # points have no joint run in this suite (not the half-base one)
    for run in skd.runs:
        partner = dfcil.suite.execute._partner_joint(run, skd.joint_runs)
        expected = (f"seed-{run.labels['seed']}__point-b10-joint"
                    if run.labels["point"].startswith("b10-") and not run.is_joint else None)
        assert (partner and partner.name) == expected, run.name
    assert len(load_suite(REPO / "suites" / "mini_budget.yaml").runs) == 8 * 3
    for table, protocols in (("rdfcil_table1", ("N5", "N10", "N20")), ("rdfcil_table2", ("N6", "N11", "N26"))):
        suite = load_suite(REPO / "suites" / f"{table}.yaml")
        assert len(suite.runs) == 3 * 6 * 3
        assert {run.labels["protocol"] for run in suite.runs} == set(protocols)


def test_a_second_suite_leaves_runs_another_process_trains_alone(tmp_path, tiny_tree, monkeypatch, capsys):
    """Two suites over one output (e.g. the command run twice): a run whose lock another process
    holds is not started again, and its partners wait for it to end before they take its Omega."""
    suite = load_suite(_write_suite(tmp_path, tiny_tree, "  method:\n    ft: {method.name: finetune}\n"
                                    "    joint: {method.name: joint}\n  seed: [0]\n"))
    out = tmp_path / "out"
    joint_dir = out / "method-joint__seed-0"
    started: list[tuple[str, bool]] = []  # name, whether the joint run was complete then
    lock = hold_run_lock(joint_dir)
    lock.__enter__()  # "another suite" trains the joint run
    (joint_dir / "config.yaml").write_text("{}")
    sleeps = []

    def fake_sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) == 3:  # the other process ends the joint run
            (joint_dir / "metrics.json").write_text(json.dumps({"complete": True}))
            lock.__exit__(None, None, None)

    class FakeProcess:
        def __init__(self, command, stdout=None, stderr=None):
            self.name = Path(command[command.index("-o") + 1]).name
            started.append((self.name, run_state(joint_dir) == "complete"))

        def poll(self):
            (out / self.name / "metrics.json").write_text(json.dumps({"complete": True}))
            return 0

    monkeypatch.setattr(dfcil.suite.execute.subprocess, "Popen", FakeProcess)
    monkeypatch.setattr(dfcil.suite.execute.time, "sleep", fake_sleep)
    with console_logging():  # the messages, as the command line shows them
        outcome = execute_suite(suite, out, jobs=2)
    assert outcome["running_elsewhere"] == ["method-joint__seed-0"] and outcome["done"] == ["method-ft__seed-0"]
    assert started == [("method-ft__seed-0", True)]  # after the joint run ended, not beside it
    assert "skip method-joint__seed-0: another process is training it" in capsys.readouterr().err


def test_runs_of_one_first_task_wait_for_it_and_start_from_it(tmp_path, tiny_tree, monkeypatch):
    """Fake processes: ft and lwf of seed 0 train the same first task, so lwf starts only when ft
    has finished it, from it, while seed 1's runs (another first task) fill the other slot."""
    suite = load_suite(_write_suite(tmp_path, tiny_tree, "  seed: [0, 1]\n  method:\n"
                                    "    ft: {method.name: finetune}\n    lwf: {method.name: lwf}\n"))
    assert suite.runs[0].first_task_key() == suite.runs[1].first_task_key()  # seed 0: ft, lwf
    assert suite.runs[0].first_task_key() != suite.runs[2].first_task_key()  # another seed
    out = tmp_path / "out"
    started: list[tuple[str, list[str], list[str]]] = []
    running: dict[str, int] = {}

    class FakeProcess:
        def __init__(self, command, stdout=None, stderr=None):
            self.name = Path(command[command.index("-o") + 1]).name
            started.append((self.name, command, sorted(running)))
            running[self.name] = 0

        def poll(self):
            running[self.name] += 1
            run_dir = out / self.name
            if running[self.name] == 3:  # the first task is done after 3 polls, the run after 6
                (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
                (run_dir / "checkpoints" / "first_task.pt").write_bytes(b"")
                (run_dir / "checkpoints" / "first_task.json").write_text("{}")
            if running[self.name] < 6:
                return None
            del running[self.name]
            (run_dir / "metrics.json").write_text(json.dumps({"complete": True}))
            (run_dir / "config.yaml").write_text("{}")
            return 0

    monkeypatch.setattr(dfcil.suite.execute.subprocess, "Popen", FakeProcess)
    monkeypatch.setattr(dfcil.suite.execute.time, "sleep", lambda seconds: None)
    outcome = execute_suite(suite, out, jobs=2)
    assert len(outcome["done"]) == 4
    by_name = {name: (command, others) for name, command, others in started}
    assert [name for name, _, _ in started][:2] == ["seed-0__method-ft", "seed-1__method-ft"]
    for seed in (0, 1):
        command, _ = by_name[f"seed-{seed}__method-lwf"]
        assert command[command.index("--first-task-from") + 1] == str(out / f"seed-{seed}__method-ft")
        assert "--first-task-from" not in by_name[f"seed-{seed}__method-ft"][0]

    # a selection (--only) of a later invocation starts from the first task of a run outside it
    (out / "seed-0__method-lwf" / "metrics.json").unlink()
    shutil.rmtree(out / "seed-0__method-lwf")
    started.clear()
    selection = select_runs(suite, ["seed-0__method-lwf"])
    assert execute_suite(selection, out, jobs=1, grid=suite)["done"] == ["seed-0__method-lwf"]
    command = started[0][1]
    assert command[command.index("--first-task-from") + 1] == str(out / "seed-0__method-ft")


def test_a_suite_starts_from_a_first_task_outside_it_only_when_identical(tmp_path, tiny_tree, monkeypatch, capsys):
    """--first-task-from DIR: a new run starts from the completed first task of a run elsewhere
    (another suite's) whose recorded identity is its own; a run of another seed trains its own."""
    from dfcil.cli import main
    from dfcil.first_task import CHECKPOINT, RECORD
    from dfcil.suite.execute import first_task_donors

    suite = load_suite(_write_suite(tmp_path, tiny_tree, "  seed: [0, 1]\n  method:\n    lwf: {method.name: lwf}\n"))
    donors = tmp_path / "other-suite"
    for name, key in (("joint-s0", suite.runs[0].first_task_key()), ("no-first-task", None),
                      ("unreadable", "not json")):
        (donors / name / "checkpoints").mkdir(parents=True)
        if key is None:
            continue
        (donors / name / CHECKPOINT).write_bytes(b"")
        identity = key if key == "not json" else json.dumps({"identity": json.loads(key)})
        (donors / name / RECORD).write_text(identity)
    assert first_task_donors([donors]) == {suite.runs[0].first_task_key(): donors / "joint-s0"}
    assert first_task_donors([donors / "joint-s0"]) == first_task_donors([donors])  # a run directory itself
    started: list[list[str]] = []

    class FakeProcess:
        def __init__(self, command, stdout=None, stderr=None):
            started.append(command)
            self.run_dir = Path(command[command.index("-o") + 1])

        def poll(self):
            (self.run_dir / "metrics.json").write_text(json.dumps({"complete": True}))
            return 0

    monkeypatch.setattr(dfcil.suite.execute.subprocess, "Popen", FakeProcess)
    monkeypatch.setattr(dfcil.suite.execute.time, "sleep", lambda seconds: None)
    assert execute_suite(suite, tmp_path / "out", jobs=1, first_task_from=[donors])["done"] == [
        "seed-0__method-lwf", "seed-1__method-lwf"]
    seed0, seed1 = started
    assert seed0[seed0.index("--first-task-from") + 1] == str(donors / "joint-s0")
    assert "--first-task-from" not in seed1
    assert main(["suite", str(suite.path), "-o", str(tmp_path / "x"), "--first-task-from", str(tmp_path / "none")]) == 2
    assert "--first-task-from: " in capsys.readouterr().err
