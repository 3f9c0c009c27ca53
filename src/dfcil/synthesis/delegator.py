"""SKD's self-distilled knowledge delegator, trained by imitate & explore.

The delegator D is a DFAD-shaped generator (z-dim 256; Linear -> BN -> [upsample, conv, BN,
LeakyReLU] x 2 -> conv -> tanh -> helper BN(3, affine=False), i.e. the generator of
:mod:`dfcil.synthesis.generator` with a 256-d latent). Against a frozen model T it is trained
with a re-initialised student S of T's architecture (SKD's Sec. III):

* imitate (``imitate_steps`` = 5 per iteration): S minimises
  ``psi = 1 - cos(nor(F_T(x)), nor(F_S(x)))`` (batch mean, pooled penultimate features) on
  detached delegator images; SGD lr 0.1, momentum 0.9, wd 5e-4;
* explore (1 per iteration): D minimises ``lambda * (-psi) + L_cat + L_div + R_feature`` with
  ``L_cat = CE(T(x), argmax T(x))``, ``L_div = sum_k w_k log w_k`` (w = batch-mean softmax of
  T) and ``R_feature`` = sum over T's BN layers of ``||mu - mu_run||_2 + ||var - var_run||_2``;
  Adam lr 1e-3. S stays in train mode (its BN statistics follow the delegator's images); it is
  stepped in explore only with ``step_student_in_explore``.
* both learning rates drop by ``lr_decay_factor`` every ``lr_decay_every`` iterations.

Unlike the per-task generators of the other methods, the delegator continues from the
previous task's delegator (SKD's continual delegator, ``continual: true``); S is new each task.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dfcil.distributed import SINGLE, Distributed
from dfcil.hooks import BatchNormInputs
from dfcil.models import IncrementalClassifier
from dfcil.schema import join, require
from dfcil.synthesis.dafl_losses import bn_moment_loss, class_diversity_loss, one_hot_loss
from dfcil.synthesis.generator import Generator, build_generator, generate_images
from dfcil.synthesis.monitor import OutputSaturation, WindowMeans, confidence_and_coverage


def feature_cosine_discrepancy(teacher_features: torch.Tensor, student_features: torch.Tensor) -> torch.Tensor:
    """SKD's ``psi = mean_i 1 - cos(nor(f_T_i), nor(f_S_i))``: 0 for identical directions, 2 for
    opposite ones (float32)."""
    return (1.0 - F.cosine_similarity(teacher_features.float(), student_features.float(), dim=1, eps=1e-8)).mean()


@dataclass(frozen=True)
class DelegatorOptions:
    """Training of the knowledge delegator (defaults: the paper, iterations scaled by config)."""

    iterations: int = 15000  # explore steps; ~300 epochs x 50 iterations (the paper states no count)
    imitate_steps: int = 5
    batch_size: int = 256
    z_dim: int = 256
    bn_eps: float = 0.8
    student_lr: float = 0.1
    student_momentum: float = 0.9
    student_weight_decay: float = 5e-4
    delegator_lr: float = 1e-3
    lr_decay_every: int = 5000  # iterations (the paper: every 100 epochs)
    lr_decay_factor: float = 0.1
    explore_weight: float = 1.0  # lambda (20 for fine-grained Flowers-102)
    category_weight: float = 1.0
    diversity_weight: float = 1.0
    bn_weight: float = 1.0
    step_student_in_explore: bool = False
    continual: bool = True  # start each task from the previous task's delegator
    log_every: int = 100

    def validate(self, path: str) -> None:
        """Check value ranges."""
        for name in ("iterations", "batch_size", "z_dim", "lr_decay_every", "log_every"):
            require(getattr(self, name) >= 1, join(path, name), "must be >= 1")
        require(self.batch_size >= 2, join(path, "batch_size"), "must be >= 2")
        require(self.imitate_steps >= 0, join(path, "imitate_steps"), "must be >= 0")
        for name in ("student_lr", "delegator_lr", "bn_eps"):
            require(getattr(self, name) > 0, join(path, name), "must be > 0")
        require(0 < self.lr_decay_factor <= 1, join(path, "lr_decay_factor"), "must be in (0, 1]")
        require(0 <= self.student_momentum < 1, join(path, "student_momentum"), "must be in [0, 1)")
        for name in ("student_weight_decay", "explore_weight", "category_weight", "diversity_weight", "bn_weight"):
            require(getattr(self, name) >= 0, join(path, name), "must be >= 0")


def _teacher_outputs(teacher: IncrementalClassifier, images: torch.Tensor, num_old: int) -> tuple[torch.Tensor, torch.Tensor]:
    out = teacher(images)
    return out.features, out.logits[:, :num_old]


class KnowledgeDelegator:
    """The delegator D of one run; trained before every incremental task against the current model."""

    def __init__(self, options: DelegatorOptions, image_size: int, device: torch.device,
                 autocast: Callable[[], Any], rng: torch.Generator, channels_last: bool,
                 dist: Distributed = SINGLE) -> None:
        self.options = options
        self.dist = dist
        self.image_size = image_size
        self.device = device
        self.autocast = autocast
        self.rng = rng
        self.channels_last = channels_last
        self.generator: Generator | None = None
        # the training in progress (see train's ``progress``): its iterations done and the live
        # student and optimisers while it runs; after a restore, the saved states to continue from
        self.iterations_done: int | None = None
        self._live: dict[str, Any] | None = None
        self.resume_states: dict[str, Any] | None = None

    def _layout(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def train(self, teacher: IncrementalClassifier, student: IncrementalClassifier, num_old: int,
              log: Callable[[dict[str, Any]], None], progress: Callable[[int], None] | None = None) -> dict[str, float]:
        """Imitate & explore against the frozen ``teacher`` with the freshly initialised ``student``
        (same architecture; its heads are not used). Returns the last logged averages.

        ``progress(iteration)`` is called after every iteration (and its log record): a checkpoint
        taken there (:meth:`state_dict`, which then holds the student and the optimisers too) is
        continued at the next iteration by a delegator restored from it, given the student
        restored from ``resume_states["student"]`` (the caller restores the random streams).

        In a multi-process run each rank draws its slice of every delegator batch; DDP averages
        the student's gradients in imitate and the delegator's (and, with
        ``step_student_in_explore``, the student's) in explore; R_feature uses the BN statistics
        of the global batch."""
        opts = self.options
        resume = self.resume_states if self.generator is not None else None
        self.resume_states = None
        if resume is None and (self.generator is None or not opts.continual):
            self.generator = build_generator(self.image_size, opts.z_dim, opts.bn_eps,
                                             self.channels_last).to(self.device)
        delegator = self.generator
        assert delegator is not None  # a new one, or the one kept (continual) or restored (resume)
        teacher.eval()
        student.train()
        delegator.train()
        student_opt = torch.optim.SGD(student.backbone.parameters(), lr=opts.student_lr,
                                      momentum=opts.student_momentum, weight_decay=opts.student_weight_decay)
        delegator_opt = torch.optim.Adam(delegator.parameters(), lr=opts.delegator_lr)
        stepped: list[torch.optim.Optimizer] = [delegator_opt]
        if opts.imitate_steps or opts.step_student_in_explore:
            stepped.append(student_opt)
        schedules = [torch.optim.lr_scheduler.StepLR(o, opts.lr_decay_every, opts.lr_decay_factor) for o in stepped]
        first_iteration = 1
        if resume is not None:
            student_opt.load_state_dict(resume["student_optimizer"])
            delegator_opt.load_state_dict(resume["delegator_optimizer"])
            for schedule, state in zip(schedules, resume["schedules"], strict=True):
                schedule.load_state_dict(state)
            first_iteration = int(resume["iterations_done"]) + 1
        self._live = {"student": student, "student_optimizer": student_opt, "delegator_optimizer": delegator_opt,
                      "schedules": schedules}
        window = WindowMeans()
        last: dict[str, float] = {}
        batch = self.dist.shard_size(opts.batch_size)
        imitate_step = self.dist.step_runner([student.backbone], self.device)
        explored: list[torch.nn.Module] = [delegator, student.backbone] if opts.step_student_in_explore else [delegator]
        explore_step = self.dist.step_runner(explored, self.device)

        def imitate_loss() -> torch.Tensor:
            with torch.no_grad(), self.autocast():
                images = self._layout(delegator(delegator.sample_latent(batch, self.device, self.rng)))
                teacher_features = teacher(images).features
            with self.autocast():
                return feature_cosine_discrepancy(teacher_features, student.features(images))

        def explore_losses(bn: BatchNormInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
            with self.autocast():
                images = self._layout(delegator(delegator.sample_latent(batch, self.device, self.rng)))
                teacher_features, logits = _teacher_outputs(teacher, images, num_old)
                psi = feature_cosine_discrepancy(teacher_features, student.features(images))
                terms = {
                    "explore": -psi,
                    "category": one_hot_loss(logits.float()),
                    "diversity": class_diversity_loss(logits),
                    "bn": bn_moment_loss(bn.stats, reduction="sum"),
                }
            bn.clear()
            total = sum(weights[name] * value for name, value in terms.items())
            assert isinstance(total, torch.Tensor)
            return total, terms, logits

        weights = {"explore": opts.explore_weight, "category": opts.category_weight,
                   "diversity": opts.diversity_weight, "bn": opts.bn_weight}
        start = time.perf_counter()
        for iteration in range(first_iteration, opts.iterations + 1):
            imitate = torch.zeros((), device=self.device)
            for _ in range(opts.imitate_steps):
                loss = imitate_step(imitate_loss)
                student_opt.zero_grad(set_to_none=True)
                loss.backward()
                student_opt.step()
                imitate += loss.detach().float() / opts.imitate_steps
            with BatchNormInputs(teacher, self.dist) as bn, OutputSaturation(delegator.output_tanh) as saturation:
                total, terms, logits = explore_step(lambda: explore_losses(bn))
            assert saturation.value is not None  # set by the delegator's forward in explore_losses
            psi = -terms["explore"]
            delegator_opt.zero_grad(set_to_none=True)
            student_opt.zero_grad(set_to_none=True)
            total.backward()
            delegator_opt.step()
            if opts.step_student_in_explore:
                student_opt.step()
            for schedule in schedules:
                schedule.step()
            confidence, coverage = confidence_and_coverage(logits)
            window.add({"imitate_psi": imitate, "explore_psi": psi, "total": total,
                        **{name: v for name, v in terms.items() if name != "explore"},
                        "confidence": confidence, "coverage": coverage, "tanh_saturated": saturation.value})
            if iteration % opts.log_every == 0 or iteration == opts.iterations:
                last = window.pop_means()
                seconds = time.perf_counter() - start
                log({"event": "delegator", "iteration": iteration, "iterations": opts.iterations, **last,
                     "iterations_per_s": (iteration - first_iteration + 1) / seconds, "seconds": seconds})
            self.iterations_done = iteration
            if progress is not None:
                progress(iteration)  # after the iteration's record: a checkpoint here keeps it
        self.iterations_done = None
        self._live = None
        delegator.eval()
        student.eval()
        return last

    @torch.no_grad()
    def generate(self, count: int) -> torch.Tensor:
        """``count`` pseudo images (delegator in eval mode), normalised units."""
        assert self.generator is not None, "the delegator has not been trained yet"
        return generate_images(self.generator, count, self.device, self.rng, self.autocast, self.channels_last)

    def state_dict(self) -> dict[str, Any] | None:
        """The delegator's weights (None before its first training), and, while it trains, the
        iterations done, the student and the optimiser and schedule states."""
        if self.generator is None:
            return None
        state: dict[str, Any] = {"generator": self.generator.state_dict()}
        if self._live is not None and self.iterations_done is not None:
            state["training"] = {
                "iterations_done": self.iterations_done,
                "student": self._live["student"].state_dict(),
                "student_optimizer": self._live["student_optimizer"].state_dict(),
                "delegator_optimizer": self._live["delegator_optimizer"].state_dict(),
                "schedules": [schedule.state_dict() for schedule in self._live["schedules"]],
            }
        return state

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state_dict` (a training in progress goes to ``resume_states``)."""
        self._live, self.iterations_done, self.resume_states = None, None, None
        if state is None:
            self.generator = None
            return
        if "generator" not in state:  # checkpoints before resumable training: the weights alone
            state = {"generator": state}
        self.generator = build_generator(self.image_size, self.options.z_dim, self.options.bn_eps,
                                         self.channels_last).to(self.device)
        self.generator.load_state_dict(state["generator"])
        self.generator.eval()
        self.resume_states = state.get("training")
