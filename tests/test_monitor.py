"""Generator-training diagnostics kept on the device (dfcil.synthesis.monitor)."""

from __future__ import annotations

import math

import pytest
import torch

from dfcil.synthesis.monitor import WindowMeans, confidence_and_coverage


def test_confidence_and_coverage_by_hand():
    logits = torch.tensor([[math.log(3.0), 0.0, 0.0], [0.0, math.log(8.0), 0.0]])
    confidence, coverage = confidence_and_coverage(logits)
    # softmax rows: (3/5, 1/5, 1/5) and (1/10, 8/10, 1/10); argmaxes 0 and 1 of 3 classes
    assert confidence.item() == pytest.approx((0.6 + 0.8) / 2)
    assert coverage.item() == pytest.approx(2 / 3)
    assert confidence.dim() == coverage.dim() == 0


def test_window_means_over_tensors_and_numbers():
    window = WindowMeans()
    assert window.pop_means() == {}
    window.add({"loss": torch.tensor(1.0, requires_grad=True) * 1, "rate": 2.0})
    window.add({"loss": torch.tensor(3.0), "rate": 4, "extra": torch.tensor(6.0)})
    means = window.pop_means()
    assert means == pytest.approx({"loss": 2.0, "rate": 3.0, "extra": 3.0})  # extra: 6 over 2 steps
    assert all(isinstance(value, float) for value in means.values())
    window.add({"loss": torch.tensor(5.0)})
    assert window.pop_means() == {"loss": 5.0}  # a new window after each read


def test_saturated_fraction_by_hand():
    from dfcil.synthesis.monitor import saturated_fraction

    values = torch.tensor([[-1.0, -0.995, -0.5, 0.0], [0.3, 0.98, 0.99, 1.0]])
    # |v| >= 0.99: -1.0, -0.995, 0.99, 1.0 -> 4 of 8
    assert saturated_fraction(values).item() == pytest.approx(0.5)
    assert saturated_fraction(values, threshold=0.4).item() == pytest.approx(6 / 8)


def test_output_saturation_follows_the_generators_tanh_and_unhooks():
    from dfcil.synthesis.generator import build_generator
    from dfcil.synthesis.monitor import OutputSaturation, saturated_fraction

    torch.manual_seed(0)
    generator = build_generator(32, z_dim=16).train()
    tanh_outputs: list[torch.Tensor] = []
    spy = generator.output_tanh.register_forward_hook(lambda _m, _i, out: tanh_outputs.append(out.detach()))
    with OutputSaturation(generator.output_tanh) as saturation:
        assert saturation.value is None
        generator(torch.randn(4, 16))
        first = saturation.value
        with torch.no_grad():  # push the pre-activation far out: every pixel saturates
            generator.blocks[-3].bias.fill_(50.0)
        generator(torch.randn(4, 16))
    spy.remove()
    assert first is not None and first.dim() == 0
    assert first.item() == pytest.approx(saturated_fraction(tanh_outputs[0]).item())
    assert first.item() < 0.5  # a fresh generator's pixels are mostly inside (-0.99, 0.99)
    assert saturation.value is not None and saturation.value.item() == 1.0
    generator(torch.randn(4, 16))  # the hook is gone after the block
    assert saturation.value.item() == 1.0 and not generator.output_tanh._forward_hooks
