"""dfcil.report: discovery, labels, aggregates, tables, plots and the HTML page (no training)."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dfcil.errors import DataError
from dfcil.report import (
    build_report,
    find_runs,
    group_runs,
    load_run,
    omega_from_joint,
    protocol_label,
    protocol_labels,
    row_label,
)

from conftest import write_coloured_tree

# hand-computed aggregates of the fake runs below (lwf seeds 0 and 1 on the 20-class protocol)
LWF_LAST = (20.0, 24.0)  # mean 22, sample std sqrt(8)
LWF_AVG = (45.0, 49.0)  # mean of [80, 50, 30, 20] and [84, 54, 34, 24]
LWF_OMEGA = (55.0, 58.0)  # mean 56.5, sample std sqrt(4.5)
SMALL = "cifar100 B0 N=4 (20 classes)"
HALF = "cifar100 B50 N=6"


def write_run(
    root: Path,
    name: str,
    method: str,
    seed: int,
    per_step: list[float],
    *,
    base: int = 0,
    num_tasks: int = 4,
    subset: int | None = 20,
    omega: float | None = None,
    complete: bool = True,
    commit: str = "abc1234def",
    suite: dict[str, Any] | None = None,
    grids: tuple[int, ...] = (),
) -> Path:
    """A run directory with hand-written config.yaml / metrics.json / run.json."""
    run = root / name
    run.mkdir(parents=True)
    classes = subset or 100
    if base == 0:
        sizes = [classes // num_tasks] * num_tasks
    else:
        sizes = [base] + [(classes - base) // (num_tasks - 1)] * (num_tasks - 1)
    tasks, start = [], 0
    for size in sizes:
        tasks.append(list(range(start, start + size)))
        start += size
    config = {
        "seed": seed,
        "data": {"dataset": "cifar100", "train_per_class": None},
        "scenario": {"order": "abd", "order_seed": 0, "subset": subset, "num_tasks": num_tasks, "base_classes": base},
        "model": {"backbone": "resnet32"},
        "train": {"epochs": 1},
        "method": {"name": method},
        "runtime": {"device": "auto"},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    steps = len(per_step)
    matrix = [[per_step[i] if j <= i else None for j in range(num_tasks)] for i in range(steps)]
    metrics: dict[str, Any] = {
        "accuracy_matrix": matrix,
        "accuracy_per_step": per_step,
        "last_accuracy": per_step[-1],
        "average_incremental_accuracy": sum(per_step) / steps,
        "forgetting": 10.0,
        "old_new_accuracy": [{"step": i + 1, "old": None if i == 0 else per_step[i] - 5, "new": per_step[i] + 5}
                             for i in range(steps)],
        "complete": complete,
        "method": method,
        "seed": seed,
        "dataset": "cifar100",
        "class_order": [c for t in tasks for c in t],
        "tasks": tasks,
        "wall_time_s": 12.5,
    }
    if omega is not None:
        metrics["omega"] = omega
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "log.jsonl").write_text("")
    session = {"started": "2026-11-23T10:00:00+0000", "command": f"dfcil run mini.yaml -o {name} <&>",
               "commit": commit, "machine": {"processor": "x86_64", "cpu_count": 2, "torch": "2.13.0+cpu"},
               "device": "cpu", "data": "/data/cifar100-jpg.tar.gz"}
    (run / "run.json").write_text(json.dumps({"fingerprint": f"fp-{name}", "sessions": [session]}))
    if suite is not None:
        (run / "suite.json").write_text(json.dumps(suite))
    for task in grids:
        (run / "synthesis").mkdir(exist_ok=True)
        pixels = np.random.default_rng(task).integers(0, 255, size=(34, 68, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(run / "synthesis" / f"task_{task}.png")
    return run


def make_runs(root: Path) -> Path:
    """lwf seeds 0/1 + abd seed 0 (+ an incomplete lwf seed 2) on B0 N=4, lwf seed 0 on B50 N=6."""
    small = root / "small"
    write_run(small, "lwf-s0", "lwf", 0, [80.0, 50.0, 30.0, 20.0], omega=55.0, commit="1111111aaaa")
    write_run(small, "lwf-s1", "lwf", 1, [84.0, 54.0, 34.0, 24.0], omega=58.0, commit="2222222bbbb")
    write_run(small, "abd-s0", "abd", 0, [82.0, 70.0, 55.0, 40.0], omega=80.0, grids=(2, 3, 4))
    write_run(small, "lwf-s2", "lwf", 2, [90.0, 90.0], omega=99.0, complete=False, commit="3333333cccc")
    write_run(root / "nested" / "half", "lwf-s0", "lwf", 0, [70.0, 60.0, 50.0, 45.0, 40.0, 35.0],
              base=50, num_tasks=6, subset=None, commit="4444444dddd")
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """The fake runs and the report built from them once for the module."""
    root = make_runs(tmp_path_factory.mktemp("runs"))
    out = tmp_path_factory.mktemp("report")
    html = build_report([root], out)
    assert html == out / "index.html"
    return root, out


def _group(groups, protocol: str, method: str):
    (found,) = [g for g in groups if g.protocol == protocol and g.method == method]
    return found


def test_find_runs_recursive_and_labels(built) -> None:
    root, _ = built
    records = find_runs([root])
    assert len(records) == 5
    by_path = {(r.path.parent.name, r.name): r for r in records}
    assert protocol_label(by_path[("small", "lwf-s0")]) == SMALL
    assert protocol_label(by_path[("half", "lwf-s0")]) == HALF
    assert [r.name for r in records if r.excluded] == ["lwf-s2"]
    assert "incomplete" in by_path[("small", "lwf-s2")].excluded
    # a path may be a run directory itself, and overlapping paths are de-duplicated
    assert [r.name for r in find_runs([root / "small" / "abd-s0", root / "small"])].count("abd-s0") == 1
    assert len(find_runs([root / "small" / "abd-s0"])) == 1
    assert by_path[("small", "abd-s0")].synthesis_grids[0][0] == 2


def test_row_labels(tmp_path) -> None:
    variant = load_run(write_run(tmp_path, "rdfcil-no-rkd-s0", "rdfcil", 0, [80.0, 60.0, 50.0, 40.0]))
    assert row_label(variant) == "rdfcil-no-rkd"
    plain = load_run(write_run(tmp_path, "rdfcil-s3", "rdfcil", 3, [80.0, 60.0, 50.0, 40.0]))
    assert row_label(plain) == "rdfcil"
    stamped = load_run(write_run(tmp_path, "mini-lwf-s0-20261123-101010", "lwf", 0, [80.0, 60.0, 50.0, 40.0]))
    assert row_label(stamped) == "lwf"
    suite = {"suite": "ablation", "labels": {"method": "R-DFCIL w/o RKD", "seed": "0"}}
    labelled = load_run(write_run(tmp_path, "x1", "rdfcil", 0, [80.0, 60.0, 50.0, 40.0], suite=suite))
    assert row_label(labelled) == "R-DFCIL w/o RKD"
    assert labelled.suite_name == "ablation"


def test_suite_labels_keep_variants_and_protocols_apart(tmp_path) -> None:
    for epochs, seed, last in (("1", 0, 30.0), ("1", 1, 34.0), ("5", 0, 50.0)):
        labels = {"protocol": f"E{epochs}", "method": "rdfcil", "method.refine_epochs": epochs, "seed": f"s{seed}"}
        write_run(tmp_path, f"protocol-E{epochs}__method-rdfcil__seed-s{seed}", "rdfcil", seed,
                  [80.0, 60.0, 50.0, last], suite={"suite": "grid", "labels": labels})
    records = find_runs([tmp_path])
    assert {row_label(r) for r in records} == {"rdfcil (method.refine_epochs=1)", "rdfcil (method.refine_epochs=5)"}
    assert set(protocol_labels(records).values()) == {f"{SMALL} [E1]", f"{SMALL} [E5]"}
    groups = group_runs(records)
    assert [(g.protocol, g.stats["last_accuracy"].n) for g in groups] == [(f"{SMALL} [E1]", 2), (f"{SMALL} [E5]", 1)]
    assert groups[0].stats["last_accuracy"].mean == pytest.approx(32.0)


def test_aggregates_match_hand_computed(built) -> None:
    root, _ = built
    groups = group_runs(find_runs([root]))
    assert {(g.protocol, g.method) for g in groups} == {(SMALL, "abd"), (SMALL, "lwf"), (HALF, "lwf")}
    lwf = _group(groups, SMALL, "lwf")
    assert [r.name for r in lwf.runs] == ["lwf-s0", "lwf-s1"]  # the incomplete seed 2 is left out
    last, avg, omega = lwf.stats["last_accuracy"], lwf.stats["average_incremental_accuracy"], lwf.stats["omega"]
    assert (last.mean, last.n, last.seeds) == (22.0, 2, (0, 1))
    assert last.std == pytest.approx(math.sqrt(8.0))
    assert (avg.mean, avg.std) == (pytest.approx(47.0), pytest.approx(math.sqrt(8.0)))
    assert (omega.mean, omega.std) == (pytest.approx(56.5), pytest.approx(math.sqrt(4.5)))
    abd = _group(groups, SMALL, "abd").stats["last_accuracy"]
    assert (abd.mean, abd.std, abd.n) == (40.0, 0.0, 1)
    half = _group(groups, HALF, "lwf")
    assert "omega" not in half.stats  # no upper bound: no Omega
    assert half.stats["average_incremental_accuracy"].mean == pytest.approx(50.0)


def test_a_run_without_omega_gets_it_from_the_joint_run_of_its_protocol_and_seed(tmp_path) -> None:
    write_run(tmp_path, "joint-s0", "joint", 0, [80.0, 80.0, 75.0, 50.0])
    write_run(tmp_path, "joint-s1", "joint", 1, [90.0, 90.0, 90.0, 90.0])
    write_run(tmp_path, "abd-s0", "abd", 0, [80.0, 60.0, 45.0, 40.0])  # adopted from elsewhere: no Omega
    write_run(tmp_path, "lwf-s0", "lwf", 0, [80.0, 40.0, 30.0, 20.0], omega=12.5)  # its own: kept
    write_run(tmp_path / "half", "abd-s0", "abd", 0, [70.0, 60.0, 50.0, 45.0, 40.0, 35.0], base=50, num_tasks=6,
              subset=None)  # another protocol: no joint run of its own
    records = find_runs([tmp_path])
    notes = omega_from_joint(records)
    by_path = {str(r.path.relative_to(tmp_path)): r for r in records}
    # 100 * mean(80/80, 60/80, 45/75, 40/50) = 100 * (1 + 0.75 + 0.6 + 0.8) / 4 = 78.75
    assert by_path["abd-s0"].metrics["omega"] == pytest.approx(78.75)
    assert by_path["abd-s0"].metrics["omega_from"] == str(tmp_path / "joint-s0")
    assert by_path["lwf-s0"].metrics["omega"] == 12.5 and "omega_from" not in by_path["lwf-s0"].metrics
    assert "omega" not in by_path["half/abd-s0"].metrics and "omega" not in by_path["joint-s0"].metrics
    assert notes == [f"{tmp_path / 'abd-s0'}: Omega computed by the report from the joint run {tmp_path / 'joint-s0'} "
                     "(the run trained without an upper bound)"]
    assert group_runs(records)[0].stats["omega"].mean == pytest.approx(78.75)
    # a joint run of the same seed but another class order does not give Omega
    other = find_runs([tmp_path])
    for record in other:
        if record.name == "joint-s0":
            record.metrics["class_order"] = list(reversed(record.metrics["class_order"]))
    assert omega_from_joint(other) == []


def test_tables(built) -> None:
    _, out = built
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert set(rows[0]) >= {"protocol", "method", "metric", "mean", "std", "n", "seeds"}
    by_key = {(r["protocol"], r["method"], r["metric"]): r for r in rows}
    lwf = by_key[(SMALL, "lwf", "last_accuracy")]
    assert float(lwf["mean"]) == pytest.approx(22.0) and float(lwf["std"]) == pytest.approx(math.sqrt(8.0))
    assert (lwf["n"], lwf["seeds"]) == ("2", "0;1")
    assert "lwf-s0@1111111aaaa" in lwf["runs"] and "lwf-s2" not in lwf["runs"]
    assert (SMALL, "lwf", "omega") in by_key and (HALF, "lwf", "omega") not in by_key
    assert len(rows) == 3 + 3 + 2
    markdown = (out / "report.md").read_text()
    assert "22.00 ± 2.83 (2)" in markdown and "40.00 ± - (1)" in markdown
    assert f"{SMALL}: A_N" in markdown and f"{HALF}: Avg" in markdown
    assert "1111111aaaa" in markdown and "2222222bbbb" in markdown  # sources with their commits
    assert "lwf-s2" in markdown.split("## Excluded runs")[1]
    tree = json.loads((out / "report.json").read_text())
    assert tree["protocols"] == [SMALL, HALF]
    assert tree["excluded"][0]["path"].endswith("lwf-s2")


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag == "img":
            self.sources.append(dict(attrs)["src"] or "")


def test_plots_are_valid_pngs(built) -> None:
    _, out = built
    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert len([p for p in plots if p.startswith("curve-")]) == 2
    assert len([p for p in plots if p.endswith("-matrix.png")]) == 5
    assert len([p for p in plots if p.endswith("-old_new.png")]) == 5
    assert [p for p in plots if p.endswith("-synthesis.png")] == ["run-abd-s0-synthesis.png"]
    assert not [p for p in plots if not p.endswith(".png")]  # no temporary files left behind
    for name in plots:
        with Image.open(out / "plots" / name) as image:
            image.verify()
        with Image.open(out / "plots" / name) as image:
            assert image.format == "PNG" and image.width > 100 and image.height > 100


def test_html_page(built) -> None:
    _, out = built
    text = (out / "index.html").read_text(encoding="utf-8")
    parser = _Images()
    parser.feed(text)
    assert len(parser.sources) == 2 + 5 + 5 + 1
    for source in parser.sources:
        assert not source.startswith(("http:", "https:", "/")) and (out / source).is_file()
    assert "table" in parser.tags and "script" not in parser.tags and "link" not in parser.tags
    assert "<td class=\"num\">22.00 ± 2.83 (2)</td>" in text and "40.00 ± - (1)" in text
    assert "1111111aaaa" in text and "x86_64, 2 CPUs" in text
    assert "dfcil run mini.yaml -o lwf-s0 &lt;&amp;&gt;" in text  # escaped command
    incomplete = text.split('id="incomplete"')[1].split("<h2>")[0]
    assert "lwf-s2" in incomplete and "incomplete" in incomplete


def test_damaged_and_unfinished_runs_are_listed_not_fatal(tmp_path) -> None:
    run = write_run(tmp_path, "lwf-s0", "lwf", 0, [80.0, 60.0, 50.0, 40.0])
    write_run(tmp_path, "lwf-s1", "lwf", 1, [82.0, 62.0, 52.0, 42.0])
    (run / "metrics.json").write_text('{"complete": true, "last_accuracy": ')
    with pytest.raises(DataError, match=r"lwf-s0/metrics\.json: damaged JSON") as error:
        load_run(run)  # one run on its own: an error naming the file, in one line
    assert "\n" not in str(error.value)
    run2 = write_run(tmp_path, "abd-s0", "abd", 0, [80.0, 60.0, 50.0, 40.0])
    (run2 / "config.yaml").write_text("seed: [0\nmethod: {")
    stopped = write_run(tmp_path, "abd-s1", "abd", 1, [80.0])
    (stopped / "metrics.json").unlink()  # stopped in task 1: config.yaml and run.json only
    records = {r.name: r for r in find_runs([tmp_path])}
    assert set(records) == {"lwf-s0", "lwf-s1", "abd-s0", "abd-s1"}
    assert records["lwf-s1"].excluded is None
    assert records["lwf-s0"].excluded.startswith("damaged: ") and "lwf-s0/metrics.json" in records["lwf-s0"].excluded
    assert records["lwf-s0"].config["method"]["name"] == "lwf"  # labelled from its readable config
    assert "abd-s0/config.yaml: damaged YAML" in records["abd-s0"].excluded and records["abd-s0"].config == {}
    assert records["abd-s1"].excluded == "incomplete: stopped in task 1 (no metrics.json yet)"
    assert all("\n" not in r.excluded for r in records.values() if r.excluded)
    build_report([tmp_path], tmp_path / "out")  # the usable run is reported, the others listed
    table = (tmp_path / "out" / "report.md").read_text()
    assert "42.00" in table
    for name in ("lwf-s0", "abd-s0", "abd-s1"):
        assert name in table.split("Excluded runs")[1]
    build_report([tmp_path], tmp_path / "out")  # an earlier report's folder is rewritten
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"holds files a report does not write \(notes.txt\)"):
        build_report([tmp_path], tmp_path / "out")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
    with pytest.raises(DataError, match="is a file"):
        build_report([tmp_path], tmp_path / "out" / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no run directory"):
        build_report([tmp_path / "empty"], tmp_path / "out2")
    with pytest.raises(DataError, match="no such run directory"):
        find_runs([tmp_path / "missing"])


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_html_renders_in_headless_chromium(built, tmp_path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); cannot render index.html")
    _, out = built
    url = (out / "index.html").resolve().as_uri()
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "22.00 ± 2.83 (2)" in dom and "40.00 ± - (1)" in dom and SMALL in dom
    shot = tmp_path / "page.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1200,2000", url],
                   capture_output=True, timeout=120, check=True)
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.shape == (2000, 1200)
    assert pixels.var() > 0


# --- domain gap (MID, MMD, t-SNE) ---------------------------------------------------------------
def test_mid_and_mmd_hand_values():
    import math

    from dfcil.report.domain_gap import mid, mmd_unbiased

    reference = np.array([[0.0, 0.0], [2.0, 2.0]])  # mean (1, 1), std (1, 1)
    other = np.array([[3.0, 1.0], [5.0, 1.0]])  # mean (4, 1)
    assert mid(reference, other) == pytest.approx(3.0, rel=1e-6)
    assert mid(reference, reference) == pytest.approx(0.0, abs=1e-9)
    a, b = np.array([[0.0], [1.0]]), np.array([[3.0], [4.0]])
    cross = (math.exp(-9) + math.exp(-16) + math.exp(-4) + math.exp(-9)) / 4
    assert mmd_unbiased(a, b, bandwidth=1.0) == pytest.approx(2 * math.exp(-1) - 2 * cross, rel=1e-9)
    rng = np.random.default_rng(0)
    same = mmd_unbiased(rng.normal(size=(200, 5)), rng.normal(size=(200, 5)))
    apart = mmd_unbiased(rng.normal(size=(200, 5)), rng.normal(3.0, 1.0, size=(200, 5)))
    assert abs(same) < 0.02 and apart > 0.5


def test_tsne_keeps_separate_clusters_apart():
    from dfcil.report.domain_gap import tsne

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (40, 10)), rng.normal(8, 1, (40, 10))])
    labels = np.repeat([0, 1], 40)
    y = tsne(x, perplexity=10)
    d = ((y[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (labels[d.argmin(axis=1)] == labels).mean() == 1.0
    centre_gap = np.linalg.norm(y[:40].mean(0) - y[40:].mean(0))
    assert centre_gap > 3 * max(y[:40].std(0).max(), y[40:].std(0).max())


def test_tsne_maps_are_the_same_in_parallel_processes_and_on_more_threads():
    from threadpoolctl import threadpool_limits

    from dfcil.report.domain_gap import tsne, tsne_maps

    rng = np.random.default_rng(1)
    sets = [rng.normal(size=(60, 8)), rng.normal(size=(45, 8)), rng.normal(size=(50, 8))]
    serial = tsne_maps(sets)
    assert [m.shape for m in serial] == [(60, 2), (45, 2), (50, 2)]
    for one, other in zip(serial, tsne_maps(sets, jobs=2)):
        np.testing.assert_array_equal(one, other)
    with threadpool_limits(limits=2, user_api="openmp"):  # tsne pins its own thread count
        np.testing.assert_array_equal(tsne(sets[0]), serial[0])
    with pytest.raises(ValueError, match="at least 1"):
        tsne_maps(sets, jobs=0)


def _old_data_free_run(tmp_path: Path) -> Path:
    """A run made before features were written at training time: an image-folder dataset, the
    model after task 2 and its kept synthetic samples, no ``task_2_features.npz``."""

    from dfcil.workflow.artifact import Architecture

    tree = write_coloured_tree(tmp_path / "tree", per_class=8)
    run = tmp_path / "runs" / "abd-s0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "synthesis").mkdir()
    config = {"data": {"dataset": "imagefolder", "root": str(tree)},
              "scenario": {"order": "identity", "num_tasks": 2}, "method": {"name": "finetune"}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    metrics = {"complete": True, "method": "abd", "seed": 0, "accuracy_per_step": [90.0, 50.0],
               "accuracy_matrix": [[90.0, None], [40.0, 60.0]], "last_accuracy": 50.0,
               "average_incremental_accuracy": 70.0, "old_new_accuracy": [{"step": 1, "old": None, "new": 90.0},
                                                                          {"step": 2, "old": 40.0, "new": 60.0}],
               "tasks": [[0, 1], [2, 3]], "dataset": "imagefolder"}
    (run / "metrics.json").write_text(json.dumps(metrics))
    model = Architecture("resnet32").build([2, 2])
    torch.save({"format": 1, "head_sizes": [2, 2], "class_order": [0, 1, 2, 3], "model": model.state_dict()},
               run / "checkpoints" / "task_2.pt")
    rng = np.random.default_rng(1)
    np.savez_compressed(run / "synthesis" / "task_2_samples.npz",
                        images=rng.integers(0, 255, (24, 32, 32, 3)).astype(np.uint8), labels=np.zeros(24, np.int64))
    return run


def test_report_draws_domain_gap_of_a_run_with_synthetic_samples(tmp_path, monkeypatch):
    """The fallback for an old run: features recomputed from its checkpoint and dataset."""
    from PIL import Image as PILImage

    from dfcil.report import build_report

    monkeypatch.setenv("DFCIL_CACHE", str(tmp_path / "cache"))
    run = _old_data_free_run(tmp_path)
    page = build_report([tmp_path / "runs"], tmp_path / "report")
    gaps = json.loads((tmp_path / "report" / "domain_gap.json").read_text())[str(run)]
    assert [g["task"] for g in gaps] == [2]
    assert gaps[0]["images"] == {"real_old": 16, "synthetic": 24, "real_new": 16}
    html = page.read_text()
    assert "Domain gap" in html and "domain_task2.png" in html
    with PILImage.open(tmp_path / "report" / "plots" / "run-abd-s0-domain_task2.png") as png:
        assert png.size[0] > 300
    assert not (run / "synthesis" / "task_2_features.npz").exists()  # the report writes nothing into a run


@pytest.mark.parametrize("missing", ["checkpoints", "dataset"])
def test_old_run_without_checkpoint_or_data_lists_its_domain_gap_as_unavailable(tmp_path, monkeypatch, missing):
    from dfcil.report import build_report

    monkeypatch.setenv("DFCIL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DFCIL_DATA", raising=False)
    run = _old_data_free_run(tmp_path)
    shutil.rmtree(run / "checkpoints" if missing == "checkpoints" else tmp_path / "tree")
    page = build_report([tmp_path / "runs"], tmp_path / "report")
    assert not (tmp_path / "report" / "domain_gap.json").exists()
    lines = [line for line in (tmp_path / "report" / "report.md").read_text().splitlines() if "domain gap" in line]
    assert len(lines) == 1 and lines[0].startswith("- abd-s0: domain gap unavailable for task 2: no features file")
    reason = ("no checkpoint (checkpoints/task_t.pt) to recompute them from" if missing == "checkpoints"
              else "the dataset to recompute them cannot be loaded")
    assert reason in lines[0]
    assert "Domain gap unavailable for task 2" in page.read_text()


# --- the reproducibility table -------------------------------------------------------------------
def test_reproducibility_verdicts_and_table(tmp_path):
    from dfcil.report.model import Group, Stat
    from dfcil.report.reproducibility import Published, load_published, render_reproducibility, verdict

    entry = Published("rdfcil", "cifar100 B0 N=5", "configs/cifar100/b0_n5.yaml", "last_accuracy", 50.0, "paper")
    assert verdict(None, entry) == "not run"
    assert verdict(Stat(50.8, 0.0, 1, (0,)), entry) == "matches"
    assert verdict(Stat(47.0, 2.0, 3, (0, 1, 2)), entry) == "within noise"  # |diff| 3 <= 2 * 2
    assert verdict(Stat(45.0, 1.0, 3, (0, 1, 2)), entry) == "below"
    assert verdict(Stat(53.5, 0.5, 3, (0, 1, 2)), entry) == "above"
    ours = Group("cifar100 B0 N=5", "rdfcil", [], {"last_accuracy": Stat(49.5, 0.7, 3, (0, 1, 2))})
    mini = Group("cifar100 B0 N=4 (20 classes)", "rdfcil", [], {"last_accuracy": Stat(42.7, 0.0, 1, (0,))})
    ablation = Group("cifar100 B0 N=4 (20 classes)", "rdfcil-no-rkd", [], {"last_accuracy": Stat(35.85, 0.0, 1, (0,))})
    half_base = Group("cifar100 B10 N=3 (20 classes)", "skd", [], {"last_accuracy": Stat(30.55, 0.0, 1, (0,))})
    text = render_reproducibility([ours, mini, ablation, half_base], [entry], "dfcil report x")
    assert "| cifar100 B0 N=5 | A_N | 50.00 | paper | 49.50 ± 0.70 (3 seeds) | matches |" in text
    assert "A_N 42.70 (1 seed)" in text
    assert "| rdfcil-no-rkd | cifar100 B0 N=4 (20 classes) | 35.85 (1 seed) |" in text
    # a method without published figures still gets its half-base mini line, with that config
    skd = text[text.index("## skd"):]
    assert "Mini protocol (`configs/mini_b10.yaml`, cifar100 B10 N=3 (20 classes)" in skd and "A_N 30.55" in skd
    # a variant of a registered method with a published figure gets its own section and command
    variant = Published("mfgr-lwf", "cifar100 B0 N=5", "configs/cifar100/mfgr_b0_n5.yaml", "last_accuracy", 44.96,
                        "MFGR Table 2", overrides=("method.name=mfgr", "method.generative_replay=false"))
    lwf_mini = Group("cifar100 B0 N=4 (20 classes)", "mfgr-lwf", [], {"last_accuracy": Stat(36.9, 0.0, 1, (0,))})
    text = render_reproducibility([ours, mini, ablation, lwf_mini], [entry, variant], "dfcil report x")
    section = text[text.index("## mfgr-lwf"):]
    assert ("| cifar100 B0 N=5 | A_N | 44.96 | MFGR Table 2 | - | not run | `dfcil run configs/cifar100/mfgr_b0_n5.yaml "
            "--set method.name=mfgr --set method.generative_replay=false` |") in section
    assert "A_N 36.90 (1 seed)" in section and "| mfgr-lwf |" not in text  # not among the variants
    assert "| rdfcil-no-rkd |" in text
    shipped = load_published(Path(__file__).resolve().parents[1] / "benchmarks" / "published.yaml")
    assert {p.method for p in shipped} >= {"rdfcil", "abd", "lwf", "finetune", "deepinversion", "mfgr", "skd", "joint"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {method: x, protocol: p, config: c, metric: accuracy, value: 1, source: s}\n")
    with pytest.raises(DataError, match="unknown metric"):
        load_published(bad)
    bad.write_text("- {method: x-y, protocol: p, config: c, metric: last_accuracy, value: 1, source: s, "
                   "overrides: [method.beta=2]}\n")
    with pytest.raises(DataError, match="must name the registered method"):
        load_published(bad)
    bad.write_text("- {method: x-y, protocol: p, config: c, metric: last_accuracy, value: 1, source: s, "
                   "overrides: method.name=mfgr}\n")
    with pytest.raises(DataError, match="overrides, if any, are a list"):
        load_published(bad)


def test_suite_runs_name_their_suite_command_and_adoption(tmp_path):
    from dfcil.report.aggregate import group_runs
    from dfcil.report.reproducibility import render_reproducibility

    records = []
    for seed in (0, 1):
        suite = {"suite": "mini", "suite_file": "suites/mini.yaml", "labels": {"method": "lwf", "seed": str(seed)}}
        if seed == 0:
            suite["adopted_from"] = "benchmarks/results/mini/lwf-s0"
        records.append(load_run(write_run(tmp_path, f"method-lwf__seed-{seed}", "lwf", seed,
                                          [80.0, 50.0, 30.0, 20.0 + seed], suite=suite)))
    assert records[0].adopted_from == "benchmarks/results/mini/lwf-s0" and records[1].adopted_from is None
    assert records[1].suite_file == "suites/mini.yaml"
    text = render_reproducibility(group_runs(records), [], "dfcil report x")
    assert "A_N 20.50 ± 0.71 (2 seeds)" in text
    assert "Command: `dfcil suite suites/mini.yaml` (runs method-lwf__seed-0, method-lwf__seed-1)." in text


def test_machine_label_names_the_cpu_and_its_bf16():
    from dfcil.report.labels import machine_label

    label = machine_label({"processor": "x86_64", "cpu_model": "AMD EPYC", "cpu_native_bf16": False, "cpu_count": 2,
                           "torch": "2.13.0+cpu", "python": "3.11.7", "torch_threads": 1, "platform": "Linux-x"})
    assert label.startswith("AMD EPYC, 2 CPUs, no native bf16, torch 2.13.0+cpu")
    # runs recorded before the CPU model was: the processor, and nothing said about bf16
    assert machine_label({"processor": "x86_64", "cpu_count": 2}) == "x86_64, 2 CPUs"


def test_a_run_found_twice_counts_once(tmp_path):
    import shutil

    original = write_run(tmp_path / "mini", "lwf-s0", "lwf", 0, [80.0, 50.0, 30.0, 20.0])
    write_run(tmp_path / "mini", "lwf-s1", "lwf", 1, [80.0, 50.0, 30.0, 22.0])
    adopted = tmp_path / "suite" / "method-lwf__seed-0"
    shutil.copytree(original, adopted)  # what `dfcil suite --adopt` does, plus suite.json
    (adopted / "suite.json").write_text(json.dumps({"suite": "mini", "labels": {"method": "lwf", "seed": "0"},
                                                    "adopted_from": str(original)}))
    records = {r.path.name: r for r in find_runs([tmp_path / "mini", tmp_path / "suite"])}
    assert records["lwf-s0"].excluded == f"a copy of the same run as {records['method-lwf__seed-0'].path}"
    assert records["method-lwf__seed-0"].excluded is None and records["lwf-s1"].excluded is None
    from dfcil.report.aggregate import duplicate_seed_warnings

    groups = group_runs(list(records.values()))
    assert not duplicate_seed_warnings(groups)  # no "seed 0 appears in 2 runs"
    (lwf,) = groups
    assert [r.path.name for r in lwf.runs] == ["method-lwf__seed-0", "lwf-s1"] and lwf.stats["last_accuracy"].n == 2


def test_a_run_two_suites_adopted_groups_with_the_suite_given_first(tmp_path):
    """The mini-rev2 suite adopted abd's seed-0 run from the budget suite: given first, the report
    keeps mini-rev2's copy (row "abd"), not the budget suite's (row "abd (budget=...)"), whatever
    the two paths' alphabetical order."""
    import shutil

    budget = write_run(tmp_path / "a-budget", "seed-0__budget-abd-gen-300", "abd", 0, [80.0, 60.0, 50.0, 45.0],
                       suite={"suite": "mini_budget", "labels": {"seed": "0", "budget": "abd-gen-300"}})
    adopted = tmp_path / "z-rev2" / "method-abd__seed-0"
    shutil.copytree(budget, adopted)
    (adopted / "suite.json").write_text(json.dumps({"suite": "mini", "labels": {"method": "abd", "seed": "0"},
                                                    "adopted_from": str(budget)}))
    for order in ([tmp_path / "z-rev2", tmp_path / "a-budget"], [tmp_path / "a-budget", tmp_path / "z-rev2"]):
        records = {r.path.name: r for r in find_runs(order)}
        kept = "method-abd__seed-0" if order[0].name == "z-rev2" else "seed-0__budget-abd-gen-300"
        dropped = "seed-0__budget-abd-gen-300" if kept == "method-abd__seed-0" else "method-abd__seed-0"
        assert records[kept].excluded is None
        assert records[dropped].excluded == f"a copy of the same run as {records[kept].path}"
        (group,) = group_runs(list(records.values()))
        assert group.method == ("abd" if kept == "method-abd__seed-0" else "abd (budget=abd-gen-300)")


