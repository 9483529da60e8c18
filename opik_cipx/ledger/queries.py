"""Reading the ledger: grouped cost reports, and the calls behind the dashboard's pages.

A report sums the daily roll-ups for every day that lies wholly inside the selected window
and reads the calls themselves for the (at most few) days the window cuts through, so it is
exact for any `--since` / `--until` and fast on a large ledger. Both paths use the same
expressions (`schema.DIMENSIONS`, `CALL_FIGURES`, `DETAIL_FIGURES`).

Group keys (`BY_KEYS`): `day`, `week`, `month`; call attributes `session`, `project`,
`branch`, `model`, `kind`, `agent`, `cache_break` (the cause of the call's cache break,
`none` without one: docs/CACHE_DIAGNOSTICS.md); and at most one of `bucket` (every request bucket, plus
`output` and `web_search`: together they partition a call's cost), `mcp` (the `tools_mcp`
bucket by server), `skill` (the `skills` bucket by skill, `menu` being the skill list) and
`tool` (the `tool_io` bucket by tool: tool inputs and results carried in the context). A row
keyed by a bucket or label holds that part's share of each token class and of the cost; its
`calls` counts the calls that carried it. The total always counts whole calls.

Grouped by `session`, each row also carries what the session is known by (`SESSION_KEYS`,
`ledger/sessions.py`): `session_label` (its title or first prompt, None when the ledger keeps
neither), `session_project` and `session_started_at` (local ISO 8601).

Token figures carry the names of `figures.TOKEN_CLASSES` (`uncached_input_tokens`,
`cache_write_tokens`, `cache_read_tokens`, `input_side_tokens`, `output_tokens`), in reports and
in call rows alike. A `Selection` narrows the calls by a window and by filters on the report
keys `session`, `project`, `model`, `kind` and `agent`; `find_session` takes a session id's
start, as users copy it, and `why_empty` says in words why a selection holds no call.

Grouped by `cache_break` (without a bucket or label key), rows and total also carry
`BREAK_FIGURES`: the breaks, the tokens written again and their extra cost. Grouped by one time
key alone, when the calls reported rate limits, each row and the total carry `peak_utilization`:
the highest utilization each rate-limit window reported in that period (docs/RATE_LIMITS.md).
"""

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any

from opik_cipx.ledger.figures import CACHE_READ, CACHE_WRITE, INPUT_SIDE, LEDGER_COLUMNS, OUTPUT, UNCACHED
from opik_cipx.ledger.periods import month_of, week_of
from opik_cipx.ledger.schema import CALL_FIGURES, DETAIL_FIGURES, DIMENSIONS, LABELLED, RATE_LIMIT_COLUMNS
from opik_cipx.ledger.sessions import session_info
from opik_cipx.materialize.rate_limits import window_order

TIME_KEYS = ("day", "week", "month")
CALL_KEYS = ("session", "project", "branch", "model", "kind", "agent", "cache_break")
DETAIL_KEYS = ("bucket", *LABELLED)
BY_KEYS = (*TIME_KEYS, *CALL_KEYS, *DETAIL_KEYS)
TOKENS = (UNCACHED, CACHE_WRITE, CACHE_READ, INPUT_SIDE, OUTPUT)  # figures.TOKEN_CLASSES, in its order
FIGURES = ("calls", "cost_usd", *TOKENS)
_AS = {column: key for key, column in LEDGER_COLUMNS.items()}  # a roll-up's column -> its report key
NOTES = ("unpriced_calls", "estimated_calls")  # in the total only
BREAK_FIGURES = ("cache_breaks", "cache_break_tokens", "cache_break_usd")  # grouped by cache_break
SESSION_KEYS = ("session_label", "session_project", "session_started_at")  # grouped by session
MAX_NS = 2**63 - 1


class ReportError(ValueError):
    """A report that cannot be made as asked; the message is one line fit for the user."""


