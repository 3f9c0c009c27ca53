"""The four synthesizer losses of ABD / R-DFCIL (ABD arXiv:2106.09701 Sec. 4; R-DFCIL arXiv:2207.09213 Sec. 3.4)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dfcil.hooks import BatchNormInput


def content_loss(logits: torch.Tensor, temperature: float = 1000.0) -> torch.Tensor:
    """CE(logits / tau, argmax logits): pushes the old model towards confident predictions."""
    logits = logits.float()
    return F.cross_entropy(logits / temperature, logits.argmax(dim=1))


def label_diversity_loss(logits: torch.Tensor) -> torch.Tensor:
    """``1 - H(mean softmax) / log K``: 0 when classes are predicted uniformly, 1 when one class wins."""
    probs = F.softmax(logits.float(), dim=1).mean(dim=0)
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum()
    classes = logits.shape[1]
    if classes < 2:
        return torch.zeros((), device=logits.device)
    return 1.0 - entropy / math.log(classes)


def bn_statistics_kl(stats: list[BatchNormInput], eps: float = 1e-8) -> torch.Tensor:
    """Mean over layers of the channel-mean KL(N(mu_run, var_run) || N(mu_batch, var_batch))."""
    if not stats:
        raise ValueError("no BatchNorm statistics were recorded")
    losses = []
    for s in stats:
        var_b = s.var + eps
        var_r = s.running_var.float()
        kl = 0.5 * (torch.log(var_b / var_r) + (var_r + (s.running_mean.float() - s.mean) ** 2) / var_b - 1.0)
        losses.append(kl.mean())
    return torch.stack(losses).mean()


def gaussian_kernel(size: int = 5, sigma: float = 1.0, device: torch.device | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised 2-D Gaussian kernel (size x size), computed on ``device`` (no host copy)."""
    coords = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = torch.outer(g, g)
    return (kernel / kernel.sum()).to(dtype)


def gaussian_blur(images: torch.Tensor, size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    """Depthwise Gaussian blur with reflection padding (same size as the input)."""
    channels = images.shape[1]
    kernel = gaussian_kernel(size, sigma, images.device, images.dtype)
    weight = kernel.expand(channels, 1, size, size).contiguous()
    padded = F.pad(images, [size // 2] * 4, mode="reflect")
    return F.conv2d(padded, weight, groups=channels)


def image_prior_loss(images: torch.Tensor) -> torch.Tensor:
    """MSE between the images and their 5x5 Gaussian-blurred copies (smoothness prior)."""
    images = images.float()
    return F.mse_loss(images, gaussian_blur(images))
