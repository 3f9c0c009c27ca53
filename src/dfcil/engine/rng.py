"""Capture and restore every random-number state a run depends on (for exact resumption)."""

from __future__ import annotations

import random
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
