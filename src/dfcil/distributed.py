"""Several processes, one run: ``torchrun`` + DistributedDataParallel.

Under ``torchrun --nproc_per_node K dfcil run ...`` every process builds the same run (same
seed, class order, model initialisation) and then works on its shard of every batch:

* the training sampler is shared (every rank draws the same permutation) and rank ``r`` takes
  the ``r``-th of ``K`` near-equal slices of each global batch, so the global batch size,
  the number of steps per epoch and the schedule do not depend on ``K``;
* a training step (the method's whole loss: real, synthetic and frozen-model forwards) runs
  inside :class:`torch.nn.parallel.DistributedDataParallel` (see :meth:`Distributed.step_runner`),
  which averages gradients over the ranks;
* generator training does the same with its own shard of the synthetic batch; the BN
  statistics of the alignment losses are summed over all ranks (:meth:`Distributed.all_sum`,
  differentiable) so they are the statistics of the global batch;
* evaluation predicts a slice of the test images per rank and gathers the logits;
* only rank 0 writes the run directory; the others write to a scratch directory.

One process (no ``torchrun``) is the :data:`SINGLE` instance: every helper is then the
identity, so single-process numerics are exactly those of a run without this module.
"""

from __future__ import annotations

import datetime
import gc
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as torch_dist
from torch import nn

from dfcil.errors import ConfigError, DfcilError

T = TypeVar("T")


class _Closure(nn.Module):
    """Holds the modules being trained; its forward runs an arbitrary loss closure, so that
    DDP sees every use of their parameters in a step (several forwards, auxiliary modules)."""

    def __init__(self, modules: list[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(modules)

    def forward(self, closure: Callable[[], Any]) -> Any:  # noqa: D102 - see class docstring
        return closure()


class _AllSum(torch.autograd.Function):
    """Sum over the ranks whose backward is the sum of the ranks' output gradients: with a loss
    computed identically on every rank from the summed statistics, DDP's gradient average then
    equals the gradient of one process holding the whole batch."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = tensor.clone()
        torch_dist.all_reduce(out, op=torch_dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        grad = grad.contiguous().clone()
        torch_dist.all_reduce(grad, op=torch_dist.ReduceOp.SUM)
        return grad


@dataclass(frozen=True)
class Distributed:
    """This process's place in a multi-process run (``world_size`` 1: a plain run)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """The process that writes files and prints progress."""
        return self.rank == 0

    # --- set-up ---------------------------------------------------------------------------------
    @staticmethod
    def from_environment(device: str = "auto") -> Distributed:
        """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE``,
        ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``), or :data:`SINGLE` without one.

        Backend: nccl when the run's device is CUDA, else gloo. With CUDA, each process uses the
        GPU of its local rank.
        """
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return SINGLE
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if cuda:
            if not torch.cuda.is_available():
                raise ConfigError(f"runtime.device: {device} requested but CUDA is not available")
            if local_rank >= torch.cuda.device_count():
                raise ConfigError(f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible): "
                                  "start at most one process per GPU")
            torch.cuda.set_device(local_rank)
        if not torch_dist.is_initialized():
            torch_dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30))
        return Distributed(rank=rank, world_size=world_size, local_rank=local_rank)

    def device_name(self, requested: str) -> str:
        """The device this rank uses for ``runtime.device`` = ``requested``."""
        # every rank its own GPU: "cuda:0" given to all ranks would put them on one device (NCCL refuses)
        if self.enabled and (requested.startswith("cuda") or (requested == "auto" and torch.cuda.is_available())):
            return f"cuda:{self.local_rank}"
        return requested

    def close(self) -> None:
        """Leave the process group (no-op for one process). DDP wrappers still waiting in reference
        cycles are collected first, so that none outlives the group it talks through."""
        if self.enabled and torch_dist.is_initialized():
            gc.collect()
            torch_dist.destroy_process_group()

    # --- sharding -------------------------------------------------------------------------------
    def shard(self, items: torch.Tensor) -> torch.Tensor:
        """This rank's slice of ``items`` (near-equal contiguous slices, lower ranks get the extra)."""
        if not self.enabled:
            return items
        return torch.tensor_split(items, self.world_size)[self.rank]

    def shard_size(self, total: int) -> int:
        """How many of ``total`` items :meth:`shard` gives this rank."""
        base, extra = divmod(total, self.world_size)
        return base + (1 if self.rank < extra else 0)

    # --- communication ------------------------------------------------------------------------------
    def step_runner(self, modules: list[nn.Module], device: torch.device) -> Callable[[Callable[[], T]], T]:
        """A function that runs a loss closure so that the next ``backward`` averages the
        gradients of ``modules``' trainable parameters over all ranks (DDP); the identity call for
        one process. Create a new runner whenever the trainable set changes (new head, new phase).
        """
        if not self.enabled:
            return lambda closure: closure()
        holder = _Closure(modules)
        if not any(p.requires_grad for p in holder.parameters()):
            return lambda closure: closure()
        ddp = nn.parallel.DistributedDataParallel(
            holder,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,  # a method may leave a module out of some steps
        )  # buffers (BN running statistics) are broadcast from rank 0 at every forward
        return lambda closure: ddp(closure)

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of ``tensor`` over the ranks, differentiable (gradients flow to every rank's input)."""
        if not self.enabled:
            return tensor
        return _AllSum.apply(tensor)

    def sum_in_place(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks in place (no autograd); returns it."""
        if self.enabled:
            torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        return tensor

    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``tensor`` (any number of rows each) in rank order, on every rank."""
        if not self.enabled:
            return tensor
        backend_device = torch.device("cuda", torch.cuda.current_device()) \
            if torch_dist.get_backend() == "nccl" else torch.device("cpu")
        local = tensor.to(backend_device)
        counts = torch.tensor([local.shape[0]], device=backend_device)
        all_counts = [torch.zeros_like(counts) for _ in range(self.world_size)]
        torch_dist.all_gather(all_counts, counts)
        rows = [int(c) for c in all_counts]
        padded = torch.zeros((max(rows), *local.shape[1:]), dtype=local.dtype, device=backend_device)
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        torch_dist.all_gather(parts, padded)
        return torch.cat([part[:n] for part, n in zip(parts, rows)]).to(tensor.device)

    def broadcast_object(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (picklable objects)."""
        if not self.enabled:
            return value
        holder = [value]
        torch_dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def check_replicas(self, module: nn.Module, what: str) -> None:
        """Raise if ``module``'s parameters differ between the ranks (they must stay replicas)."""
        if not self.enabled:
            return
        with torch.no_grad():
            params = [p.detach().double().flatten() for p in module.parameters()]
            signature = torch.stack([torch.cat(params).sum(), torch.cat(params).abs().sum()]) if params \
                else torch.zeros(2, dtype=torch.float64)
        gathered = self.gather_rows(signature.cpu()[None])
        spread = (gathered - gathered[0]).abs().max()
        if float(spread) > 1e-6 * max(1.0, float(gathered[0].abs().max())):
            raise DfcilError(f"{what}: the processes' models differ (parameter checksums {gathered.tolist()})")

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.enabled:
            torch_dist.barrier()


SINGLE = Distributed()
"""A run of one process."""
