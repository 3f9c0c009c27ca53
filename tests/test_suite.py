"""`dfcil suite`: grid expansion, skip / resume, failures that do not stop the others."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dfcil.cli import main
from dfcil.errors import ConfigError
from dfcil.suite import execute_suite, load_suite, run_state

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_tree(tmp_path) -> Path:
    """train/ and test/ folders of 4 classes x 6 images of 32 px, brightness set by the class."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(4):
            folder = tmp_path / "tree" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(6):
                Image.fromarray((rng.integers(0, 50, (32, 32, 3)) + 60 * c).astype(np.uint8)).save(folder / f"{i}.png")
    return tmp_path / "tree"


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


def test_shipped_suites_are_valid():
    mini = load_suite(REPO / "suites" / "mini.yaml")
    assert len(mini.runs) == 8 * 3
    for table, protocols in (("rdfcil_table1", ("N5", "N10", "N20")), ("rdfcil_table2", ("N6", "N11", "N26"))):
        suite = load_suite(REPO / "suites" / f"{table}.yaml")
        assert len(suite.runs) == 3 * 6 * 3
        assert {run.labels["protocol"] for run in suite.runs} == set(protocols)