def test_a_replay_oracle_run_never_shares_the_methods_row(tmp_path):
    """benchmarks/replay_oracle.py's runs (oracle.json beside the metrics) train abd on real old
    images: the report gives them a row of their own instead of averaging them into abd's."""
    write_run(tmp_path, "abd-s0", "abd", 0, [80.0, 60.0, 50.0, 45.0])
    oracle = write_run(tmp_path, "seed-0__oracle-abd", "abd", 0, [80.0, 70.0, 60.0, 53.0])
    (oracle / "run.json").unlink()  # the oracle writes oracle.json, its provenance, instead
    (oracle / "oracle.json").write_text(json.dumps({"replaced": "the synthesizer", "commit": "0902b46",
                                                    "command": "python benchmarks/replay_oracle.py abd"}))
    records = find_runs([tmp_path])
    from dfcil.report.labels import commit_label

    assert [commit_label(r) for r in records if r.diagnostic] == ["0902b46"]
    assert {r.path.name: r.diagnostic for r in records} == {"abd-s0": None,
                                                            "seed-0__oracle-abd": "replay oracle: real old images"}
    groups = {g.method: g for g in group_runs(records)}
    assert set(groups) == {"abd", "abd (replay oracle: real old images)"}
    assert groups["abd"].stats["last_accuracy"].mean == 45.0
    assert groups["abd (replay oracle: real old images)"].stats["last_accuracy"].mean == 53.0


