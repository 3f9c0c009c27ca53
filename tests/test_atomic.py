"""dfcil.atomic: all-or-nothing writes that leave files as readable as a plain write would."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dfcil.atomic import atomic_write, current_umask, write_json, write_text


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_a_new_file_gets_the_umask_mode_and_a_replaced_file_keeps_its_mode(tmp_path):
    mask = current_umask()
    previous = os.umask(0o027)
    try:
        assert current_umask() == 0o027  # read without changing it
        assert current_umask() == 0o027
        write_text(tmp_path / "new.txt", "a")
        assert _mode(tmp_path / "new.txt") == 0o640  # 0666 & ~0027, as open(..., "w") gives
        (tmp_path / "shared.json").write_text("{}")
        os.chmod(tmp_path / "shared.json", 0o644)
        write_json(tmp_path / "shared.json", {"a": 1})
        assert _mode(tmp_path / "shared.json") == 0o644  # an in-place update keeps the mode
        os.chmod(tmp_path / "shared.json", 0o600)
        write_json(tmp_path / "shared.json", {"a": 2})
        assert _mode(tmp_path / "shared.json") == 0o600
        assert (tmp_path / "shared.json").read_text() == '{\n  "a": 2\n}\n'
        assert sorted(p.name for p in tmp_path.iterdir()) == ["new.txt", "shared.json"]  # no temporaries
    finally:
        os.umask(previous)
    assert current_umask() == mask


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    write_text(tmp_path / "f.json", "old")
    def half_then_fail(handle):
        handle.write(b"new, half writ")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "f.json", half_then_fail)
    assert (tmp_path / "f.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]
