"""The private home's daemon lock (`home.lock_home`): held, refused, or unavailable but not fatal."""

import errno
import os
import stat

import pytest

from opik_cipx import home as home_module
from opik_cipx.home import LOCK_FILE, HomeLocked, lock_home


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

    monkeypatch.setattr(home_module.os, "open", refuse)
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

    monkeypatch.setattr(home_module.os, "open", read_only)
    lock = lock_home(tmp_path)
    assert lock.fd is not None and lock.error is None
    with pytest.raises(HomeLocked):
        lock_home(tmp_path)
    lock.release()
