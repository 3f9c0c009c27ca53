"""A cheap fingerprint of a dataset source, so an edited source gets a fresh cache.

A file is fingerprinted by its size and mtime; a directory by the names, sizes and mtimes of
every file below it, at any depth (hidden entries skipped), so an image added, removed, renamed,
truncated or rewritten in place anywhere in an image-folder tree (``train/<class>/<image>`` too)
changes it. Only an edit that keeps both the size and the mtime goes unnoticed. Walking a tree
costs one ``stat`` per file (about a second for ImageNet-100's 130,000 images), against minutes
of decoding when the cache is rebuilt.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from dfcil.errors import DataError

DEPTH = 64  # folder levels walked: every level of any real image tree


def _walk(path: Path, rel: str, depth: int, exclude: Path | None, lines: list[str]) -> None:
    try:
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        child = Path(entry.path)
        if exclude is not None and child == exclude:
            continue
        try:
            st = entry.stat()
            is_dir = entry.is_dir()
        except OSError:
            continue
        name = f"{rel}/{entry.name}" if rel else entry.name
        if is_dir and depth > 1:
            lines.append(f"d\t{name}")
            _walk(child, name, depth - 1, exclude, lines)
        elif is_dir:  # deepest level: its mtime stands for its contents
            lines.append(f"d\t{name}\t{st.st_mtime_ns}")
        else:
            lines.append(f"f\t{name}\t{st.st_size}\t{st.st_mtime_ns}")


def source_signature(path: Path, exclude: Path | None = None) -> str:
    """Fingerprint ``path`` (see module docs); ``exclude`` skips e.g. a cache dir inside it."""
    try:
        st = path.stat()
    except OSError as exc:
        raise DataError(f"cannot stat data source {path}: {exc.strerror}") from exc
    if not path.is_dir():
        return f"file:{st.st_size}:{st.st_mtime_ns}"
    lines: list[str] = []
    _walk(path.resolve(), "", DEPTH, exclude.resolve() if exclude is not None else None, lines)
    return "dir:" + hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()
