"""Allowances: what `opik-cipx budget allow` lets through whatever the caps say (docs/BUDGETS.md).

`$CIPX_HOME/budget-allow.json` (0600) holds the sessions allowed to go on (each with when it was
allowed) and a moment until which every call is allowed. The command writes it whole (atomically,
with a new `serial`); the daemon looks at it once a second (`AllowanceFile.poll`) and hands it to
its guard, whose stats then carry the serial, so the command can wait until it applies. It lasts
across restarts; sessions allowed more than `KEEP_S` ago are dropped at the next write.
"""

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from opik_cipx.home import read_json, write_json

FILE = "budget-allow.json"
KEEP_S = 35 * 86400


@dataclass(frozen=True)
class Allowances:
    sessions: dict[str, int] = field(default_factory=dict)  # session id -> epoch ns it was allowed
    until_ns: int = 0  # every call is allowed before this moment
    serial: str | None = None


def path(home: Path) -> Path:
    return home / FILE


def read(home: Path) -> Allowances:
    """The allowances on disk (none when the file is missing or not ours)."""
    doc = read_json(path(home))
    if not isinstance(doc, dict):
        return Allowances()
    sessions = doc.get("sessions")
    sessions = {sid: at for sid, at in sessions.items() if isinstance(sid, str) and isinstance(at, int)} \
        if isinstance(sessions, dict) else {}
    until = doc.get("until_ns")
    serial = doc.get("serial")
    return Allowances(sessions, until if isinstance(until, int) else 0, serial if isinstance(serial, str) else None)


def write(home: Path, allowances: Allowances, now_ns: int) -> Allowances:
    """Write `allowances` with a new serial, old sessions dropped; what was written. Raises OSError."""
    kept = {sid: at for sid, at in allowances.sessions.items() if at >= now_ns - KEEP_S * 1_000_000_000}
    written = Allowances(kept, allowances.until_ns if allowances.until_ns > now_ns else 0, secrets.token_hex(8))
    write_json(path(home), {"serial": written.serial, "until_ns": written.until_ns, "sessions": written.sessions})
    return written


class AllowanceFile:
    """The daemon's view of the file: `poll` gives the allowances when the file changed since."""

    def __init__(self, home: Path):
        self.home = home
        self._seen: tuple[int, int, int] | None = None

    def poll(self) -> Allowances | None:
        try:
            st = os.stat(path(self.home))
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = (0, 0, 0)  # no file: nothing is allowed
        if stamp == self._seen:
            return None
        self._seen = stamp
        return read(self.home)
