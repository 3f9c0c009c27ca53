"""Per-parameter importance and the quadratic anchor penalty of EWC and MAS.

Both methods estimate, after each task, how much every parameter of the model matters for what
it has learned, from per-image gradients of a scalar function ``s(x)`` of the model's logits
over the seen classes (``z``):

* EWC (Kirkpatrick et al., arXiv:1612.00796): ``s = log softmax(z)_y`` and the importance is the
  diagonal Fisher information ``F_i = mean_x (ds/dtheta_i)^2`` (:func:`fisher_score`);
* MAS (Aljundi et al., arXiv:1711.09601, Eq. 2): ``s = ||z||_2^2`` and ``Omega_i = mean_x
  |ds/dtheta_i|`` (:func:`mas_score`).

Two estimates, both in float32 without autocast, over every real training image of the task:

* :func:`per_image_importance`: the definitions above, one gradient per image, with the model in
  eval mode (BatchNorm with its running statistics, so that an image's gradient does not depend
  on the others in its batch);
* :func:`batch_importance`: FACIL's (arXiv:2010.15277) and the MAS code's, one gradient per batch
  of the batch-mean score, the model in training mode, ``reduce(g_batch) * B`` summed and divided
  by the number of images: a much smaller estimate on a network with BatchNorm, for which the
  usual lambdas (FACIL's EWC 5000) were set.

Neither changes the model (its BatchNorm statistics and training mode are put back).
:class:`AnchoredImportance` accumulates the estimates over tasks, keeps the parameters of the
end of the last task (the anchors ``theta*``) and gives the penalty
``sum_i Omega_i (theta_i - theta*_i)^2`` over the parameters that have an anchor: the backbone and
every head of an earlier task, never the head of the task being learned.

The penalty is a quadratic of curvature ``h = 2 lambda Omega_i`` in each parameter, and SGD
integrates it explicitly: with momentum ``beta`` the heavy-ball step on such a quadratic is stable
only while ``lr h < 2 (1 + beta)`` (``2 (1 + beta) / (1 + 2 beta)`` with Nesterov), whatever the
other losses do. :func:`stable_importance_max` gives the largest ``Omega`` below that bound, and
``AnchoredImportance.update(total_max=...)`` caps the accumulated importance there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from dfcil.config import TrainConfig
from dfcil.distributed import SINGLE, Distributed
from dfcil.losses import cross_entropy_seen, local_cross_entropy
from dfcil.methods.base import Batch
from dfcil.scenario import Task

#: A per-image scalar of the seen-class logits ``(1, C)`` and the image's label ``(1,)``.
Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def fisher_score(labels: Literal["predicted", "true"]) -> Score:
    """EWC's ``log p(y | x)`` of one image: ``y`` the model's own prediction (``argmax z``,
    ``predicted``) or the image's label (``true``, the empirical Fisher)."""

    def score(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        target = logits.argmax(dim=1) if labels == "predicted" else label
        return -F.cross_entropy(logits, target)

    return score


def mas_score(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """MAS's ``||z||_2^2``: the squared L2 norm of the seen-class logits, the mean over the rows
    (one image: its own; the label is not used: MAS needs none)."""
    return logits.pow(2).sum(dim=1).mean()


def _mean_over_images(named: list[tuple[str, nn.Parameter]], sums: list[torch.Tensor], count: int,
                      dist: Distributed) -> tuple[dict[str, torch.Tensor], int]:
    """The importance sums divided by the images counted (both summed over ranks in a
    multi-process run), by parameter name, and that image count."""
    if dist.enabled:
        for total in sums:
            dist.sum_in_place(total)
        count = int(dist.sum_in_place(torch.tensor(float(count), device=sums[0].device)).item())
    if count == 0:
        raise ValueError("no image to estimate the importance from")
    return {name: total / count for (name, _), total in zip(named, sums)}, count


def per_image_importance(
    model: nn.Module,
    batches: Iterable[Batch],
    score: Score,
    reduce: Literal["square", "abs"],
    num_classes: int,
    dist: Distributed = SINGLE,
) -> tuple[dict[str, torch.Tensor], int]:
    """``mean_x reduce(d score(z(x)) / d theta)`` for every parameter of ``model`` that requires a
    gradient, with ``z(x)`` the first ``num_classes`` logits of one image, and the number of
    images: ``(importance by parameter name, images)``.

    ``model`` is an :class:`~dfcil.models.IncrementalClassifier` (or any module whose output has
    a ``logits`` attribute); it runs in eval mode, each image alone, in float32 without autocast,
    and gets its training mode back afterwards; its parameters' ``.grad`` are left untouched. In
    a multi-process run each rank passes its own images and the sums are added over ranks.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no parameter that requires a gradient")
    params = [p for _, p in named]
    sums = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    count = 0
    was_training = model.training
    model.eval()
    try:
        device_type = params[0].device.type
        with torch.autocast(device_type=device_type, enabled=False), torch.enable_grad():
            for batch in batches:
                images = batch.images.float()
                for index in range(len(images)):
                    logits = model(images[index : index + 1]).logits[:, :num_classes].float()
                    value = score(logits, batch.labels[index : index + 1])
                    grads = torch.autograd.grad(value, params, allow_unused=True)
                    for total, grad in zip(sums, grads):
                        if grad is not None:
                            total.add_(grad.float().square() if reduce == "square" else grad.float().abs())
                    count += 1
    finally:
        model.train(was_training)
    return _mean_over_images(named, sums, count, dist)


def batch_importance(
    model: nn.Module,
    batches: Iterable[Batch],
    score: Score,
    reduce: Literal["square", "abs"],
    num_classes: int,
    dist: Distributed = SINGLE,
) -> tuple[dict[str, torch.Tensor], int]:
    """FACIL's estimate (arXiv:2010.15277, its ``compute_fisher_matrix_diag`` and MAS's
    ``estimate_parameter_importance``): ``sum_b B_b reduce(d mean_b score / d theta) / N`` over the
    batches ``b`` of ``B_b`` images, ``N`` images in all, the model in training mode (BatchNorm
    with the batch's statistics), as the authors' code computes it. The batch gradient averages
    the images' gradients before squaring, and the batch statistics couple them: on a trained
    ResNet-32 its values are tens to thousands of times smaller than :func:`per_image_importance`'s,
    and FACIL's lambda (5000 for EWC) is set for them. The BatchNorm running statistics this
    forward would update are put back, and the training mode too; ``.grad`` is left untouched. A
    batch of one image (the last of a task whose size leaves one over) is passed over: BatchNorm's
    batch statistics need two, and the engine's training epochs drop such a batch too.
    Same return value as :func:`per_image_importance`."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no parameter that requires a gradient")
    params = [p for _, p in named]
    sums = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    count = 0
    was_training = model.training
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    batch_norm = any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in model.modules())
    model.train()
    try:
        with torch.autocast(device_type=params[0].device.type, enabled=False), torch.enable_grad():
            for batch in batches:
                if len(batch.labels) < 2 and batch_norm:
                    continue  # BatchNorm in training mode needs two images (a trailing batch of one)
                logits = model(batch.images.float()).logits[:, :num_classes].float()
                grads = torch.autograd.grad(score(logits, batch.labels), params, allow_unused=True)
                size = len(batch.labels)
                for total, grad in zip(sums, grads):
                    if grad is not None:
                        total.add_(grad.float().square() if reduce == "square" else grad.float().abs(), alpha=size)
                count += size
    finally:
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
        model.train(was_training)
    return _mean_over_images(named, sums, count, dist)


