"""DGR (``dfcil.methods.dgr``) and its VAE (``dfcil.synthesis.vae``): the generator's loss terms on
tiny tensors with hand-computed values, the solver's loss terms, the lr schedule, the VAE's shape
and size, and a tiny run: generator in the state, diagnostics and "synthesis" records."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dfcil.engine.trainer import Trainer
from dfcil.experiment import parse_experiment
from dfcil.methods import METHODS
from dfcil.methods.dgr import generator_loss, learning_rate
from dfcil.synthesis.vae import VAE, kl_divergence, reconstruction_loss

from conftest import coloured_dataset


def test_reconstruction_loss_by_hand():
    # two images of 2 values each; logit log 3 is the probability 3/4
    logits = torch.full((2, 1, 1, 2), math.log(3.0))
    targets = torch.tensor([[1.0, 1.0], [1.0, 0.0]]).view(2, 1, 1, 2)
    # image 1: -log(3/4) per value; image 2: (-log(3/4) - log(1/4)) / 2
    first = -math.log(0.75)
    second = (-math.log(0.75) - math.log(0.25)) / 2
    assert float(reconstruction_loss(logits, targets)) == pytest.approx((first + second) / 2, rel=1e-6)
    weighted = reconstruction_loss(logits, targets, torch.tensor([0.5, 0.25]))
    assert float(weighted) == pytest.approx((0.5 * first + 0.25 * second) / 2, rel=1e-6)
    # the same as BCE on the sigmoid (ABD's code)
    plain = F.binary_cross_entropy(torch.sigmoid(logits), targets)
    assert float(reconstruction_loss(logits, targets)) == pytest.approx(float(plain), rel=1e-6)


def test_kl_divergence_by_hand():
    # mean (1, 0), logvar (0, log 2): -1/2 [(1 + 0 - 1 - 1) + (1 + log 2 - 0 - 2)] = 1 - log(2) / 2
    mean = torch.tensor([[1.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)]])
    assert float(kl_divergence(mean, logvar, 1)) == pytest.approx(1 - math.log(2) / 2, rel=1e-6)
    assert float(kl_divergence(mean, logvar, 3)) == pytest.approx((1 - math.log(2) / 2) / 3, rel=1e-6)
    # N(0, I) itself costs nothing; the batch mean over images
    zero = kl_divergence(torch.zeros(2, 2), torch.zeros(2, 2), 1)
    assert float(zero) == 0.0
    two = kl_divergence(torch.cat([mean, torch.zeros(1, 2)]), torch.cat([logvar, torch.zeros(1, 2)]), 1)
    assert float(two) == pytest.approx((1 - math.log(2) / 2) / 2, rel=1e-6)


def test_generator_loss_adds_the_weighted_terms_of_one_forward():
    torch.manual_seed(0)
    vae = VAE(8, z_dim=3, width=2)
    images = torch.rand(4, 3, 8, 8)
    weights = torch.tensor([1.0, 1.0, 0.5, 0.5])
    noise = torch.randn(4, 3)
    with torch.no_grad():
        terms = generator_loss(vae, images, weights, noise, recon_weight=2.0, kl_weight=0.5)
        logits, mean, logvar = vae(images, noise)
    assert torch.equal(terms["recon"], reconstruction_loss(logits, images, weights))
    assert torch.equal(terms["kl"], kl_divergence(mean, logvar, 3 * 8 * 8))
    assert float(terms["total"]) == pytest.approx(2.0 * float(terms["recon"]) + 0.5 * float(terms["kl"]))
    # the reparameterisation: z = mu + noise * exp(logvar / 2); no noise decodes the mean
    assert torch.allclose(vae(images, torch.zeros(4, 3))[0], vae(images)[0])


def test_vae_shapes_and_size():
    vae = VAE(32)  # ABD's CIFAR_GEN: width 64, z 1024
    # encoder convs 3-64-128-512 (4x4 kernels, biases), q maps 8192 -> 1024 (x2), projection
    # 1024 -> 8192, decoder 512-256-64-3 transposed convs
    convs = (3 * 64 * 16 + 64) + (64 * 128 * 16 + 128) + (128 * 512 * 16 + 512)
    linears = 2 * (8192 * 1024 + 1024) + (1024 * 8192 + 8192)
    deconvs = (512 * 256 * 16 + 256) + (256 * 64 * 16 + 64) + (64 * 3 * 16 + 3)
    assert sum(p.numel() for p in vae.parameters()) == convs + linears + deconvs == 28_722_179
    small = VAE(32, z_dim=5, width=2)
    images = torch.rand(3, 3, 32, 32)
    logits, mean, logvar = small(images)
    assert logits.shape == images.shape and mean.shape == logvar.shape == (3, 5)
    samples = small.sample(6, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert samples.shape == (6, 3, 32, 32) and float(samples.min()) >= 0 and float(samples.max()) <= 1
    with pytest.raises(ValueError, match="divisible by 8"):
        VAE(30)


def test_learning_rate_falls_tenfold_at_each_fraction():
    points = (0.4, 0.6, 0.8)  # ABD's epochs 100, 150 and 200 of 250
    assert learning_rate(0.1, 0.0, points) == pytest.approx(0.1)
    assert learning_rate(0.1, 0.39, points) == pytest.approx(0.1)
    assert learning_rate(0.1, 0.4, points) == pytest.approx(0.01)
    assert learning_rate(0.1, 0.79, points) == pytest.approx(0.001)
    assert learning_rate(0.1, 0.8, points) == pytest.approx(1e-4)
    assert learning_rate(0.1, 0.5, ()) == pytest.approx(0.1)


def test_the_method_says_it_is_not_data_free_and_sets_its_flags():
    method = METHODS["dgr"]
    assert "NOT data-free" in method.description
    assert method.needs_old_data and not method.plain_first_task


def _experiment(**generator):
    return parse_experiment({
        "data": {"dataset": "imagefolder"},
        "scenario": {"order": "identity", "num_tasks": 2},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.05, "schedule": "constant", "milestones": [],
                  "precision": "fp32"},
        "method": {"name": "dgr", "generator": {"width": 4, "log_every": 1, **generator}},
        "runtime": {"progress": False, "device": "cpu", "num_threads": 1},
    })


def test_solver_step_by_hand(tmp_path, one_thread):
    """Task 2's loss terms equal the formulas applied to the same replayed images: task-balanced
    CE with the old model's argmax labels, and KD (T = 2) on the replayed images."""
    trainer = Trainer(_experiment(steps=2), tmp_path / "run", coloured_dataset())
    trainer.run()
    method = trainer.method
    assert method.generator is not None and [t["task"] for t in method.trainings] == [1]  # not after the last task
    task = trainer.scenario.tasks[1]
    model = trainer.model
    model.eval()  # no BatchNorm update, so the same forward can be repeated
    images = trainer.normalizer(trainer.train_data.store.gather(trainer.train_data.indices_of(2, 4)[:4]))
    labels = torch.tensor([2, 2, 3, 3])
    from dfcil.methods.base import Batch

    state = trainer.rng.device.get_state()
    with torch.no_grad():
        result = method.training_step(model, Batch(images, labels), task, None)  # type: ignore[arg-type]
    trainer.rng.device.set_state(state)
    replayed = method.replay(4)
    old_logits = method.old(replayed).logits[:, :2]
    pseudo = old_logits.argmax(dim=1)
    logits = model(torch.cat([images, replayed])).logits.detach()
    # r = n_old / n_seen = 1/2: every image weighs 1/2 here
    ce = F.cross_entropy(logits, torch.cat([labels, pseudo]), reduction="none")
    assert float(result.losses["ce"].value) == pytest.approx(float((0.5 * ce).mean()), rel=1e-5)
    p_old = torch.softmax(old_logits / 2, dim=1)
    kd = -(p_old * torch.log_softmax(logits[4:, :2] / 2, dim=1)).sum(dim=1).mean()
    assert float(result.losses["kd"].value) == pytest.approx(float(kd), rel=1e-5)
    assert result.losses["kd"].weight == 1.0 and result.logits is not None and result.logits.shape == (4, 4)


