"""Replacing files that belong to other programs: Claude Code's settings, supervisor units.

Unlike our own state (home.py: 0700/0600), these keep the mode they already have, and the
directories they live in are created with the usual permissions, never tightened. The write is
atomic (temp file in the same directory, fsync, rename), and a symlinked file (dotfile
managers) is written through to its target instead of being replaced by a regular file.
`remove_empty` takes away directories made for such files, and only while they are empty.
"""

import os
from pathlib import Path


def replace_file(path: Path, data: bytes, default_mode: int = 0o644) -> None:
    """Atomically replace `path` with `data`, keeping its mode (`default_mode` when new)."""
    target = Path(os.path.realpath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = default_mode
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def remove_empty(directories: list[Path]) -> list[Path]:
    """Remove those of `directories` that are empty, innermost first; the paths removed."""
    removed = []
    for directory in sorted(directories, key=lambda d: len(d.parts), reverse=True):
        try:
            directory.rmdir()  # only an empty directory goes
        except OSError:
            continue
        removed.append(directory)
    return removed
