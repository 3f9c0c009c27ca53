"""Which numeric precision a run's forward passes use on the device it runs on.

bf16 autocast roughly doubles ResNet throughput on CPUs with native bf16 instructions
(AVX-512 BF16 / AMX, used through oneDNN) and on recent GPUs, but on a CPU without them
PyTorch emulates bf16 and a ResNet-32 training step runs *slower* than in fp32: about ten times
with AVX2 only, 1.8 times on an AVX-512 CPU without AVX-512 BF16 (an Intel Xeon at 2.8 GHz,
``benchmarks/precision_speed.py``), where oneDNN still reports bf16 as supported.
``train.precision: auto`` (the default) therefore picks bf16 only where it is fast; ``bf16`` and
``fp32`` force one or the other.
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
            onednn_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a build without oneDNN
            return False
        # oneDNN says yes on any AVX-512 (BW/VL/DQ) CPU and then emulates bf16 where the CPU lacks
        # AVX-512 BF16 and AMX: slower than fp32 there
        return onednn_bf16 and cpu_has_native_bf16_instructions()
    return False


def cpu_has_native_bf16_instructions() -> bool:
    """Whether the CPU has AVX-512 BF16 or AMX BF16 (``torch.cpu.get_capabilities``). Other
    architectures (e.g. ARM with BF16 extensions) are trusted to what oneDNN reports."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is None:
        return True
    try:
        found = capabilities()
    except RuntimeError:
        return True
    if found.get("architecture", "x86_64") not in ("x86_64", "x86", "AMD64"):
        return True
    return bool(found.get("avx512_bf16") or found.get("amx_bf16"))


def resolve_precision(requested: Literal["auto", "bf16", "fp32"], device: torch.device) -> Precision:
    """``auto`` -> ``bf16`` where :func:`fast_bf16_available`, else ``fp32``; others unchanged."""
    if requested == "auto":
        return "bf16" if fast_bf16_available(device) else "fp32"
    return requested