def record_as_trained(run: Path, monkeypatch: pytest.MonkeyPatch, revisions: dict[str, int] | None = None) -> Path:
    """Rewrite a fake run's config.yaml as `dfcil run` writes it and record in its run.json the
    fingerprint it had when trained with ``revisions`` as NETWORK_REVISIONS (None: today's);
    ``{}`` is before resnet32/rdfcil's forward changed."""
    import dfcil.config
    from dfcil.config import config_to_dict, fingerprint, parse_config

    config = parse_config(yaml.safe_load((run / "config.yaml").read_text()))
    (run / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config)))
    with monkeypatch.context() as then:
        if revisions is not None:
            then.setattr(dfcil.config, "NETWORK_REVISIONS", revisions)
        info = json.loads((run / "run.json").read_text())
        info["fingerprint"] = fingerprint(config)
    (run / "run.json").write_text(json.dumps(info))
    return run


def test_a_run_trained_before_its_network_changed_gets_its_own_row(tmp_path, monkeypatch):
    """resnet32/rdfcil's forward changed (revision 2) under an unchanged config: a run made before
    has the same config.yaml, and only the fingerprint its run.json recorded tells it apart."""
    record_as_trained(write_run(tmp_path, "rdfcil-s0", "rdfcil", 0, [80.0, 60.0, 50.0, 41.0]), monkeypatch, {})
    record_as_trained(write_run(tmp_path, "rdfcil-s1", "rdfcil", 1, [80.0, 60.0, 50.0, 44.0]), monkeypatch, None)
    unknown = write_run(tmp_path, "rdfcil-s2", "rdfcil", 2, [80.0, 60.0, 50.0, 46.0])  # fingerprint "fp-rdfcil-s2"
    record_as_trained(write_run(tmp_path, "abd-s0", "abd", 0, [80.0, 60.0, 50.0, 45.0]), monkeypatch, {})
    abd_config = yaml.safe_load((tmp_path / "abd-s0" / "config.yaml").read_text())
    abd_config["model"]["resnet32_variant"] = "abd"  # a network that never changed: revision 1 is current
    (tmp_path / "abd-s0" / "config.yaml").write_text(yaml.safe_dump(abd_config))
    record_as_trained(tmp_path / "abd-s0", monkeypatch, None)
    records = {r.path.name: r for r in find_runs([tmp_path])}
    assert {name: r.older_network for name, r in records.items()} == {
        "rdfcil-s0": "network revision 1", "rdfcil-s1": None, "rdfcil-s2": None, "abd-s0": None}
    assert unknown.name in records  # an unverifiable revision is not guessed
    groups = {g.method: g for g in group_runs(list(records.values()))}
    assert set(groups) == {"rdfcil", "rdfcil (network revision 1)", "abd"}
    assert groups["rdfcil (network revision 1)"].stats["last_accuracy"].mean == 41.0
    assert groups["rdfcil"].stats["last_accuracy"].mean == 45.0


