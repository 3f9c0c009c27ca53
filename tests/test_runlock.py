"""One process per run directory (dfcil.runlock)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dfcil.cli import main
from dfcil.console import console_logging
from dfcil.errors import RunDirError
from dfcil.runlock import LOCK_FILE, hold_run_lock, is_run_locked


def test_lock_is_exclusive_released_and_names_its_owner(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert not is_run_locked(run_dir)
    with hold_run_lock(run_dir):
        assert is_run_locked(run_dir)
        assert "pid" in (run_dir / LOCK_FILE).read_text()
        with pytest.raises(RunDirError, match=r"run is being trained by pid \d+ on .*: wait for it"):
            with hold_run_lock(run_dir):
                pass
    assert not is_run_locked(run_dir) and not (run_dir / LOCK_FILE).exists()  # removed on release
    with hold_run_lock(run_dir):  # free again
        pass
    assert list(run_dir.iterdir()) == []  # an existing directory stays, even empty


def test_lock_of_a_process_that_died_is_free(tmp_path):
    run_dir = tmp_path / "run"
    code = ("import os, sys; from dfcil.runlock import hold_run_lock\n"
            f"with hold_run_lock({str(run_dir)!r}):\n    os._exit(0)  # killed mid-run: no clean-up\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (run_dir / LOCK_FILE).exists() and not is_run_locked(run_dir)


def test_a_directory_made_for_a_failed_run_is_removed(tmp_path):
    run_dir = tmp_path / "new" / "run"
    with pytest.raises(ValueError):
        with hold_run_lock(run_dir):
            raise ValueError("data missing")
    assert not run_dir.exists()
    kept = tmp_path / "kept"
    with hold_run_lock(kept):
        (kept / "config.yaml").write_text("{}")
    assert (kept / "config.yaml").exists()


def test_dfcil_run_refuses_a_directory_in_use(tmp_path, capsys):
    config = Path(__file__).resolve().parents[1] / "configs" / "mini.yaml"
    run_dir = tmp_path / "busy"
    with hold_run_lock(run_dir):
        (run_dir / "notes.txt").write_text("x")
        assert main(["run", str(config), "-o", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"dfcil: error: {run_dir} is being trained by pid")
    assert sorted(p.name for p in run_dir.iterdir()) == ["notes.txt"]  # nothing written, the lock gone


def test_unwritable_directory_and_unlockable_file_system(tmp_path, monkeypatch, capsys):
    import errno

    import dfcil.runlock as runlock

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RunDirError, match="cannot write to run directory .*file/run"):
        with hold_run_lock(blocker / "run"):
            pass

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(runlock.fcntl, "flock", no_locks)
    with console_logging(), hold_run_lock(tmp_path / "nfs"):  # the warning, as the command line shows it
        (tmp_path / "nfs" / "config.yaml").write_text("{}")
    assert "cannot lock" in capsys.readouterr().err and (tmp_path / "nfs" / "config.yaml").exists()


def test_a_lock_file_replaced_while_locking_is_opened_again(tmp_path, monkeypatch):
    """The holder released (and removed) the file between our open and our flock, and a third
    process made a new one: the lock must be taken on the file the path names now."""
    import dfcil.runlock as runlock

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    real_flock, calls = runlock.fcntl.flock, []

    def racing_flock(fd, operation):
        if not calls:
            calls.append(fd)
            (run_dir / LOCK_FILE).unlink()
            (run_dir / LOCK_FILE).write_text("")
        return real_flock(fd, operation)

    monkeypatch.setattr(runlock.fcntl, "flock", racing_flock)
    with hold_run_lock(run_dir):
        monkeypatch.setattr(runlock.fcntl, "flock", real_flock)
        assert len(calls) == 1 and is_run_locked(run_dir)
