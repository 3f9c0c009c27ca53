"""Decoded images held where batches are gathered fastest, plus index-batch sampling."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

DEVICE_RESIDENT_LIMIT_BYTES = 8 * 1024**3
GPU_RESIDENT_SHARE = 0.3


def resident_limit_bytes(device: torch.device) -> int:
    """The largest image array kept whole on ``device``: on a GPU, 30 % of its memory free now
    (ImageNet-100's 19 GB of 224 px training images fit on an 80 GB card and leave room for the
    model; a 24 GB card keeps Tiny-ImageNet's 1.2 GB, not ImageNet-100); elsewhere 8 GiB."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(GPU_RESIDENT_SHARE * free)
    return DEVICE_RESIDENT_LIMIT_BYTES


def upload(images: np.ndarray, device: torch.device, chunk_bytes: int = 256 * 1024**2) -> torch.Tensor:
    """A uint8 tensor on ``device`` holding ``images``, copied ``chunk_bytes`` at a time (a 19 GB
    memory-mapped array never needs as much host memory)."""
    out = torch.empty(images.shape, dtype=torch.uint8, device=device)
    rows = max(1, chunk_bytes // max(1, images[:1].nbytes))
    for start in range(0, len(images), rows):
        out[start : start + rows].copy_(torch.from_numpy(np.ascontiguousarray(images[start : start + rows])))
    return out


class ImageStore:
    """uint8 (N, H, W, 3) images: resident on the device when they fit, else gathered on the host.

    ``gather(index)`` returns the selected images as a uint8 tensor on the device. CIFAR-sized
    data lives on the device whole, so a batch is a single index operation there.
    """

    def __init__(self, images: np.ndarray, device: torch.device, limit_bytes: int | None = None):
        self.device = device
        limit = resident_limit_bytes(device) if limit_bytes is None else limit_bytes
        # a memory-mapped cache stays on disk for a CPU run (reading it whole would only fill
        # RAM), but goes to a GPU that has room for it
        mapped = isinstance(images, np.memmap)
        self.resident = images.nbytes <= limit and not (mapped and device.type == "cpu")
        if self.resident:
            self._images = upload(images, device) if mapped else torch.from_numpy(np.ascontiguousarray(images)).to(device)
        else:
            self._host = images
        self.shape = tuple(images.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        """Images at ``index`` (int64 tensor on any device), uint8 on the device."""
        if self.resident:
            return self._images[index.to(self.device)]
        wanted = index.cpu().numpy()
        rows = np.sort(wanted)  # sorted reads are friendlier to a memmap
        order = np.argsort(np.argsort(wanted))
        batch = torch.from_numpy(np.ascontiguousarray(self._host[rows][order]))
        return batch.to(self.device, non_blocking=True)


def index_batches(
    indices: torch.Tensor, batch_size: int, generator: torch.Generator, shuffle: bool = True,
    device: torch.device | None = None,
) -> Iterator[torch.Tensor]:
    """Shuffled mini-batches of ``indices``; a trailing batch of one sample is dropped (BatchNorm).

    The permutation is drawn with ``generator`` (on the CPU, so the order does not depend on the
    device); with ``device`` the whole epoch's order is copied there once and the batches are
    slices of it, so no step waits on a host-to-device copy of its indices."""
    if shuffle:
        indices = indices[torch.randperm(len(indices), generator=generator)]
    if device is not None:
        indices = indices.to(device)
    for start in range(0, len(indices), batch_size):
        batch = indices[start : start + batch_size]
        if len(batch) >= 2 or len(indices) == 1:
            yield batch


def num_batches(count: int, batch_size: int) -> int:
    """How many batches :func:`index_batches` yields for ``count`` samples."""
    full, rest = divmod(count, batch_size)
    return full + (1 if rest >= 2 or (count == 1) else 0)
