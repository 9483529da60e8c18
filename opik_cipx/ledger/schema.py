"""The ledger's tables (docs/ARCHITECTURE.md, "Ledger") and the forward migrations that build them.

`PRAGMA user_version` holds the schema version; `MIGRATIONS[n]` takes a version-n file to
version n+1. Migrations only ever add: a file written by an older opik-cipx is upgraded in
place when it is opened, and one written by a newer opik-cipx is left alone.
"""

import sqlite3
from typing import Callable

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


def _script(sql: str) -> Callable[[sqlite3.Connection], None]:
    def run(conn: sqlite3.Connection) -> None:
        for statement in sql.split(";"):
            if statement.strip():
                conn.execute(statement)

    return run


# MIGRATIONS[n] upgrades a version-n ledger to version n+1 (version 0: an empty file).
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_script(V1),)
LATEST = len(MIGRATIONS)


class SchemaError(Exception):
    """The ledger cannot be used by this version; the message is one line fit for the user."""


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the ledger to `LATEST` in one transaction; the version it had before.

    Raises SchemaError when a newer opik-cipx wrote it. The connection is in autocommit mode.
    """
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > LATEST:
        raise SchemaError(
            f"ledger schema v{version} was written by a newer opik-cipx (this one knows up to v{LATEST}); "
            "upgrade opik-cipx"
        )
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
