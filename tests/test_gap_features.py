"""Domain-gap features written at the end of a task, and the report that reads only them."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dfcil.config import parse_config
from dfcil.engine.gap_features import GapFeatures, compute_gap_features, evenly, features_path, select_real
from dfcil.engine.trainer import Trainer
from dfcil.errors import DataError
from dfcil.experiment import parse_experiment
from dfcil.models import build_classifier
from dfcil.report import build_report
from dfcil.report.domain_gap import TSNE_MISSING, task_gap

from conftest import coloured_dataset

# abd on the tiny dataset: 4 classes of 24 images, 2 tasks of 2; the generator keeps 256 samples
RAW_CONFIG = {
    "data": {"dataset": "imagefolder"},  # no root: a report that tried to load the data would fail
    "scenario": {"order": "identity", "num_tasks": 2},
    "train": {"epochs": 2, "batch_size": 16, "lr": 0.05, "schedule": "constant", "milestones": [],
              "precision": "fp32"},
    "method": {"name": "abd", "synthesis": {"steps": 4, "batch_size": 8, "log_every": 2}},
    "runtime": {"progress": False, "device": "cpu", "num_threads": 1},
}


def _train(run_dir: Path) -> dict:
    metrics = Trainer(parse_experiment(RAW_CONFIG), run_dir, coloured_dataset()).run()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(RAW_CONFIG))
    return metrics


@pytest.fixture(scope="module")
def abd_run(tmp_path_factory) -> Path:
    """One tiny abd run (features written at the end of task 2)."""
    run_dir = tmp_path_factory.mktemp("gap") / "abd-s0"
    _train(run_dir)
    return run_dir


def _without_wall_time(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "wall_time_s"}


def test_evenly_spaced_selection_keeps_both_ends():
    assert evenly(np.arange(5), 10).tolist() == [0, 1, 2, 3, 4]
    assert evenly(np.arange(10), 4).tolist() == [0, 3, 6, 9]
    positions = np.array([3, -1, 0, 1, 2, 0, -1, 3])
    old, new = select_real(positions, num_old=2, new_stop=4, limit=2)
    assert old.tolist() == [2, 5] and new.tolist() == [0, 7]


def test_task_end_writes_the_features_the_report_would_compute(abd_run):
    assert not features_path(abd_run, 1).exists()  # task 1 keeps no synthetic samples
    features = GapFeatures.load(features_path(abd_run, 2))
    assert features.task == 2 and features.sizes == (48, 256, 48)
    assert features.real_old.dtype == np.float32 and features.real_old.shape[1] == 64
    assert set(features.real_old_labels.tolist()) == {0, 1} and set(features.real_new_labels.tolist()) == {2, 3}
    assert set(features.synthetic_labels.tolist()) <= {0, 1}
    # the same sets, recomputed the report's old way: the model after task 2 from its checkpoint
    saved = torch.load(abd_run / "checkpoints" / "task_2.pt", map_location="cpu", weights_only=True)
    model = build_classifier(parse_config(RAW_CONFIG).model, saved["head_sizes"])
    model.load_state_dict(saved["model"])
    dataset = coloured_dataset()
    with np.load(abd_run / "synthesis" / "task_2_samples.npz") as samples:
        again = compute_gap_features(model, 2, dataset.test.images, dataset.test.labels, 2, 4, samples["images"],
                                     samples["labels"], dataset.mean, dataset.std)
    for name in ("real_old", "synthetic", "real_new"):
        np.testing.assert_allclose(getattr(features, name), getattr(again, name), rtol=1e-5, atol=1e-5)
    for name in ("real_old_labels", "synthetic_labels", "real_new_labels", "real_old_index", "real_new_index"):
        np.testing.assert_array_equal(getattr(features, name), getattr(again, name))


def test_writing_the_features_changes_nothing_in_training(abd_run, tmp_path, monkeypatch):
    monkeypatch.setattr("dfcil.engine.trainer.write_task_features", lambda *args, **kwargs: None)
    without = _train(tmp_path / "without")
    assert not features_path(tmp_path / "without", 2).exists()
    written = json.loads((abd_run / "metrics.json").read_text())
    assert _without_wall_time(json.loads(json.dumps(without))) == _without_wall_time(written)
    ours = torch.load(abd_run / "checkpoints" / "task_2.pt", map_location="cpu", weights_only=True)["model"]
    theirs = torch.load(tmp_path / "without" / "checkpoints" / "task_2.pt", map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)  # weights and BN running statistics


def _checkpointless_copy(run_dir: Path, root: Path) -> Path:
    copy = root / "runs" / run_dir.name
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints"))
    return copy


def _no_dataset(*args, **kwargs):
    raise AssertionError("the report loaded a dataset")


def test_report_of_a_checkpointless_copy_needs_no_data(abd_run, tmp_path, monkeypatch):
    monkeypatch.delenv("DFCIL_DATA", raising=False)
    monkeypatch.setattr("dfcil.data.load_dataset", _no_dataset)
    copy = _checkpointless_copy(abd_run, tmp_path)
    page = build_report([tmp_path / "runs"], tmp_path / "report")
    gaps = json.loads((tmp_path / "report" / "domain_gap.json").read_text())[str(copy)]
    expected = task_gap(GapFeatures.load(features_path(copy, 2)), with_tsne=False).to_dict()
    assert gaps == [expected]
    assert gaps[0]["images"] == {"real_old": 48, "synthetic": 256, "real_new": 48}
    assert (tmp_path / "report" / "plots" / "run-abd-s0-domain_task2.png").stat().st_size > 0
    html = page.read_text()
    assert "Domain gap" in html and "domain_task2.png" in html and "unavailable" not in html
    assert "domain gap" not in (tmp_path / "report" / "report.md").read_text()
    build_report([tmp_path / "runs"], tmp_path / "report-2-jobs", jobs=2)  # t-SNE maps in 2 processes
    for name in ("run-abd-s0-domain_task2.png", "run-abd-s0-matrix.png"):
        assert (tmp_path / "report-2-jobs" / "plots" / name).read_bytes() == (tmp_path / "report" / "plots" / name).read_bytes()
    with pytest.raises(DataError, match="--jobs must be at least 1"):
        build_report([tmp_path / "runs"], tmp_path / "report-0-jobs", jobs=0)


def test_report_without_scikit_learn_keeps_mid_and_mmd_and_says_why_no_map(abd_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn -> ImportError
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    _checkpointless_copy(abd_run, tmp_path)
    page = build_report([tmp_path / "runs"], tmp_path / "report")
    gaps = json.loads((tmp_path / "report" / "domain_gap.json").read_text())
    assert [g["task"] for g in next(iter(gaps.values()))] == [2]
    assert not list((tmp_path / "report" / "plots").glob("*domain*"))
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert markdown.count("pip install dfcil[report]") == 1 and f"- {TSNE_MISSING}" in markdown
    assert "pip install dfcil[report]" in page.read_text()


def test_features_of_a_compiled_training_model_are_eager_and_change_no_state():
    from dfcil.engine.gap_features import penultimate_features

    torch.manual_seed(0)
    model = build_classifier(parse_config(RAW_CONFIG).model, [2, 2])
    images = coloured_dataset().test.images[:12]
    expected = penultimate_features(model, images, (0.5,) * 3, (0.25,) * 3)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.backbone.compile(dynamic=False)
    features = penultimate_features(model, images, (0.5,) * 3, (0.25,) * 3, batch_size=5)
    assert model.training  # restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics untouched
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
    assert features.dtype == np.float32 and features.shape == (12, 64)
