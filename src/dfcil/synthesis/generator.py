"""The generators of ABD (reused by R-DFCIL): z -> linear -> [upsample, conv, BN, LeakyReLU] x k -> image.

32 px: Linear(z, 128*8*8), BN(128), two upsample blocks (128 -> 128 -> 64), conv 64 -> 3, tanh,
BN(3, affine=False); about 8.4 M parameters. 64 px adds one 128-channel block (about 8.5 M).
224 px starts from 7x7x64 and has five 64-channel blocks (about 3.3 M).
The BatchNorm eps of the blocks is 0.8 by default: an accident of the original code (a
positional argument) that every published number uses; ``bn_eps`` exposes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class Generator(nn.Module):
    """Maps latent noise ``z`` (N, z_dim) to images (N, 3, size, size) in normalised units."""

    def __init__(
        self, z_dim: int, init_size: int, init_channels: int, block_channels: list[int], bn_eps: float = 0.8,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        # channels_last: convolution weights and activations in NHWC memory (same values, same
        # state_dict). On CPUs oneDNN then skips the NCHW <-> blocked reorders around every conv:
        # sampling 128 32-px images takes about half the time on a 2-core Zen 4, fwd+bwd about
        # a quarter less (benchmarks/generator_layout.py).
        self.channels_last = channels_last
        self.z_dim = z_dim
        self.init_size = init_size
        self.init_channels = init_channels
        self.project = nn.Linear(z_dim, init_channels * init_size * init_size)
        self.init_bn = nn.BatchNorm2d(init_channels)
        layers: list[nn.Module] = []
        channels = init_channels
        for out in block_channels:
            layers += [
                nn.Upsample(scale_factor=2),
                nn.Conv2d(channels, out, 3, stride=1, padding=1),
                nn.BatchNorm2d(out, eps=bn_eps),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            channels = out
        layers += [nn.Conv2d(channels, 3, 3, stride=1, padding=1), nn.Tanh(), nn.BatchNorm2d(3, affine=False)]
        self.blocks = nn.Sequential(*layers)
        self.image_size = init_size * 2 ** len(block_channels)
        if channels_last:
            self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to's overloads omit memory_format

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Images for latent codes ``z``."""
        x = self.project(z).view(z.shape[0], self.init_channels, self.init_size, self.init_size)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.blocks(self.init_bn(x))

    @property
    def output_tanh(self) -> nn.Tanh:
        """The tanh that bounds the images before the final (affine-free) BatchNorm: its outputs at
        +-1 are saturated pixels, whose gradient the tanh all but stops."""
        tanh = self.blocks[-2]
        assert isinstance(tanh, nn.Tanh)
        return tanh

    def sample_latent(self, count: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        """``count`` latent codes from N(0, I)."""
        return torch.randn(count, self.z_dim, device=device, generator=generator)


@torch.no_grad()
def generate_images(generator: Generator, count: int, device: torch.device, rng: torch.Generator | None,
                    autocast: Callable[[], Any], channels_last: bool) -> torch.Tensor:
    """``count`` images of ``generator`` (switched to eval mode) as float32 in normalised units,
    channels_last if asked: the synthetic batches every replay method draws during a task."""
    generator.eval()
    with autocast():
        images = generator(generator.sample_latent(count, device, rng))
    images = images.float()
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def build_generator(image_size: int, z_dim: int = 1000, bn_eps: float = 0.8, channels_last: bool = False) -> Generator:
    """The generator for 32, 64 or 224 px images (``channels_last``: NHWC weights and activations)."""
    if image_size == 32:
        return Generator(z_dim, 8, 128, [128, 64], bn_eps, channels_last)
    if image_size == 64:
        return Generator(z_dim, 8, 128, [128, 128, 64], bn_eps, channels_last)
    if image_size == 224:
        return Generator(z_dim, 7, 64, [64] * 5, bn_eps, channels_last)
    raise ValueError(f"no generator for {image_size}-px images (32, 64 or 224)")
