"""SKD: feature cosine discrepancy, gamma_n, the delegator's imitate & explore, end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from dfcil.cli import main
from dfcil.hooks import BatchNormInput
from dfcil.methods.skd import classification_weight
from dfcil.synthesis.dafl_losses import bn_moment_loss
from dfcil.synthesis.delegator import DelegatorOptions, KnowledgeDelegator, feature_cosine_discrepancy

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_psi_is_zero_for_identical_and_two_for_opposite_features():
    features = torch.tensor([[1.0, 2.0, -1.0], [0.5, 0.0, 3.0]])
    assert feature_cosine_discrepancy(features, features).item() == pytest.approx(0.0, abs=1e-6)
    assert feature_cosine_discrepancy(features, 7.0 * features).item() == pytest.approx(0.0, abs=1e-6)
    assert feature_cosine_discrepancy(features, -features).item() == pytest.approx(2.0, abs=1e-6)
    # batch mean of 1 - cos: orthogonal pair (1 - 0) and a 45-degree pair (1 - 1/sqrt 2)
    teacher = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    student = torch.tensor([[0.0, 3.0], [2.0, 2.0]])
    expected = ((1.0 - 0.0) + (1.0 - 1.0 / math.sqrt(2.0))) / 2
    assert feature_cosine_discrepancy(teacher, student).item() == pytest.approx(expected, rel=1e-6)


def test_gamma_by_hand():
    # mini half-base: 10 base classes, then 2 tasks of 5 -> N = 2 incremental tasks
    assert classification_weight(5.0, 2, [5]) == pytest.approx(5.0 / (2 * 5))  # 0.5
    assert classification_weight(5.0, 2, [5, 5]) == pytest.approx(5.0 / (2 * 10))  # 0.25
    # CIFAR-100 B50 with 5 tasks of 10: 0.1 at the first incremental task, 0.02 at the last
    assert classification_weight(5.0, 5, [10]) == pytest.approx(0.1)
    assert classification_weight(5.0, 5, [10] * 5) == pytest.approx(0.02)
    with pytest.raises(ValueError):
        classification_weight(5.0, 0, [5])


def test_bn_alignment_sums_the_layers():
    zero, one = torch.zeros(2), torch.ones(2)
    stats = [BatchNormInput(mean=torch.tensor([3.0, 4.0]), var=one, running_mean=zero, running_var=one),
             BatchNormInput(mean=zero, var=torch.tensor([1.0, 3.0]), running_mean=zero, running_var=one)]
    assert bn_moment_loss(stats, reduction="sum").item() == pytest.approx(5.0 + 2.0)
    assert bn_moment_loss(stats).item() == pytest.approx((5.0 + 2.0) / 2)


def _agreement(teacher, student, images: torch.Tensor) -> tuple[float, float]:
    """psi between T's and S's features on ``images``, and the fraction of them on which S's
    features with T's classifier predict T's class."""
    with torch.no_grad():
        out = teacher(images)
        features = student.features(images)
        same = (teacher.classify(features).argmax(1) == out.logits.argmax(1)).float().mean()
        return float(feature_cosine_discrepancy(out.features, features)), float(same)


@pytest.mark.slow
def test_delegator_training_makes_the_student_agree_with_the_teacher(joint_smoke_run, cifar):
    """Imitate & explore against a 4-class ResNet-32 trained on real CIFAR images: a freshly
    initialised student must agree with the teacher on real test images more after a short
    delegator training than before it (the paper's delegator check in small)."""
    from dfcil.data import default_cache_dir, load_dataset, resolve_data_root
    from dfcil.models import IncrementalClassifier, build_backbone, frozen_copy

    saved = torch.load(joint_smoke_run / "checkpoints" / "task_2.pt", weights_only=False)

    def model() -> IncrementalClassifier:
        m = IncrementalClassifier(build_backbone("resnet32", variant="rdfcil"))
        for size in saved["head_sizes"]:
            m.add_head(size)
        return m

    teacher = model()
    teacher.load_state_dict(saved["model"])
    teacher = frozen_copy(teacher)
    data = load_dataset("cifar100", resolve_data_root(None), default_cache_dir(), progress=False)
    keep = torch.isin(torch.from_numpy(data.test.labels), torch.tensor(saved["class_order"]))
    images = torch.from_numpy(data.test.images)[keep][:200].permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    images = (images - mean) / std

    torch.manual_seed(0)
    student = model()
    before = _agreement(teacher, student, images)
    delegator = KnowledgeDelegator(DelegatorOptions(iterations=30, batch_size=32, log_every=10), 32,
                                   torch.device("cpu"), lambda: torch.autocast("cpu", enabled=False),
                                   torch.Generator().manual_seed(0), channels_last=False)
    records = []
    delegator.train(teacher, student, 4, records.append)
    after = _agreement(teacher, student, images)
    assert [r["iteration"] for r in records] == [10, 20, 30]
    assert all(0.0 <= r["tanh_saturated"] <= 1.0 for r in records)
    print("delegator check in small: (psi, agreement) before", before, "after", after)
    # measured: psi 0.59 -> 0.22 on real test images, agreement 0.24 -> 0.34 (teacher: 55 % accurate)
    assert after[0] < 0.6 * before[0], (before, after)
    assert after[1] > before[1] + 0.05, (before, after)
    assert delegator.generate(8).shape == (8, 3, 32, 32)


@pytest.mark.slow
def test_skd_end_to_end(cifar, tmp_path, capsys):
    run_dir = tmp_path / "skd"
    code = main(["run", str(CONFIGS / "smoke.yaml"), "-o", str(run_dir), "--set", "method.name=skd",
                 "--set", "train.epochs=3", "--set", "method.delegator.iterations=6",
                 "--set", "method.delegator.batch_size=32", "--set", "method.delegator.log_every=3",
                 "--set", "runtime.progress=false"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["complete"] and metrics["accuracy_per_step"][0] > 75.0
    assert metrics["old_new_accuracy"][1]["old"] > 5.0  # finetune keeps 0 % here
    check = metrics["method_diagnostics"]["delegator_check"]
    assert [c["task"] for c in check] == [2]
    assert check[0]["teacher_accuracy"] == pytest.approx(metrics["accuracy_per_step"][0], abs=0.01)
    assert 0.0 <= check[0]["student_accuracy"] <= 100.0
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log if r["event"] == "delegator"] == [3, 6]
    # smoke: 2 tasks of 2 classes -> N = 1 incremental task, gamma = 5 / (1 * 2)
    assert [r["gamma"] for r in log if r["event"] == "skd_gamma"] == [2.5]
    epoch = next(r for r in log if r["event"] == "epoch" and r["task"] == 2)
    assert set(epoch["losses"]) == {"cls", "feature_consolidation"} and epoch["weights"]["cls"] == 2.5
    assert epoch["images"] == 500  # real images counted, pseudo images on top
    assert (run_dir / "synthesis" / "task_2.png").stat().st_size > 0
    # the continual delegator is kept (SKD's exception) so that the next task continues from it
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert last["method"]["delegator"] is not None and last["method"]["checks"] == check
