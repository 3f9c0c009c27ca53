"""Frozen copies of models, used as "the old model" by data-free CIL methods."""

from __future__ import annotations

import copy
from typing import TypeVar

from torch import nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def frozen_copy(model: ModuleT) -> ModuleT:
    """Return a deep copy of ``model`` in eval mode with ``requires_grad=False`` everywhere.

    The copy shares no parameter or buffer storage with ``model``, so later
    training of ``model`` leaves it unchanged. Note that calling ``.train()``
    on the copy (or on a module that holds it as a submodule) switches its
    BatchNorm layers back to batch statistics; keep it outside trained
    containers or call ``.eval()`` again.
    """
    clone = copy.deepcopy(model)
    clone.eval()
    clone.requires_grad_(False)
    return clone