def test_todays_network_supersedes_an_older_revision_and_lends_it_no_omega(tmp_path, monkeypatch):
    """`dfcil report NEW OLD`, OLD trained before the network changed: its seed-0 rdfcil run is
    superseded by NEW's, its ablation keeps a row of its own and takes no Omega from NEW's joint."""
    from dfcil.report.aggregate import exclude_superseded

    new, old = tmp_path / "new", tmp_path / "old"
    record_as_trained(write_run(new, "joint-s0", "joint", 0, [80.0, 75.0, 70.0, 65.0]), monkeypatch)
    record_as_trained(write_run(new, "rdfcil-s0", "rdfcil", 0, [80.0, 60.0, 50.0, 44.0]), monkeypatch)
    record_as_trained(write_run(old, "rdfcil-s0", "rdfcil", 0, [80.0, 60.0, 50.0, 41.0]), monkeypatch, {})
    record_as_trained(write_run(old, "rdfcil-no-rkd-s0", "rdfcil", 0, [80.0, 55.0, 45.0, 36.0]), monkeypatch, {})
    records = find_runs([new, old])
    exclude_superseded(records)
    notes = omega_from_joint(records)
    by_path = {str(r.path.relative_to(tmp_path)): r for r in records}
    assert by_path["old/rdfcil-s0"].excluded.startswith(f"superseded by {new / 'rdfcil-s0'}")
    assert by_path["new/rdfcil-s0"].excluded is None and by_path["old/rdfcil-no-rkd-s0"].excluded is None
    assert row_label(by_path["old/rdfcil-no-rkd-s0"]) == "rdfcil-no-rkd (network revision 1)"
    assert "omega" in by_path["new/rdfcil-s0"].metrics and len(notes) == 1
    assert "omega" not in by_path["old/rdfcil-no-rkd-s0"].metrics


