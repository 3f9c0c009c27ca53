"""DGR - Deep Generative Replay (Shin, Lee, Kim & Kim, arXiv:1705.08690), as ABD's code runs it.

NOT data-free: the memory is a generator trained on every task's real images. The "scholar" of
task t is the solver (the classifier) plus a generator; in task t + 1 the generator replays
images of the old classes, which the old solver labels.

* Generator: the convolutional VAE of ABD's DGR runs (:mod:`dfcil.synthesis.vae`; ABD,
  arXiv:2106.09701, reports DGR in its Table 1 with this family in its code, R-DFCIL
  arXiv:2207.09213 copies those figures as DGR* in its Table 1). It is trained after each task's
  training (``finish_task``) on the task's real training images (augmented, shuffled, through
  :attr:`RunEnv.task_batches`) plus, after the first task, as many images replayed by the
  previous generator (Shin et al. Sec. 3.1: the new generator learns the mixture of new data
  and replayed old data). Per image the reconstruction is weighted by the task balance of ABD's
  code (replayed images r = n_old / n_seen, real 1 - r); loss = BCE reconstruction + KL (each
  weight 1). ABD's code continues one generator for the whole run (``warm_start``) with a new
  optimiser per task: SGD lr 0.1, momentum 0.9, no weight decay, lr / 10 at 40, 60 and 80 % of
  the training (its epochs 100, 150 and 200 of 250). It trains the generator one step per solver
  step, alongside the solver, for as many epochs (``generator.epochs`` None: ``train.epochs``);
  here the solver's task finishes first, then the generator trains, which is the same data and
  budget. ``generator.steps`` sets a number of steps instead. The last task's generator would never
  replay and is not trained.
* Solver, tasks t >= 2: one forward over the real batch (B images) and B images replayed by the
  previous generator. Loss (ABD's ``learners/dgr.py`` with ``--mu 1``):
  ``CE`` over all seen classes with labels = the old solver's argmax over the old classes for
  the replayed images, per-image task-balance weights (old r, new 1 - r; ``task_balance``),
  ``mean_i w_i CE_i``; plus ``kd_weight`` * KD(T = 2) between the old solver's and the model's
  old-class logits on the replayed images (``-sum p_old^T log p^T``, batch mean, no T^2: the
  soft targets of Shin et al.'s solver, Sec. 3.2). ``kd_weight: 0`` leaves the hard labels alone.
* First task: plain CE over its classes (ABD's code: weights all 1).

Hyper-parameters: ABD's code for its DGR row (experiments/cifar100-*task.sh), the paper that
reports DGR as a baseline. Differences kept: the generator is trained after the solver rather than
interleaved with it; reconstruction targets are the images in [0, 1] pixel units (ABD's code feeds
it normalised images); BCE is taken from the decoder's logits (the same value).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from dfcil.losses import soft_cross_entropy
from dfcil.methods.abd import task_balance_weights
from dfcil.methods.base import Batch, Loss, Method, OldModel, Phase, RunEnv, StepResult, seen_cross_entropy_step
from dfcil.models import IncrementalClassifier
from dfcil.scenario import Task
from dfcil.schema import join, require
from dfcil.synthesis.monitor import WindowMeans
from dfcil.synthesis.synthesizer import save_sample_grid
from dfcil.synthesis.vae import VAE, kl_divergence, reconstruction_loss


@dataclass(frozen=True)
class DGRGeneratorOptions:
    """DGR's generator and its training after each task (defaults: ABD's code for DGR)."""

    epochs: int | None = None  # passes over the task's images; None: train.epochs (ABD: alongside the solver)
    steps: int | None = None  # a number of steps instead of epochs (the images cycle, reshuffled per pass)
    batch_size: int | None = None  # real images per step (plus as many replayed); None: train.batch_size
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9  # SGD's momentum (Adam: betas 0.9, 0.999)
    weight_decay: float = 0.0
    lr_decay_at: tuple[float, ...] = (0.4, 0.6, 0.8)  # fractions of the training where lr /= 10
    z_dim: int = 1024
    width: int = 64  # channels of the VAE's first convolution (ABD: 64, about 29 M parameters)
    recon_weight: float = 1.0
    kl_weight: float = 1.0
    augment: bool = True  # the training augmentation on the real images (ABD's train loader)
    warm_start: bool = True  # continue the previous task's generator (ABD's code) instead of a new one
    log_every: int = 50  # steps per "synthesis" log record

    def validate(self, path: str) -> None:
        """Check value ranges."""
        require(self.epochs is None or self.epochs >= 1, join(path, "epochs"), "must be >= 1")
        require(self.steps is None or self.steps >= 1, join(path, "steps"), "must be >= 1")
        require(self.batch_size is None or self.batch_size >= 2, join(path, "batch_size"), "must be >= 2")
        require(self.lr > 0, join(path, "lr"), "must be > 0")
        require(0 <= self.momentum < 1, join(path, "momentum"), "must be in [0, 1)")
        require(self.weight_decay >= 0, join(path, "weight_decay"), "must be >= 0")
        require(all(0 < f < 1 for f in self.lr_decay_at), join(path, "lr_decay_at"), "fractions in (0, 1)")
        require(self.z_dim >= 1, join(path, "z_dim"), "must be >= 1")
        require(self.width >= 1, join(path, "width"), "must be >= 1")
        require(self.recon_weight >= 0, join(path, "recon_weight"), "must be >= 0")
        require(self.kl_weight >= 0, join(path, "kl_weight"), "must be >= 0")
        require(self.log_every >= 1, join(path, "log_every"), "must be >= 1")


@dataclass(frozen=True)
class DGROptions:
    """Options of ``dgr``."""

    kd_weight: float = 1.0  # KD on the replayed images' old-class logits (ABD's --mu 1); 0: hard labels only
    temperature: float = 2.0
    task_balance: bool = True  # per-image weights r (old) / 1 - r (new), r = n_old / n_seen (ABD's code)
    generator: DGRGeneratorOptions = field(default_factory=DGRGeneratorOptions)

    def validate(self, path: str) -> None:
        """Check value ranges."""
        require(self.kd_weight >= 0, join(path, "kd_weight"), "must be >= 0")
        require(self.temperature > 0, join(path, "temperature"), "must be > 0")
        self.generator.validate(join(path, "generator"))


def learning_rate(base: float, progress: float, decay_at: tuple[float, ...]) -> float:
    """``base`` divided by 10 for every fraction of ``decay_at`` that ``progress`` (the fraction
    of the training done, in [0, 1)) has reached."""
    return base * 0.1 ** sum(progress >= point for point in decay_at)


def generator_loss(vae: VAE, images: torch.Tensor, weights: torch.Tensor, noise: torch.Tensor,
                   recon_weight: float = 1.0, kl_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """DGR's generator loss on ``images`` (in [0, 1]) with per-image ``weights``: ``recon`` (weighted
    mean BCE), ``kl`` (per pixel value) and ``total`` = recon_weight * recon + kl_weight * kl;
    ``noise`` ~ N(0, I) makes the latent codes (the reparameterisation)."""
    logits, mean, logvar = vae(images, noise)
    recon = reconstruction_loss(logits, images, weights)
    kl = kl_divergence(mean, logvar, images[0].numel())
    return {"recon": recon, "kl": kl, "total": recon_weight * recon + kl_weight * kl}


class DGR(Method):
    """Generative replay from a VAE trained on every task's real images; the old solver labels it."""

    name = "dgr"
    description = ("Deep Generative Replay (NOT data-free: stores a VAE trained on each task's real images); "
                   "CE on real + replayed images labelled by the old model, + KD")
    Options = DGROptions
    # the generator trained in the first task's finish_task is read by the second task
    plain_first_task = False
    # its memory is a generator of the earlier tasks' real images, which a model file does not
    # carry: `dfcil learn` cannot add classes with it
    needs_old_data = True

    def __init__(self, options: DGROptions, env: RunEnv) -> None:
        super().__init__(options, env)
        self.options: DGROptions = options
        self.old = OldModel()
        self.generator: VAE | None = None
        self.trainings: list[dict[str, Any]] = []  # one per trained generator: task, steps, last losses

    def _new_vae(self) -> VAE:
        opts = self.options.generator
        return VAE(self.env.image_size, opts.z_dim, opts.width).to(self.env.device)

    # ------------------------------------------------------------------------------------------
    def prepare_task(self, model: IncrementalClassifier, task: Task) -> None:
        """Freeze the old solver; save a grid of what the generator replays (tasks 2..N)."""
        self.old.snapshot(model)
        if task.num_old == 0 or self.generator is None:
            return
        save_sample_grid(lambda: self._labelled_replay(256), task.num_old, self.env.image_size,
                         self.env.artifacts.sample_grid(task.index + 1),
                         self.env.normalizer.denormalize)

    def replay(self, count: int) -> torch.Tensor:
        """``count`` images of the generator, normalised like the real ones (float32)."""
        assert self.generator is not None, "no generator: the first task's finish_task trains it"
        pixels = self.generator.sample(count, self.env.device, self.env.generator)
        mean, std = self.env.normalizer.constants(self.env.device)
        images = (pixels - mean) / std
        return images.contiguous(memory_format=torch.channels_last) if self.env.channels_last else images

    def _labelled_replay(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.old.model is not None
        images = self.replay(count)
        with self.env.autocast():
            labels = self.old(images).logits[:, : self.old.model.num_classes].argmax(dim=1)
        return images, labels

    def training_step(self, model: IncrementalClassifier, batch: Batch, task: Task, phase: Phase) -> StepResult:
        """Plain CE in the first task; CE on real + replayed images and KD on the replayed ones after."""
        if task.num_old == 0:
            return seen_cross_entropy_step(model, batch, task)
        real = len(batch.labels)
        replayed = self.replay(real).to(batch.images.dtype)
        old_logits = self.old(replayed).logits[:, : task.num_old].float()
        labels = torch.cat([batch.labels, old_logits.argmax(dim=1)])
        out = model(torch.cat([batch.images, replayed]))
        if self.options.task_balance:
            weights = task_balance_weights(labels, task.num_old, task.num_seen)
        else:
            weights = torch.ones(len(labels), device=labels.device)
        ce = F.cross_entropy(out.logits[:, : task.num_seen].float(), labels, reduction="none")
        kd = soft_cross_entropy(out.logits[real:, : task.num_old], old_logits, self.options.temperature)
        losses = {"ce": Loss((ce * weights).mean()), "kd": Loss(kd, self.options.kd_weight)}
        return StepResult(losses, out.logits[:real])

    # ------------------------------------------------------------------------------------------
    def finish_task(self, model: IncrementalClassifier, task: Task) -> None:
        """Train the generator on the task's real images plus the previous generator's replay
        (not after the run's last task, whose generator would never replay)."""
        if self.env.task_sizes and task.index + 1 >= len(self.env.task_sizes):
            return
        self.generator = self._train_generator(task)

    def _train_generator(self, task: Task) -> VAE:
        opts = self.options.generator
        env = self.env
        previous = self.generator if task.num_old else None
        vae = copy.deepcopy(previous) if previous is not None and opts.warm_start else self._new_vae()
        vae.requires_grad_(True)
        vae.train()
        if opts.optimizer == "sgd":
            optimizer: torch.optim.Optimizer = torch.optim.SGD(vae.parameters(), lr=opts.lr, momentum=opts.momentum,
                                                               weight_decay=opts.weight_decay)
        else:
            optimizer = torch.optim.Adam(vae.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
        run_step = env.dist.step_runner([vae], env.device)
        ratio = task.num_old / task.num_seen  # replayed images weigh r, real ones 1 - r (first task: 1)
        batch_size = opts.batch_size or env.train.batch_size
        epochs = opts.epochs or env.train.epochs
        total_steps = opts.steps
        log = lambda record: env.log({**record, "task": task.index + 1, "finish_task": True})  # noqa: E731
        window = WindowMeans()
        last: dict[str, float] = {}
        start = time.perf_counter()
        step = epoch = 0
        while (step < opts.steps) if opts.steps is not None else (epoch < epochs):
            first_step = step
            for batch in env.task_batches(task, augment=opts.augment, shuffle=True, batch_size=batch_size):
                if opts.steps is not None and step >= opts.steps:
                    break
                progress = step / opts.steps if opts.steps is not None else epoch / epochs
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(opts.lr, progress, opts.lr_decay_at)
                images = env.normalizer.denormalize(batch.images.float()).clamp(0, 1).contiguous()
                weights = torch.full((len(images),), 1.0 - ratio, device=env.device)
                if previous is not None:
                    replayed = previous.sample(len(images), env.device, env.generator)
                    images = torch.cat([images, replayed])
                    weights = torch.cat([weights, torch.full((len(replayed),), ratio, device=env.device)])
                noise = torch.randn(len(images), vae.z_dim, device=env.device, generator=env.generator)

                def losses() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
                    with env.autocast():
                        terms = generator_loss(vae, images, weights, noise, opts.recon_weight, opts.kl_weight)  # noqa: B023
                    return terms["total"], terms

                total, terms = run_step(losses)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                step += 1
                window.add(terms)
                if step % opts.log_every == 0:
                    last = window.pop_means()
                    log({"event": "synthesis", "step": step, "steps": total_steps, "epoch": epoch + 1, **last,
                         "lr": optimizer.param_groups[0]["lr"],
                         "steps_per_s": step / max(time.perf_counter() - start, 1e-9)})
            epoch += 1
            if step == first_step:
                raise RuntimeError(f"dgr: task {task.index + 1} gave the generator no training batch")
            if total_steps is None:
                total_steps = step * epochs  # every pass has the same number of batches
        if window.steps:
            last = window.pop_means()
            log({"event": "synthesis", "step": step, "steps": total_steps, "epoch": epoch, **last,
                 "lr": optimizer.param_groups[0]["lr"],
                 "steps_per_s": step / max(time.perf_counter() - start, 1e-9)})
        vae.eval()
        vae.requires_grad_(False)
        self.trainings.append({"task": task.index + 1, "steps": step, **last})
        return vae

    def diagnostics(self) -> dict[str, Any]:
        """The generator's size and each training's steps and last losses."""
        if self.generator is None:
            return {}
        parameters = sum(p.numel() for p in self.generator.parameters())
        return {"generator": {"kind": "vae", "parameters": parameters, "megabytes": round(parameters * 4 / 2**20, 2),
                              "trainings": list(self.trainings)}}

    # ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Old solver, generator and the record of its trainings."""
        return {"old_model": self.old.state_dict(),
                "generator": None if self.generator is None else self.generator.state_dict(),
                "trainings": [dict(t) for t in self.trainings]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.old.load_state_dict(state["old_model"], self.env)
        self.generator = None
        if state["generator"] is not None:
            self.generator = self._new_vae()
            self.generator.load_state_dict(state["generator"])
            self.generator.eval()
            self.generator.requires_grad_(False)
        self.trainings = [dict(t) for t in state["trainings"]]
