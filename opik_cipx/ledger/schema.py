"""The ledger's tables (docs/ARCHITECTURE.md, "Ledger") and the forward migrations that build them.

`PRAGMA user_version` holds the schema version; `MIGRATIONS[n]` takes a version-n file to
version n+1. Migrations only ever add: a file written by an older opik-cipx is upgraded in
place when the writer opens it (`db.connect`), and one written by a newer opik-cipx is left
alone. Readers never migrate: they read `LATEST` only and say why not otherwise
(`unreadable_version`).

v1: `calls`, `details`, `launches`. v2: daily roll-ups (`daily_calls`, `daily_details`) and
`days`, kept in step with the calls on every write, so a report over 100,000 calls sums a few
thousand rows. v3: each call's cache diagnosis (`calls.cache_*`, the `cache_break` report key)
and the rate limits its response carried (`rate_limits`, `latest_rate_limits`, and the daily
peaks `daily_rate_limits`); the roll-ups are rebuilt with the new key. v4: `sessions`, what a
session is known by (its title or first prompt, project and start), filled from the calls
already there (without their texts, which only the captures hold: `replay --ledger` adds them).
v5: what `advise` reads (docs/ADVICE.md): each call's definition groups with their tokens by cache
tier and use (`call_parts`), rolled up per session (`session_parts`), the conversation it read from
the cache and what re-pricing it needs (`calls.speed`, `inference_geo`, `usage_iterations`,
`history_read_tokens`, `messages_read_tokens`). Calls written before have none of it (`replay
--ledger` adds it from the stored captures).
The group keys of a report (`DIMENSIONS`) and its figures are SQL expressions defined once here
and used for the roll-ups and for reading calls directly alike.
"""

import sqlite3
from collections.abc import Callable

V1 = """
CREATE TABLE calls (
    id INTEGER PRIMARY KEY,
    capture_id TEXT NOT NULL UNIQUE,
    started_at_ns INTEGER NOT NULL,
    ended_at_ns INTEGER NOT NULL,
    day TEXT NOT NULL,
    session_id TEXT,
    project_dir TEXT,
    git_branch TEXT,
    git_remote TEXT,
    user_email TEXT,
    org_name TEXT,
    model TEXT,
    kind TEXT NOT NULL,
    side_kind TEXT,
    agent_id TEXT,
    parent_agent_id TEXT,
    agent_type TEXT,
    trace_id TEXT,
    span_id TEXT,
    parent_span_id TEXT,
    status INTEGER,
    error_type TEXT,
    request_id TEXT,
    message_id TEXT,
    stop_reason TEXT,
    input_tokens INTEGER NOT NULL,
    cache_creation_input_tokens INTEGER NOT NULL,
    cache_write_5m_tokens INTEGER NOT NULL,
    cache_write_1h_tokens INTEGER NOT NULL,
    cache_read_input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_usd REAL,
    cost_input_usd REAL,
    cost_cache_write_5m_usd REAL,
    cost_cache_write_1h_usd REAL,
    cost_cache_read_usd REAL,
    cost_output_usd REAL,
    cost_web_search_usd REAL,
    warm_cache_cost_usd REAL,
    unknown_model INTEGER NOT NULL,
    price_estimated_from TEXT,
    price_table_date TEXT,
    request_chars INTEGER NOT NULL,
    ttfb_ms REAL,
    duration_ms REAL
);
CREATE INDEX calls_started ON calls (started_at_ns);
CREATE INDEX calls_day ON calls (day, started_at_ns);
CREATE INDEX calls_session ON calls (session_id, started_at_ns);
CREATE TABLE details (
    call_id INTEGER NOT NULL,
    bucket TEXT NOT NULL,
    detail TEXT NOT NULL,
    chars INTEGER NOT NULL,
    tokens REAL NOT NULL,
    cost_usd REAL,
    PRIMARY KEY (call_id, bucket, detail)
) WITHOUT ROWID;
CREATE TABLE launches (
    tool_span_id TEXT PRIMARY KEY,
    call_span_id TEXT NOT NULL,
    day TEXT NOT NULL
) WITHOUT ROWID;
"""