@dataclass(frozen=True)
class Selection:
    """Which calls a report covers: [since_ns, until_ns), and calls of one session, one project
    (that directory and below), one model, one kind (`main`, `side:<kind>`, ...: the `kind`
    key's values) and one agent (the `agent` key's values, `main` for the main loop)."""

    since_ns: int | None = None
    until_ns: int | None = None
    session: str | None = None
    project: str | None = None
    model: str | None = None
    kind: str | None = None
    agent: str | None = None

    def narrowed(self) -> dict[str, str]:
        """The filters set besides the window: name -> value."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name in FILTER_KEYS and getattr(self, f.name) is not None}


FILTER_KEYS = ("session", "project", "model", "kind", "agent")  # Selection's filters, each a report key


@dataclass
class Report:
    by: tuple[str, ...]
    rows: list[dict[str, Any]] = field(default_factory=list)  # `row_keys(by)` + FIGURES
    total: dict[str, Any] = field(default_factory=dict)  # FIGURES + NOTES


def parse_by(raw: str) -> tuple[str, ...]:
    """`day,model` -> ("day", "model"); raises ReportError naming what is wrong."""
    keys = tuple(part.strip() for part in raw.split(",") if part.strip())
    unknown = [k for k in keys if k not in BY_KEYS]
    if unknown:
        raise ReportError(f"cannot group by {', '.join(unknown)}: choose from {', '.join(BY_KEYS)}")
    if len(set(keys)) != len(keys):
        raise ReportError(f"--by {raw}: a key appears twice")
    if sum(k in DETAIL_KEYS for k in keys) > 1:
        raise ReportError(f"--by {raw}: choose one of {', '.join(DETAIL_KEYS)} (they split the same cost)")
    return keys


def report(conn: sqlite3.Connection, by: tuple[str, ...], selection: Selection = Selection()) -> Report:
    """The calls of `selection` grouped by `by` (empty: the total only), rows sorted for reading:
    time keys in time order, other keys by cost, largest first."""
    out = Report(by=by)
    detail = next((k for k in by if k in DETAIL_KEYS), None)
    figures = report_figures(by)
    groups = list(dict.fromkeys("day" if k in TIME_KEYS else k for k in by if k not in DETAIL_KEYS))
    total = _grouped(conn, [], None, selection)
    out.total = {name: total[0][name] if total else 0 for name in (*figures, *NOTES)}
    peaks = peak_utilization(conn, selection) if len(by) == 1 and by[0] in TIME_KEYS else None
    if peaks:
        out.total["peak_utilization"] = _peak_of(peaks.values())
    if not by:
        return out
    merged: dict[tuple, dict[str, Any]] = {}
    for row in _grouped(conn, groups, detail, selection):
        key = tuple(_key_value(k, row) for k in by)
        into = merged.setdefault(key, dict.fromkeys(figures, 0))
        for name in figures:
            into[name] += row[name]
    out.rows = [{**dict(zip(by, key, strict=True)), **values} for key, values in merged.items()]
    if peaks:
        periods: dict[Any, list[dict[str, float]]] = {}
        for day, windows in peaks.items():
            periods.setdefault(_key_value(by[0], {"day": day}), []).append(windows)
        for row in out.rows:
            row["peak_utilization"] = _peak_of(periods.get(row[by[0]], ()))
    _sort(out.rows, by)
    if "session" in by:
        out.rows = _with_sessions(conn, by, out.rows)
    return out


def _with_sessions(conn: sqlite3.Connection, by: tuple[str, ...], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with what each session is known by after the group keys."""
    info = session_info(conn, (row["session"] for row in rows))
    out = []
    for row in rows:
        known = info.get(row["session"])
        named = dict.fromkeys(SESSION_KEYS) if known is None else dict(zip(SESSION_KEYS, (
            known.label, known.project, known.started_at), strict=True))
        out.append({**{k: row[k] for k in by}, **named, **{k: v for k, v in row.items() if k not in by}})
    return out


def row_keys(by: tuple[str, ...]) -> tuple[str, ...]:
    """What a report row holds before its figures: the group keys, and `SESSION_KEYS` by session."""
    return (*by, *SESSION_KEYS) if "session" in by else by


def report_figures(by: tuple[str, ...]) -> tuple[str, ...]:
    """The figures of a report's rows and total: `FIGURES`, and `BREAK_FIGURES` by cache_break."""
    if "cache_break" in by and not any(k in DETAIL_KEYS for k in by):
        return (*FIGURES, *BREAK_FIGURES)
    return FIGURES


