"""Which numeric precision a run's forward passes use on the device it runs on.

bf16 autocast roughly doubles ResNet throughput on CPUs with native bf16 instructions
(AVX-512 BF16 / AMX, used through oneDNN) and on recent GPUs, but on a CPU without them
(e.g. AVX2 only) PyTorch emulates bf16 and a ResNet-32 training step runs about ten times
*slower* than in fp32. ``train.precision: auto`` (the default) therefore picks bf16 only where
it is fast; ``bf16`` and ``fp32`` force one or the other.
"""

from __future__ import annotations

from typing import Literal

import torch

Precision = Literal["bf16", "fp32"]


def fast_bf16_available(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 convolutions natively (fast), not by emulation."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a build without oneDNN
            return False
    return False


def resolve_precision(requested: Literal["auto", "bf16", "fp32"], device: torch.device) -> Precision:
    """``auto`` -> ``bf16`` where :func:`fast_bf16_available`, else ``fp32``; others unchanged."""
    if requested == "auto":
        return "bf16" if fast_bf16_available(device) else "fp32"
    return requested
