"""Backbones and the incremental classifier.

Backbones are built by name through :func:`build_backbone`; each returns an
``nn.Module`` whose ``forward(x)`` gives the pooled penultimate feature
``(N, feature_dim)`` and which has an int attribute ``feature_dim``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from torch import nn

from .frozen import frozen_copy
from .incremental import IncrementalClassifier, ModelOutput
from .resnet import resnet18
from .resnet_cifar import resnet32, resnet34_cifar

#: Read-only registry of backbone factories. ``"resnet32"`` takes ``variant``
#: (``"rdfcil"`` | ``"abd"``), ``"resnet18"`` takes ``stem`` (``"imagenet"`` |
#: ``"small"``), ``"resnet34"`` (CIFAR stem) takes no option.
BACKBONES: Mapping[str, Callable[..., nn.Module]] = MappingProxyType(
    {
        "resnet32": resnet32,
        "resnet18": resnet18,
        "resnet34": resnet34_cifar,
    }
)


def build_backbone(name: str, **options: Any) -> nn.Module:
    """Build the backbone registered as ``name`` with keyword ``options``.

    Raises:
        ValueError: ``name`` is not in :data:`BACKBONES` (the message lists the
            known names), or an option has an invalid value.
        TypeError: an option the factory does not accept.
    """
    try:
        factory = BACKBONES[name]
    except KeyError:
        known = ", ".join(sorted(BACKBONES))
        raise ValueError(f"unknown backbone {name!r}; known backbones: {known}") from None
    return factory(**options)


def build_classifier(spec: Any, head_sizes: Sequence[int] = ()) -> IncrementalClassifier:
    """A freshly initialised CPU classifier with heads of ``head_sizes``.

    ``spec`` has the fields of the config's ``model`` section (``backbone``,
    ``resnet32_variant``, ``resnet18_stem``, ``head_init_std``): a ``ModelConfig`` or a model
    file's ``Architecture``.
    """
    options: dict[str, Any] = {}
    if spec.backbone == "resnet32":
        options["variant"] = spec.resnet32_variant
    elif spec.backbone == "resnet18":
        options["stem"] = spec.resnet18_stem
    model = IncrementalClassifier(build_backbone(spec.backbone, **options), spec.head_init_std)
    for size in head_sizes:
        model.add_head(size)
    return model


__all__ = [
    "BACKBONES",
    "IncrementalClassifier",
    "build_classifier",
    "ModelOutput",
    "build_backbone",
    "frozen_copy",
    "resnet18",
    "resnet32",
    "resnet34_cifar",
]