# The report dimensions of schema v2, as its migration created its roll-ups (never changes).
V2_DIMENSIONS = {
    "day": "c.day",
    "session": "coalesce(c.session_id, '')",
    "project": "coalesce(c.project_dir, '')",
    "branch": "coalesce(c.git_branch, '')",
    "model": "coalesce(c.model, '')",
    "kind": "c.kind || coalesce(':' || c.side_kind, '')",
    "agent": ("CASE WHEN c.agent_type IS NOT NULL THEN c.agent_type "
              "WHEN c.agent_id IS NOT NULL OR c.kind = 'subagent' THEN 'subagent' ELSE '' END"),
}
# Report dimensions of a call: roll-up column -> expression over `calls c`. Unknown values are ''.
DIMENSIONS = {
    **V2_DIMENSIONS,
    "cache_break": "coalesce(c.cache_break_cause, '')",  # '': no cache break
}
# Figures of a group of calls: column -> aggregate over `calls c`.
V2_CALL_FIGURES = {
    "calls": "count(*)",
    "unpriced_calls": "sum(c.unknown_model)",
    "estimated_calls": "count(c.price_estimated_from)",
    "input_tokens": "sum(c.input_tokens)",
    "cache_creation_input_tokens": "sum(c.cache_creation_input_tokens)",
    "cache_read_input_tokens": "sum(c.cache_read_input_tokens)",
    "output_tokens": "sum(c.output_tokens)",
    "cost_usd": "total(c.cost_usd)",
}
CALL_FIGURES = {
    **V2_CALL_FIGURES,
    "cache_breaks": "count(c.cache_break_cause)",
    "cache_break_tokens": "total(c.cache_break_tokens)",
    "cache_break_usd": "total(c.cache_break_usd)",
}
# A request bucket's share of each input token class is its share of the input side.
_SHARE = "d.tokens / nullif(c.input_tokens + c.cache_creation_input_tokens + c.cache_read_input_tokens, 0)"
_REQUEST = "d.bucket NOT IN ('output', 'web_search')"
# Figures of a group of detail rows: column -> aggregate over `calls c JOIN details d`.
DETAIL_FIGURES = {
    "calls": "count(*)",
    "input_tokens": f"total(CASE WHEN {_REQUEST} THEN {_SHARE} * c.input_tokens END)",
    "cache_creation_input_tokens": f"total(CASE WHEN {_REQUEST} THEN {_SHARE} * c.cache_creation_input_tokens END)",
    "cache_read_input_tokens": f"total(CASE WHEN {_REQUEST} THEN {_SHARE} * c.cache_read_input_tokens END)",
    "output_tokens": "total(CASE WHEN d.bucket = 'output' THEN d.tokens END)",
    "cost_usd": "total(d.cost_usd)",
}
# Report dimensions that are labels inside one bucket (rolled up besides the whole buckets).
LABELLED = {"mcp": "tools_mcp", "skill": "skills", "tool": "tool_io"}
ROLLED_UP_DETAILS = f"(d.detail = '' OR d.bucket IN ({', '.join(repr(b) for b in LABELLED.values())}))"


def _roll_up_tables(dimensions: dict[str, str], figures: dict[str, str]) -> str:
    """The `days`-keyed roll-up tables over `dimensions`, `daily_calls` with `figures`."""
    extra = "".join(f"    {name} REAL NOT NULL,\n" for name in figures if name not in V2_CALL_FIGURES)
    return f"""
CREATE TABLE daily_calls (
    {', '.join(f'{d} TEXT NOT NULL' for d in dimensions)},
    calls INTEGER NOT NULL,
    unpriced_calls INTEGER NOT NULL,
    estimated_calls INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    cache_creation_input_tokens INTEGER NOT NULL,
    cache_read_input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
{extra}    PRIMARY KEY ({', '.join(dimensions)})
) WITHOUT ROWID;
CREATE TABLE daily_details (
    {', '.join(f'{d} TEXT NOT NULL' for d in dimensions)},
    bucket TEXT NOT NULL,
    detail TEXT NOT NULL,
    calls INTEGER NOT NULL,
    input_tokens REAL NOT NULL,
    cache_creation_input_tokens REAL NOT NULL,
    cache_read_input_tokens REAL NOT NULL,
    output_tokens REAL NOT NULL,
    cost_usd REAL NOT NULL,
    PRIMARY KEY ({', '.join(dimensions)}, bucket, detail)
) WITHOUT ROWID
"""


