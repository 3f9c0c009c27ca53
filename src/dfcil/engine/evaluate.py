"""Task-agnostic evaluation: logits of all seen classes for every test image of seen classes."""

from __future__ import annotations

import torch

from dfcil.augment import Normalizer
from dfcil.engine.store import ImageStore
from dfcil.methods.base import RunEnv
from dfcil.models import IncrementalClassifier


@torch.no_grad()
def predict_logits(
    model: IncrementalClassifier,
    store: ImageStore,
    indices: torch.Tensor,
    normalizer: Normalizer,
    env: RunEnv,
    batch_size: int,
) -> torch.Tensor:
    """All-seen logits (float32, CPU) of the images at ``indices``, model in eval mode."""
    was_training = model.training
    model.eval()
    outputs = []
    try:
        for start in range(0, len(indices), batch_size):
            images = normalizer(store.gather(indices[start : start + batch_size]))
            with env.autocast():
                outputs.append(model(images).logits.float().cpu())
    finally:
        model.train(was_training)
    if not outputs:
        return torch.empty(0, model.num_classes)
    return torch.cat(outputs)
