"""Checks run by ``tests/test_distributed.py`` inside ``torchrun --nproc_per_node 2`` (gloo).

Every rank compares what the distributed helpers give on its shard with what one process
computes on the whole batch, and exits non-zero on a mismatch; rank 0 writes the largest
differences to the JSON file named by the first argument.
"""

from __future__ import annotations

import json
import sys

import torch
from torch import nn

from dfcil.distributed import SINGLE, Distributed
from dfcil.hooks import BatchNormInputs
from dfcil.synthesis.losses import bn_statistics_kl, content_loss

CPU = torch.device("cpu")


def generator_and_teacher() -> tuple[nn.Module, nn.Module]:
    """A linear 'generator' of 3x4x4 images and a frozen conv + BN teacher with odd running stats."""
    torch.manual_seed(0)
    generator = nn.Sequential(nn.Linear(8, 48), nn.Unflatten(1, (3, 4, 4)))
    teacher = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(96, 5))
    teacher[1].running_mean.uniform_(-0.5, 0.5)
    teacher[1].running_var.uniform_(0.5, 2.0)
    teacher.eval().requires_grad_(False)
    return generator, teacher


def inversion_step(dist: Distributed, latent: torch.Tensor) -> tuple[float, list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Content loss (per-sample mean) + BN-statistics KL of one generator step: loss, generator
    gradients and the BN layer's batch mean and variance."""
    generator, teacher = generator_and_teacher()
    run_step = dist.step_runner([generator], CPU)
    with BatchNormInputs(teacher, dist) as bn:

        def closure() -> torch.Tensor:
            logits = teacher(generator(latent))
            return content_loss(logits, 10.0) + bn_statistics_kl(bn.stats)

        loss = run_step(closure)
        mean, var = bn.stats[0].mean.detach(), bn.stats[0].var.detach()
    loss.backward()
    return float(loss.detach()), [p.grad.clone() for p in generator.parameters()], mean, var


def main() -> None:
    dist = Distributed.from_environment("cpu")
    assert dist.enabled and dist.world_size == 2, dist
    latent = torch.randn(12, 8, generator=torch.Generator().manual_seed(1))

    loss_1, grads_1, mean_1, var_1 = inversion_step(SINGLE, latent)
    loss_k, grads_k, mean_k, var_k = inversion_step(dist, dist.shard(latent))
    diffs = {
        "bn_mean": float((mean_1 - mean_k).abs().max()),
        "bn_var": float((var_1 - var_k).abs().max()),
        "gradient": max(float((a - b).abs().max()) for a, b in zip(grads_1, grads_k)),
        "gradient_scale": max(float(a.abs().max()) for a in grads_1),
    }
    # the loss of a rank is its shard's content loss + the global BN term: average over ranks
    diffs["loss"] = abs(float(dist.sum_in_place(torch.tensor(loss_k))) / 2 - loss_1)

    rows = torch.arange(5 if dist.rank == 0 else 2, dtype=torch.float32)[:, None] + 10 * dist.rank
    gathered = dist.gather_rows(rows)
    expected = torch.cat([torch.arange(5.0), torch.arange(2.0) + 10])[:, None]
    assert torch.equal(gathered, expected), gathered.flatten().tolist()
    assert dist.shard_size(7) == (4 if dist.rank == 0 else 3) and len(dist.shard(torch.arange(7))) == dist.shard_size(7)
    assert dist.broadcast_object({"rank": dist.rank}) == {"rank": 0}

    for name in ("bn_mean", "bn_var", "loss"):
        assert diffs[name] < 1e-5, diffs
    assert diffs["gradient"] < 1e-5 * max(1.0, diffs["gradient_scale"]), diffs
    if dist.is_main:
        with open(sys.argv[1], "w") as handle:
            json.dump(diffs, handle)
    dist.barrier()  # both ranks done before the group is torn down (gloo can abort otherwise)
    dist.close()


if __name__ == "__main__":
    main()
