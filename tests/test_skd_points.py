"""benchmarks/skd_points.py: the SKD points' table from the committed beta-1.5 run and the mini
suite's SKD run of the same seed, against values computed by hand from SKD's Eq. 9 and the files."""

from __future__ import annotations

import json
import shutil

from conftest import load_benchmark


def test_the_table_reads_gamma_the_delegator_check_and_the_fit_of_each_task(tmp_path, monkeypatch):
    load_benchmark("budget_curves")  # skd_points imports its copy_run
    skd_points = load_benchmark("skd_points")
    results = skd_points.ROOT / "benchmarks" / "results"
    runs, out, suite = tmp_path / "runs", tmp_path / "out", tmp_path / "suite"
    name = "seed-0__point-b0-skd-beta-1.5"
    shutil.copytree(results / "mini" / "skd" / name, runs / name)
    (runs / name / "checkpoints").mkdir()  # left behind by the copy
    shutil.copytree(results / "mini" / "skd" / name, runs / "seed-0__point-b0-skd-unfinished")
    abd = "seed-0__point-b10-abd"  # its classification term is logged as local_ce
    shutil.copytree(results / "mini" / "skd" / abd, runs / abd)
    metrics = json.loads((runs / name / "metrics.json").read_text())
    unfinished = runs / "seed-0__point-b0-skd-unfinished" / "metrics.json"
    unfinished.write_text(json.dumps({**metrics, "complete": False}))
    shutil.copytree(results / "suites" / "mini-rev2" / "method-skd__seed-0", suite / "method-skd__seed-0")
    monkeypatch.setattr(skd_points, "SUITE_REFERENCE", suite)

    assert skd_points.main([str(runs), "--out", str(out)]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["README.md", name, abd]  # the complete runs only
    assert not (out / name / "checkpoints").exists()
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in (out / "README.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| point")}
    assert list(rows) == ["skd (the mini suite: beta 5)", "b0-skd-beta-1.5", "b10-abd"]
    row = rows["b0-skd-beta-1.5"]
    assert row[1:3] == ["0", f"{metrics['last_accuracy']:.2f}"]
    # SKD's Eq. 9 on B0 with N = 3 incremental tasks of 5: gamma_n = beta / (N * sum of their classes)
    assert row[7] == " / ".join(f"{1.5 / (3 * classes):.3f}" for classes in (5, 10, 15))
    assert rows["skd (the mini suite: beta 5)"][7] == " / ".join(f"{5 / (3 * c):.3f}" for c in (5, 10, 15))
    # the delegator before task 2 is the same in both (same first task and delegator budget): S / T
    assert row[8].split("; ")[0] == rows["skd (the mini suite: beta 5)"][8].split("; ")[0]
    def last_epochs(run: str) -> dict[int, dict]:
        epochs = {}
        for line in (runs / run / "log.jsonl").read_text().splitlines():
            record = json.loads(line)
            if record.get("event") == "epoch" and record["phase"] == "main":
                epochs[record["task"]] = record
        return epochs

    skd_epochs, abd_epochs = last_epochs(name), last_epochs(abd)
    assert row[9] == "; ".join(f"{skd_epochs[t]['losses']['cls']:.2f}/{skd_epochs[t]['train_accuracy']:.1f}"
                               for t in (2, 3, 4))
    assert rows["b10-abd"][9] == "; ".join(
        f"{abd_epochs[t]['losses']['local_ce']:.2f}/{abd_epochs[t]['train_accuracy']:.1f}" for t in (2, 3))


def test_a_run_adopted_from_the_results_folder_is_not_copied_back_over_it(tmp_path, monkeypatch):
    budget_curves = load_benchmark("budget_curves")
    results = budget_curves.ROOT / "benchmarks" / "results"
    name = "seed-0__point-b10-joint"
    out = tmp_path / "out"
    shutil.copytree(results / "mini" / "skd" / name, out / name)
    kept = (out / name / "suite.json").read_text()
    adopted = tmp_path / "runs" / name  # a suite's adopted copy: suite.json names the results folder
    shutil.copytree(out / name, adopted)
    record = json.loads(kept)
    (adopted / "suite.json").write_text(json.dumps({**record, "adopted_from": str(out / name)}))
    assert budget_curves.copy_run(adopted, out) == out / name
    assert (out / name / "suite.json").read_text() == kept  # not replaced by the adopted copy's record
    # relative to the repository root, as `dfcil suite` run there records it
    monkeypatch.setattr(budget_curves, "ROOT", tmp_path)
    (adopted / "suite.json").write_text(json.dumps({**record, "adopted_from": f"out/{name}"}))
    assert budget_curves.copy_run(adopted, out) == out / name
    assert (out / name / "suite.json").read_text() == kept
    # a run trained elsewhere (no adopted_from) is copied
    (adopted / "suite.json").write_text(json.dumps(record))
    budget_curves.copy_run(adopted, out)
    assert json.loads((out / name / "suite.json").read_text()) == record
