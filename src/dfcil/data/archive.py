"""One sequential pass over a (possibly compressed) tar archive, with truncation detection.

``tarfile`` in stream mode stops silently at a truncated header, so a cut-off download
would look like a smaller dataset. Here the decompressed stream is drained after the last
member: gzip/bz2/xz raise on a missing end-of-stream marker, and for every format the
stream must extend past tar's end-of-archive block.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

from dfcil.errors import DataError

# the decompressing readers (GzipFile, BZ2File, LZMAFile) and open(..., 'rb') are all buffered binary streams
_MAGIC: list[tuple[bytes, Callable[[Path], io.BufferedIOBase]]] = [
    (b"\x1f\x8b", lambda p: gzip.open(p, "rb")),
    (b"BZh", lambda p: bz2.open(p, "rb")),
    (b"\xfd7zXZ\x00", lambda p: lzma.open(p, "rb")),
]
BLOCK = tarfile.BLOCKSIZE


def _open(path: Path) -> io.BufferedIOBase:
    with open(path, "rb") as handle:
        head = handle.read(8)
    for magic, opener in _MAGIC:
        if head.startswith(magic):
            return opener(path)
    return open(path, "rb")


def member_parts(name: str) -> list[str]:
    """Split a member name into path components, dropping ``.`` and empty parts."""
    return [part for part in name.split("/") if part not in ("", ".")]


def iter_archive(path: Path, want: Callable[[tarfile.TarInfo], bool]
                 ) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
    """Yield every member of ``path`` in archive order, with its bytes if ``want(member)``.

    Only regular files can be wanted. Any read error, or an archive that ends before tar's
    end-of-archive marker, raises ``DataError("cannot read archive <path>: ...")``.
    """
    try:
        with _open(path) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                data = None
                if member.isfile() and want(member):
                    handle = tar.extractfile(member)
                    data = handle.read() if handle is not None else b""
                yield member, data
            end = tar.offset
            while stream.read(1 << 20):
                pass
            if stream.tell() < end + BLOCK:
                raise DataError(f"cannot read archive {path}: it is truncated (no end-of-archive marker)")
    except (tarfile.TarError, OSError, EOFError, lzma.LZMAError) as exc:
        raise DataError(f"cannot read archive {path}: {' '.join(str(exc).split())}") from exc
