"""Per-channel mean and standard deviation of a uint8 image array, in [0, 1] units."""

from __future__ import annotations

import numpy as np

CHUNK_IMAGES = 1024


def channel_stats(images: np.ndarray) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Return ``(mean, std)`` over all pixels of (N, H, W, 3) uint8 ``images``.

    Sums are exact integers accumulated chunk by chunk, so a memory-mapped array of any
    size is read once without a float copy. ``std`` is the population standard deviation.
    """
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(f"channel_stats needs a non-empty (N, H, W, 3) array, got {images.shape}")
    total = np.zeros(3, dtype=np.uint64)
    squares = np.zeros(3, dtype=np.uint64)
    for start in range(0, len(images), CHUNK_IMAGES):
        pixels = np.asarray(images[start:start + CHUNK_IMAGES]).reshape(-1, 3)
        total += pixels.sum(axis=0, dtype=np.uint64)
        wide = pixels.astype(np.uint32)
        squares += (wide * wide).sum(axis=0, dtype=np.uint64)
    count = images.shape[0] * images.shape[1] * images.shape[2]
    mean = total.astype(np.float64) / count
    var = np.maximum(squares.astype(np.float64) / count - mean * mean, 0.0)
    std = np.sqrt(var) / 255.0
    mean = mean / 255.0
    return (float(mean[0]), float(mean[1]), float(mean[2])), (float(std[0]), float(std[1]), float(std[2]))
