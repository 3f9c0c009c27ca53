"""The variational autoencoder that DGR replays from (ABD's code runs DGR with this family).

ABD (arXiv:2106.09701) reports DGR (Shin et al., arXiv:1705.08690) with the convolutional VAE of
van de Ven & Tolias (arXiv:1809.10635) in its code (``models/autoencoder.py``, ``CIFAR_GEN``):
for 32-px images, with width w = 64,

* encoder: three 4x4 stride-2 convolutions 3 -> w -> 2w -> 8w (padding 1, ReLU, no BatchNorm),
  32 -> 16 -> 8 -> 4 px;
* ``q(z|x)``: two linear maps of the flattened 8w x 4 x 4 volume to the mean and log-variance of
  a ``z_dim`` = 1024 Gaussian;
* decoder: linear ``z -> 8w x 4 x 4``, three 4x4 stride-2 transposed convolutions
  8w -> 4w -> w -> 3 (ReLU between them), sigmoid: images in [0, 1] pixel units.

About 29 M parameters at w = 64 (the two ``q`` maps and the projection are 8.4 M each). Loss
(Kingma & Welling, arXiv:1312.6114, App. B, as in the code): per-image mean BCE of the
reconstruction (weighted per image) plus the KL of ``q(z|x)`` from N(0, I) divided by the
number of pixel values (3 H W), each weight 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class VAE(nn.Module):
    """Convolutional VAE for square RGB images whose side is a multiple of 8, in [0, 1] units."""

    def __init__(self, image_size: int = 32, z_dim: int = 1024, width: int = 64) -> None:
        super().__init__()
        if image_size % 8:
            raise ValueError(f"the VAE needs an image side divisible by 8, got {image_size}")
        self.image_size = image_size
        self.z_dim = z_dim
        self.width = width
        self.top = 8 * width  # channels of the encoder's last volume
        self.cells = image_size // 8
        volume = self.top * self.cells**2

        def down(cin: int, cout: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.ReLU())

        def up(cin: int, cout: int) -> nn.Module:
            return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1), nn.ReLU())

        self.encoder = nn.Sequential(down(3, width), down(width, 2 * width), down(2 * width, self.top))
        self.q_mean = nn.Linear(volume, z_dim)
        self.q_logvar = nn.Linear(volume, z_dim)
        self.project = nn.Linear(z_dim, volume)
        self.decoder = nn.Sequential(up(self.top, 4 * width), up(4 * width, width),
                                     nn.ConvTranspose2d(width, 3, 4, stride=2, padding=1))

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of ``q(z | images)``, each (N, z_dim)."""
        hidden = self.encoder(images).flatten(1)
        return self.q_mean(hidden), self.q_logvar(hidden)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's pre-sigmoid output (N, 3, H, W) for latent codes ``z``."""
        return self.decoder(self.project(z).view(len(z), self.top, self.cells, self.cells))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] for latent codes ``z``."""
        return torch.sigmoid(self.decode_logits(z))

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction logits, mean and log-variance of ``images``; the code is
        ``mu + noise * exp(logvar / 2)`` (``noise`` None: the mean, as in eval mode)."""
        mean, logvar = self.encode(images)
        z = mean if noise is None else mean + noise * torch.exp(0.5 * logvar)
        return self.decode_logits(z), mean, logvar

    @torch.no_grad()
    def sample(self, count: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        """``count`` images in [0, 1] from z ~ N(0, I), float32."""
        z = torch.randn(count, self.z_dim, device=device, generator=generator)
        return self.decode(z).float()


def reconstruction_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``mean_i w_i * mean_pixels BCE(sigmoid(logits_i), x_i)``, float32 (the code's ``reconL``;
    from logits, which is the same value without the sigmoid's rounding at 0 and 1)."""
    per_image = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none").flatten(1).mean(1)
    return per_image.mean() if weights is None else (per_image * weights).mean()


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor, values_per_image: int) -> torch.Tensor:
    """``mean_i -1/2 sum_j (1 + logvar - mean^2 - exp(logvar))``, divided by ``values_per_image``
    (3 H W: the scale of the per-pixel reconstruction term), float32 (the code's ``variatL``)."""
    mean, logvar = mean.float(), logvar.float()
    per_image = -0.5 * (1 + logvar - mean.pow(2) - logvar.exp()).sum(dim=1)
    return per_image.mean() / values_per_image
