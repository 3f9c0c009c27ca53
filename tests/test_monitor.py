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
