"""What a session is known by, for every reader: its label, project and start (docs/REPORTS.md,
"Sessions").

The label is Claude Code's own title for the session, else (until a title exists) the opening
prompt of its first main turn, else none: with content capture off the ledger keeps neither, and
a session is shown by its project and start time. `short_ids` gives the start of each id that
tells it apart from the others shown with it (8 characters at least: what `--session` takes).
"""

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

SHORT_ID = 8  # the start of an id that people copy


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    started_at_ns: int
    project: str | None
    title: str | None
    first_prompt: str | None

    @property
    def label(self) -> str | None:
        """The title, else the first prompt, else None."""
        return self.title or self.first_prompt

    @property
    def started_at(self) -> str:
        """The start as local ISO 8601 with its offset, to the second."""
        return datetime.fromtimestamp(self.started_at_ns / 1e9).astimezone().isoformat(timespec="seconds")


def session_info(conn: sqlite3.Connection, session_ids: Iterable[str]) -> dict[str, SessionInfo]:
    """Session id -> what it is known by, for those of `session_ids` the ledger holds."""
    ids = list(dict.fromkeys(i for i in session_ids if i))
    out: dict[str, SessionInfo] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        for row in conn.execute("SELECT session_id, started_at_ns, project_dir, title, first_prompt FROM sessions "
                                f"WHERE session_id IN ({', '.join('?' * len(chunk))})", chunk):
            out[row[0]] = SessionInfo(*row)
    return out


def short_ids(session_ids: Iterable[str]) -> dict[str, str]:
    """Each id -> its shortest start, of at least `SHORT_ID` characters, that no other id of
    `session_ids` shares."""
    ids = sorted(set(session_ids))
    out = {}
    for i, session_id in enumerate(ids):
        shared = max((_common(session_id, ids[j]) for j in (i - 1, i + 1) if 0 <= j < len(ids)), default=0)
        out[session_id] = session_id[:max(SHORT_ID, shared + 1)]
    return out


def _common(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n
