"""Records Opik refused for good, and handing them back (docs/ARCHITECTURE.md, "On-disk formats").

`set_aside` appends `{at, kind, status, reason, body}` to `quarantine.jsonl` (rotated once, to
`.1`, at `QUARANTINE_MAX_BYTES`); only the daemon's shipper thread writes it.
`opik-cipx ship --retry-quarantine` hands the records back with `request_requeue`: it renames
the quarantine files to `requeue-<ns>-<n>.jsonl`, an atomic step that is safe with the daemon up
or down (a record set aside meanwhile lands in one file or the other). The spool then takes the
requeue files in (`requeue_files`, `requeued_lines`) and deletes one only once all of its records
are durable; what did not make it is written back (`keep_rest`) for the next look.
"""

import json
import logging
import os
from pathlib import Path
from typing import Any

from opik_cipx.home import open_private, write_atomic
from opik_cipx.store.spool_lines import encode
from opik_cipx.store.spool_segments import SUFFIX

log = logging.getLogger(__name__)

QUARANTINE = "quarantine.jsonl"
QUARANTINE_MAX_BYTES = 16 * 1024 * 1024  # then rotated once to quarantine.jsonl.1
REQUEUE_PREFIX = "requeue-"


def set_aside(directory: Path, kind: str, body: dict[str, Any], status: int, reason: str, at: str) -> None:
    """Append one refused record with its reason to the quarantine file (best effort: logged)."""
    entry = {"at": at, "kind": kind, "status": status, "reason": reason, "body": body}
    line = json.dumps(entry, separators=(",", ":")).encode() + b"\n"
    path = directory / QUARANTINE
    try:
        if path.exists() and path.stat().st_size + len(line) > QUARANTINE_MAX_BYTES:
            os.replace(path, path.with_name(QUARANTINE + ".1"))
        with open_private(path) as fh:
            fh.write(line)
    except OSError as exc:
        log.warning("spool: cannot write the quarantine file: %s", exc.strerror or exc)


def requeue_files(directory: Path) -> list[Path]:
    """The requeue files waiting in `directory`, oldest first (empty when it cannot be read)."""
    try:
        return sorted(p for p in directory.iterdir() if p.name.startswith(REQUEUE_PREFIX) and p.name.endswith(SUFFIX))
    except OSError:
        return []


def _lines(path: Path) -> int:
    """Newline-terminated lines in `path` (0 when it is missing or unreadable)."""
    try:
        with open(path, "rb") as fh:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    except OSError:
        return 0


def quarantine_counts(directory: Path) -> dict[str, int]:
    """`quarantined`: records set aside in the quarantine files; `retry_pending`: records handed
    back by `ship --retry-quarantine` that the daemon has not put into the spool yet."""
    return {
        "quarantined": _lines(directory / QUARANTINE) + _lines(directory / (QUARANTINE + ".1")),
        "retry_pending": sum(map(_lines, requeue_files(directory))),
    }


def request_requeue(directory: Path, stamp_ns: int) -> int:
    """Hand every quarantined record back to the spool's owner: how many were handed back.

    Renames the quarantine files (the older first) to requeue files named with `stamp_ns`, which
    the daemon takes in; works whether the daemon runs or not.
    """
    moved = 0
    for n, name in enumerate((QUARANTINE + ".1", QUARANTINE)):
        target = directory / f"{REQUEUE_PREFIX}{stamp_ns}-{n}{SUFFIX}"
        try:
            os.rename(directory / name, target)
        except FileNotFoundError:
            continue
        moved += _lines(target)
    return moved


def requeued_lines(path: Path) -> list[bytes]:
    """The spool lines of a requeue file's entries (those holding no spool record are left out);
    raises OSError when it cannot be read."""
    return [line for raw in path.read_bytes().splitlines() if (line := _spool_line(raw)) is not None]


def _spool_line(raw: bytes) -> bytes | None:
    try:
        entry = json.loads(raw)
        return encode({"kind": entry["kind"], "body": entry["body"]})
    except (ValueError, TypeError, KeyError):
        return None


def keep_rest(path: Path, done: int, lines: list[bytes]) -> None:
    """After `done` of a requeue file's `lines` are durable: delete it, or leave the rest in it (spool
    lines read back as quarantine entries). Raises OSError."""
    if done < len(lines):
        write_atomic(path, b"".join(lines[done:]))
    else:
        path.unlink()
