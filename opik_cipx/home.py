"""The private state root (`$CIPX_HOME`, default `~/.opik-cipx`) and owner-only files in it.

Directories are 0700 and files 0600, whatever the process umask says. Small state files
(`state.json`, `ports.json`, cursors) are replaced atomically: temp file, fsync, rename.
One daemon per home: it holds an exclusive `flock` on `daemon.lock` for its lifetime.
"""

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
LOCK_FILE = "daemon.lock"


def default_home(env: dict[str, str]) -> Path:
    """`$CIPX_HOME`, else `~/.opik-cipx`."""
    raw = env.get("CIPX_HOME", "").strip()
    if raw:
        return Path(raw).expanduser()
    return Path(env.get("HOME") or Path.home()) / ".opik-cipx"


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) if needed and make it 0700."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != DIR_MODE:
        os.chmod(path, DIR_MODE)
    return path


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_APPEND):
    """Open `path` for binary writing, created 0600 (existing files are tightened to 0600)."""
    fd = os.open(path, flags, FILE_MODE)
    try:
        if os.fstat(fd).st_mode & 0o777 != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, "wb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically (0600, fsynced before the rename)."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC) as fh:
        fh.write(data)
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json(path: Path, value: object) -> None:
    """Atomically write `value` as indented JSON."""
    write_atomic(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> object | None:
    """The JSON in `path`, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


class HomeLocked(Exception):
    """Another process holds the daemon lock of this home; `pid` is its pid when it could be read."""

    def __init__(self, pid: int | None):
        super().__init__(f"held by pid {pid}" if pid else "held by another process")
        self.pid = pid


@dataclass
class HomeLock:
    """The daemon lock of one home: `fd` while held; `error` says why it could not be taken."""

    fd: int | None
    error: str | None = None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def lock_home(home: Path) -> HomeLock:
    """Take the exclusive lock on `home/daemon.lock` for as long as this process lives.

    The kernel releases a `flock` when its holder dies, `kill -9` included, so the lock never
    goes stale. Holding it, the daemon writes its pid into the file; raises `HomeLocked` (having
    changed nothing) when another process holds it. A lock file that cannot be created or opened
    (disk full, read-only home) gives an unheld `HomeLock` with the reason: the daemon starts
    anyway, because the wire comes first, and reports it.
    """
    path = home / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
    except OSError as exc:
        try:  # an existing lock file on a read-only home: locking needs no write access
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return HomeLock(None, f"cannot create {LOCK_FILE}: {exc.strerror or exc}")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _lock_holder(fd)
        os.close(fd)
        raise HomeLocked(pid) from None
    except OSError as exc:  # e.g. a filesystem without flock
        os.close(fd)
        return HomeLock(None, f"cannot lock {LOCK_FILE}: {exc.strerror or exc}")
    try:
        if os.fstat(fd).st_mode & 0o777 != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # held all the same; a second daemon just cannot name this pid
    return HomeLock(fd)


def _lock_holder(fd: int) -> int | None:
    try:
        raw = os.pread(fd, 32, 0).strip()
    except OSError:
        return None
    return int(raw) if raw.isdigit() and int(raw) > 0 else None
