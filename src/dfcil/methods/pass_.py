"""PASS - Prototype Augmentation and Self-Supervision (Zhu, Zhang, Wang, Yin & Liu, "Prototype
Augmentation and Self-Supervision for Incremental Learning", CVPR 2021, pp. 5871-5880; the paper
has no arXiv version), as in the authors' code. Registered as ``pass``; the module is ``pass_``
because ``pass`` is a Python keyword.

Exemplar-free: PASS stores no image, only one class-mean feature (prototype) per old class. Its
objective is the paper's ``L = L_new + lambda * L_protoAug + gamma * L_kd`` with

* ``L_new``: self-supervised label augmentation (SSL): every real image is also shown rotated by
  90, 180 and 270 degrees, each rotation of each class being a class of its own (4 n_seen
  classes), and the CE over the 4 n_seen logits divided by the temperature (0.1 in the code)
  is taken over the 4 B images;
* ``L_protoAug``: B samples ``p_c + e * r``, c uniform over the old classes, ``e ~ N(0, I)``
  (d dims), classified by the head (all 4 n_seen logits, temperature 0.1) as the un-rotated
  class c; ``r = sqrt(mean_c tr(Sigma_c) / d)`` from the features of the first task's classes
  (unbiased covariance; fixed afterwards, as in the code);
* ``L_kd``: ``||F(x) - F_old(x)||_2`` over the whole 4 B x d feature batch (the code's
  ``torch.dist(feature, feature_old, 2)``: the Frobenius norm, neither squared nor averaged).

Weights: ``lambda = gamma = 10``, temperature 0.1: the code's defaults (``--protoAug_weight 10
--kd_weight 10 --temp 0.1``), which are the paper's. SKD's paper, the only paper of this project
that could have reported PASS as a baseline, does not (its comparisons are LwF, EWC, MAS,
SDC+EWC and exemplar-based methods), so no other weights are published for it.

Optimiser: the code's Adam (lr 1e-3, weight decay 2e-4 as L2): set ``train.optimizer: adam`` (PASS's
protocol configs and the mini suite do). Under SGD the tempered CE's logit gradients are 1 / T = 10
times a plain CE's, and at the other methods' SGD learning rates the first task diverges (CIFAR
smoke protocol, lr 0.05: loss 5e8 in epoch 2); ``loss_scale`` (a factor on the whole loss, which
Adam ignores) = T = 0.1 gives SGD a plain CE's gradient scale, but PASS's weights were set for
Adam: under SGD with that scale the smoke protocol's second task was not learned (20 % on the 4
classes after 3 epochs; the prototype augmentation kept growing the old heads' weights).
With Adam the same protocol keeps the old classes and learns the new ones slowly: old 94 % / new
10.5 % after 3 epochs a task, old 91 % / new 57 % (all 4 classes: 74 %) after 10: the feature
distillation (weight 10) dominates the loss early in a task.

Within the method contract: the model's heads are the un-rotated classes (what evaluation
reads, the code's ``outputs[:, ::4]``); the three rotated copies of every class live in
:class:`RotationHeads`, an auxiliary module (``aux_modules``) trained with the model and never
used at test time. The 4 n_seen logits are laid out rotation-major (``k * n_seen + y`` for class
y rotated by k * 90 degrees; the code interleaves them as ``4 y + k``, the same CE).

After each task, ``finish_task`` passes once over the task's real training images (un-augmented,
every image once: :attr:`RunEnv.task_batches`) with the model in eval mode and stores the class
means (the code uses its augmented training loader and drops the last incomplete batch).
Difference kept: bias-free heads (the code's linear layer has a bias).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dfcil.errors import ConfigError
from dfcil.methods.base import Batch, Loss, Method, OldModel, Phase, RunEnv, StepResult
from dfcil.models import IncrementalClassifier
from dfcil.scenario import Task
from dfcil.schema import join, require

ROTATIONS = 4  # 0, 90, 180 and 270 degrees


@dataclass(frozen=True)
class PASSOptions:
    """Options of ``pass`` (defaults: the authors' code, which are the paper's)."""

    proto_weight: float = 10.0  # lambda: prototype augmentation (code --protoAug_weight)
    kd_weight: float = 10.0  # gamma: feature distillation (code --kd_weight)
    temperature: float = 0.1  # divides the logits of both CE terms (code --temp)
    self_supervision: bool = True  # the rotations; false: one class per label (the paper's "w/o SSL")
    proto_batch: int | None = None  # augmented prototypes per step; None: the real batch size (code)
    # a factor on the whole loss (every term's weight): Adam (the code's optimiser) ignores it; under
    # SGD, 0.1 (= T) gives the tempered CE a plain CE's gradient scale (see the module docstring)
    loss_scale: float = 1.0

    def validate(self, path: str) -> None:
        """Check value ranges."""
        require(self.proto_weight >= 0, join(path, "proto_weight"), "must be >= 0")
        require(self.kd_weight >= 0, join(path, "kd_weight"), "must be >= 0")
        require(self.temperature > 0, join(path, "temperature"), "must be > 0")
        require(self.proto_batch is None or self.proto_batch >= 1, join(path, "proto_batch"), "must be >= 1")
        require(self.loss_scale > 0, join(path, "loss_scale"), "must be > 0")


# --- the loss terms ---------------------------------------------------------------------------------
def rotate_batch(images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch followed by its copies rotated by 90, 180 and 270 degrees (``torch.rot90`` over
    H, W, counter-clockwise), and their labels ``k * num_classes + y`` (rotation-major);
    ``channels_last``: the images in that memory format."""
    rotated = torch.cat([torch.rot90(images, k, (2, 3)) for k in range(ROTATIONS)])
    if channels_last:
        rotated = rotated.contiguous(memory_format=torch.channels_last)
    return rotated, torch.cat([labels + k * num_classes for k in range(ROTATIONS)])


