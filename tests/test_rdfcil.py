"""R-DFCIL: adaptive weights, relational and hard KD, class balance, stage B, end to end."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

import dfcil.losses as losses_module
from dfcil.cli import main
from dfcil.engine.trainer import Trainer
from dfcil.experiment import parse_experiment
from dfcil.losses import angle_relation_distillation, angle_relations
from dfcil.methods.rdfcil import (
    RDFCIL,
    RelationProjections,
    adaptive_loss_weights,
    class_balance_weights,
    hard_kd,
)

from conftest import coloured_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_adaptive_weights_ten_task_cifar_task_two():
    weights = adaptive_loss_weights(num_old=10, num_new=10, lambda_ce=0.5, lambda_hkd=0.15, lambda_rkd=0.5)
    assert (round(weights.ce, 3), round(weights.hkd, 3), round(weights.rkd, 3)) == (0.693, 0.388, 1.292)


def test_adaptive_weights_grow_with_old_classes():
    # 20-task CIFAR-100 at task 4: alpha = log2(3.5), beta = sqrt(15 / 5)
    weights = adaptive_loss_weights(15, 5, 0.5, 0.15, 0.5)
    alpha, beta = math.log2(3.5), math.sqrt(3.0)
    assert weights.ce == pytest.approx(0.5 * (1 + 1 / alpha) / beta)
    assert weights.hkd == pytest.approx(0.15 * alpha * beta)
    assert weights.rkd == pytest.approx(0.5 * alpha * beta)
    with pytest.raises(ValueError):
        adaptive_loss_weights(0, 5, 0.5, 0.15, 0.5)


def naive_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """R-DFCIL Eq. 5 as a triple loop over all (i, j, k), anchor j."""

    def cosine(u: torch.Tensor, i: int, j: int, k: int) -> float:
        a, b = u[i] - u[j], u[k] - u[j]
        if i == j or k == j:
            return 0.0
        return float(a @ b / (a.norm() * b.norm()))

    n = len(student)
    total = 0.0
    for i, j, k in itertools.product(range(n), repeat=3):
        total += abs(cosine(student, i, j, k) - cosine(teacher, i, j, k))
    return total / n**3


def test_angle_relation_distillation_equals_triple_loop():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    teacher = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    expected = naive_angle_loss(student, teacher)
    assert expected > 0.1
    assert float(angle_relation_distillation(student, teacher)) == pytest.approx(expected, rel=1e-5)
    # the anchor layout: [j, i, k] = cos of the angle at j between i and k
    relations = angle_relations(student)
    a, b = student[0] - student[2], student[4] - student[2]
    assert float(relations[2, 0, 4]) == pytest.approx(float(a @ b / (a.norm() * b.norm())), rel=1e-5)
    assert float(relations[2, 2, 4]) == 0.0


def test_angle_relation_distillation_zero_up_to_scale_and_shift():
    teacher = torch.randn(16, 8)
    assert float(angle_relation_distillation(3.7 * teacher + 0.5, teacher)) < 1e-5
    assert float(angle_relation_distillation(teacher, teacher)) == 0.0


def autograd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The loss through autograd of the readable (B, B, B) form."""
    return (angle_relations(student) - angle_relations(teacher)).abs().mean()


