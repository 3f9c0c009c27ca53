"""Per-step diagnostics of generator training, kept on the device until a window is logged.

Reading a scalar off a GPU (``float(t)``) waits for every queued kernel, so doing it for each
loss term at every generator step would stall the host once per step. :class:`WindowMeans`
adds the step's tensors on the device and reads them all with one transfer when the window
is logged; on the CPU the figures are the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any

import torch
from torch import nn

#: ``|tanh| >= SATURATED`` counts as saturated: the pre-activation is beyond atanh(0.99) = 2.65,
#: where the tanh passes less than 2 % of the gradient on (1 - 0.99**2)
SATURATED = 0.99


def confidence_and_coverage(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean top-1 softmax probability, and the fraction of the ``logits.shape[1]`` classes that
    are the argmax of at least one sample; both 0-dim float tensors on ``logits``' device."""
    probs = torch.softmax(logits.detach().float(), dim=1)
    classes = logits.shape[1]
    # a scatter, not bincount: bincount reads the labels' range back to the host (a GPU sync)
    top = probs.max(dim=1)
    hit = torch.zeros(classes, device=logits.device).index_fill_(0, top.indices, 1.0)
    return top.values.mean(), hit.sum() / classes


class WindowMeans:
    """Means over a window of steps of named scalars (0-dim tensors or numbers)."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor | float] = {}
        self.steps = 0

    def add(self, values: Mapping[str, torch.Tensor | float]) -> None:
        """Add one step's values (tensors are detached; nothing is read off the device)."""
        for name, value in values.items():
            value = value.detach().float() if isinstance(value, torch.Tensor) else float(value)
            self._sums[name] = self._sums.get(name, 0.0) + value
        self.steps += 1

    def pop_means(self) -> dict[str, float]:
        """The means since the last call (one device read for all tensors), then start a new window."""
        if not self.steps:
            return {}
        names = [name for name, value in self._sums.items() if isinstance(value, torch.Tensor)]
        read = torch.stack([torch.as_tensor(self._sums[name]) for name in names]).tolist() if names else []
        totals = {name: float(value) for name, value in self._sums.items() if not isinstance(value, torch.Tensor)}
        totals.update(zip(names, read))
        means = {name: totals[name] / self.steps for name in self._sums}
        self._sums, self.steps = {}, 0
        return means


def saturated_fraction(values: torch.Tensor, threshold: float = SATURATED) -> torch.Tensor:
    """The fraction of ``values`` with ``|value| >= threshold`` (a 0-dim float tensor, no sync)."""
    return (values.detach().abs() >= threshold).float().mean()


class OutputSaturation:
    """While open, keeps the saturated fraction of the last output of ``module`` (a generator's
    output tanh) as ``value``: a 0-dim tensor on the device, or None before the first forward.

    A forward hook, so the generator's code is untouched; one comparison over the batch's pixels
    per forward (about 0.1 % of a generator step)."""

    def __init__(self, module: nn.Module, threshold: float = SATURATED) -> None:
        self.module = module
        self.threshold = threshold
        self.value: torch.Tensor | None = None
        self._handle: Any = None

    def _record(self, _module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        self.value = saturated_fraction(output, self.threshold)

    def __enter__(self) -> OutputSaturation:
        self._handle = self.module.register_forward_hook(self._record)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._handle.remove()
        self._handle = None
