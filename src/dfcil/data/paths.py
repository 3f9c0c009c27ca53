"""Where datasets live (``DFCIL_DATA``) and where their decoded caches go (``DFCIL_CACHE``)."""

from __future__ import annotations

import os
from pathlib import Path

from dfcil.errors import DataError

DATA_ENV = "DFCIL_DATA"
CACHE_ENV = "DFCIL_CACHE"


def default_cache_dir() -> Path:
    """Return ``$DFCIL_CACHE`` if set and non-empty, else ``~/.cache/dfcil``."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value:
        return Path(value).expanduser()
    return Path.home() / ".cache" / "dfcil"


def resolve_data_root(root: str | Path | None) -> Path:
    """Return ``root`` if given, else ``$DFCIL_DATA``; raise :class:`DataError` if neither is set.

    The path is not required to exist here: the dataset loader reports what it looked for.
    """
    if root is not None and str(root).strip():
        return Path(root).expanduser()
    value = os.environ.get(DATA_ENV, "").strip()
    if value:
        return Path(value).expanduser()
    raise DataError("no data root: pass --set data.root=... or set DFCIL_DATA")