def test_a_path_given_first_supersedes_same_seed_runs_of_later_paths(tmp_path):
    """A suite's fp32 seed-0 run replaces an older seed-0 run of the same method (given after it),
    instead of being averaged with it; methods only the older folder has still come from it."""
    from dfcil.report.aggregate import duplicate_seed_warnings, exclude_superseded, group_runs
    from dfcil.report.reproducibility import render_reproducibility

    for seed in (0, 1):
        suite = {"suite": "mini", "suite_file": "suites/mini.yaml", "labels": {"method": "joint", "seed": str(seed)}}
        write_run(tmp_path / "suite", f"method-joint__seed-{seed}", "joint", seed, [90.0, 80.0, 70.0, 60.0 + seed],
                  suite=suite)
    suite = {"suite": "mini", "suite_file": "suites/mini.yaml", "labels": {"method": "abd", "seed": "1"}}
    write_run(tmp_path / "suite", "method-abd__seed-1", "abd", 1, [80.0, 50.0, 40.0, 30.0], suite=suite)
    write_run(tmp_path / "old", "joint-s0", "joint", 0, [90.0, 80.0, 70.0, 68.0])
    old_abd = write_run(tmp_path / "old", "abd-s0", "abd", 0, [80.0, 50.0, 40.0, 32.0])
    config = yaml.safe_load((old_abd / "config.yaml").read_text())
    config["train"]["precision"] = "bf16"  # an older run: its config names the precision
    (old_abd / "config.yaml").write_text(yaml.safe_dump(config))
    new_abd = tmp_path / "suite" / "method-abd__seed-1" / "run.json"
    info = json.loads(new_abd.read_text())
    info["sessions"][0]["precision"] = "fp32"  # a newer run: run.json records what `auto` chose
    new_abd.write_text(json.dumps(info))

    records = find_runs([tmp_path / "suite", tmp_path / "old"])
    exclude_superseded(records)
    by_name = {r.name: r for r in records}
    assert by_name["joint-s0"].excluded.startswith(f"superseded by {by_name['method-joint__seed-0'].path} (same joint")
    assert all(by_name[n].excluded is None for n in ("method-joint__seed-0", "method-joint__seed-1", "abd-s0",
                                                     "method-abd__seed-1"))
    groups = group_runs(records)
    assert not duplicate_seed_warnings(groups)
    stats = {g.method: g.stats["last_accuracy"] for g in groups}
    assert (stats["joint"].mean, stats["joint"].n) == (60.5, 2)  # not 68.0 averaged in
    assert (stats["abd"].mean, stats["abd"].n) == (31.0, 2)  # the old seed 0 beside the suite's seed 1
    text = render_reproducibility(groups, [], "dfcil report x")
    assert ("Precision: bf16 (seed 0), fp32 (seed 1). Command: `dfcil run mini.yaml -o abd-s0 <&>` (run abd-s0); "
            "`dfcil suite suites/mini.yaml` (run method-abd__seed-1).") in text
    assert "Precision: unknown (seeds 0, 1)." in text  # joint: neither says

    # the other order: the old folder's run wins
    records = find_runs([tmp_path / "old", tmp_path / "suite"])
    exclude_superseded(records)
    assert {r.name for r in records if r.excluded} == {"method-joint__seed-0"}
    # the same-seed pair under one path is not resolved, only reported
    records = find_runs([tmp_path])
    exclude_superseded(records)
    assert not any(r.excluded for r in records)
    assert any("seed 0 appears in 2 runs" in w for w in duplicate_seed_warnings(group_runs(records)))


def test_plots_wrap_long_titles_and_draw_cjk_class_names_quietly(tmp_path) -> None:
    import warnings

    from dfcil.report.plots import wrap_title
    from dfcil.workflow.inference import Evaluation, plot_confusion

    title = wrap_title("accuracy matrix\n" + "a-very-long-run-directory-name " * 6, 5.3)
    lines = title.split("\n")
    assert lines[0] == "accuracy matrix" and len(lines) > 2 and max(map(len, lines)) <= 5.3 * 100 / 6
    evaluation = Evaluation(accuracy=50.0, images=4, per_class={"猫": 50.0, "犬": 50.0}, per_step=[],
                            confusion=np.array([[1, 1], [1, 1]]), class_names=["猫", "犬"], skipped=[])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_confusion(evaluation, tmp_path / "confusion.png", "模型 on 写真")
    assert not [w for w in caught if "missing from" in str(w.message)]  # no warning per glyph
    with Image.open(tmp_path / "confusion.png") as png:
        assert png.size[0] > 200