@pytest.mark.parametrize("size, block", [(5, 1), (33, 7), (33, 33), (64, 64)])
def test_fused_angle_loss_and_gradients_equal_autograd_of_the_relations(size, block, monkeypatch):
    # blocks of anchors that do and do not divide the batch, and one block for all
    monkeypatch.setattr(losses_module, "_CPU_BLOCK_ELEMENTS", block * size**2)
    generator = torch.Generator().manual_seed(size)
    student = torch.randn(size, 12, generator=generator, requires_grad=True)
    teacher = (0.5 * student.detach() + torch.randn(size, 12, generator=generator)).requires_grad_()
    expected = autograd_angle_loss(student, teacher)
    expected_grads = torch.autograd.grad(expected, (student, teacher))
    fused = angle_relation_distillation(student, teacher)
    grads = torch.autograd.grad(3.0 * fused, (student, teacher))  # the upstream gradient scales it
    assert float(fused.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    for got, want in zip(grads, expected_grads):
        assert float(want.norm()) > 1e-4
        assert float((got - 3.0 * want).norm() / (3.0 * want).norm()) < 1e-4


def test_fused_angle_loss_without_gradients_and_under_bf16_autocast():
    generator = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(20, 8, generator=generator), torch.randn(20, 8, generator=generator)
    expected = float(autograd_angle_loss(student, teacher))
    with torch.no_grad():
        assert float(angle_relation_distillation(student.clone().requires_grad_(), teacher)) == pytest.approx(expected, rel=1e-5)
    # bf16 embeddings (what a projection returns under autocast): float32 inside, gradient bf16
    student_bf16 = student.detach().bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = angle_relation_distillation(student_bf16, teacher.bfloat16())
    assert loss.dtype == torch.float32
    assert float(loss.detach()) == pytest.approx(float(autograd_angle_loss(student.bfloat16(), teacher.bfloat16())), rel=1e-4)
    loss.backward()
    assert student_bf16.grad is not None and student_bf16.grad.dtype == torch.bfloat16
    assert float(student_bf16.grad.abs().sum()) > 0


def test_relational_kd_gradient_reaches_both_projections():
    torch.manual_seed(0)
    projections = RelationProjections(feature_dim=4, device=torch.device("cpu"))
    assert projections.current.weight.shape == (8, 4) and projections.current.bias is not None
    current, old = torch.randn(10, 4), torch.randn(10, 4)
    loss = angle_relation_distillation(projections.current(current), projections.old(old))
    loss.backward()
    for layer in (projections.current, projections.old):
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_hard_kd_hand_value():
    current = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    old = torch.tensor([[1.5, 2.0], [1.0, 1.0]])
    assert float(hard_kd(current, old)) == pytest.approx((0.5 + 0 + 1 + 2) / 4)


def test_class_balance_weights_hand_value():
    weights = class_balance_weights(torch.tensor([10, 5, 0, 20]))
    # total 35: 3.5, 7, 35 (count clamped to 1), 1.75; divided by the minimum 1.75
    assert weights.tolist() == pytest.approx([2.0, 4.0, 20.0, 1.0])


class StageSpy(RDFCIL):
    """R-DFCIL that records the model at the start of head refinement and at the end of the task."""

    def __init__(self, options, env):
        super().__init__(options, env)
        self.before_refine: dict[str, torch.Tensor] = {}
        self.after_task: dict[str, torch.Tensor] = {}
        self.projection_moved = False

    def prepare_task(self, model, task):
        super().prepare_task(model, task)
        self.initial_projection = None if self.projections is None else self.projections.current.weight.detach().clone()

    def on_epoch_start(self, model, task, phase, epoch):
        super().on_epoch_start(model, task, phase, epoch)
        if phase.name == "refine" and epoch == 1:
            self.before_refine = {k: v.clone() for k, v in model.state_dict().items()}
            assert self.class_weights is not None and self.class_weights.min() == 1.0
            self.projection_moved = not torch.equal(self.initial_projection, self.projections.current.weight)

    def finish_task(self, model, task):
        self.after_task = {k: v.clone() for k, v in model.state_dict().items()}
        super().finish_task(model, task)


def test_stage_b_changes_only_the_heads(tmp_path):
    config = parse_experiment({
        "data": {"dataset": "imagefolder"},
        "scenario": {"order": "identity", "num_tasks": 2},
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.05, "schedule": "constant", "milestones": [],
                  "precision": "fp32"},
        "method": {"name": "rdfcil", "refine_epochs": 2, "synthesis": {"steps": 3, "batch_size": 16}},
        "runtime": {"progress": False, "device": "cpu"},
    })
    trainer = Trainer(config, tmp_path, coloured_dataset())
    trainer.method = StageSpy(trainer.method.options, trainer.env)
    trainer.run()
    spy = trainer.method
    assert spy.before_refine, "no refinement phase ran"
    assert spy.projection_moved, "the projections were not in the stage-A optimiser"
    changed = {k for k in spy.before_refine if not torch.equal(spy.before_refine[k], spy.after_task[k])}
    assert changed, "the refinement phase changed nothing"
    assert all(k.startswith("heads.") for k in changed), f"stage B changed non-head state: {sorted(changed)}"
    # every backbone tensor, BN running statistics and batch counters included, is untouched
    backbone = [k for k in spy.before_refine if k.startswith("backbone.")]
    assert any("running_mean" in k for k in backbone) and not changed & set(backbone)
    records = [r for r in trainer.log.records if r["event"] == "epoch" and r["task"] == 2]
    assert [(r["phase"], r["lr"]) for r in records] == [("main", 0.05)] * 2 + [("refine", 0.005)] * 2
    # the test accuracy before the refinement is logged between the two phases, and is the
    # accuracy of the network as the refinement found it (the one-phase first task has none)
    task_two = [(r["event"], r.get("phase")) for r in trainer.log.records if r.get("task") == 2
                and r["event"] in ("epoch", "phase_eval", "eval")]
    assert task_two == [("epoch", "main")] * 2 + [("phase_eval", "main")] + [("epoch", "refine")] * 2 + [("eval", None)]
    assert not [r for r in trainer.log.records if r["event"] == "phase_eval" and r["task"] == 1]
    before = next(r for r in trainer.log.records if r["event"] == "phase_eval")
    after = next(r for r in trainer.log.records if r["event"] == "eval" and r["task"] == 2)
    trainer.model.load_state_dict(spy.before_refine)
    evaluation = trainer.test_evaluation(trainer.scenario.tasks[1])[0]
    assert (before["accuracy"], before["old"], before["new"]) == (evaluation.accuracy, evaluation.old, evaluation.new)
    trainer.model.load_state_dict(spy.after_task)
    assert trainer.test_evaluation(trainer.scenario.tasks[1])[0].accuracy == after["accuracy"]
    weights = adaptive_loss_weights(2, 2, 0.5, 0.15, 0.5)
    assert records[0]["weights"] == pytest.approx({"local_ce": weights.ce, "hkd": weights.hkd, "rkd": weights.rkd})
    assert records[-1]["weights"] == pytest.approx({"balanced_ce": 0.5, "hkd": weights.hkd})


