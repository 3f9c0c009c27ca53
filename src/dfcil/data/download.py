"""Downloading a file atomically and checking its md5 before it becomes visible."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from dfcil.atomic import atomic_write
from dfcil.data.parallel import progress_bar
from dfcil.errors import DataError

CHUNK = 1 << 20


def download(url: str, dest: Path, md5: str, *, progress: bool = True, timeout: float = 60.0) -> Path:
    """Fetch ``url`` into ``dest`` (temp file + rename) and verify its md5.

    On a network error or a checksum mismatch nothing is left at ``dest`` and
    :class:`DataError` is raised.
    """

    def write(handle: IO[bytes]) -> None:
        digest = hashlib.md5()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                with progress_bar(total, f"download {dest.name}", progress, unit="B") as bar:
                    while chunk := response.read(CHUNK):
                        handle.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise DataError(f"cannot download {url}: {' '.join(str(exc).split())}") from exc
        if digest.hexdigest() != md5:
            raise DataError(f"download of {url} has md5 {digest.hexdigest()}, expected {md5}")

    try:
        atomic_write(dest, write)
    except OSError as exc:
        raise DataError(f"cannot write {dest}: {' '.join(str(exc).split())}") from exc
    return dest