DAYS = """
CREATE TABLE days (
    day TEXT PRIMARY KEY,
    first_ns INTEGER NOT NULL,
    last_ns INTEGER NOT NULL,
    calls INTEGER NOT NULL
) WITHOUT ROWID
"""
V2 = DAYS + ";" + _roll_up_tables(V2_DIMENSIONS, V2_CALL_FIGURES)

# The rate-limit windows of a call, as RATE_LIMIT_COLUMNS (materialize/rate_limits.py).
RATE_LIMIT_COLUMNS = ("window_name", "source", "utilization", "resets_at", "status", "surpassed_threshold",
                      "limit_value", "remaining")
_RATE_LIMIT_DEFS = """
    window_name TEXT NOT NULL,
    source TEXT NOT NULL,
    utilization REAL,
    resets_at INTEGER,
    status TEXT,
    surpassed_threshold REAL,
    limit_value INTEGER,
    remaining INTEGER,
    started_at_ns INTEGER NOT NULL"""
_LATEST_RATE_LIMIT_DEFS = _RATE_LIMIT_DEFS.replace("window_name TEXT NOT NULL", "window_name TEXT PRIMARY KEY")
V3 = f"""
ALTER TABLE calls ADD COLUMN cache_previous_capture_id TEXT;
ALTER TABLE calls ADD COLUMN cache_gap_s REAL;
ALTER TABLE calls ADD COLUMN cache_break_cause TEXT;
ALTER TABLE calls ADD COLUMN cache_break_causes TEXT;
ALTER TABLE calls ADD COLUMN cache_break_bucket TEXT;
ALTER TABLE calls ADD COLUMN cache_break_item TEXT;
ALTER TABLE calls ADD COLUMN cache_break_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE calls ADD COLUMN cache_break_usd REAL;
CREATE TABLE rate_limits (
    call_id INTEGER NOT NULL,{_RATE_LIMIT_DEFS},
    day TEXT NOT NULL,
    PRIMARY KEY (call_id, window_name)
) WITHOUT ROWID;
CREATE INDEX rate_limits_day ON rate_limits (day, window_name);
CREATE TABLE latest_rate_limits ({_LATEST_RATE_LIMIT_DEFS},
    capture_id TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE daily_rate_limits (
    day TEXT NOT NULL,
    window_name TEXT NOT NULL,
    peak_utilization REAL NOT NULL,
    PRIMARY KEY (day, window_name)
) WITHOUT ROWID;
DROP TABLE daily_calls;
DROP TABLE daily_details;
DELETE FROM days
"""


# One row per session: when its first call started, its project (the first one a call of it
# named), Claude Code's title for it (the latest title call's answer) and the opening prompt of
# its first main turn, each text with the start of the call it came from (so any write order
# keeps the same values). Texts are NULL when content capture is off (`ledger/entry.py`).
V4 = """
CREATE TABLE sessions (
    session_id TEXT PRIMARY KEY,
    started_at_ns INTEGER NOT NULL,
    project_dir TEXT,
    title TEXT,
    title_at_ns INTEGER,
    first_prompt TEXT,
    first_prompt_at_ns INTEGER
) WITHOUT ROWID;
INSERT INTO sessions (session_id, started_at_ns, project_dir)
SELECT session_id, min(started_at_ns), max(project_dir) FROM calls WHERE session_id IS NOT NULL GROUP BY session_id
"""


