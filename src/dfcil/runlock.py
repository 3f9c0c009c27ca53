"""One process at a time per run directory.

``dfcil run`` holds an exclusive ``flock`` on ``<run dir>/.lock`` while it trains, so a second
``dfcil run --resume`` of the same directory (or a second suite over the same output) stops with
a one-line error instead of training into the same files. The operating system drops the lock
when the process ends, however it ends, so no stale lock outlives a killed run. The file holds the
owner's pid and host for the error message. Where ``fcntl`` is missing (Windows) runs are not
locked.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dfcil.errors import RunDirError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"


def _owner(lock_file: Path) -> str:
    try:
        text = lock_file.read_text().strip()
    except OSError:
        return "another process"
    return text or "another process"


@contextmanager
def hold_run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock for the ``with`` block (creating ``run_dir`` if needed;
    a directory created here that holds nothing but the lock at the end is removed again, so a
    run that fails before writing anything leaves nothing behind).

    Raises :class:`RunDirError` when another live process holds it.
    """
    if fcntl is None:  # pragma: no cover
        yield
        return
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    lock_file = run_dir / LOCK_FILE
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise RunDirError(f"cannot write to run directory {run_dir}: {error.strerror or error}") from None
    try:
        locked = _lock(fd, lock_file, run_dir)
        if locked:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        try:
            yield
        finally:
            if locked:
                os.ftruncate(fd, 0)
            if created and [entry.name for entry in run_dir.iterdir()] == [LOCK_FILE]:
                lock_file.unlink()
                run_dir.rmdir()
            if locked:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _lock(fd: int, lock_file: Path, run_dir: Path) -> bool:
    """Take the exclusive lock on ``fd``: True when held, False (with a warning) on a file system
    without locks (some network mounts); :class:`RunDirError` when another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunDirError(f"{run_dir} is being trained by {_owner(lock_file)}: wait for it to end "
                          "or stop it first") from None
    except OSError as error:
        print(f"[dfcil] warning: cannot lock {lock_file} ({error.strerror or error}); "
              "nothing stops a second process from training this run directory", file=sys.stderr)
        return False
    return True


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
