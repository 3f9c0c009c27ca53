"""Capture and restore every random-number state a run depends on (for exact resumption)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """States of the global generators and of the run's own ``generators``."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "own": {name: g.get_state() for name, g in generators.items()},
        "own_devices": {name: g.device.type for name, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Inverse of :func:`capture` (generators the state does not hold, or holds from another kind
    of device, are left as they are)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])  # saved with more GPUs
    devices = state.get("own_devices", {})
    for name, generator in generators.items():
        if name not in state["own"]:  # a generator of another process count's run may be absent
            continue
        saved = state["own"][name]
        # A CPU generator's state cannot go into a CUDA one or back (a run resumed on another kind
        # of device): that stream keeps its seed, so the resumed run is valid but not identical.
        if devices.get(name, generator.device.type) != generator.device.type or (
                saved.numel() != generator.get_state().numel()):
            continue
        generator.set_state(saved)


def rank_seed(seed: int, rank: int, salt: int = 0) -> int:
    """Seed of rank ``rank``'s own random numbers (synthetic noise, augmentation) in a
    multi-process run; ``salt`` distinguishes re-seeding after a resume."""
    return (seed * 1_000_003 + (rank + 1) * 7_919 + salt * 104_729) % 2**63


@dataclass
class RunGenerators:
    """The random streams of one run, and the policy that seeds, saves and restores them.

    ``sample`` (CPU) draws the order of the training images: every rank of a multi-process run
    draws the same permutation and takes its slice. ``device`` draws the numbers each rank uses
    on its own (augmentation, synthetic noise, a method's sampling): seeded per rank; on a CPU
    run it is ``sample`` itself, on one GPU a stream of its own (seed + 1). The global Python,
    NumPy and torch generators are seeded with the run's seed and saved with these."""

    sample: torch.Generator
    device: torch.Generator

    @classmethod
    def create(cls, seed: int, device: torch.device, distributed: bool = False, rank: int = 0) -> RunGenerators:
        """Seed the global generators and make the run's own for ``device`` (and ``rank``)."""
        seed_everything(seed)
        sample = torch.Generator().manual_seed(seed)
        if distributed:
            own = torch.Generator(device=device).manual_seed(rank_seed(seed, rank))
        elif device.type == "cpu":
            own = sample
        else:
            own = torch.Generator(device=device).manual_seed(seed + 1)
        return cls(sample, own)

    def named(self) -> dict[str, torch.Generator]:
        """The distinct generators by the names a checkpoint stores them under."""
        generators = {"sample": self.sample}
        if self.device is not self.sample:
            generators["device"] = self.device
        return generators

    def capture(self) -> dict[str, Any]:
        """Every state a checkpoint keeps (:func:`capture`)."""
        return capture(self.named())

    def restore(self, state: dict[str, Any], reseed: tuple[int, int, int] | None = None) -> None:
        """Restore :meth:`capture`'s ``state``. ``reseed`` = (seed, rank, salt) re-seeds ``device``
        afterwards, for a multi-process run (or a run resumed with another process count), whose
        ranks' own streams cannot come back from rank 0's checkpoint."""
        restore(state, self.named())
        if reseed is not None:
            seed, rank, salt = reseed
            self.device.manual_seed(rank_seed(seed, rank, salt))
