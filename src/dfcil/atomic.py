"""Atomic file writes: write to a temporary file in the same directory, fsync, rename.

A reader (or a process killed mid-write) therefore sees either the old file or the new one,
never a truncated mix. The new file gets the mode of the file it replaces, or else the mode a
plain ``open(path, "w")`` would give it (0666 less the umask), not ``mkstemp``'s private 0600:
a model or report that another user or a service must read stays readable.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: the only portable way is to set it and put it back
    os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write(fileobj)`` on a temporary file (its return value is ignored) and atomically
    move it to ``path`` (keeping the mode of the file it replaces; see the module's docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):  # POSIX
            os.fchmod(fd, _mode_for(path))
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def unwritable_reason(path: str | os.PathLike[str]) -> str | None:
    """Why :func:`atomic_write` could not write ``path`` (None when it could), found by creating
    and removing a temporary file where it would go. Folders that do not exist yet are not
    created: the nearest existing one must be writable, and ``path`` must not be a folder."""
    path = Path(path)
    if path.is_dir():
        return "it is a folder"
    folder = path.parent
    while not folder.exists():
        if folder.parent == folder:
            break
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is not a folder"
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".probe")
    except OSError as error:
        return f"{folder}: {error.strerror or error}"
    os.close(fd)
    os.unlink(tmp)
    return None


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""
    atomic_write(path, lambda handle: handle.write(data))


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically replace ``path`` with UTF-8 ``text``."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (NaN is not allowed: use None)."""
    write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def torch_save(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically ``torch.save`` ``obj`` to ``path``."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())
