"""Per-step diagnostics of generator training, kept on the device until a window is logged.

Reading a scalar off a GPU (``float(t)``) waits for every queued kernel, so doing it for each
loss term at every generator step would stall the host once per step. :class:`WindowMeans`
adds the step's tensors on the device and reads them all with one transfer when the window
is logged; on the CPU the figures are the same.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


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