def _peak_of(per_day: Iterable[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for windows in per_day:
        for window, value in windows.items():
            out[window] = max(out.get(window, value), value)
    return dict(sorted(out.items(), key=lambda item: window_order(item[0])))


def peak_utilization(conn: sqlite3.Connection, sel: Selection = Selection()) -> dict[str, dict[str, float]]:
    """Day -> rate-limit window -> the highest utilization its calls in `sel` reported: the daily
    peaks for whole days, the calls themselves for days the window cuts through or when a
    filter narrows the calls."""
    params: dict[str, Any] = {"since": sel.since_ns or 0, "until": sel.until_ns or MAX_NS}
    inside = "first_ns >= :since AND last_ns < :until"
    raw = ("SELECT r.day, r.window_name, max(r.utilization) FROM rate_limits r JOIN calls c ON c.id = r.call_id "
           "WHERE r.utilization IS NOT NULL AND r.started_at_ns >= :since AND r.started_at_ns < :until")
    if not sel.narrowed():
        sql = (f"SELECT day, window_name, peak_utilization FROM daily_rate_limits "
               f"WHERE day IN (SELECT day FROM days WHERE {inside}) UNION ALL {raw} "
               f"AND r.day IN (SELECT day FROM days WHERE last_ns >= :since AND first_ns < :until AND NOT ({inside})) "
               "GROUP BY r.day, r.window_name")
    else:
        sql = raw + "".join(f" AND {f}" for f in _filters(sel, params, DIMENSIONS)) + " GROUP BY r.day, r.window_name"
    out: dict[str, dict[str, float]] = {}
    for day, window, peak in conn.execute(sql, params):
        out.setdefault(day, {})[window] = peak
    return out


RATE_LIMIT_FIELDS = (*RATE_LIMIT_COLUMNS, "started_at_ns")


def latest_rate_limits(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """The newest value of every rate-limit window the ledger holds, in display order."""
    rows = [dict(zip(RATE_LIMIT_FIELDS, row, strict=True))
            for row in conn.execute(f"SELECT {', '.join(RATE_LIMIT_FIELDS)} FROM latest_rate_limits")]
    return sorted(rows, key=lambda row: window_order(row["window_name"]))


def _key_value(key: str, row: dict[str, Any]) -> Any:
    if key == "week":
        return week_of(row["day"])
    if key == "month":
        return month_of(row["day"])
    value = row["bucket"] if key == "bucket" else row["detail"] if key in LABELLED else row[key]
    if key == "agent":
        return value or "main"
    if key == "cache_break":
        return value or "none"
    return value or None


def _sort(rows: list[dict[str, Any]], by: tuple[str, ...]) -> None:
    """Time keys ascending; any other key by the cost of its group (within the keys before
    it), largest first."""
    group_cost: dict[tuple, float] = {}
    for row in rows:
        for depth in range(1, len(by) + 1):
            prefix = tuple(row[k] for k in by[:depth])
            group_cost[prefix] = group_cost.get(prefix, 0.0) + row["cost_usd"]

    def order(row: dict[str, Any]) -> tuple:
        parts: list[tuple[float, str]] = []
        for depth, key in enumerate(by, 1):
            value = row[key]
            if key in TIME_KEYS:
                parts.append((0, value or ""))
            else:
                parts.append((-group_cost[tuple(row[k] for k in by[:depth])], "" if value is None else str(value)))
        return tuple(parts)

    rows.sort(key=order)


def _filters(sel: Selection, params: dict[str, Any], column: dict[str, str]) -> list[str]:
    """The SQL conditions that keep the session and project of `sel`, over `column` (dimension ->
    its expression: a roll-up column or `DIMENSIONS`); their values go into `params`."""
    out = []
    for name, value in sel.narrowed().items():
        if name == "project":
            project = value.rstrip("/") or "/"
            params.update(project=project, prefix=project.rstrip("/") + "/", prefix_len=len(project.rstrip("/")) + 1)
            out.append(f"({column['project']} = :project OR substr({column['project']}, 1, :prefix_len) = :prefix)")
        else:
            params[f"only_{name}"] = "" if name == "agent" and value == "main" else value
            out.append(f"{column[name]} = :only_{name}")
    return out


def _grouped(conn: sqlite3.Connection, groups: list[str], detail: str | None, sel: Selection) -> list[dict]:
    """Figures per group: the roll-ups of the days wholly inside the window, plus the calls of
    the days the window cuts through."""
    params: dict[str, Any] = {"since": sel.since_ns or 0, "until": sel.until_ns or MAX_NS}
    inside = "first_ns >= :since AND last_ns < :until"
    whole_days = f"day IN (SELECT day FROM days WHERE {inside})"
    cut_days = f"day IN (SELECT day FROM days WHERE last_ns >= :since AND first_ns < :until AND NOT ({inside}))"
    figures = DETAIL_FIGURES if detail else CALL_FIGURES
    rolled_filters = _filters(sel, params, {dimension: f"r.{dimension}" for dimension in DIMENSIONS})
    raw_filters = _filters(sel, params, DIMENSIONS)
    rolled_keys = [f"r.{g}" for g in groups]
    raw_keys = [DIMENSIONS[g] for g in groups]
    if detail == "bucket":
        rolled_filters.append("r.detail = ''")
        raw_filters.append("d.detail = ''")
        rolled_keys.append("r.bucket")
        raw_keys.append("d.bucket")
    elif detail:
        params["bucket"] = LABELLED[detail]
        rolled_filters.append("r.bucket = :bucket AND r.detail <> ''")
        raw_filters.append("d.bucket = :bucket AND d.detail <> ''")
        rolled_keys.append("r.detail")
        raw_keys.append("d.detail")
    names = [*groups, *(["bucket"] if detail == "bucket" else ["detail"] if detail else [])]
    table = "daily_details" if detail else "daily_calls"
    source = "calls c JOIN details d ON d.call_id = c.id" if detail else "calls c"
    columns = ", ".join(f"{k} AS {n}" for k, n in zip(rolled_keys, names, strict=True))
    rolled = (
        f"SELECT {columns}{', ' if columns else ''}{', '.join(f'r.{f} AS {f}' for f in figures)} "
        f"FROM {table} r WHERE r.{whole_days}" + "".join(f" AND {f}" for f in rolled_filters)
    )
    columns = ", ".join(f"{k} AS {n}" for k, n in zip(raw_keys, names, strict=True))
    raw = (
        f"SELECT {columns}{', ' if columns else ''}{', '.join(f'{e} AS {f}' for f, e in figures.items())} "
        f"FROM {source} WHERE c.{cut_days} AND c.started_at_ns >= :since AND c.started_at_ns < :until"
        + "".join(f" AND {f}" for f in raw_filters)
        + (f" GROUP BY {', '.join(raw_keys)}" if raw_keys else "")
    )
    outer_keys = ", ".join(names)
    sql = (
        f"SELECT {outer_keys}{', ' if outer_keys else ''}"
        f"{', '.join(f'total({f}) AS {_AS.get(f, f)}' for f in figures)} "
        f"FROM ({rolled} UNION ALL {raw})" + (f" GROUP BY {outer_keys}" if outer_keys else "")
    )
    cursor = conn.execute(sql, params)
    column_names = [c[0] for c in cursor.description]
    rows = [dict(zip(column_names, values, strict=True)) for values in cursor]
    if not groups and not detail and rows and rows[0]["calls"] == 0:
        return []
    for row in rows:
        for name in ("calls", *(n for n in NOTES if n in row)):
            row[name] = int(row[name])
        if not detail:
            for name in (UNCACHED, CACHE_WRITE, CACHE_READ, OUTPUT, "cache_breaks", "cache_break_tokens"):
                row[name] = int(row[name])
        row[INPUT_SIDE] = row[UNCACHED] + row[CACHE_WRITE] + row[CACHE_READ]
    return rows


# -- sessions by prefix, and why a selection holds nothing ---------------------------------

class SessionNotFound(ReportError):
    """No session id starts with what was given."""


class AmbiguousSession(ReportError):
    """Several session ids start with what was given; `candidates` lists some of them."""

    def __init__(self, message: str, candidates: list[str]):
        super().__init__(message)
        self.candidates = candidates


SESSION_CANDIDATES = 10  # the most candidates an ambiguous prefix lists


def prefix_bounds(prefix: str) -> tuple[str, str | None]:
    """[low, high): every string that starts with a non-empty `prefix` sorts in it, by code
    point (as SQLite compares UTF-8 text); high None: no bound above."""
    stem = prefix.rstrip(chr(0x10FFFF))
    if not stem:
        return prefix, None
    return prefix, stem[:-1] + chr(ord(stem[-1]) + 1)


def pick_session(prefix: str, candidates: list[str], more: bool = False) -> str:
    """The session `prefix` names among `candidates` (the ids starting with it, in order; `more`:
    there are others beyond them): itself when it is a whole id, else the one candidate.
    Raises SessionNotFound or AmbiguousSession with one line fit for the user."""
    if prefix in candidates:
        return prefix
    if len(candidates) == 1 and not more:
        return candidates[0]
    if not candidates:
        raise SessionNotFound(f"no session in the ledger has an id starting with {prefix!r}")
    count = f"{len(candidates)}{'+' if more else ''}"
    raise AmbiguousSession(f"{prefix!r} starts {count} session ids ({', '.join(candidates)}{', ...' if more else ''}): "
                           "give more of the id", candidates)


def find_session(conn: sqlite3.Connection, prefix: str) -> str:
    """The session id of the ledger that `prefix` (a whole id, or its start) names; raises
    SessionNotFound or AmbiguousSession (see `pick_session`)."""
    low, high = prefix_bounds(prefix) if prefix else ("", "")
    sql = "SELECT DISTINCT session_id FROM calls WHERE session_id >= ?" + (" AND session_id < ?" if high else "")
    rows = conn.execute(sql + " ORDER BY session_id LIMIT ?",
                        (low, *((high,) if high else ()), SESSION_CANDIDATES + 1)).fetchall()
    found = [row[0] for row in rows if row[0].startswith(prefix)] if prefix else []
    return pick_session(prefix, found[:SESSION_CANDIDATES], more=len(found) > SESSION_CANDIDATES)


_NOTHING = {  # a filter that matches no call at all, in words
    "session": "no call of session {} is in the ledger",
    "project": "no call in the ledger was made in {} or below it",
    "model": "no call in the ledger used model {}",
    "kind": "no call in the ledger is of kind {}",
    "agent": "no call in the ledger was made by agent {}",
}


def why_empty(conn: sqlite3.Connection, sel: Selection) -> tuple[str, str | None]:
    """Why `sel` holds no call: one sentence fit for the user, and the filter that matches no
    call of the whole ledger by itself ('' when only the filters together match none; None when
    they match calls, only not in the window)."""
    filters = sel.narrowed()
    for name, value in filters.items():
        if not report(conn, (), Selection(**{name: value})).total["calls"]:  # type: ignore[arg-type]  # narrowed(): str fields only
            return _NOTHING[name].format(value), name
    if len(filters) > 1 and not report(conn, (), Selection(**filters)).total["calls"]:  # type: ignore[arg-type]  # ditto
        together = " and ".join(f"{name} {value}" for name, value in filters.items())
        return f"no call in the ledger matches {together} together", ""
    first, last = conn.execute("SELECT min(first_ns), max(last_ns) FROM days").fetchone()
    if first is None:
        return "the ledger holds no call yet", ""
    window = f"from {_moment(sel.since_ns) if sel.since_ns else 'the start'} to " + (
        _moment(sel.until_ns) if sel.until_ns else "now")
    return (f"no call {'that matches the filters ' if filters else ''}was made {window} "
            f"(the ledger holds calls from {_moment(first)} to {_moment(last)})"), None


def _moment(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ns / 1e9))


# -- calls, for the dashboard ------------------------------------------------------------

CALL_COLUMNS = (  # what a call row holds: the ledger's columns, token classes renamed (figures.py); its session's label
    "id", "capture_id", "started_at_ns", "ended_at_ns", "day", "session_id", "session_label", "project_dir",
    "git_branch", "git_remote", "user_email", "org_name", "model", "kind", "side_kind", "agent_id", "agent_type",
    "span_id", "parent_span_id", "status", "error_type", "request_id", UNCACHED, CACHE_WRITE, "cache_write_5m_tokens",
    "cache_write_1h_tokens", CACHE_READ, OUTPUT, "cost_usd", "cost_input_usd", "cost_cache_write_5m_usd",
    "cost_cache_write_1h_usd", "cost_cache_read_usd", "cost_output_usd", "cost_web_search_usd",
    "warm_cache_cost_usd", "unknown_model", "price_estimated_from", "request_chars", "duration_ms",
    "cache_previous_capture_id", "cache_gap_s", "cache_break_cause", "cache_break_causes", "cache_break_bucket",
    "cache_break_item", "cache_break_tokens", "cache_break_usd",
)
_CALL_EXPRESSIONS = {**{name: f"c.{column}" for name, column in LEDGER_COLUMNS.items()},
                     "session_label": "coalesce(s.title, s.first_prompt)"}
_SELECT_CALLS = ", ".join(f"{_CALL_EXPRESSIONS[name]} AS {name}" if name in _CALL_EXPRESSIONS else f"c.{name}"
                          for name in CALL_COLUMNS)
CALLS_MAX = 10_000  # the most calls one read returns


def _calls(conn: sqlite3.Connection, where: str, params: dict[str, Any], order: str,
           limit: int | None = None) -> list[dict]:
    sql = (f"SELECT {_SELECT_CALLS} FROM calls c LEFT JOIN sessions s ON s.session_id = c.session_id "
           f"WHERE {where} ORDER BY {order}")
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    rows = [dict(zip(CALL_COLUMNS, row, strict=True)) for row in conn.execute(sql, params)]
    for row in rows:
        row[INPUT_SIDE] = row[UNCACHED] + row[CACHE_WRITE] + row[CACHE_READ]
    return rows


def recent_calls(conn: sqlite3.Connection, limit: int, before_ns: int | None = None,
                 selection: Selection = Selection(), part: tuple[str, str] | None = None) -> list[dict]:
    """The newest calls of `selection` (started before `before_ns`), newest first, at most
    `limit` (and `CALLS_MAX`); with `part` (a label key of `LABELLED` and a label: `("mcp",
    "weather")`) only the calls whose request carried it."""
    params: dict[str, Any] = {"since": selection.since_ns or 0,
                              "until": min(selection.until_ns or MAX_NS, MAX_NS if before_ns is None else before_ns)}
    where = ["c.started_at_ns >= :since AND c.started_at_ns < :until", *_filters(selection, params, DIMENSIONS)]
    if part is not None:
        params.update(part_bucket=LABELLED[part[0]], part_label=part[1])
        where.append("EXISTS (SELECT 1 FROM details d WHERE d.call_id = c.id AND d.bucket = :part_bucket "
                     "AND d.detail = :part_label)")
    return _calls(conn, " AND ".join(where), params, "c.started_at_ns DESC, c.id DESC", min(limit, CALLS_MAX))


def session_calls(conn: sqlite3.Connection, session_id: str) -> list[dict]:
    """Every call of one session, in the order they started."""
    return _calls(conn, "c.session_id = :session", {"session": session_id}, "c.started_at_ns, c.id")


def find_call(conn: sqlite3.Connection, capture_id: str) -> dict | None:
    rows = _calls(conn, "c.capture_id = :capture", {"capture": capture_id}, "c.id")
    return rows[0] if rows else None


def call_details(conn: sqlite3.Connection, call_id: int) -> list[dict]:
    """The bucket and label rows of one call."""
    cursor = conn.execute(
        "SELECT bucket, detail, chars, tokens, cost_usd FROM details WHERE call_id = ? ORDER BY bucket, detail",
        (call_id,))
    return [dict(zip(("bucket", "detail", "chars", "tokens", "cost_usd"), row, strict=True)) for row in cursor]


def launchers(conn: sqlite3.Connection, tool_span_ids: list[str]) -> dict[str, str]:
    """Agent tool span id -> the span id of the call that launched it (for those known)."""
    out: dict[str, str] = {}
    for start in range(0, len(tool_span_ids), 500):
        chunk = tool_span_ids[start:start + 500]
        out.update(conn.execute(
            f"SELECT tool_span_id, call_span_id FROM launches WHERE tool_span_id IN ({', '.join('?' * len(chunk))})",
            chunk).fetchall())
    return out


def first_day(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT min(day) FROM days").fetchone()
    return row[0] if row else None


def last_day(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT max(day) FROM days").fetchone()
    return row[0] if row else None


def dimension_values(conn: sqlite3.Connection, keys: tuple[str, ...] = ("project", "model", "kind", "agent")
                     ) -> dict[str, list[str]]:
    """Every value the ledger holds for each report key of `keys` (those of `DIMENSIONS`), sorted:
    what a filter can take (`main` for the main loop's agent; no unknown value)."""
    out: dict[str, set[str]] = {key: set() for key in keys}
    for row in conn.execute(f"SELECT DISTINCT {', '.join(keys)} FROM daily_calls"):
        for key, value in zip(keys, row, strict=True):
            if value or key == "agent":
                out[key].add(value or "main")
    return {key: sorted(values) for key, values in out.items()}
