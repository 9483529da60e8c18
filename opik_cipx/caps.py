"""Spend caps: the `[budget]` setting and the periods its caps count in (docs/BUDGETS.md).

A cap is the most a scope may spend, in USD: `session_usd` (every call of one Claude Code session,
its subagents, side calls and compactions included), `day_usd` (the local calendar day),
`week_usd` (the ISO week, Monday first) and `month_usd` (the calendar month), each off unless
set. `warn_at` (default 0.8) is the share of a cap past which the user is told. A
`[budget.projects."<directory>"]` table sets caps for the sessions working in that directory or
below it (the most specific directory wins): its `session_usd` replaces the global one for those
sessions, and its period caps count that project's spend alone, on top of the global caps.

Pure and standard library only: the daemon's guard (`wire/budget.py`), `config.py`, the status
line's repaint and the hooks read it. A period is computed from a moment already known, never
from a clock read.
"""

import os
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

SCOPES = ("session", "day", "week", "month")
PERIODS = ("day", "week", "month")
CAP_KEYS = tuple(f"{scope}_usd" for scope in SCOPES)
DEFAULT_WARN_AT = 0.8


@dataclass(frozen=True)
class Caps:
    """The caps of one set (global, or one project's), USD; None: no cap."""

    session_usd: float | None = None
    day_usd: float | None = None
    week_usd: float | None = None
    month_usd: float | None = None

    def cap(self, scope: str) -> float | None:
        value: float | None = getattr(self, f"{scope}_usd")
        return value

    @property
    def any(self) -> bool:
        return any(self.cap(scope) is not None for scope in SCOPES)


@dataclass(frozen=True)
class Budget:
    """The `[budget]` setting: global caps, the warning share, and per-project caps (the deepest
    directory first)."""

    caps: Caps = Caps()
    warn_at: float = DEFAULT_WARN_AT
    projects: tuple[tuple[str, Caps], ...] = ()

    @property
    def enabled(self) -> bool:
        return self.caps.any or any(caps.any for _, caps in self.projects)

    @property
    def has_session_caps(self) -> bool:
        return self.caps.session_usd is not None or any(caps.session_usd is not None for _, caps in self.projects)

    def project_of(self, directory: str | None) -> str | None:
        """The project (a directory of `projects`) `directory` works in: it or its deepest parent."""
        if not directory or not self.projects:
            return None
        for project, _ in self.projects:
            if directory == project or directory.startswith(project.rstrip("/") + "/"):
                return project
        return None

    def project_caps(self, project: str | None) -> Caps | None:
        return next((caps for name, caps in self.projects if name == project), None) if project else None

    def session_cap(self, project: str | None) -> float | None:
        """The cap of a session working in `project`: the project's `session_usd`, else the global one."""
        own = self.project_caps(project)
        if own is not None and own.session_usd is not None:
            return own.session_usd
        return self.caps.session_usd


NO_BUDGET = Budget()  # no cap at all


@dataclass(frozen=True)
class Period:
    """The day, ISO week or month a moment falls in, in local time."""

    scope: str  # day | week | month
    label: str  # 2026-12-06 | 2026-W49 | 2026-12
    start_ns: int
    end_ns: int  # the next one's start: when a cap of this scope resets


