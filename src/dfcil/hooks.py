"""Forward hooks that read the inputs of every BatchNorm layer of a model.

Model-inversion synthesizers (DeepInversion, ABD, R-DFCIL, MFGR, SKD) align the batch
statistics of synthetic images with the running statistics of the frozen model. The hooks are
registered for the duration of a ``with`` block only, so later forwards of the same model pay
nothing (the official ABD code never removes them, which nearly doubles every later forward).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType

import torch
from torch import nn

from dfcil.distributed import SINGLE, Distributed


@dataclass
class BatchNormInput:
    """Per-channel batch mean and biased variance of one BN layer's input, with its running stats."""

    mean: torch.Tensor
    var: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor


class BatchNormInputs:
    """``with BatchNormInputs(model) as bn: model(x); bn.stats`` -> one entry per BN layer.

    Statistics are taken over (N, H, W) in float32 and keep the autograd graph, so a loss on
    them back-propagates into whatever produced ``x``. In a multi-process run (``dist``) they
    are the statistics of the global batch: per-channel sums and sums of squares are summed
    over the ranks (differentiably) before the mean and variance are formed.
    """

    def __init__(self, model: nn.Module, dist: Distributed = SINGLE) -> None:
        self.dist = dist
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.stats: list[BatchNormInput] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        x = inputs[0].float()
        dims = [0] + list(range(2, x.dim()))
        assert isinstance(module, nn.modules.batchnorm._BatchNorm)
        assert module.running_mean is not None and module.running_var is not None
        if self.dist.enabled:
            count = x.new_full((1,), x.numel() / x.shape[1])  # made on the device: no host copy
            sums = self.dist.all_sum(torch.cat([x.sum(dim=dims), (x * x).sum(dim=dims), count]))
            channels = x.shape[1]
            mean = sums[:channels] / sums[-1]
            var = (sums[channels : 2 * channels] / sums[-1] - mean * mean).clamp_min(0.0)
        else:
            mean, var = x.mean(dim=dims), x.var(dim=dims, unbiased=False)
        self.stats.append(
            BatchNormInput(
                mean=mean,
                var=var,
                running_mean=module.running_mean,
                running_var=module.running_var,
            )
        )

    def clear(self) -> None:
        """Forget the statistics of earlier forwards."""
        self.stats = []

    def __enter__(self) -> BatchNormInputs:
        self._handles = [layer.register_forward_hook(self._hook) for layer in self.layers]
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
