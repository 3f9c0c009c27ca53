"""benchmarks/run_mini.py's summary table: a run resumed in a later session keeps the overrides of
the command that started it, and names the commit of every session."""

from __future__ import annotations

import json
import shutil

from conftest import load_benchmark


def _result(root, name, sessions, accuracies):
    run = root / name
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({
        "seed": 0, "accuracy_per_step": accuracies, "last_accuracy": accuracies[-1],
        "average_incremental_accuracy": sum(accuracies) / len(accuracies), "forgetting": 10.0,
        "wall_time_s": 600.0}))
    (run / "run.json").write_text(json.dumps({"sessions": [
        {"command": command, "commit": commit, "device": "cpu",
         "machine": {"processor": "x86_64", "cpu_count": 2, "torch": "2.13.0+cpu"}}
        for command, commit in sessions]}))


def test_a_resumed_run_keeps_its_overrides_and_every_commit(tmp_path):
    run_mini = load_benchmark("run_mini")
    _result(tmp_path, "mfgr-gen-lr-0.001-s0", [
        ("dfcil run configs/mini.yaml -o R --set method.name=mfgr --set method.synthesis.lr=0.001 --set seed=0",
         "eb5da64aaaaaaaaa"),
        ("dfcil run --resume R --set runtime.progress=false", "ea5cc16bbbbbbbbb")], [85.4, 54.2, 46.6, 39.45])
    _result(tmp_path, "lwf-s0", [("dfcil run configs/mini.yaml -o L --set method.name=lwf --set seed=0",
                                  "30b7daf82fe8cccc")], [83.8, 45.3, 28.3, 20.9])
    table = run_mini.summarize(tmp_path)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert "`method.synthesis.lr=0.001`" in rows["mfgr-gen-lr-0.001"]
    assert rows["mfgr-gen-lr-0.001"].endswith("| `eb5da64aaaaa` + `ea5cc16bbbbb` |")
    assert "| - |" in rows["lwf"] and rows["lwf"].endswith("| `30b7daf82fe8` |")


def test_each_row_names_the_network_revision_its_run_trained(tmp_path):
    # committed runs of the same config before (r1) and after (r2) resnet32/rdfcil's forward changed
    run_mini = load_benchmark("run_mini")
    results = run_mini.ROOT / "benchmarks" / "results"
    shutil.copytree(results / "mini" / "rdfcil-s0", tmp_path / "rdfcil-s0")
    shutil.copytree(results / "suites" / "mini-rev2" / "method-rdfcil__seed-1", tmp_path / "rdfcil-s1")
    rows = [line for line in run_mini.summarize(tmp_path).splitlines() if line.startswith("| rdfcil |")]
    assert [row.split(" | ")[1:3] for row in rows] == [["0", "resnet32/rdfcil r1"], ["1", "resnet32/rdfcil r2"]]
