"""`home.py`: atomic writes leave nothing behind, state files wait in memory for a disk that refuses
them, a broken `$CIPX_HOME` is described in one line, and the daemon lock (`lock_home`) is held,
refused, or unavailable but not fatal."""

import errno
import os
import stat

import pytest

from opik_cipx import home
from opik_cipx.home import LOCK_FILE, HomeLocked, StateFiles, home_problem, lock_home, write_atomic


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



def test_the_holder_writes_its_pid_and_a_second_taker_is_refused_with_it(tmp_path):
    first = lock_home(tmp_path)
    assert first.fd is not None and first.error is None
    path = tmp_path / LOCK_FILE
    assert path.read_text() == f"{os.getpid()}\n" and stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.stat()
    with pytest.raises(HomeLocked) as refused:
        lock_home(tmp_path)  # another open file description: flock refuses it like another process
    assert refused.value.pid == os.getpid()
    after = path.stat()
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)  # the refused one wrote nothing
    first.release()
    again = lock_home(tmp_path)
    assert again.fd is not None
    again.release()


def test_a_holder_whose_pid_is_unreadable_is_still_refused_without_a_pid(tmp_path):
    first = lock_home(tmp_path)
    os.ftruncate(first.fd, 0)
    with pytest.raises(HomeLocked) as refused:
        lock_home(tmp_path)
    assert refused.value.pid is None
    first.release()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EDQUOT])
def test_a_lock_file_that_cannot_be_created_is_reported_not_fatal(tmp_path, monkeypatch, code):
    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(home.os, "open", refuse)
    lock = lock_home(tmp_path)
    assert lock.fd is None and lock.error == f"cannot create {LOCK_FILE}: {os.strerror(code)}"
    lock.release()  # nothing to release


def test_an_existing_lock_file_on_a_read_only_home_is_still_locked(tmp_path, monkeypatch):
    (tmp_path / LOCK_FILE).write_text("")
    real_open = os.open

    def read_only(path, flags, *args):
        if flags & (os.O_RDWR | os.O_WRONLY | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_open(path, flags, *args)

    monkeypatch.setattr(home.os, "open", read_only)
    lock = lock_home(tmp_path)
    assert lock.fd is not None and lock.error is None
    with pytest.raises(HomeLocked):
        lock_home(tmp_path)
    lock.release()


def test_the_layout_names_every_path_settings_and_commands_make(tmp_path):
    from opik_cipx.commands.sync import TOLD_FILE
    from opik_cipx.config import load_settings
    from opik_cipx.control.budget_allow import FILE as ALLOW_FILE
    from opik_cipx.control.claude_settings import STATUS_LINE_BACKUP
    from opik_cipx.control.daemon_control import SUPERVISOR_FILE
    from opik_cipx.control.install import HOOKS_CREATED, MADE_DIRS
    from opik_cipx.views.access import OPEN_FILE, TOKEN_FILE
    from opik_cipx.views.sign_in import LINKS_DIR

    settings = load_settings({"CIPX_HOME": str(tmp_path), "CIPX_CONFIG": os.devnull})
    made = [getattr(settings, name) for name in dir(type(settings))
            if name.endswith(("_dir", "_path")) and name != "config_path"]
    names = {str(path.relative_to(tmp_path)) for path in made}
    names |= {"materializer", "ledger.db-wal", "ledger.db-shm", TOKEN_FILE, OPEN_FILE, LINKS_DIR, MADE_DIRS,
              "sync.lock", "bin", "logs/cipx.log", "logs/daemon.stderr", "spool/cursor.json", HOOKS_CREATED,
              SUPERVISOR_FILE, "logs/supervisor.log", STATUS_LINE_BACKUP, ALLOW_FILE, TOLD_FILE}
    assert names == {name for name, _ in home.LAYOUT}
    parents = [name for name, _ in home.LAYOUT]
    assert all(parents.index(name.rpartition("/")[0]) < parents.index(name) for name in parents if "/" in name)


def test_wrong_type_paths_are_set_aside_whole_and_noted_until_deleted(tmp_path):
    from tests.fake_clock import FakeClock

    root = tmp_path / "home"
    root.mkdir()
    for name, directory in home.LAYOUT:
        if "/" in name:
            continue
        if directory:
            (root / name).write_text(name)
        else:
            (root / name).mkdir()
            (root / name / "inside").write_text(name)
    (root / "spool.not-a-directory-20270115T080000Z").write_text("an earlier one")
    (root / "notes.not-a-file-20270115T080000Z").write_text("not ours: not named")
    assert len(home.layout_problems(root)) == len([name for name in home.LAYOUT if "/" not in name[0]])

    notes = home.set_aside_wrong_types(root, FakeClock(1_800_000_000 * 10**9))  # 2027-01-15T08:00:00Z
    assert len(notes) == len([name for name in home.LAYOUT if "/" not in name[0]])
    assert "captures was a file, not a directory: moved to captures.not-a-directory-20270115T080000Z" in notes[0]
    for name, directory in home.LAYOUT:
        if "/" in name:
            continue
        kind = "directory" if directory else "file"
        moved = root / f"{name}.not-a-{kind}-20270115T080000Z"
        if name == "spool":
            moved = root / "spool.not-a-directory-20270115T080000Z-2"  # an earlier one of that second is kept
        assert (moved.read_text() if directory else (moved / "inside").read_text()) == name
        assert not (root / name).exists()
    assert home.layout_problems(root) == [] and home.set_aside_wrong_types(root) == []
    layout = home.layout_notes(root)
    assert "spool.not-a-directory-20270115T080000Z: spool was not a directory when a daemon started, so it was set " \
           "aside; look at it, then delete it" in layout
    assert not [line for line in layout if "notes" in line or str(root) in line]
    for moved in root.glob("*.not-a-*"):
        if moved.name.startswith("notes"):
            continue
        (moved.unlink() if moved.is_file() else __import__("shutil").rmtree(moved))
    assert home.layout_notes(root) == []


def test_a_nested_path_and_one_that_cannot_be_moved(tmp_path, monkeypatch):
    root = tmp_path / "home"
    (root / "spool" / "cursor.json").mkdir(parents=True)
    assert home.layout_notes(root) == [
        "spool/cursor.json is a directory, not a file; a starting daemon moves it aside: run `opik-cipx restart`"]

    def refuse(src, dst):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(home.os, "rename", refuse)
    assert home.set_aside_wrong_types(root) == [
        "spool/cursor.json is a directory, not a file, and cannot be moved aside (Read-only file system): "
        "move it away, then run `opik-cipx restart`"]