def estimate_importance(
    estimate: Literal["batch", "per_image"],
    model: nn.Module,
    batches: Iterable[Batch],
    score: Score,
    reduce: Literal["square", "abs"],
    num_classes: int,
    dist: Distributed = SINGLE,
) -> tuple[dict[str, torch.Tensor], int]:
    """:func:`batch_importance` (``batch``) or :func:`per_image_importance` (``per_image``)."""
    function = batch_importance if estimate == "batch" else per_image_importance
    return function(model, batches, score, reduce, num_classes, dist)


def task_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, task: Task,
                       kind: Literal["seen", "local"]) -> torch.Tensor:
    """The classification loss of EWC and MAS: CE over the seen classes (``seen``) or over the
    task's own classes (``local``)."""
    if kind == "local":
        return local_cross_entropy(logits, labels, task.start, task.stop)
    return cross_entropy_seen(logits, labels, task.num_seen)


def quadratic_penalty(model: nn.Module, importance: dict[str, torch.Tensor],
                      anchors: dict[str, torch.Tensor]) -> torch.Tensor:
    """``sum_i Omega_i (theta_i - theta*_i)^2`` over the parameters of ``model`` named in
    ``anchors`` (float32 scalar; the parameters without an anchor, e.g. a new head, add nothing)."""
    total: torch.Tensor | None = None
    for name, parameter in model.named_parameters():
        anchor = anchors.get(name)
        if anchor is None:
            continue
        term = (importance[name] * (parameter.float() - anchor).square()).sum()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("no parameter of the model has an anchor")
    return total


