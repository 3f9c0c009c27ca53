"""Thread-pool image decoding with an optional tqdm bar (PIL releases the GIL while decoding)."""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Hashable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dfcil.data.images import Geometry, decode_image

BLOCK = 64


def num_workers() -> int:
    """Decoder threads: one per CPU core."""
    return max(1, os.cpu_count() or 1)


def progress_bar(total: int | None, desc: str, enabled: bool, unit: str = "img") -> tqdm:
    """A tqdm bar on stderr, silent when ``enabled`` is False; when stderr is not a terminal
    (a log file, a pipe) it updates at most once a minute instead of many times a second."""
    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr,
                dynamic_ncols=interactive, mininterval=0.5 if interactive else 60.0)


def _decode_block(paths: Sequence[Path], out: np.ndarray, start: int, geometry: Geometry) -> int:
    for offset, path in enumerate(paths):
        out[start + offset] = decode_image(path, geometry)
    return len(paths)


def decode_files(paths: Sequence[Path], out: np.ndarray, geometry: Geometry, *,
                 desc: str, progress: bool) -> None:
    """Decode ``paths[i]`` into ``out[i]`` using one thread per core.

    The first failure (a :class:`~dfcil.errors.DataError`) cancels the remaining work and is
    re-raised.
    """
    if len(paths) != len(out):
        raise ValueError("decode_files: paths and output differ in length")
    with progress_bar(len(paths), desc, progress) as bar, \
            ThreadPoolExecutor(max_workers=num_workers(), thread_name_prefix="dfcil-decode") as pool:
        pending: set[Future[int]] = {
            pool.submit(_decode_block, paths[start:start + BLOCK], out, start, geometry)
            for start in range(0, len(paths), BLOCK)
        }
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    bar.update(future.result())
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def _decode_items(block: list[tuple[Hashable, bytes, str]], geometry: Geometry) -> list[np.ndarray]:
    return [decode_image(data, geometry, name) for _, data, name in block]


def _blocks(items: Iterable[tuple[Hashable, bytes, str]]) -> Iterator[list[tuple[Hashable, bytes, str]]]:
    block: list[tuple[Hashable, bytes, str]] = []
    for item in items:
        block.append(item)
        if len(block) == BLOCK:
            yield block
            block = []
    if block:
        yield block


def decode_stream(items: Iterable[tuple[Hashable, bytes, str]], geometry: Geometry, *,
                  desc: str, progress: bool) -> dict[Hashable, np.ndarray]:
    """Decode ``(key, encoded_bytes, display_name)`` items read sequentially (e.g. from a tar).

    The iterator is consumed on the calling thread while decoding runs on the pool, with a
    bounded number of images in flight. Returns ``{key: (size, size, 3) uint8}``.
    """
    results: dict[Hashable, np.ndarray] = {}
    limit = 4 * num_workers()
    in_flight: deque[tuple[list[Hashable], Future[list[np.ndarray]]]] = deque()

    def collect_oldest() -> None:
        keys, future = in_flight.popleft()
        results.update(zip(keys, future.result()))
        bar.update(len(keys))

    with progress_bar(None, desc, progress) as bar, \
            ThreadPoolExecutor(max_workers=num_workers(), thread_name_prefix="dfcil-decode") as pool:
        try:
            for block in _blocks(items):
                keys = [key for key, _, _ in block]
                in_flight.append((keys, pool.submit(_decode_items, block, geometry)))
                while len(in_flight) > limit:
                    collect_oldest()
            while in_flight:
                collect_oldest()
        except BaseException:
            for _, future in in_flight:
                future.cancel()
            raise
    return results
