"""Whole-batch augmentation and normalisation on the training device.

Real training images stay uint8 (N, H, W, 3) until this point. One gather does the random
crop (with zero padding, as torchvision's ``RandomCrop(padding=p)`` on the unnormalised image)
and the horizontal flip for the whole batch; normalisation follows. No per-sample Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Normalizer:
    """Per-channel mean/std normalisation of uint8 NHWC batches into float NCHW."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channels_last: bool = True
    # (1, 3, 1, 1) mean and std per device, made once: building them from the tuples at every
    # call would copy host memory to a GPU, which waits for the work queued before it
    _constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The (1, 3, 1, 1) float32 mean and std on ``device``."""
        if device not in self._constants:
            self._constants[device] = (torch.tensor(self.mean, device=device).view(1, 3, 1, 1),
                                       torch.tensor(self.std, device=device).view(1, 3, 1, 1))
        return self._constants[device]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) normalised (channels_last memory if set)."""
        x = images.permute(0, 3, 1, 2).float().div_(255.0)
        mean, std = self.constants(x.device)
        x = (x - mean) / std
        memory = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=memory)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of the normalisation, float (N, 3, H, W) in [0, 1] units."""
        mean, std = self.constants(x.device)
        return x * std + mean


def random_crop_flip(
    images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random crop with ``padding`` zero pixels on each side and random horizontal flip.

    Args:
        images: uint8 or float tensor (N, H, W, C) on any device.
        padding: zero padding on every side before cropping back to H x W (0: no crop).
        flip: flip each image horizontally with probability 0.5.
        generator: random generator on the same device as ``images``.

    Returns:
        A new tensor of the same shape and dtype.
    """
    n, h, w, _ = images.shape
    device = images.device
    if padding > 0:
        padded = F.pad(images, (0, 0, padding, padding, padding, padding))
        top = torch.randint(0, 2 * padding + 1, (n,), device=device, generator=generator)
        left = torch.randint(0, 2 * padding + 1, (n,), device=device, generator=generator)
    else:
        padded = images
        top = torch.zeros(n, dtype=torch.long, device=device)
        left = torch.zeros(n, dtype=torch.long, device=device)
    cols = torch.arange(w, device=device).expand(n, w)
    if flip:
        flipped = torch.rand(n, device=device, generator=generator) < 0.5
        cols = torch.where(flipped[:, None], (w - 1) - cols, cols)
    rows = top[:, None] + torch.arange(h, device=device)[None, :]
    cols = left[:, None] + cols
    batch = torch.arange(n, device=device)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]]


@dataclass(frozen=True)
class TrainAugment:
    """Crop + flip + normalise for real training batches (synthetic images are never augmented)."""

    normalizer: Normalizer
    crop_padding: int = 4
    flip: bool = True

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 (N, H, W, 3) on the device -> augmented, normalised float (N, 3, H, W)."""
        return self.normalizer(random_crop_flip(images, self.crop_padding, self.flip, generator))
