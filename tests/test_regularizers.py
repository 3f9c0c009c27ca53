"""EWC, MAS and LwF.MC: their losses, importance estimates and penalties on tiny tensors, against
values worked out by hand (or, for a network, by an independent per-image computation)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from dfcil.config import TrainConfig
from dfcil.engine.trainer import Trainer
from dfcil.errors import ConfigError
from dfcil.experiment import parse_experiment
from dfcil.methods import Batch, resolve_method
from dfcil.methods.importance import (
    AnchoredImportance,
    accumulate,
    batch_importance,
    fisher_score,
    mas_score,
    per_image_importance,
    quadratic_penalty,
    stable_importance_max,
)
from dfcil.methods.lwfmc import lwf_mc_loss, lwf_mc_targets
from dfcil.models import IncrementalClassifier

from conftest import coloured_dataset


def softplus(z: float) -> float:
    """``-log(1 - sigmoid(z)) = log(1 + e^z)``: the BCE of logit ``z`` against target 0."""
    return math.log1p(math.exp(z))


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


# --- LwF.MC ----------------------------------------------------------------------------------------------
def test_lwf_mc_bce_of_a_2x3_example_by_hand():
    # 2 images, 3 seen classes (1 old, 2 new), labels 1 and 2; old-model logits 0 and log 3,
    # whose sigmoids 1/2 and 3/4 become the old class's targets
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
    labels = torch.tensor([1, 2])
    old = torch.tensor([[0.0], [math.log(3.0)]])
    targets = lwf_mc_targets(labels, 3, old)
    assert torch.allclose(targets, torch.tensor([[0.5, 1.0, 0.0], [0.75, 0.0, 1.0]]))
    # BCE(z, t) = log(1 + e^z) - t z per entry
    row0 = (softplus(1.0) - 0.5 * 1.0) + (softplus(0.0) - 1.0 * 0.0) + softplus(-1.0)
    row1 = (softplus(0.0) - 0.75 * 0.0) + softplus(2.0) + (softplus(0.0) - 1.0 * 0.0)
    assert lwf_mc_loss(logits, labels, 3, old).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    assert lwf_mc_loss(logits, labels, 3, old, "mean").item() == pytest.approx((row0 + row1) / 6, rel=1e-6)
    # the same BCE from the probabilities, as ABD's BCELoss(sigmoid(z)) computes it
    p = torch.sigmoid(logits)
    by_probabilities = -(targets * p.log() + (1 - targets) * (1 - p).log()).sum(dim=1).mean()
    assert lwf_mc_loss(logits, labels, 3, old).item() == pytest.approx(by_probabilities.item(), rel=1e-6)


def test_lwf_mc_first_task_is_one_hot_bce_and_ignores_unseen_columns():
    logits = torch.tensor([[2.0, -1.0, 50.0]])  # the third column is a class not seen yet
    loss = lwf_mc_loss(logits, torch.tensor([0]), 2, None)
    assert loss.item() == pytest.approx((softplus(2.0) - 2.0) + softplus(-1.0), rel=1e-6)
    with pytest.raises(ValueError):
        lwf_mc_targets(torch.tensor([0]), 2, torch.zeros(1, 2))  # as many old classes as seen ones


def test_lwf_mc_old_targets_carry_no_gradient():
    logits = torch.zeros(2, 3, requires_grad=True)
    old = torch.zeros(2, 1, requires_grad=True)
    lwf_mc_loss(logits, torch.tensor([1, 2]), 3, old).backward()
    assert old.grad is None and logits.grad is not None
    # d BCE / dz = sigmoid(z) - t: 1/2 - t with t = (1/2, one-hot)
    assert torch.allclose(logits.grad, torch.tensor([[0.0, -0.5, 0.5], [0.0, 0.5, -0.5]]) / 2)


# --- importance on a linear head ----------------------------------------------------------------------------
class Features(nn.Module):
    """The identity on 2-d inputs: the logits are ``W x`` of the head alone."""

    feature_dim = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def linear_model(weight: list[list[float]]) -> IncrementalClassifier:
    model = IncrementalClassifier(Features())
    model.add_head(2).weight.data = torch.tensor(weight)
    return model


def two_images() -> list[Batch]:
    return [Batch(torch.tensor([[1.0, 0.0]]), torch.tensor([1])), Batch(torch.tensor([[0.0, 2.0]]), torch.tensor([1]))]


def test_fisher_of_a_linear_head_by_hand():
    # W = [[1, 0], [0, 0]]. For CE(W x, y) the gradient is (softmax(W x) - e_y) x^T.
    # x1 = (1, 0): z = (1, 0), p = (s(1), s(-1)), predicted y = 0 -> g = [[-s(-1), 0], [s(-1), 0]]
    # x2 = (0, 2): z = (0, 0), p = (1/2, 1/2), predicted y = 0 (first maximum) -> g = [[0, -1], [0, 1]]
    model = linear_model([[1.0, 0.0], [0.0, 0.0]])
    fisher, images = per_image_importance(model, two_images(), fisher_score("predicted"), "square", 2)
    s = sigmoid(-1.0)
    assert images == 2 and list(fisher) == ["heads.0.weight"]
    assert torch.allclose(fisher["heads.0.weight"], torch.tensor([[s**2, 1.0], [s**2, 1.0]]) / 2)
    # with the true labels (1, 1): x1 -> g = [[s(1), 0], [-s(1), 0]]; x2 -> g = [[0, 1], [0, -1]]
    fisher, _ = per_image_importance(model, two_images(), fisher_score("true"), "square", 2)
    s1 = sigmoid(1.0)
    assert torch.allclose(fisher["heads.0.weight"], torch.tensor([[s1**2, 1.0], [s1**2, 1.0]]) / 2)


def test_facil_batch_fisher_of_a_linear_head_by_hand():
    # both images in one batch: the gradient of the batch-mean CE is (g1 + g2) / 2 with the
    # per-image gradients above, [[-s, -1], [s, 1]] / 2; squared, times B = 2, over N = 2 images
    model = linear_model([[1.0, 0.0], [0.0, 0.0]])
    batch = [Batch(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([1, 1]))]
    fisher, images = batch_importance(model, batch, fisher_score("predicted"), "square", 2)
    s = sigmoid(-1.0)
    assert images == 2
    assert torch.allclose(fisher["heads.0.weight"], torch.tensor([[s**2, 1.0], [s**2, 1.0]]) / 4)
    # one image per batch: the per-image estimate
    fisher, _ = batch_importance(model, two_images(), fisher_score("predicted"), "square", 2)
    assert torch.allclose(fisher["heads.0.weight"], torch.tensor([[s**2, 1.0], [s**2, 1.0]]) / 2)


def test_mas_importance_of_a_linear_head_by_hand():
    # ||W x||^2 has the gradient 2 (W x) x^T. W = [[1, 2], [3, 4]]:
    # x1 = (1, 0): z = (1, 3) -> [[2, 0], [6, 0]];  x3 = (0, -1): z = (-2, -4) -> [[0, 4], [0, 8]]
    model = linear_model([[1.0, 2.0], [3.0, 4.0]])
    batches = [Batch(torch.tensor([[1.0, 0.0], [0.0, -1.0]]), torch.tensor([0, 0]))]
    omega, images = per_image_importance(model, batches, mas_score, "abs", 2)
    assert images == 2
    assert torch.allclose(omega["heads.0.weight"], torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    # the absolute value is taken per image, before the mean: x = (1, -1): W x = (-1, -1) ->
    # [[-2, 2], [-2, 2]]; x = (1, 1): W x = (3, 7) -> [[6, 6], [14, 14]]; mean of |.| = [[4, 4], [8, 8]]
    # (|mean| would be [[2, 4], [6, 8]])
    batches = [Batch(torch.tensor([[1.0, -1.0], [1.0, 1.0]]), torch.tensor([0, 0]))]
    omega, _ = per_image_importance(model, batches, mas_score, "abs", 2)
    assert torch.allclose(omega["heads.0.weight"], torch.tensor([[4.0, 4.0], [8.0, 8.0]]))


def test_importance_reads_only_the_seen_classes_logits():
    model = linear_model([[1.0, 2.0], [3.0, 4.0]])
    model.add_head(1).weight.data = torch.tensor([[5.0, 5.0]])
    batches = [Batch(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))]
    omega, _ = per_image_importance(model, batches, mas_score, "abs", 2)
    assert torch.allclose(omega["heads.0.weight"], torch.tensor([[2.0, 0.0], [6.0, 0.0]]))
    assert torch.equal(omega["heads.1.weight"], torch.zeros(1, 2))  # its logit is not part of the output


# --- importance of a network, against an independent per-image computation -------------------------------------
class ConvFeatures(nn.Module):
    feature_dim = 4

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))


def conv_model() -> IncrementalClassifier:
    torch.manual_seed(0)
    model = IncrementalClassifier(ConvFeatures())
    model.add_head(2)
    model.add_head(3)
    model.backbone.bn.running_mean.uniform_(-0.2, 0.2)
    model.backbone.bn.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("kind", ["fisher-predicted", "fisher-true", "mas"])
def test_importance_of_a_network_equals_the_mean_of_per_image_gradients(kind):
    model = conv_model()
    model.train()
    images, labels = torch.randn(7, 3, 6, 6), torch.tensor([0, 1, 2, 3, 4, 0, 1])
    batches = [Batch(images[:4], labels[:4]), Batch(images[4:], labels[4:])]
    score = mas_score if kind == "mas" else fisher_score("predicted" if kind == "fisher-predicted" else "true")
    running_mean = model.backbone.bn.running_mean.clone()
    importance, count = per_image_importance(model, batches, score, "abs" if kind == "mas" else "square", 5)
    # nothing changed: training mode, BatchNorm statistics, the parameters' .grad
    assert model.training and torch.equal(model.backbone.bn.running_mean, running_mean)
    assert all(p.grad is None for p in model.parameters())

    # independently: torch.func per-image gradients of the eval-mode network, then their mean
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def value(p, image, label):
        z = functional_call(model, (p, buffers), (image[None],)).logits[:, :5]
        if kind == "mas":
            return (z**2).sum()
        target = z.argmax(dim=1) if kind == "fisher-predicted" else label[None]
        return torch.log_softmax(z, dim=1).gather(1, target[:, None]).sum()

    per_image = vmap(grad(value), in_dims=(None, 0, 0))(params, images, labels)
    assert count == 7 and set(importance) == set(per_image)
    for name, grads in per_image.items():
        expected = grads.abs().mean(0) if kind == "mas" else grads.square().mean(0)
        assert torch.allclose(importance[name], expected, rtol=1e-5, atol=1e-9), name
        assert expected.abs().sum() > 0, name  # every parameter takes part


@pytest.mark.parametrize("kind", ["fisher", "mas"])
def test_facil_batch_estimate_of_a_network_restores_its_batchnorm_statistics(kind):
    model = conv_model()
    model.eval()
    images, labels = torch.randn(7, 3, 6, 6), torch.tensor([0, 1, 2, 3, 4, 0, 1])
    batches = [Batch(images[:4], labels[:4]), Batch(images[4:], labels[4:])]
    score = mas_score if kind == "mas" else fisher_score("true")
    reduce = "abs" if kind == "mas" else "square"
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    importance, count = batch_importance(model, batches, score, reduce, 5)
    assert count == 7 and not model.training
    assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())
    assert all(p.grad is None for p in model.parameters())
    # independently: batch gradients of a copy in training mode
    reference = copy.deepcopy(model).train()
    expected = {k: torch.zeros_like(v) for k, v in reference.named_parameters()}
    for batch in batches:
        reference.zero_grad()
        z = reference(batch.images).logits[:, :5]
        value = (z**2).sum(dim=1).mean() if kind == "mas" else -F.cross_entropy(z, batch.labels)
        value.backward()
        for k, p in reference.named_parameters():
            expected[k] += len(batch.labels) * (p.grad.abs() if kind == "mas" else p.grad.square())
    for name, value in expected.items():
        assert torch.allclose(importance[name], value / 7, rtol=1e-5, atol=1e-10), name


# --- accumulation and penalty --------------------------------------------------------------------------------
def test_accumulation_running_average_and_sum():
    old = {"a": torch.tensor([2.0, 4.0])}
    new = {"a": torch.tensor([6.0, 0.0]), "b": torch.tensor([8.0])}
    averaged = accumulate(old, new, 0.5)
    assert torch.equal(averaged["a"], torch.tensor([4.0, 2.0])) and torch.equal(averaged["b"], torch.tensor([4.0]))
    assert torch.equal(accumulate(old, new, 0.25)["a"], torch.tensor([5.0, 1.0]))  # 0.25 * 2 + 0.75 * 6
    summed = accumulate(old, new, None)
    assert torch.equal(summed["a"], torch.tensor([8.0, 4.0])) and torch.equal(summed["b"], torch.tensor([8.0]))
    first = accumulate({}, new, 0.5)  # FACIL's running Fisher starts at 0
    assert torch.equal(first["a"], torch.tensor([3.0, 0.0]))


def test_penalty_by_hand_and_the_new_head_is_free():
    model = linear_model([[1.0, 2.0], [3.0, 4.0]])
    anchored = AnchoredImportance(alpha=None)
    anchored.update(model, {"heads.0.weight": torch.tensor([[1.0, 0.0], [2.0, 0.5]])}, images=3, task=1)
    assert anchored.ready and anchored.estimates == [{"task": 1, "images": 3, "mean": 0.875, "max": 2.0, "clamped": 0.0,
                                                      "total_max": 2.0, "capped": 0.0}]
    new_head = model.add_head(1)
    assert anchored.penalty(model).item() == 0.0  # at the anchor
    with torch.no_grad():
        model.heads[0].weight += torch.tensor([[1.0, 1.0], [-2.0, 2.0]])
        new_head.weight.fill_(7.0)
    # 1 * 1^2 + 0 * 1^2 + 2 * (-2)^2 + 0.5 * 2^2 = 1 + 8 + 2 = 11; the new head adds nothing
    penalty = anchored.penalty(model)
    assert penalty.item() == pytest.approx(11.0)
    penalty.backward()
    assert new_head.weight.grad is None
    # d/dW of sum Omega (W - W*)^2 = 2 Omega (W - W*)
    assert torch.equal(model.heads[0].weight.grad, torch.tensor([[2.0, 0.0], [-8.0, 2.0]]))
    with pytest.raises(ValueError):
        quadratic_penalty(model, {}, {})


def test_clamp_cuts_each_estimate_before_it_is_merged():
    model = linear_model([[1.0, 2.0], [3.0, 4.0]])
    anchored = AnchoredImportance(alpha=0.5)
    anchored.update(model, {"heads.0.weight": torch.tensor([[1e-5, 3e-4], [2e-4, 0.0]])}, 2, 1, clamp=1e-4)
    # min(F, 1e-4), then 0.5 * 0 + 0.5 * that
    assert torch.allclose(anchored.importance["heads.0.weight"], torch.tensor([[0.5e-5, 0.5e-4], [0.5e-4, 0.0]]))
    assert anchored.estimates[0]["clamped"] == 0.5 and anchored.estimates[0]["max"] == pytest.approx(3e-4)


def test_total_max_caps_the_accumulated_importance_after_merging():
    model = linear_model([[1.0, 2.0], [3.0, 4.0]])
    anchored = AnchoredImportance(alpha=None)
    anchored.update(model, {"heads.0.weight": torch.tensor([[1.0, 6.0], [3.0, 0.0]])}, 2, 1, total_max=5.0)
    anchored.update(model, {"heads.0.weight": torch.tensor([[1.0, 1.0], [3.0, 4.0]])}, 2, 2, total_max=5.0)
    # task 1: [[1, 6], [3, 0]] -> [[1, 5], [3, 0]]; task 2: + [[1, 1], [3, 4]] = [[2, 6], [6, 4]] -> capped at 5
    assert torch.equal(anchored.importance["heads.0.weight"], torch.tensor([[2.0, 5.0], [5.0, 4.0]]))
    first, second = anchored.estimates
    assert (first["total_max"], first["capped"], first["max"]) == (6.0, 0.25, 6.0)
    assert (second["total_max"], second["capped"], second["max"]) == (6.0, 0.5, 4.0)


def test_stable_importance_max_by_hand():
    # heavy ball: 0.5 * 2 (1 + 0.9) / (2 * 0.1 * 1) = 9.5; Nesterov: 0.5 * (3.8 / 2.8) / 0.2
    assert stable_importance_max(TrainConfig(lr=0.1, momentum=0.9), 1.0) == pytest.approx(9.5)
    assert stable_importance_max(TrainConfig(lr=0.1, momentum=0.9, nesterov=True), 1.0) == pytest.approx(3.8 / 2.8 / 0.4)
    assert stable_importance_max(TrainConfig(lr=0.05, momentum=0.0), 2.0, margin=1.0) == pytest.approx(10.0)
    assert stable_importance_max(TrainConfig(optimizer="adam", lr=1e-3), 1.0) is None
    assert stable_importance_max(TrainConfig(), 0.0) is None
    with pytest.raises(ValueError):
        stable_importance_max(TrainConfig(), 1.0, margin=0.0)


@pytest.mark.parametrize("nesterov", [False, True])
def test_the_stable_bound_is_where_sgd_on_the_penalty_starts_to_diverge(nesterov):
    """torch's SGD on ``lamb * Omega * (x - 1)^2`` alone: 1 % below the bound (margin 1) it
    converges to the anchor, 1 % above it the distance grows without limit."""
    train = TrainConfig(lr=0.1, momentum=0.9, nesterov=nesterov)
    bound = stable_importance_max(train, 2.0, margin=1.0)
    assert bound is not None
    distances = []
    for omega in (0.99 * bound, 1.01 * bound):
        x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.SGD([x], lr=train.lr, momentum=train.momentum, nesterov=nesterov)
        for _ in range(3000):
            optimizer.zero_grad()
            (2.0 * omega * (x - 1.0).square()).sum().backward()
            optimizer.step()
        distances.append(abs(float(x.detach()) - 1.0))
    assert distances[0] < 1e-3 and distances[1] > 1e3


def test_anchored_importance_round_trips_its_state():
    model = linear_model([[1.0, 2.0], [3.0, 4.0]])
    anchored = AnchoredImportance(alpha=0.5)
    anchored.update(model, {"heads.0.weight": torch.ones(2, 2)}, images=2, task=1)
    restored = AnchoredImportance(alpha=0.5)
    restored.load_state_dict(anchored.state_dict(), torch.device("cpu"))
    assert torch.equal(restored.importance["heads.0.weight"], torch.full((2, 2), 0.5))
    assert torch.equal(restored.anchors["heads.0.weight"], model.heads[0].weight.detach())
    assert restored.estimates == anchored.estimates
    with torch.no_grad():
        model.heads[0].weight.zero_()
    assert not torch.equal(restored.anchors["heads.0.weight"], model.heads[0].weight)  # a copy, not the weight


# --- the methods in the engine ------------------------------------------------------------------------------------
def _run(method: dict, tmp_path: Path) -> Trainer:
    experiment = parse_experiment({
        "data": {"dataset": "imagefolder"},
        "scenario": {"order": "identity", "num_tasks": 2},
        "train": {"epochs": 1, "batch_size": 8, "lr": 0.05, "schedule": "constant", "milestones": [],
                  "precision": "fp32"},
        "method": method,
        "runtime": {"progress": False, "device": "cpu", "num_threads": 1, "checkpoint_every_s": 1e9},
    })
    trainer = Trainer(experiment, tmp_path, coloured_dataset(classes=4, per_class=8))
    trainer.run()
    return trainer


@pytest.mark.parametrize("name", ["ewc", "mas"])
def test_regularizer_estimates_after_every_task_and_penalises_in_the_second(name, tmp_path):
    trainer = _run({"name": name}, tmp_path)
    anchored = trainer.method.anchored
    # estimated after each task on its 16 real images, anchored at the final weights, both heads included
    assert [(e["task"], e["images"]) for e in anchored.estimates] == [(1, 16), (2, 16)]
    final = dict(trainer.model.named_parameters())
    assert set(anchored.anchors) == set(final) and {"heads.0.weight", "heads.1.weight"} <= set(anchored.anchors)
    assert all(torch.equal(anchored.anchors[k], final[k].detach()) for k in final)
    epochs = [r for r in trainer.log.records if r["event"] == "epoch"]
    # 2 steps a task: the first step of task 2 is at the anchor (penalty 0), the second is not
    assert name not in epochs[0]["losses"] and epochs[1]["losses"][name] > 0
    assert epochs[1]["weights"][name] == (5000.0 if name == "ewc" else 1.0)
    key = "fisher" if name == "ewc" else "importance"
    assert [e["task"] for e in trainer.metrics()["method_diagnostics"][key]] == [1, 2]
    # the run's SGD (lr 0.05, momentum 0.9) caps the importance at 0.5 * 2 * 1.9 / (2 * 0.05 * lambda * scale):
    # 19 for MAS (lambda 1, scale 1), 0.0076 for EWC (lambda 5000, scale 1/2)
    cap = 19.0 if name == "mas" else 0.0076
    assert trainer.method.importance_cap() == pytest.approx(cap)
    assert all(float(v.max()) <= cap for v in anchored.importance.values())
    assert all({"total_max", "capped"} <= set(e) for e in anchored.estimates)


def test_lwfmc_trains_with_the_bce_alone(tmp_path):
    trainer = _run({"name": "lwfmc"}, tmp_path)
    epochs = [r for r in trainer.log.records if r["event"] == "epoch"]
    assert [list(r["losses"]) for r in epochs] == [["bce"], ["bce"]]


def test_options_are_checked():
    assert resolve_method({"name": "ewc"})[1].lamb == 5000.0
    assert resolve_method({"name": "mas", "alpha": 0.5})[1].alpha == 0.5
    with pytest.raises(ConfigError, match="method.alpha"):
        resolve_method({"name": "ewc", "alpha": 1.0})
    with pytest.raises(ConfigError, match="method.lamb"):
        resolve_method({"name": "mas", "lamb": -1})
    assert resolve_method({"name": "mas"})[1].importance_max == "stable"
    assert resolve_method({"name": "mas", "importance_max": 3})[1].importance_max == 3.0
    assert resolve_method({"name": "mas", "importance_max": None})[1].importance_max is None
    with pytest.raises(ConfigError, match="method.importance_max"):
        resolve_method({"name": "mas", "importance_max": -1.0})
    with pytest.raises(ConfigError, match="method.importance_max"):
        resolve_method({"name": "mas", "importance_max": "unstable"})
    with pytest.raises(ConfigError, match="method.fisher_labels"):
        resolve_method({"name": "ewc", "fisher_labels": "sampled"})
    with pytest.raises(ConfigError, match="method.reduction"):
        resolve_method({"name": "lwfmc", "reduction": "sum"})


def test_facil_batch_estimate_passes_over_a_trailing_batch_of_one_image():
    model = conv_model()
    images, labels = torch.randn(5, 3, 6, 6), torch.tensor([0, 1, 2, 3, 4])
    whole, count = batch_importance(model, [Batch(images[:4], labels[:4])], mas_score, "abs", 5)
    with_one_over, count_one_over = batch_importance(
        model, [Batch(images[:4], labels[:4]), Batch(images[4:], labels[4:])], mas_score, "abs", 5)
    assert count == count_one_over == 4
    assert all(torch.equal(whole[k], with_one_over[k]) for k in whole)
