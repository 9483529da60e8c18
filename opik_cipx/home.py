"""The private state root (`$CIPX_HOME`, default `~/.opik-cipx`) and owner-only files in it.

Directories are 0700 and files 0600, whatever the process umask says. Small state files
(`state.json`, `ports.json`, cursors) are replaced atomically: temp file, fsync, rename.
"""

import json
import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


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