def rotation_logits(logits: torch.Tensor, rotated: torch.Tensor) -> torch.Tensor:
    """The 4 n logits, rotation-major: ``logits`` (N, n) of the un-rotated classes, then the
    rotated classes' logits ``rotated`` (N, 3, n) (:class:`RotationHeads`)."""
    return torch.cat([logits, rotated.flatten(1)], dim=1)


def tempered_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """``CE(logits / T, labels)``, batch mean, in float32 (PASS's ``L_new`` and ``L_protoAug``)."""
    return F.cross_entropy(logits.float() / temperature, labels)


def feature_distance(features: torch.Tensor, old_features: torch.Tensor) -> torch.Tensor:
    """``||F - F_old||_2`` over the whole (N, d) batch: the Frobenius norm of the difference
    (PASS's ``L_kd``, the code's ``torch.dist``), in float32."""
    return torch.linalg.vector_norm(features.float() - old_features.detach().float())


def augment_prototypes(prototypes: torch.Tensor, radius: float, count: int,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` samples ``p_c + e * radius`` with c uniform over the rows of ``prototypes`` (the
    old classes 0..n-1) and ``e ~ N(0, I)``; returns the (count, d) features and the labels c."""
    labels = torch.randint(len(prototypes), (count,), generator=generator, device=prototypes.device)
    noise = torch.randn(count, prototypes.shape[1], generator=generator, device=prototypes.device)
    return prototypes[labels] + noise * radius, labels


@dataclass
class ClassStatistics:
    """Per-class sums of a pass over features: count, sum and sum of squared norms (float64)."""

    counts: torch.Tensor  # (n,)
    sums: torch.Tensor  # (n, d)
    squares: torch.Tensor  # (n,): sum of ||h||^2

    @staticmethod
    def zeros(num_classes: int, dim: int, device: torch.device) -> ClassStatistics:
        """Empty statistics of ``num_classes`` classes of ``dim``-dimensional features."""
        return ClassStatistics(torch.zeros(num_classes, dtype=torch.float64, device=device),
                               torch.zeros(num_classes, dim, dtype=torch.float64, device=device),
                               torch.zeros(num_classes, dtype=torch.float64, device=device))

    def add(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch of features with class indices ``labels`` (0..n-1)."""
        h = features.detach().double()
        self.counts.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
        self.sums.index_add_(0, labels, h)
        self.squares.index_add_(0, labels, h.pow(2).sum(dim=1))

    def means(self) -> torch.Tensor:
        """The class means (prototypes), (n, d) float32."""
        return (self.sums / self.counts[:, None]).float()

    def radius(self) -> float:
        """``sqrt(mean_c tr(Sigma_c) / d)``, ``Sigma_c`` the unbiased covariance of class c (the
        code's ``np.cov``): ``tr(Sigma_c) = (sum ||h||^2 - n_c ||mu_c||^2) / (n_c - 1)``."""
        if bool((self.counts < 2).any()):
            raise ValueError("every class needs at least two images for its covariance")
        means = self.sums / self.counts[:, None]
        traces = (self.squares - self.counts * means.pow(2).sum(dim=1)) / (self.counts - 1)
        return float(torch.sqrt(traces.clamp_min(0).mean() / self.sums.shape[1]))


class RotationHeads(nn.Module):
    """The classifier's rotated classes: per task a bias-free ``Linear(d, 3 n)`` whose rows are the
    task's n classes rotated by 90, then 180, then 270 degrees (initialised like the model's heads)."""

    def __init__(self, feature_dim: int, head_init_std: float | None) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.head_init_std = head_init_std
        self.heads = nn.ModuleList()

    def add_head(self, num_classes: int, device: torch.device) -> None:
        """The rotated copies of a new task of ``num_classes`` classes."""
        head = nn.Linear(self.feature_dim, (ROTATIONS - 1) * num_classes, bias=False, device=device)
        if self.head_init_std is not None:
            nn.init.normal_(head.weight, mean=0.0, std=self.head_init_std)
        self.heads.append(head)

    @property
    def head_sizes(self) -> list[int]:
        """Classes of each task's head."""
        return [head.out_features // (ROTATIONS - 1) for head in self.heads if isinstance(head, nn.Linear)]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N, 3, n_seen): the logits of every class rotated by k * 90 degrees, k = 1, 2, 3."""
        parts = [head(features).view(len(features), ROTATIONS - 1, -1) for head in self.heads]
        return torch.cat(parts, dim=2)


# --- the method ---------------------------------------------------------------------------------------
class PASS(Method):
    """Rotation self-supervision, prototype augmentation and feature distillation; stores one
    class-mean feature per old class."""

    name = "pass"
    description = ("PASS: stores one class-mean feature per class (no images); rotation self-supervision + "
                   "Gaussian prototype augmentation + feature KD")
    Options = PASSOptions
    # the first task already has the rotations (not plain CE), and its class means and radius are read later
    plain_first_task = False

    def __init__(self, options: PASSOptions, env: RunEnv) -> None:
        super().__init__(options, env)
        self.options: PASSOptions = options
        self.old = OldModel()
        self.rotation: RotationHeads | None = None
        self.prototypes: torch.Tensor | None = None  # (classes seen, d) float32, class-order rows
        self.radius: float | None = None  # from the first task's classes

    # ------------------------------------------------------------------------------------------
    def prepare_task(self, model: IncrementalClassifier, task: Task) -> None:
        """Freeze the old model and add the rotated copies of the task's classes."""
        known = 0 if self.prototypes is None else len(self.prototypes)
        if known != task.num_old:
            raise ConfigError(f"pass: the model knows {task.num_old} classes but this run holds the class means of "
                              f"{known}; PASS keeps them in its run state (a model file has none), so it cannot "
                              "continue a model it did not train")
        self.old.snapshot(model)
        if not self.options.self_supervision:
            return
        if self.rotation is None:
            self.rotation = RotationHeads(model.feature_dim, model.head_init_std)
        self.rotation.add_head(task.num_new, self.env.device)

    def aux_modules(self) -> nn.Module | None:
        """The rotated classes' heads (trained with the model, unused at test time)."""
        return self.rotation

    def training_step(self, model: IncrementalClassifier, batch: Batch, task: Task, phase: Phase) -> StepResult:
        """``L_new`` (+ ``L_protoAug`` and ``L_kd`` after the first task)."""
        opts = self.options
        real = len(batch.labels)
        n = task.num_seen
        images, labels = (rotate_batch(batch.images, batch.labels, n, self.env.channels_last)
                          if self.rotation is not None
                          else (batch.images, batch.labels))
        out = model(images)
        logits = out.logits[:, :n]
        full = rotation_logits(logits, self.rotation(out.features)) if self.rotation is not None else logits
        scale = opts.loss_scale
        losses = {"ce": Loss(tempered_cross_entropy(full, labels, opts.temperature), scale)}
        if task.num_old:
            assert self.prototypes is not None and self.radius is not None  # prepare_task checked them
            old_features = self.old(images).features
            losses["kd"] = Loss(feature_distance(out.features, old_features), scale * opts.kd_weight)
            count = opts.proto_batch or real
            features, proto_labels = augment_prototypes(self.prototypes[: task.num_old], self.radius, count,
                                                        self.env.generator)
            proto_logits = model.classify(features)[:, :n]
            if self.rotation is not None:
                proto_logits = rotation_logits(proto_logits, self.rotation(features))
            losses["proto_aug"] = Loss(tempered_cross_entropy(proto_logits, proto_labels, opts.temperature),
                                       scale * opts.proto_weight)
        return StepResult(losses, out.logits[:real])

    @torch.no_grad()
    def finish_task(self, model: IncrementalClassifier, task: Task) -> None:
        """The class means of the task's classes (and, after the first task, the radius) from one
        pass over its real training images, model in eval mode."""
        start = time.perf_counter()
        training = model.training
        model.eval()
        stats = ClassStatistics.zeros(task.num_new, model.feature_dim, self.env.device)
        try:
            for batch in self.env.task_batches(task):
                with self.env.autocast():
                    features = model.features(batch.images)
                stats.add(features, batch.labels - task.start)
        finally:
            model.train(training)
        for tensor in (stats.counts, stats.sums, stats.squares):
            self.env.dist.sum_in_place(tensor)
        means = stats.means()
        self.prototypes = means if self.prototypes is None else torch.cat([self.prototypes, means])
        if self.radius is None:
            self.radius = stats.radius()
        self.env.log({"event": "prototypes", "task": task.index + 1, "finish_task": True,
                      "classes": len(self.prototypes), "new": task.num_new, "dim": int(self.prototypes.shape[1]),
                      "radius": self.radius, "images": int(stats.counts.sum()),
                      "seconds": time.perf_counter() - start})

    def diagnostics(self) -> dict[str, Any]:
        """Number and dimension of the stored class means, and the augmentation radius."""
        if self.prototypes is None:
            return {}
        return {"prototypes": {"classes": len(self.prototypes), "dim": int(self.prototypes.shape[1]),
                               "radius": self.radius}}

    # ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Old model, rotated-class heads, class means and radius."""
        rotation = None if self.rotation is None else {"head_sizes": self.rotation.head_sizes,
                                                       "feature_dim": self.rotation.feature_dim,
                                                       "head_init_std": self.rotation.head_init_std,
                                                       "weights": self.rotation.state_dict()}
        return {"old_model": self.old.state_dict(), "rotation": rotation,
                "prototypes": None if self.prototypes is None else self.prototypes.clone(),
                "radius": self.radius}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.old.load_state_dict(state["old_model"], self.env)
        rotation = state["rotation"]
        self.rotation = None
        if rotation is not None:
            self.rotation = RotationHeads(rotation["feature_dim"], rotation["head_init_std"])
            for size in rotation["head_sizes"]:
                self.rotation.add_head(size, self.env.device)
            self.rotation.load_state_dict(rotation["weights"])
        prototypes = state["prototypes"]
        self.prototypes = None if prototypes is None else prototypes.to(self.env.device)
        self.radius = state["radius"]
