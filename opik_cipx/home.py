"""The private state root (`$CIPX_HOME`, default `~/.opik-cipx`) and owner-only files in it.

Directories are 0700 and files 0600, whatever the process umask says. Small state files
(`state.json`, `ports.json`, cursors) are replaced atomically: temp file, fsync, rename; a
failed write leaves no temp file behind. `StateFiles` keeps the daemon's own small files in
memory while the disk refuses them (full, read-only) and writes them once it takes them again.
`home_problem` says in one line why a `$CIPX_HOME` cannot be used. One daemon per home: it holds
an exclusive `flock` on `daemon.lock` for its lifetime.

`LAYOUT` lists every path opik-cipx makes in the home and its type. One of the wrong type (a file
where a directory belongs, or the reverse) is named in one line by `layout_problems` (commands)
and moved aside whole by `set_aside_wrong_types` (a starting daemon, docs/LIFECYCLE.md), so the
daemon gets a fresh one and nothing is deleted; `layout_notes` says what waits for the user.
"""

import errno
import fcntl
import io
import json
import os
import re
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from opik_cipx.clock import SYSTEM, Clock

DIR_MODE = 0o700
FILE_MODE = 0o600
LOCK_FILE = "daemon.lock"
# Every path opik-cipx makes under $CIPX_HOME, relative to it, and whether it is a directory;
# parents first. `daemon.lock` and `supervisor.lock` are not here: each is locked whatever it is,
# and moving it away under its holder would let a second daemon or supervisor in. `config.toml`
# is the user's.
LAYOUT: tuple[tuple[str, bool], ...] = (
    ("captures", True), ("spool", True), ("materializer", True), ("logs", True), ("sessions", True), ("bin", True),
    ("ledger.db", False), ("ledger.db-wal", False), ("ledger.db-shm", False), ("state.json", False),
    ("ports.json", False), ("viewer.token", False), ("viewer-open.html", False), ("viewer-links", True),
    ("sync.lock", False), ("budget-allow.json", False), ("budget-told.json", False),
    ("made-dirs.json", False), ("claude-hooks.json", False), ("supervisor.json", False),
    ("statusline-backup.json", False),
    ("materializer/checkpoint.json", False), ("spool/cursor.json", False),
    ("logs/cipx.log", False), ("logs/daemon.stderr", False), ("logs/supervisor.log", False),
)
_SET_ASIDE = re.compile(r"(.+)\.not-a-(directory|file)-(\d{8}T\d{6}Z)(?:-\d+)?")


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


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_APPEND) -> io.FileIO:
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
    try:
        with open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC) as fh:
            fh.write(data)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def write_json(path: Path, value: object) -> None:
    """Atomically write `value` as indented JSON."""
    write_atomic(path, _json_bytes(value))


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
    except OSError:
        pass
    write_holder(fd)
    return HomeLock(fd)


def write_holder(fd: int) -> None:
    """Name this process in the lock file `fd` it holds; best effort: on failure the lock is held
    all the same, and the next process that finds it taken just cannot name the holder."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass


def _lock_holder(fd: int) -> int | None:
    try:
        raw = os.pread(fd, 32, 0).strip()
    except OSError:
        return None
    return int(raw) if raw.isdigit() and int(raw) > 0 else None


def _json_bytes(value: object) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def home_problem(home: Path, write: bool) -> str | None:
    """Why `home` cannot serve as `$CIPX_HOME` (one line naming it), or None.

    A missing home is fine (it is created on first use). `write`: it must also take new files.
    """
    try:
        info = home.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"CIPX_HOME {home} cannot be used: {exc.strerror}"
    if not stat.S_ISDIR(info.st_mode):
        return f"CIPX_HOME {home} is not a directory; remove that file or point CIPX_HOME at a directory"
    if not os.access(home, os.R_OK | os.X_OK):
        return f"CIPX_HOME {home} cannot be read by this user; fix its owner or permissions (chmod 700 {home})"
    if write and not os.access(home, os.W_OK):
        if disk_full_or_read_only(home) == "is on a read-only file system":
            return f"CIPX_HOME {home} is on a read-only file system; remount it read-write or point CIPX_HOME elsewhere"
        return f"CIPX_HOME {home} is not writable by this user; fix its owner or permissions (chmod 700 {home})"
    return None


def disk_full_or_read_only(path: Path) -> str | None:
    """"is on a read-only file system" / "is on a full disk" for an existing `path`, else None."""
    try:
        info = os.statvfs(path)
    except OSError:
        return None
    if info.f_flag & os.ST_RDONLY:
        return "is on a read-only file system"
    if info.f_bavail == 0:
        return "is on a full disk"
    return None


class FilesSection(TypedDict):
    """`StateFiles.section`: the files waiting in memory (relative to the home), and why."""

    unsaved: list[str]
    last_error: str | None


class StateFiles:
    """The daemon's small files (`state.json`, `ports.json`, ...), written atomically or kept in memory.

    `write` tries at once; a write the disk refuses keeps the newest content in memory, and
    `retry` (called every second by the daemon) writes it when the disk takes it again.
    `section` reports what waits and why, with file names relative to the home only.
    """

    def __init__(self, home: Path):
        self.home = home
        self._lock = threading.Lock()
        self._waiting: dict[Path, bytes] = {}
        self._error: str | None = None

    def write(self, path: Path, data: bytes) -> bool:
        """True when `data` is on disk now; False when it waits in memory."""
        with self._lock:
            self._waiting[path] = data
        return self._flush(path, data)

    def write_json(self, path: Path, value: object) -> bool:
        return self.write(path, _json_bytes(value))

    def discard(self, path: Path) -> None:
        """Forget `path` and remove it from disk if there (e.g. `state.json` at a clean exit)."""
        with self._lock:
            self._waiting.pop(path, None)
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    def retry(self) -> list[Path]:
        """Write what waits; the paths written now."""
        with self._lock:
            waiting = list(self._waiting.items())
        return [path for path, data in waiting if self._flush(path, data)]

    def _flush(self, path: Path, data: bytes) -> bool:
        try:
            write_atomic(path, data)
        except OSError as exc:
            with self._lock:
                self._error = f"cannot write {self._name(path)}: {exc.strerror or type(exc).__name__}"
            return False
        with self._lock:
            if self._waiting.get(path) is data:
                del self._waiting[path]
            if not self._waiting:
                self._error = None
        return True

    def _name(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.home))
        except ValueError:
            return path.name

    def section(self) -> FilesSection:
        with self._lock:
            return {"unsaved": sorted(self._name(p) for p in self._waiting), "last_error": self._error}


def wrong_type(path: Path, directory: bool) -> str | None:
    """How `path` fails to be a directory (`directory`) or a regular file, e.g. "is a file, not a
    directory"; None when it is right, missing, or cannot be looked at (other checks say why)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "is a symbolic link to nothing" if directory and path.is_symlink() else None
    except OSError:
        return None
    if directory:
        if stat.S_ISDIR(mode):
            return None
        return "is a file, not a directory" if stat.S_ISREG(mode) else "is not a directory"
    if stat.S_ISREG(mode):
        return None
    return "is a directory, not a file" if stat.S_ISDIR(mode) else "is not a regular file"