# Schema v5, for `advise` (ledger/call_parts.py says what each value is). `call_parts`: one row per
# definition group of a call; `session_parts`: the same summed per session, project, model, pricing
# settings, call kind and group, with what decides whether a sum can be priced at one set of rates
# (the longest prompt, the first and last start, the calls whose usage lists iterations).
PART_FIGURES = ("fresh_tokens", "read_tokens", "write_5m_tokens", "write_1h_tokens", "invocations", "loaded")
SESSION_PART_KEYS = {
    "session_id": "coalesce(c.session_id, '')",
    "project": "coalesce(c.project_dir, '')",
    "model": "coalesce(c.model, '')",
    "speed": "coalesce(c.speed, '')",
    "inference_geo": "coalesce(c.inference_geo, '')",
    "kind": "c.kind",
    "part": "p.part",
    "name": "p.name",
}
PROMPT = "(c.input_tokens + c.cache_creation_input_tokens + c.cache_read_input_tokens)"
V5 = """
ALTER TABLE calls ADD COLUMN speed TEXT;
ALTER TABLE calls ADD COLUMN inference_geo TEXT;
ALTER TABLE calls ADD COLUMN usage_iterations TEXT;
ALTER TABLE calls ADD COLUMN history_read_tokens REAL NOT NULL DEFAULT 0;
ALTER TABLE calls ADD COLUMN messages_read_tokens REAL NOT NULL DEFAULT 0;
CREATE INDEX calls_breaks ON calls (started_at_ns) WHERE cache_break_cause IS NOT NULL;
CREATE TABLE call_parts (
    call_id INTEGER NOT NULL,
    part TEXT NOT NULL,
    name TEXT NOT NULL,
    fresh_tokens REAL NOT NULL,
    read_tokens REAL NOT NULL,
    write_5m_tokens REAL NOT NULL,
    write_1h_tokens REAL NOT NULL,
    invocations INTEGER NOT NULL,
    loaded INTEGER NOT NULL,
    PRIMARY KEY (call_id, part, name)
) WITHOUT ROWID;
CREATE TABLE session_parts (
    session_id TEXT NOT NULL,
    project TEXT NOT NULL,
    model TEXT NOT NULL,
    speed TEXT NOT NULL,
    inference_geo TEXT NOT NULL,
    kind TEXT NOT NULL,
    part TEXT NOT NULL,
    name TEXT NOT NULL,
    calls INTEGER NOT NULL,
    fresh_tokens REAL NOT NULL,
    read_tokens REAL NOT NULL,
    write_5m_tokens REAL NOT NULL,
    write_1h_tokens REAL NOT NULL,
    invocations INTEGER NOT NULL,
    loaded INTEGER NOT NULL,
    iterations INTEGER NOT NULL,
    prompt_max INTEGER NOT NULL,
    first_ns INTEGER NOT NULL,
    last_ns INTEGER NOT NULL,
    PRIMARY KEY (part, name, session_id, project, model, speed, inference_geo, kind)
) WITHOUT ROWID
"""


def roll_up_parts(conn: sqlite3.Connection, where: str, params: tuple = (), sign: int = 1) -> None:
    """Add (sign 1) or take away (sign -1) the definition groups of the calls matching `where` (over
    `calls c`) to `session_parts`; rows left with no call are deleted. The longest prompt and the
    first and last start only ever widen (a call written again has the same values)."""
    keys = ", ".join(SESSION_PART_KEYS)
    exprs = ", ".join(SESSION_PART_KEYS.values())
    sums = ", ".join(f"{sign} * total(p.{f})" for f in PART_FIGURES)
    conn.execute(
        f"INSERT INTO session_parts ({keys}, calls, {', '.join(PART_FIGURES)}, iterations, prompt_max, first_ns, "
        f"last_ns) SELECT {exprs}, {sign} * count(*), {sums}, {sign} * count(c.usage_iterations), max({PROMPT}), "
        f"min(c.started_at_ns), max(c.started_at_ns) FROM calls c JOIN call_parts p ON p.call_id = c.id "
        f"WHERE {where} GROUP BY {exprs} "
        f"ON CONFLICT ({keys}) DO UPDATE SET calls = calls + excluded.calls, "
        + ", ".join(f"{f} = {f} + excluded.{f}" for f in (*PART_FIGURES, "iterations"))
        + ", prompt_max = max(prompt_max, excluded.prompt_max), first_ns = min(first_ns, excluded.first_ns), "
        "last_ns = max(last_ns, excluded.last_ns)",
        params,
    )
    if sign < 0:
        conn.execute("DELETE FROM session_parts WHERE calls <= 0 AND (part, name) IN (SELECT p.part, p.name "
                     f"FROM calls c JOIN call_parts p ON p.call_id = c.id WHERE {where})", params)