def stable_importance_max(train: TrainConfig, lamb: float, margin: float = 0.5) -> float | None:
    """The largest importance ``Omega`` whose penalty ``lamb Omega (theta - theta*)^2`` SGD with
    ``train``'s lr, momentum and Nesterov flag still integrates stably, times ``margin``:
    ``margin * bound / (2 lr lamb)`` with ``bound = 2 (1 + beta)`` (heavy ball) or
    ``2 (1 + beta) / (1 + 2 beta)`` (Nesterov) - the step of a quadratic of curvature ``h`` is
    stable iff ``lr h < bound``. ``margin`` < 1 leaves room for the curvature the other losses add
    to the same parameter. None (no cap) for Adam, whose step is normalised, and for ``lamb`` 0."""
    if not 0 < margin <= 1:
        raise ValueError(f"margin must be in (0, 1], got {margin}")
    if train.optimizer != "sgd" or lamb == 0:
        return None
    beta = train.momentum
    bound = 2 * (1 + beta) / (1 + 2 * beta) if train.nesterov else 2 * (1 + beta)
    return margin * bound / (2 * train.lr * lamb)


def accumulate(previous: dict[str, torch.Tensor], current: dict[str, torch.Tensor],
               alpha: float | None) -> dict[str, torch.Tensor]:
    """The importance after a task: ``previous + current`` (``alpha`` None) or the running
    average ``alpha * previous + (1 - alpha) * current`` (FACIL's EWC, arXiv:2010.15277). A
    parameter without a previous estimate (a head added since) counts as 0 there."""
    out = {}
    for name, new in current.items():
        old = previous.get(name)
        if old is None:
            old = torch.zeros_like(new)
        out[name] = old + new if alpha is None else alpha * old + (1.0 - alpha) * new
    return out


class AnchoredImportance:
    """The accumulated importance, the anchors ``theta*`` (the parameters at the end of the last
    task) and a summary of every task's estimate, resumable through :meth:`state_dict`."""

    def __init__(self, alpha: float | None) -> None:
        self.alpha = alpha
        self.importance: dict[str, torch.Tensor] = {}
        self.anchors: dict[str, torch.Tensor] = {}
        self.estimates: list[dict[str, Any]] = []  # per task: images, mean and max of its estimate

    @property
    def ready(self) -> bool:
        """Whether a task has been estimated (the penalty exists)."""
        return bool(self.anchors)

    def update(self, model: nn.Module, current: dict[str, torch.Tensor], images: int, task: int,
               clamp: float | None = None, total_max: float | None = None) -> None:
        """Fold the estimate ``current`` of task ``task`` (1-based) in, each value first clamped at
        ``clamp`` when given (PyCIL's ``fishermax``), cap the accumulated importance at
        ``total_max`` when given (:func:`stable_importance_max`), and anchor at ``model``'s
        parameters now. The summary keeps the estimate's mean and max before the clamp, the share
        of the values the clamp cut, and the accumulated importance's max before the cap and the
        share of its values the cap cut."""
        values = torch.cat([v.flatten() for v in current.values()])
        clamped = 0.0
        if clamp is not None:
            clamped = float((values > clamp).float().mean())
            current = {name: v.clamp(max=clamp) for name, v in current.items()}
        self.importance = accumulate(self.importance, current, self.alpha)
        totals = torch.cat([v.flatten() for v in self.importance.values()])
        total_max_before = float(totals.max())
        capped = 0.0
        if total_max is not None:
            capped = float((totals > total_max).float().mean())
            self.importance = {name: v.clamp(max=total_max) for name, v in self.importance.items()}
        self.anchors = {name: p.detach().float().clone() for name, p in model.named_parameters() if name in current}
        self.estimates = [e for e in self.estimates if e["task"] != task]
        self.estimates.append({"task": task, "images": images, "mean": float(values.mean()),
                               "max": float(values.max()), "clamped": clamped,
                               "total_max": total_max_before, "capped": capped})

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """:func:`quadratic_penalty` of ``model`` against the anchors."""
        return quadratic_penalty(model, self.importance, self.anchors)

    def state_dict(self) -> dict[str, Any]:
        """Importance, anchors and the estimates' summary."""
        return {"importance": dict(self.importance), "anchors": dict(self.anchors),
                "estimates": [dict(e) for e in self.estimates]}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        """Restore :meth:`state_dict` onto ``device``."""
        self.importance = {k: v.to(device).clone() for k, v in state["importance"].items()}
        self.anchors = {k: v.to(device).clone() for k, v in state["anchors"].items()}
        self.estimates = [dict(e) for e in state["estimates"]]