def _wrong_types(home: Path) -> list[tuple[str, bool, str]]:
    """(name, directory, why) of each `LAYOUT` path of the wrong type, parents first."""
    out: list[tuple[str, bool, str]] = []
    for name, directory in LAYOUT:
        why = wrong_type(home / name, directory)
        if why and not any(name.startswith(f"{parent}/") for parent, _, _ in out):
            out.append((name, directory, why))
    return out


def layout_problems(home: Path) -> list[str]:
    """One line per path of the wrong type in `home`, naming it in full (for a command to print)."""
    return [f"{home / name} {why}" for name, _, why in _wrong_types(home)]


def set_aside_wrong_types(home: Path, clock: Clock = SYSTEM) -> list[str]:
    """Move each path of the wrong type in `home` aside, whole, to `<name>.not-a-<directory|file>-<UTC
    stamp>`, so whoever needs it makes a new one; one line per path (names relative to the home),
    saying where it went or why it could not be moved. Run before a daemon starts."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(clock.time()))
    lines = []
    for name, directory, why in _wrong_types(home):
        path = home / name
        base = f"{path.name}.not-a-{'directory' if directory else 'file'}-{stamp}"
        free = (path.with_name(n) for n in (base, *(f"{base}-{i}" for i in range(2, 100))))
        target = next((candidate for candidate in free if not os.path.lexists(candidate)), None)
        try:
            if target is None:
                raise OSError(errno.EEXIST, "too many set aside already")
            os.rename(path, target)  # never onto an existing path: lexists said it is free
        except OSError as exc:
            lines.append(f"{name} {why}, and cannot be moved aside ({exc.strerror or type(exc).__name__}): "
                         "move it away, then run `opik-cipx restart`")
            continue
        lines.append(f"{name} {why.replace('is ', 'was ', 1)}: moved to {target.relative_to(home)}; a new one is "
                     "made in its place: look at it, then delete it")
    return lines


def layout_notes(home: Path) -> list[str]:
    """What the user should look at in `home`'s layout, one line each with names relative to it
    (fit for the admin port): paths of the wrong type now, and those set aside before."""
    notes = [f"{name} {why}; a starting daemon moves it aside: run `opik-cipx restart`"
             for name, _, why in _wrong_types(home)]
    names = {name for name, _ in LAYOUT}
    for folder in sorted({name.rpartition("/")[0] for name in names}):  # "" (the home itself) first
        try:
            entries = sorted(entry.name for entry in os.scandir(home / folder))
        except OSError:
            continue
        prefix = f"{folder}/" if folder else ""
        for entry in entries:
            found = _SET_ASIDE.fullmatch(entry)
            if found and prefix + found.group(1) in names:
                notes.append(f"{prefix}{entry}: {prefix}{found.group(1)} was not a {found.group(2)} when a daemon "
                             "started, so it was set aside; look at it, then delete it")
    return notes
