"""Where datasets live (``DFCIL_DATA``, else a default data directory) and where their decoded
caches go (``DFCIL_CACHE``)."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "DFCIL_DATA"
CACHE_ENV = "DFCIL_CACHE"


def default_cache_dir() -> Path:
    """Return ``$DFCIL_CACHE`` if set and non-empty, else ``~/.cache/dfcil``."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value:
        return Path(value).expanduser()
    return Path.home() / ".cache" / "dfcil"


def default_data_dir() -> Path:
    """Where datasets go when no data root is given: ``$XDG_DATA_HOME/dfcil``, else
    ``~/.local/share/dfcil`` (CIFAR-100 is downloaded there on first use)."""
    value = os.environ.get("XDG_DATA_HOME", "").strip()
    return (Path(value).expanduser() if value else Path.home() / ".local" / "share") / "dfcil"


def data_root(root: str | Path | None) -> tuple[Path, bool]:
    """The data root: ``root`` if given, else ``$DFCIL_DATA``, else :func:`default_data_dir`;
    and whether it is that default (where a missing CIFAR-100 may be downloaded)."""
    if root is not None and str(root).strip():
        return Path(root).expanduser(), False
    value = os.environ.get(DATA_ENV, "").strip()
    if value:
        return Path(value).expanduser(), False
    return default_data_dir(), True


def resolve_data_root(root: str | Path | None) -> Path:
    """The data root of :func:`data_root`. The path is not required to exist here: the dataset
    loader reports what it looked for."""
    return data_root(root)[0]
