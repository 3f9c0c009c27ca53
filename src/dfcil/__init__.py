"""dfcil: data-free class-incremental learning.

``dfcil.learn(folder)`` trains a first model on an image folder, ``dfcil.load(path)`` reads a
model file, and ``Model.learn / predict / evaluate / save`` do the rest (see the README).
Messages go to the ``dfcil`` logger (:mod:`dfcil.console`); importing the package installs no
handler but a ``NullHandler``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())  # a library leaves output to its user

if TYPE_CHECKING:  # pragma: no cover
    from dfcil.workflow.api import Model, learn, load

__all__ = ["Model", "learn", "load", "__version__"]


def __getattr__(name: str) -> Any:
    """Import the workflow API on first use (``import dfcil`` stays light)."""
    if name in ("Model", "learn", "load"):
        from dfcil.workflow import api

        return getattr(api, name)
    raise AttributeError(f"module 'dfcil' has no attribute {name!r}")
