"""PASS (``dfcil.methods.pass_``): each loss term on tiny tensors with hand-computed values, the
rotation labels, the prototype augmentation and radius, and a tiny run's stored class means."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dfcil.engine.trainer import Trainer
from dfcil.experiment import parse_experiment
from dfcil.methods import METHODS
from dfcil.methods.pass_ import (
    ClassStatistics,
    RotationHeads,
    augment_prototypes,
    feature_distance,
    rotate_batch,
    rotation_logits,
    tempered_cross_entropy,
)

from conftest import coloured_dataset


def test_rotations_turn_the_image_and_make_a_class_of_each_rotation():
    image = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    images, labels = rotate_batch(torch.cat([image, image + 10]), torch.tensor([0, 2]), num_classes=3)
    assert images.shape == (8, 1, 2, 2)
    # counter-clockwise quarter turns of [[1, 2], [3, 4]]
    assert images[0, 0].tolist() == [[1, 2], [3, 4]]
    assert images[2, 0].tolist() == [[2, 4], [1, 3]]
    assert images[4, 0].tolist() == [[4, 3], [2, 1]]
    assert images[6, 0].tolist() == [[3, 1], [4, 2]]
    assert images[3, 0].tolist() == [[12, 14], [11, 13]]
    # rotation-major: class y rotated k quarter turns is k * 3 + y
    assert labels.tolist() == [0, 2, 3, 5, 6, 8, 9, 11]


def test_rotated_logits_follow_the_unrotated_ones_rotation_by_rotation():
    logits = torch.tensor([[1.0, 2.0]])
    rotated = torch.tensor([[[3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]])
    assert rotation_logits(logits, rotated).tolist() == [[1, 2, 3, 4, 5, 6, 7, 8]]


def test_rotation_heads_give_each_task_its_three_rotated_copies():
    heads = RotationHeads(feature_dim=2, head_init_std=None)
    heads.add_head(1, torch.device("cpu"))
    heads.add_head(2, torch.device("cpu"))
    assert heads.head_sizes == [1, 2]
    with torch.no_grad():
        heads.heads[0].weight.copy_(torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]))  # class 0 at k = 1, 2, 3
        heads.heads[1].weight.copy_(torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0], [0.0, 4.0], [0.0, 5.0], [0.0, 6.0]]))
    out = heads(torch.tensor([[1.0, 10.0]]))
    assert out.shape == (1, 3, 3)
    # rotation k = 1: class 0 -> 1, classes 1, 2 -> 10, 20; k = 2: 2, 30, 40; k = 3: 3, 50, 60
    assert out[0].tolist() == [[1, 10, 20], [2, 30, 40], [3, 50, 60]]


def test_tempered_cross_entropy_divides_the_logits_by_the_temperature():
    # logits (0.1, 0) / 0.1 = (1, 0): CE of class 0 = log(1 + e^-1) = 0.313262
    value = tempered_cross_entropy(torch.tensor([[0.1, 0.0]]), torch.tensor([0]), 0.1)
    assert float(value) == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    assert float(value) == pytest.approx(0.313262, abs=1e-6)
    # batch mean: class 1 of (1, 0) is log(1 + e) = 1.313262
    both = tempered_cross_entropy(torch.tensor([[0.1, 0.0], [0.1, 0.0]]), torch.tensor([0, 1]), 0.1)
    assert float(both) == pytest.approx((0.313262 + 1.313262) / 2, abs=1e-6)


def test_feature_distillation_is_the_frobenius_norm_of_the_batch_difference():
    features = torch.tensor([[1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    old = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    value = feature_distance(features, old)  # differences (0, 2) and (0, -1): sqrt(4 + 1)
    assert float(value.detach()) == pytest.approx(math.sqrt(5))
    value.backward()
    assert features.grad is not None
    assert torch.allclose(features.grad, torch.tensor([[0.0, 2.0], [0.0, -1.0]]) / math.sqrt(5))


def test_prototype_augmentation_term_by_hand():
    # prototype (0.2, 0) of class 0, radius 0: the head (rows (1, 0) and (0.5, 1)) gives logits
    # (0.2, 0.1), / 0.1 = (2, 1): CE of class 0 = log(1 + e^-1) = 0.313262
    features, labels = augment_prototypes(torch.tensor([[0.2, 0.0]]), 0.0, 3, torch.Generator().manual_seed(0))
    assert labels.tolist() == [0, 0, 0] and torch.allclose(features, torch.tensor([[0.2, 0.0]] * 3))
    logits = features @ torch.tensor([[1.0, 0.0], [0.5, 1.0]]).t()
    value = tempered_cross_entropy(logits, labels, 0.1)
    assert float(value) == pytest.approx(0.313262, abs=1e-5)


def test_prototype_augmentation_draws_a_class_then_gaussian_noise_of_the_radius():
    prototypes = torch.tensor([[0.0, 0.0, 0.0], [10.0, 10.0, 10.0]])
    features, labels = augment_prototypes(prototypes, 0.5, 5, torch.Generator().manual_seed(3))
    assert features.shape == (5, 3) and labels.shape == (5,) and set(labels.tolist()) <= {0, 1}
    # the same draws, by hand: the class indices first, then the (count, d) noise
    generator = torch.Generator().manual_seed(3)
    expected_labels = torch.randint(2, (5,), generator=generator)
    noise = torch.randn(5, 3, generator=generator)
    assert torch.equal(labels, expected_labels)
    assert torch.allclose(features, prototypes[expected_labels] + 0.5 * noise)
    # the spread around the prototype is the radius
    many, drawn = augment_prototypes(prototypes, 2.0, 20000, torch.Generator().manual_seed(0))
    offsets = many - prototypes[drawn]
    assert float(offsets.std()) == pytest.approx(2.0, rel=0.03)
    assert 0.45 < float(drawn.float().mean()) < 0.55  # both classes, uniformly


def test_class_means_and_radius_by_hand():
    stats = ClassStatistics.zeros(2, 2, torch.device("cpu"))
    # class 0: (0, 0), (2, 0) -> mean (1, 0), unbiased variances (2, 0): trace 2
    # class 1: (0, 0), (0, 4) -> mean (0, 2), variances (0, 8): trace 8
    stats.add(torch.tensor([[0.0, 0.0], [0.0, 0.0]]), torch.tensor([0, 1]))
    stats.add(torch.tensor([[2.0, 0.0], [0.0, 4.0]]), torch.tensor([0, 1]))
    assert stats.means().tolist() == [[1.0, 0.0], [0.0, 2.0]]
    # sqrt(mean(2, 8) / d) = sqrt(5 / 2)
    assert stats.radius() == pytest.approx(math.sqrt(2.5))
    covariances = [np.cov(np.array(rows).T) for rows in ([[0, 0], [2, 0]], [[0, 0], [0, 4]])]
    assert stats.radius() == pytest.approx(math.sqrt(np.mean([np.trace(c) / 2 for c in covariances])))
    lonely = ClassStatistics.zeros(1, 2, torch.device("cpu"))
    lonely.add(torch.tensor([[1.0, 1.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="two images"):
        lonely.radius()


def test_the_method_describes_its_memory_and_sets_its_flags():
    method = METHODS["pass"]
    assert "class-mean feature" in method.description
    assert not method.plain_first_task and not method.needs_old_data


def _tiny_run(tmp_path, name: str = "pass"):
    experiment = parse_experiment({
        "data": {"dataset": "imagefolder"},
        "scenario": {"order": "identity", "num_tasks": 2},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.001, "schedule": "constant", "milestones": [],
                  "precision": "fp32", "optimizer": "adam"},
        "method": {"name": name, "loss_scale": 0.1},
        "runtime": {"progress": False, "device": "cpu", "num_threads": 1},
    })
    trainer = Trainer(experiment, tmp_path / "run", coloured_dataset())
    return trainer, trainer.run()


def test_a_run_stores_one_class_mean_per_class_in_its_state_metrics_and_log(tmp_path, one_thread):
    trainer, metrics = _tiny_run(tmp_path)
    method = trainer.method
    assert method.prototypes is not None and method.prototypes.shape == (4, trainer.model.feature_dim)
    assert method.radius is not None and method.radius > 0
    # the last task's class means are those of the final model's features of its images, in eval mode
    trainer.model.eval()
    task = trainer.scenario.tasks[1]
    index = trainer.train_data.indices_of(task.start, task.stop)
    with torch.no_grad():
        features = trainer.model.features(trainer.normalizer(trainer.train_data.store.gather(index)))
    labels = trainer.train_data.labels[index]
    for c in (2, 3):
        assert torch.allclose(method.prototypes[c], features[labels == c].mean(dim=0), atol=1e-5)
    diagnostics = json.loads((tmp_path / "run" / "metrics.json").read_text())["method_diagnostics"]
    assert diagnostics == metrics["method_diagnostics"]
    assert diagnostics["prototypes"] == {"classes": 4, "dim": trainer.model.feature_dim, "radius": method.radius}
    records = [r for r in trainer.log.records if r["event"] == "prototypes"]
    assert [(r["task"], r["classes"], r["new"], r["images"]) for r in records] == [(1, 2, 2, 48), (2, 4, 2, 48)]
    state = method.state_dict()
    assert torch.equal(state["prototypes"], method.prototypes) and state["radius"] == method.radius
    assert state["rotation"]["head_sizes"] == [2, 2]
    # the rotated classes' heads trained with the model; test-time logits are the model's own
    epochs = [r for r in trainer.log.records if r["event"] == "epoch"]
    assert "proto_aug" not in epochs[0]["losses"] and {"ce", "kd", "proto_aug"} <= set(epochs[1]["losses"])
    # lambda = gamma = 10 times the loss scale 0.1 set above (every weight is scaled)
    weights = epochs[1]["weights"]
    assert weights["ce"] == pytest.approx(0.1) and weights["proto_aug"] == weights["kd"] == pytest.approx(1.0)