def test_ablation_switches(tmp_path):
    def method_for(**options):
        config = parse_experiment({
            "data": {"dataset": "imagefolder"},
            "scenario": {"order": "identity", "num_tasks": 2},
            "train": {"epochs": 1, "batch_size": 16, "lr": 0.05, "schedule": "constant", "milestones": []},
            "method": {"name": "rdfcil", **options},
            "runtime": {"progress": False, "device": "cpu"},
        })
        return Trainer(config, tmp_path / str(len(options)), coloured_dataset()).method

    task = type("T", (), {"num_old": 10, "num_new": 10})()
    full = method_for().loss_weights(task)
    assert method_for(hard_kd=False).loss_weights(task).hkd == 0.0
    assert method_for(relational_kd=False).loss_weights(task).rkd == 0.0
    assert method_for(adaptive_weights=False).loss_weights(task) == type(full)(0.5, 0.15, 0.5)
    with pytest.raises(Exception, match="refine_epochs"):
        method_for(refine_epochs=0)


def _rdfcil_run(run_dir: Path, epochs: int, extra: list[str]) -> tuple[dict, list[dict]]:
    code = main(["run", str(CONFIGS / "smoke.yaml"), "-o", str(run_dir), "--set", "method.name=rdfcil",
                 "--set", f"train.epochs={epochs}", "--set", "method.refine_epochs=2", "--set", "method.synthesis.steps=20",
                 "--set", "method.synthesis.log_every=10", "--set", "runtime.progress=false", *extra])
    assert code == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    # data-free rule: neither the generator nor the projections outlive the task
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert last["method"]["synthesizer"] is None and last["method"]["projections"] is None
    assert not any("generator" in p.name for p in run_dir.rglob("*") if p.is_file())
    assert (run_dir / "synthesis" / "task_2.png").stat().st_size > 0
    return metrics, log


@pytest.mark.slow
def test_rdfcil_end_to_end(cifar, tmp_path):
    metrics, log = _rdfcil_run(tmp_path / "rdfcil", 3, [])
    assert metrics["complete"] and metrics["accuracy_per_step"][0] > 75.0
    assert metrics["last_accuracy"] > 35.0  # 4 classes: chance is 25
    assert metrics["old_new_accuracy"][1]["old"] > 5.0  # finetune keeps exactly 0 % here
    phases = [(r["phase"], set(r["losses"])) for r in log if r["event"] == "epoch" and r["task"] == 2]
    assert phases == [("main", {"local_ce", "hkd", "rkd"})] * 3 + [("refine", {"balanced_ce", "hkd"})] * 2


def test_rdfcil_raw_feature_rkd_without_refinement_runs(cifar, tmp_path):
    """The ablation path end to end (structure only: 40 images per class, 1 epoch)."""
    metrics, log = _rdfcil_run(tmp_path / "rdfcil", 1, ["--set", "method.rkd_projection=false",
                                                        "--set", "method.head_refinement=false",
                                                        "--set", "data.train_per_class=40",
                                                        "--set", "method.synthesis.steps=2",
                                                        "--set", "method.synthesis.log_every=1"])
    assert metrics["complete"]
    phases = [(r["phase"], set(r["losses"])) for r in log if r["event"] == "epoch" and r["task"] == 2]
    assert phases == [("main", {"local_ce", "hkd", "rkd"})]
