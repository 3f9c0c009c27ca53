"""Task-agnostic evaluation: logits of all seen classes for every test image of seen classes."""

from __future__ import annotations

import torch

from dfcil.augment import Normalizer
from dfcil.engine.store import ImageStore
from dfcil.methods.base import RunEnv
from dfcil.models import IncrementalClassifier


@torch.no_grad()
def predict(
    model: IncrementalClassifier,
    store: ImageStore,
    indices: torch.Tensor,
    normalizer: Normalizer,
    env: RunEnv,
    batch_size: int,
    fixed_batch: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All-seen logits and penultimate features (float32, CPU) of the images at ``indices``,
    model in eval mode. The outputs stay on the device until the last batch (one copy back).

    ``fixed_batch`` pads a short last batch to ``batch_size`` by repeating its first image and
    drops the extra rows (eval-mode BN makes every row independent of the others), so that a
    compiled backbone sees a single input shape instead of compiling one graph per test-set size."""
    was_training = model.training
    model.eval()
    if store.resident:
        indices = indices.to(store.device)  # once, not per batch
    logits, features = [], []
    try:
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            rows = len(chunk)
            if fixed_batch and rows < batch_size:
                chunk = torch.cat([chunk, chunk[:1].expand(batch_size - rows)])
            images = normalizer(store.gather(chunk))
            with env.autocast():
                out = model(images)
            logits.append(out.logits[:rows].float())
            features.append(out.features[:rows].float())
    finally:
        model.train(was_training)
    if not logits:
        return torch.empty(0, model.num_classes), torch.empty(0, model.feature_dim)
    return torch.cat(logits).cpu(), torch.cat(features).cpu()


def predict_logits(
    model: IncrementalClassifier,
    store: ImageStore,
    indices: torch.Tensor,
    normalizer: Normalizer,
    env: RunEnv,
    batch_size: int,
    fixed_batch: bool = False,
) -> torch.Tensor:
    """All-seen logits (float32, CPU) of the images at ``indices``, model in eval mode."""
    return predict(model, store, indices, normalizer, env, batch_size, fixed_batch)[0]
