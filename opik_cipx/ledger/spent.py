"""What each spend cap has counted so far, read from the ledger (docs/BUDGETS.md).

For the readers that show the caps: `opik-cipx budget`, the status line, the dashboard and the
hook that warns past `warn_at`. They read the ledger (the daemon may be down); the daemon's
guard keeps its own totals in memory (`wire/budget.py`), fed from the same rows, so both agree
once a call is written. Periods are local days, ISO weeks and calendar months
(`caps.period`), summed from the daily roll-ups; a session's spend from its calls.

Imports only the standard library and `caps`: the status line's repaint uses it.
"""

import os
import sqlite3
import time
from dataclasses import dataclass

from opik_cipx.caps import PERIODS, Budget, duration, period, usd

OK, WARNING, OVER = "ok", "warning", "over"


@dataclass(frozen=True)
class Standing:
    """One cap and what it counted: `level` is `over` at or past the cap (new calls are blocked),
    `warning` past `warn_at` of it, else `ok`."""

    scope: str  # session | day | week | month
    cap_usd: float
    spent_usd: float
    resets_at_ns: int | None  # None for a session
    project: str | None = None  # a project's own cap (its directory); None: a global cap
    session_id: str | None = None

    @property
    def remaining_usd(self) -> float:
        return max(0.0, self.cap_usd - self.spent_usd)

    def level(self, warn_at: float) -> str:
        if self.spent_usd >= self.cap_usd:
            return OVER
        return WARNING if self.spent_usd >= warn_at * self.cap_usd else OK

    def key(self, now_ns: int) -> str:
        """Names this cap in this period: `day:2026-12-06`, `session:<id>`, `week:2026-W49:<project>`."""
        label = self.session_id if self.scope == "session" else period(self.scope, now_ns).label
        return ":".join(part for part in (self.scope, label, self.project) if part)

    @property
    def name(self) -> str:
        """`day`, `session 44faf0ae`, `week of ~/code/app`."""
        name = f"session {self.session_id[:8]}" if self.scope == "session" and self.session_id else self.scope
        return f"{name} of {home_path(self.project)}" if self.project else name

    def resets(self, now_ns: int) -> str:
        """When it resets: `Thu 10 Dec 00:00 (in 3h12m)`; a session cap never does."""
        if self.resets_at_ns is None:
            return "never (a new session starts at $0)"
        moment = time.strftime("%a %d %b %H:%M", time.localtime(self.resets_at_ns / 1e9))
        return f"{moment} (in {duration(self.resets_at_ns - now_ns)})"

    def warning(self, warn_at: float, now_ns: int) -> str | None:
        """What to tell the user of this cap once it is past `warn_at` of it, or reached; else None."""
        level = self.level(warn_at)
        if level == OK:
            return None
        what = "this session's cap" if self.scope == "session" else f"the {self.name} cap"
        spent = f"{usd(self.spent_usd)} of {usd(self.cap_usd)}"
        resets = "" if self.resets_at_ns is None else f"; it resets {self.resets(now_ns)}"
        if level == OVER:
            return (f"{what} is reached ({spent}{resets}): new calls are kept from Anthropic. "
                    "`opik-cipx budget allow` lets this session go on.")
        share = self.spent_usd / self.cap_usd
        return f"{share:.0%} of {what} is spent ({spent}{resets}). `opik-cipx budget` shows every cap."


def home_path(path: str) -> str:
    """`path` with the user's home as `~`."""
    home = os.path.expanduser("~")
    return "~" + path[len(home):] if path == home or path.startswith(home + "/") else path


def standings(conn: sqlite3.Connection | None, budget: Budget, now_ns: int, session_id: str | None = None,
              directory: str | None = None, every_project: bool = False) -> list[Standing]:
    """The caps that apply now: the global period caps; the project caps of `directory`'s project
    (of every project with `every_project`); the session cap of `session_id`, if given. Without
    a ledger (`conn` None) every cap has counted $0."""
    out = []
    project = budget.project_of(directory)
    if session_id is not None:
        cap = budget.session_cap(project)
        if cap is not None:
            spent = session_spent(conn, session_id) if conn is not None else 0.0
            out.append(Standing("session", cap, spent, None, None, session_id))
    chosen = [(None, budget.caps)] + [(name, caps) for name, caps in budget.projects
                                      if every_project or name == project]
    for name, caps in chosen:
        for scope in PERIODS:
            cap = caps.cap(scope)
            if cap is not None:
                current = period(scope, now_ns)
                spent = period_spent(conn, current.start_ns, current.end_ns, name) if conn is not None else 0.0
                out.append(Standing(scope, cap, spent, current.end_ns, name))
    return out


def period_spent(conn: sqlite3.Connection, start_ns: int, end_ns: int, project: str | None = None) -> float:
    """USD of the calls of the local days in [start_ns, end_ns): every call, or `project`'s (that
    directory and below)."""
    first, last = period("day", start_ns).label, period("day", end_ns - 1).label
    where = "day BETWEEN ? AND ?"
    params: list[object] = [first, last]
    if project is not None:
        where += " AND (project = ? OR substr(project, 1, ?) = ?)"
        params += [project, len(project) + 1, project.rstrip("/") + "/"]
    return conn.execute(f"SELECT total(cost_usd) FROM daily_calls WHERE {where}", params).fetchone()[0]


def session_spent(conn: sqlite3.Connection, session_id: str) -> float:
    """USD of every call of a session (subagents, side calls and compactions share its id)."""
    return conn.execute("SELECT total(cost_usd) FROM calls WHERE session_id = ?", (session_id,)).fetchone()[0]


def session_directory(conn: sqlite3.Connection, session_id: str) -> str | None:
    """Where a session works, as its latest call with a directory says."""
    row = conn.execute("SELECT project_dir FROM calls WHERE session_id = ? AND project_dir IS NOT NULL "
                       "ORDER BY started_at_ns DESC LIMIT 1", (session_id,)).fetchone()
    return row[0] if row else None


def recent_sessions(conn: sqlite3.Connection, since_ns: int, limit: int = 5) -> list[tuple[str, str | None, float]]:
    """(id, directory, USD) of the sessions with a call since `since_ns`, the latest active first."""
    rows = conn.execute(
        "SELECT c.session_id, s.project_dir, total(c.cost_usd), max(c.started_at_ns) AS last FROM calls c "
        "LEFT JOIN sessions s ON s.session_id = c.session_id "
        "WHERE c.session_id IN (SELECT DISTINCT session_id FROM calls WHERE started_at_ns >= ?) "
        "GROUP BY c.session_id ORDER BY last DESC LIMIT ?", (since_ns, limit)).fetchall()
    return [(sid, directory, usd) for sid, directory, usd, _ in rows]


def latest_blocked_session(conn: sqlite3.Connection) -> str | None:
    """The session of the latest request a cap kept from Anthropic (a `blocked` call)."""
    row = conn.execute("SELECT session_id FROM calls WHERE kind = 'blocked' AND session_id IS NOT NULL "
                       "ORDER BY started_at_ns DESC LIMIT 1").fetchone()
    return row[0] if row else None
