"""The generator losses of MFGR's knowledge recording (DAFL-style, arXiv:1904.01186; MFGR arXiv:2109.00328).

All take the old model's logits over the old classes (and, for BN alignment, the statistics of
the inputs of its BatchNorm layers) on a batch of generated images.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from dfcil.hooks import BatchNormInput


def one_hot_loss(logits: torch.Tensor) -> torch.Tensor:
    """``l_oh = CE(o, argmax o)``: each generated image should look like one old class."""
    logits = logits.float()
    return F.cross_entropy(logits, logits.argmax(dim=1))


def class_diversity_loss(logits: torch.Tensor, log_base: Literal["e", "10"] = "e") -> torch.Tensor:
    """``l_cd = -H(mean_i softmax(o_i))``: lowest, ``-log K``, for balanced classes. ``log_base``
    ``"10"`` takes the entropy in decimal digits (MFGR's code: ``log10``), 1 / ln 10 = 0.434 of
    the natural-log value."""
    probs = F.softmax(logits.float(), dim=1).mean(dim=0)
    entropy_nats = (probs * torch.log(probs.clamp_min(1e-12))).sum()
    return entropy_nats / math.log(10.0) if log_base == "10" else entropy_nats


def bn_moment_loss(stats: list[BatchNormInput], reduction: Literal["mean", "sum"] = "mean") -> torch.Tensor:
    """``||mu_batch - mu_run||_2 + ||var_batch - var_run||_2`` per BN layer, averaged over the
    layers (MFGR's ``l_bn``, as its code does) or summed (``reduction="sum"``: SKD's ``R_feature``)."""
    if not stats:
        raise ValueError("no BatchNorm statistics were recorded")
    per_layer = [
        torch.linalg.vector_norm(s.mean - s.running_mean.float()) + torch.linalg.vector_norm(s.var - s.running_var.float())
        for s in stats
    ]
    total = torch.stack(per_layer)
    return total.sum() if reduction == "sum" else total.mean()


def random_pairs(count: int, pairs: int, generator: torch.Generator | None = None,
                 device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``pairs`` random index pairs ``(i, j)`` with ``i != j`` from ``range(count)``."""
    if count < 2:
        raise ValueError("the sample-diversity loss needs at least two samples")
    first = torch.randint(0, count, (pairs,), generator=generator, device=generator.device if generator else device)
    offset = torch.randint(1, count, (pairs,), generator=generator, device=first.device)
    return first, (first + offset) % count


def sample_diversity_loss(values: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``l_div = -mean over pairs of (KL(a || b) + KL(b || a)) / 2`` (MFGR Eq. 5).

    ``a``, ``b`` are softmax distributions of two samples over their flattened ``values``: the
    pixels of each generated image (the authors' code) or the old model's logits. Minimising
    the loss pushes the pairs apart, i.e. makes generated samples more different.
    """
    log_p = F.log_softmax(values.float().flatten(1), dim=1)
    log_a, log_b = log_p[first], log_p[second]
    kl_ab = (log_a.exp() * (log_a - log_b)).sum(dim=1)
    kl_ba = (log_b.exp() * (log_b - log_a)).sum(dim=1)
    return -((kl_ab + kl_ba) / 2).mean()


def activation_loss(features: torch.Tensor) -> torch.Tensor:
    """DAFL's activation loss ``-mean |f(x)|`` on the old model's penultimate features."""
    return -features.float().abs().mean()


def total_variation_loss(images: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation: mean absolute difference of vertically and horizontally
    adjacent pixels."""
    images = images.float()
    return (images[:, :, 1:, :] - images[:, :, :-1, :]).abs().mean() + (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().mean()
