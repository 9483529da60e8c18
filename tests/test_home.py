"""`home.py`: atomic writes leave nothing behind, state files wait in memory for a disk that refuses
them, and a broken `$CIPX_HOME` is described in one line."""

import errno
import os
import stat

import pytest

from opik_cipx import home
from opik_cipx.home import StateFiles, home_problem, write_atomic


def refuse_writes(monkeypatch, err: int = errno.ENOSPC) -> None:
    def fsync(fd):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(home.os, "fsync", fsync)


def test_a_failed_atomic_write_leaves_no_temp_file_and_the_old_content(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    write_atomic(path, b"old")
    refuse_writes(monkeypatch)
    with pytest.raises(OSError):
        write_atomic(path, b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    assert path.read_bytes() == b"old"


def test_state_files_wait_in_memory_and_are_written_when_the_disk_takes_them(tmp_path, monkeypatch):
    files = StateFiles(tmp_path)
    refuse_writes(monkeypatch)
    assert not files.write_json(tmp_path / "state.json", {"pid": 1})
    assert not files.write_json(tmp_path / "state.json", {"pid": 2})  # the newest content wins
    assert not files.write(tmp_path / "viewer.token", b"t\n")
    assert files.section() == {"unsaved": ["state.json", "viewer.token"],
                               "last_error": "cannot write viewer.token: No space left on device"}
    assert files.retry() == []
    assert list(tmp_path.iterdir()) == []  # no temp file left behind
    monkeypatch.undo()
    assert sorted(p.name for p in files.retry()) == ["state.json", "viewer.token"]
    assert (tmp_path / "state.json").read_text() == '{\n  "pid": 2\n}\n'
    assert stat.S_IMODE((tmp_path / "viewer.token").stat().st_mode) == 0o600
    assert files.section() == {"unsaved": [], "last_error": None}
    files.discard(tmp_path / "state.json")
    assert not (tmp_path / "state.json").exists()


def test_home_problem_names_the_path_and_the_problem(tmp_path, monkeypatch):
    assert home_problem(tmp_path / "missing", write=True) is None
    assert home_problem(tmp_path, write=True) is None
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert home_problem(a_file, write=False) == (
        f"CIPX_HOME {a_file} is not a directory; remove that file or point CIPX_HOME at a directory")
    assert home_problem(a_file / "home", write=False) == f"CIPX_HOME {a_file / 'home'} cannot be used: Not a directory"
    monkeypatch.setattr(home.os, "access", lambda path, mode: not mode & os.R_OK)
    assert "cannot be read by this user" in home_problem(tmp_path, write=False)
    monkeypatch.setattr(home.os, "access", lambda path, mode: not mode & os.W_OK)
    assert home_problem(tmp_path, write=False) is None
    assert home_problem(tmp_path, write=True) == (
        f"CIPX_HOME {tmp_path} is not writable by this user; fix its owner or permissions (chmod 700 {tmp_path})")
