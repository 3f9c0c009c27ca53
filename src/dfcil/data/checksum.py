"""File digests: full md5/sha256, and a sampled sha256 for files too big to hash on every load."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 4 << 20
SAMPLE = 64 << 20
#: Files larger than this get the sampled digest (see :func:`sampled_sha256`).
FULL_HASH_LIMIT = 1 << 30


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of the whole file, read in 4 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sampled_sha256(path: Path) -> str:
    """sha256 over the file size plus 64 MiB from the start, the middle and the end.

    Cheap enough for tens of GiB; it catches truncation and most accidental damage but,
    unlike a full digest, not a flipped byte outside the three samples.
    """
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode("ascii"))
    with open(path, "rb") as handle:
        for start in (0, max(0, size // 2 - SAMPLE // 2), max(0, size - SAMPLE)):
            handle.seek(start)
            remaining = SAMPLE
            while remaining > 0 and (chunk := handle.read(min(CHUNK, remaining))):
                digest.update(chunk)
                remaining -= len(chunk)
    return digest.hexdigest()


def array_file_checksum(path: Path) -> tuple[str, str]:
    """Return ``(manifest_field_name, hex)``: a full sha256 up to 1 GiB, sampled beyond."""
    if path.stat().st_size > FULL_HASH_LIMIT:
        return "sha256_of_size_and_64MiB_start_middle_end", sampled_sha256(path)
    return "sha256", file_digest(path, "sha256")
