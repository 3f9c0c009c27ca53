"""One process at a time per run directory, and per model file being written.

``dfcil run`` holds an exclusive ``flock`` on ``<run dir>/.lock`` while it trains, so a second
``dfcil run --resume`` of the same directory (or a second suite over the same output) stops with
a one-line error instead of training into the same files. The operating system drops the lock
when the process ends, however it ends, so no stale lock outlives a killed run. The file holds the
owner's pid and host for the error message and is removed when the run ends. Where ``fcntl`` is
missing (Windows) runs are not locked. :func:`hold_output_lock` does the same for a single output
file (``dfcil learn -o MODEL``), with ``.<name>.lock`` beside it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dfcil.errors import RunDirError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"

logger = logging.getLogger(__name__)


def _owner(lock_file: Path) -> str:
    try:
        text = lock_file.read_text().strip()
    except OSError:
        return "another process"
    return text or "another process"


@contextmanager
def hold_run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock for the ``with`` block (creating ``run_dir`` if needed).

    The lock file exists only while it is held: it is removed on release (after a crash a file
    nobody holds may stay; it does not block anyone). A directory created here that is empty at
    the end is removed again, so a run that fails before writing anything leaves nothing behind.
    Raises :class:`RunDirError` when another live process holds the lock.
    """
    if fcntl is None:  # pragma: no cover
        yield
        return
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    try:
        with _holding(run_dir / LOCK_FILE, f"cannot write to run directory {run_dir}",
                      f"{run_dir} is being trained by {{owner}}: wait for it to end or stop it first"):
            yield
    finally:
        if created and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()


@contextmanager
def hold_output_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the output file ``path`` for the ``with`` block, so that two
    processes writing the same file (two ``dfcil learn -o same.safetensors``) cannot both succeed:
    the second stops at once with a one-line :class:`RunDirError`. The lock is ``.<name>.lock``
    in ``path``'s folder (created if needed), removed on release."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    path = Path(path)
    with _holding(path.parent / f".{path.name}.lock", f"cannot write to {path.parent}",
                  f"{path} is being written by {{owner}}: wait for it to end or choose another output"):
        yield


@contextmanager
def _holding(lock_file: Path, cannot_write: str, busy: str) -> Iterator[None]:
    """Create ``lock_file``'s folder, hold the lock (owner written into it) for the block, then
    remove the file and release it. ``cannot_write`` and ``busy`` as for :func:`_acquire`."""
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirError(f"{cannot_write}: {error.strerror or error}") from None
    fd, locked = _acquire(lock_file, cannot_write, busy)
    try:
        if locked:
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        yield
    finally:
        if locked:
            lock_file.unlink(missing_ok=True)  # while still held: no one can lock the old file after this
        os.close(fd)  # releases the lock


def _acquire(lock_file: Path, cannot_write: str, busy: str) -> tuple[int, bool]:
    """Open and lock ``lock_file``: ``(fd, True)`` when held, ``(fd, False)`` (with a warning) on a
    file system without locks (some network mounts); :class:`RunDirError` when another process
    holds it (``busy`` with ``{owner}`` filled in). Retries when the file was removed or replaced between opening and locking it (its
    holder released it), so two processes never hold locks on different files of one path."""
    while True:
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise RunDirError(f"{cannot_write}: {error.strerror or error}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirError(busy.format(owner=_owner(lock_file))) from None
        except OSError as error:
            logger.warning("warning: cannot lock %s (%s); nothing stops a second process from writing the same files",
                        lock_file, error.strerror or error)
            return fd, False
        try:
            same = os.stat(lock_file).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            return fd, True
        os.close(fd)


def is_run_locked(run_dir: Path) -> bool:
    """Whether a live process holds ``run_dir``'s lock (i.e. is training it now)."""
    lock_file = Path(run_dir) / LOCK_FILE
    if fcntl is None or not lock_file.exists():
        return False
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