def test_a_run_keeps_its_generator_in_the_state_and_logs_its_training(tmp_path, one_thread):
    trainer = Trainer(_experiment(epochs=2, batch_size=16), tmp_path / "run", coloured_dataset())
    metrics = trainer.run()
    records = [r for r in trainer.log.records if r["event"] == "synthesis"]
    # 48 images of task 1 in batches of 16: 3 steps per epoch, 2 epochs; none after the last task
    assert [(r["task"], r["step"], r["steps"], r["epoch"]) for r in records] == [
        (1, 1, None, 1), (1, 2, None, 1), (1, 3, None, 1), (1, 4, 6, 2), (1, 5, 6, 2), (1, 6, 6, 2)]
    assert all(r["finish_task"] and r["steps_per_s"] > 0 and r["total"] == pytest.approx(r["recon"] + r["kl"])
               for r in records)
    # by epoch: the second of 2 epochs starts at 1/2 of the training, past the first decay (0.4)
    assert records[0]["lr"] == pytest.approx(0.1) and records[-1]["lr"] == pytest.approx(0.01)
    state = trainer.method.state_dict()
    assert state["generator"] is not None and set(state["generator"]) >= {"q_mean.weight", "project.weight"}
    generator = metrics["method_diagnostics"]["generator"]
    assert generator["kind"] == "vae" and generator["parameters"] == sum(
        p.numel() for p in trainer.method.generator.parameters())
    assert [t["steps"] for t in generator["trainings"]] == [6]
    assert (tmp_path / "run" / "synthesis" / "task_2.png").exists()  # what task 2 replayed


def test_log_truncation_drops_a_killed_finish_task_s_records(tmp_path):
    """A method's finish_task records (``finish_task: true``) come after the task's last epoch
    checkpoint: a run resumed from any checkpoint of that task writes them again, a run resumed
    after the task keeps them."""
    from dfcil.engine.checkpoint import Position
    from dfcil.runlog import RunLog

    log = RunLog(tmp_path / "log.jsonl")
    for record in (
        {"event": "epoch", "task": 1, "phase_index": 0, "epoch": 1},
        {"event": "synthesis", "task": 1, "step": 1, "finish_task": True},
        {"event": "synthesis", "task": 1, "step": 2, "finish_task": True},
    ):
        log.append(record)
    log.truncate_after(Position(task=0, phase=0, epoch=1, task_done=True))
    assert len(log.records) == 3
    log.truncate_after(Position(task=0, phase=0, epoch=1, task_done=False))
    assert [r["event"] for r in RunLog(tmp_path / "log.jsonl").records] == ["epoch"]