def period(scope: str, ns: int) -> Period:
    """The local `scope` (day, week, month) that epoch-ns `ns` falls in."""
    day = datetime.fromtimestamp(ns // 1_000_000_000).date()
    if scope == "day":
        first, after, label = day, day + timedelta(days=1), day.isoformat()
    elif scope == "week":
        year, week, weekday = day.isocalendar()
        first = day - timedelta(days=weekday - 1)
        after, label = first + timedelta(days=7), f"{year}-W{week:02d}"
    elif scope == "month":
        first = day.replace(day=1)
        after = (first + timedelta(days=32)).replace(day=1)
        label = first.isoformat()[:7]
    else:
        raise ValueError(f"no period {scope!r}")
    return Period(scope, label, _midnight_ns(first), _midnight_ns(after))


def periods(ns: int) -> tuple[Period, Period, Period]:
    """The day, week and month of `ns`."""
    return period("day", ns), period("week", ns), period("month", ns)


def _midnight_ns(day: date) -> int:
    """Epoch ns of local midnight at the start of `day` (the local time zone's rules that day)."""
    return int(datetime(day.year, day.month, day.day).timestamp()) * 1_000_000_000


def duration(ns: int) -> str:
    """A time to wait, as caps show it: `3h12m`, `2d4h`, `45m`, `20s`."""
    s = max(0, int(ns // 1_000_000_000))
    days, hours, minutes = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m" if minutes else f"{s}s"


def usd(value: float) -> str:
    """An amount as caps are shown: `$5.12`, `$1,204.00`, `$0.0032` below a dollar."""
    return f"${value:,.2f}" if abs(value) >= 1 or value == 0 else f"${value:.4f}"


def parse_budget(raw: Any) -> Budget:
    """The `[budget]` table, checked; ValueError naming the bad key (`budget.day_usd: ...`).

    Unknown keys are errors, not warnings: a misspelt cap would otherwise be no cap at all."""
    if not isinstance(raw, dict):
        raise ValueError("budget: expected a table ([budget])")
    _known("budget", raw, (*CAP_KEYS, "warn_at", "projects"))
    warn_at = raw.get("warn_at", DEFAULT_WARN_AT)
    if isinstance(warn_at, bool) or not isinstance(warn_at, (int, float)) or not 0 < warn_at <= 1:
        raise ValueError(f"budget.warn_at: expected a share above 0 and at most 1 (0.8: at 80% of a cap), "
                         f"got {warn_at!r}")
    projects = raw.get("projects", {})
    if not isinstance(projects, dict):
        raise ValueError('budget.projects: expected tables ([budget.projects."<directory>"])')
    parsed: dict[str, Caps] = {}
    for name, table in projects.items():
        where = f'budget.projects."{name}"'
        directory = project_directory(name)
        if not directory:
            raise ValueError(f"{where}: expected an absolute directory (or one under ~)")
        if not isinstance(table, dict):
            raise ValueError(f"{where}: expected a table of caps ({', '.join(CAP_KEYS)})")
        _known(where, table, CAP_KEYS)
        parsed[directory] = _caps(where, table)
    ordered = tuple(sorted(parsed.items(), key=lambda item: (-len(item[0]), item[0])))
    return Budget(_caps("budget", raw), float(warn_at), ordered)


def project_directory(name: str) -> str | None:
    """A `[budget.projects]` key as a directory: `~` expanded, normalised, no trailing slash;
    None unless absolute."""
    path = os.path.normpath(os.path.expanduser(name.strip())) if name.strip() else ""
    return path if os.path.isabs(path) else None


def _known(where: str, table: dict, allowed: tuple[str, ...]) -> None:
    for key in table:
        if key not in allowed:
            raise ValueError(f"{where}.{key}: unknown key; expected one of {', '.join(allowed)}")


def _caps(where: str, table: dict) -> Caps:
    values = {}
    for key in CAP_KEYS:
        if key not in table:
            continue
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
            raise ValueError(f"{where}.{key}: expected an amount in USD above 0 (leave it out for no cap), "
                             f"got {value!r}")
        values[key] = float(value)
    return Caps(**values)


def read_budget(config_path: str) -> Budget | None:
    """The `[budget]` of a config file, for readers that load no other setting (the status line's
    repaint): None without one, or when it cannot be read (the daemon and `opik-cipx budget` say
    why). The TOML parser is loaded only for a file that mentions a budget."""
    try:
        with open(config_path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    if b"budget" not in data:
        return None
    import tomllib  # about 5 ms: only for a file that has a budget

    try:
        raw = tomllib.loads(data.decode("utf-8")).get("budget")
        return parse_budget(raw) if raw is not None else None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, ValueError):
        return None
