"""Helpers for the attack suite: raw requests, another local user, a disk that fills up or turns read-only.

Every test in `tests/security/` runs one attack of issue 12 against the real daemon (a subprocess,
`tests.conftest.DaemonProcess`). Those that need root (another user through `runuser`, a tmpfs
mount) skip with the reason when the machine cannot provide it.
"""

import functools
import os
import shutil
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.wire.conftest import wire  # noqa: F401 - the in-process gateway fixture, for the attacks on it

NOBODY_PYTHONS = ("/usr/bin/python3", "/bin/python3", "/usr/local/bin/python3")


def write_config(home: Path, text: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(text)


def raw_exchange(port: int, data: bytes, half_close: bool = False, timeout: float = 5) -> bytes:
    """Send `data` as is on a new connection and return everything answered until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and not half_close and _complete(b"".join(chunks)):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


@functools.cache
def _as_nobody() -> tuple[str, str] | str:
    """(runuser, a python `nobody` can run), or why there is none: probed once per test process."""
    runuser = shutil.which("runuser")
    if os.geteuid() != 0 or runuser is None:
        return "needs root and runuser to act as another local user"
    python = next((p for p in NOBODY_PYTHONS if os.path.exists(p)), None)
    if python is None or subprocess.run([runuser, "-u", "nobody", "--", python, "-c", "pass"],
                                        capture_output=True).returncode != 0:
        return "the nobody user cannot run a system python3 here"
    return runuser, python


@pytest.fixture
def other_user():
    """Run a Python snippet as the `nobody` user: `other_user(code) -> CompletedProcess`."""
    found = _as_nobody()
    if isinstance(found, str):
        pytest.skip(found)
    runuser, python = found

    def run(code: str) -> subprocess.CompletedProcess:
        return subprocess.run([runuser, "-u", "nobody", "--", python, "-c", code], capture_output=True, text=True,
                              timeout=30, cwd="/")

    return run


def remount(path: Path, options: str, attempts: int = 5) -> None:
    """`mount -o remount,<options> path`, tried again when it fails. With 8 workers it once failed
    with status 32 while other workers mounted and unmounted: mount(8) looks the mount point up in
    /proc/self/mountinfo, which a concurrent change can make it read inconsistently (the likely
    cause). The last failure is raised."""
    for attempt in range(attempts):
        try:
            subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True, capture_output=True)
            return
        except subprocess.CalledProcessError:
            if attempt == attempts - 1:
                raise


class Tmpfs:
    """A small tmpfs mounted for the test: it can fill up, turn read-only and recover."""

    def __init__(self, path: Path):
        self.path = path

    def remount(self, option: str) -> None:
        remount(self.path, option)

    def fill(self) -> Path:
        """Take every free byte; the file to delete to make room again."""
        filler = self.path / "filler"
        with open(filler, "ab") as fh:
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError:
                pass
        return filler


@pytest.fixture
def tmpfs(tmp_path: Path):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs that can fill up or turn read-only "
                    "(tests/test_home.py covers ENOSPC/EROFS in process)")
    path = tmp_path / "disk"
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (no CAP_SYS_ADMIN); tests/test_home.py covers ENOSPC/EROFS in process")
    try:
        yield Tmpfs(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def read_only_view():
    """`with read_only_view(path):` the directory read-only for every new open (a read-only bind mount over
    itself); files a running daemon already holds open stay writable, as on a disk remounted under it."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to bind-mount a directory read-only")

    @contextmanager
    def view(path: Path):
        if subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True).returncode != 0:
            pytest.skip("cannot bind-mount here (no CAP_SYS_ADMIN)")
        try:
            remount(path, "bind,ro")
            yield
        finally:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)

    return view