def roll_up(conn: sqlite3.Connection, where: str, params: tuple = (), sign: int = 1,
            dimensions: dict[str, str] = DIMENSIONS, call_figures: dict[str, str] = CALL_FIGURES) -> None:
    """Add (sign 1) or take away (sign -1) the calls matching `where` (over `calls c`) to the
    roll-ups; rows left with no call are deleted. A migration passes the dimensions and figures
    of its own version."""
    dims = ", ".join(dimensions)
    exprs = ", ".join(dimensions.values())
    for table, figures, source, extra in (
        ("daily_calls", call_figures, "calls c", ""),
        ("daily_details", DETAIL_FIGURES, "calls c JOIN details d ON d.call_id = c.id", f" AND {ROLLED_UP_DETAILS}"),
    ):
        keys = dims + (", bucket, detail" if table == "daily_details" else "")
        key_exprs = exprs + (", d.bucket, d.detail" if table == "daily_details" else "")
        conn.execute(
            f"INSERT INTO {table} ({keys}, {', '.join(figures)}) "
            f"SELECT {key_exprs}, {', '.join(f'{sign} * {f}' for f in figures.values())} "
            f"FROM {source} WHERE {where}{extra} GROUP BY {key_exprs} "
            f"ON CONFLICT ({keys}) DO UPDATE SET {', '.join(f'{f} = {f} + excluded.{f}' for f in figures)}",
            params,
        )
    conn.execute(
        f"INSERT INTO days (day, first_ns, last_ns, calls) "
        f"SELECT c.day, min(c.started_at_ns), max(c.started_at_ns), {sign} * count(*) FROM calls c "
        f"WHERE {where} GROUP BY c.day "
        "ON CONFLICT (day) DO UPDATE SET first_ns = min(first_ns, excluded.first_ns), "
        "last_ns = max(last_ns, excluded.last_ns), calls = calls + excluded.calls",
        params,
    )
    if sign < 0:
        for table in ("daily_calls", "daily_details", "days"):
            conn.execute(f"DELETE FROM {table} WHERE day IN (SELECT c.day FROM calls c WHERE {where}) AND calls <= 0",
                         params)


def _v2(conn: sqlite3.Connection) -> None:
    _script(V2)(conn)
    roll_up(conn, "1", dimensions=V2_DIMENSIONS, call_figures=V2_CALL_FIGURES)


def _v3(conn: sqlite3.Connection) -> None:
    _script(V3)(conn)
    _script(_roll_up_tables(DIMENSIONS, CALL_FIGURES))(conn)
    roll_up(conn, "1")


def _script(sql: str) -> Callable[[sqlite3.Connection], None]:
    def run(conn: sqlite3.Connection) -> None:
        for statement in sql.split(";"):
            if statement.strip():
                conn.execute(statement)

    return run


# MIGRATIONS[n] upgrades a version-n ledger to version n+1 (version 0: an empty file).
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_script(V1), _v2, _v3, _script(V4), _script(V5))
LATEST = len(MIGRATIONS)


class SchemaError(Exception):
    """The ledger cannot be used by this version; the message is one line fit for the user."""


def unreadable_version(version: int) -> str:
    """Why this opik-cipx cannot read a ledger of schema `version` (not `LATEST`), in one line."""
    if version > LATEST:
        return (f"ledger schema v{version} was written by a newer opik-cipx (this one knows up to v{LATEST}); "
                "upgrade opik-cipx")
    return (f"ledger schema v{version} was written by an older opik-cipx (this one reads v{LATEST}); "
            "a daemon of this version upgrades it in place when it starts (`opik-cipx restart`)")


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the ledger to `LATEST` in one transaction; the version it had before.

    Raises SchemaError when a newer opik-cipx wrote it. The connection is in autocommit mode.
    """
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > LATEST:
        raise SchemaError(unreadable_version(version))
    if version == LATEST:
        return version
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = conn.execute("PRAGMA user_version").fetchone()[0]  # another process may have won
        for step in MIGRATIONS[current:]:
            step(conn)
        conn.execute(f"PRAGMA user_version = {LATEST}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return version
