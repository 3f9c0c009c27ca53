"""A backbone plus a classifier that grows one bias-free linear head per task."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True, eq=False)
class ModelOutput:
    """What :meth:`IncrementalClassifier.forward` returns.

    Attributes:
        features: pooled backbone features, ``(N, feature_dim)``.
        logits: logits over all classes seen so far, ``(N, num_classes)``,
            ordered task by task (task ``t`` occupies columns
            ``task_offsets[t]:task_offsets[t + 1]``).
    """

    features: Tensor
    logits: Tensor


class IncrementalClassifier(nn.Module):
    """Backbone + growing classifier with one bias-free ``nn.Linear`` head per task.

    Args:
        backbone: module mapping images to ``(N, feature_dim)`` features; it must
            expose an int attribute ``feature_dim``.
        head_init_std: ``None`` keeps PyTorch's default ``nn.Linear`` init;
            otherwise new head weights are drawn from ``N(0, head_init_std**2)``
            (R-DFCIL uses 0.001).

    A fresh instance to which heads of the same sizes have been added in the
    same order accepts this model's ``state_dict()``.
    """

    def __init__(self, backbone: nn.Module, head_init_std: float | None = None) -> None:
        super().__init__()
        feature_dim = getattr(backbone, "feature_dim", None)
        if not isinstance(feature_dim, int) or feature_dim <= 0:
            raise ValueError("backbone must have a positive int attribute 'feature_dim'")
        if head_init_std is not None and not head_init_std > 0:
            raise ValueError(f"head_init_std must be positive or None, got {head_init_std}")
        self.backbone = backbone
        self.feature_dim: int = feature_dim
        self.head_init_std = head_init_std
        self.heads = nn.ModuleList()

    def add_head(self, num_classes: int) -> nn.Linear:
        """Append a bias-free ``Linear(feature_dim, num_classes)`` head for a new task.

        The head is created on the device and with the floating dtype of the
        model's parameters (a 2-D weight has no channels-last layout, so the
        memory format needs no conversion). Returns the new head.
        """
        if num_classes < 1:
            raise ValueError(f"a head needs at least one class, got {num_classes}")
        reference = next(self.parameters(), None)
        device = reference.device if reference is not None else None
        dtype = reference.dtype if reference is not None and reference.is_floating_point() else None
        head = nn.Linear(self.feature_dim, num_classes, bias=False, device=device, dtype=dtype)
        if self.head_init_std is not None:
            nn.init.normal_(head.weight, mean=0.0, std=self.head_init_std)
        self.heads.append(head)
        return head

    @property
    def num_tasks(self) -> int:
        """Number of heads (tasks) added so far."""
        return len(self.heads)

    @property
    def num_classes(self) -> int:
        """Number of classes seen so far (sum of head sizes)."""
        return sum(head.out_features for head in self.linear_heads())

    @property
    def head_sizes(self) -> list[int]:
        """Number of classes of each head, in task order, e.g. ``[5, 5]``."""
        return [head.out_features for head in self.linear_heads()]

    @property
    def task_offsets(self) -> list[int]:
        """Cumulative column offsets of the heads, length ``num_tasks + 1``, e.g. ``[0, 5, 10]``."""
        offsets = [0]
        for head in self.linear_heads():
            offsets.append(offsets[-1] + head.out_features)
        return offsets

    def features(self, x: Tensor) -> Tensor:
        """Return the backbone features ``(N, feature_dim)`` of images ``x``."""
        return self.backbone(x)

    def classify(self, features: Tensor) -> Tensor:
        """Return the logits of every seen class, the heads' outputs concatenated in task order."""
        if not self.heads:
            raise RuntimeError("the classifier has no head yet; call add_head() first")
        weight = torch.cat([head.weight for head in self.linear_heads()], dim=0)
        return features @ weight.t()

    def forward(self, x: Tensor) -> ModelOutput:
        """Return the features and the all-seen-classes logits of images ``x``."""
        feats = self.features(x)
        return ModelOutput(features=feats, logits=self.classify(feats))

    def local_logits(self, logits: Tensor, task: int = -1) -> Tensor:
        """Return the columns of ``logits`` that belong to head ``task`` (default: the newest).

        ``logits`` must have ``num_classes`` columns (the all-seen logits of this
        model); negative ``task`` counts from the end like a list index.
        """
        count = self.num_tasks
        if not -count <= task < count:
            raise IndexError(f"task {task} out of range for {count} task(s)")
        if logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"logits have {logits.shape[-1]} columns, the model has {self.num_classes} classes"
            )
        task %= count
        offsets = self.task_offsets
        return logits[..., offsets[task] : offsets[task + 1]]

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Iterate over the parameters of every head."""
        return self.heads.parameters()

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Iterate over the parameters of the backbone."""
        return self.backbone.parameters()

    def linear_heads(self) -> Iterator[nn.Linear]:
        """The heads in task order, as the ``nn.Linear`` layers they are (``heads`` is a ``ModuleList``)."""
        for head in self.heads:
            assert isinstance(head, nn.Linear)
            yield head
