"""The ledger's writer: upserts call entries into `$CIPX_HOME/ledger.db`, enforces retention.

One writer per process, used from one thread (the daemon's materializer, or `replay
--ledger`); any number of readers in other processes (`report`, the dashboard; they open it
with `ledger/db.py`) read alongside it, which WAL allows without blocking either side. Every
write is an upsert keyed by capture id inside one transaction, so writing a capture again
(re-materialization, `replay --ledger`) replaces its rows instead of counting it twice.

The ledger must never stop materialization: `Ledger.write` never raises. A write that fails
(another process holds the lock past the busy timeout, a full disk) keeps its entries in a
bounded queue and retries them after a pause: at the next write, or earlier through
`retry_due`, which the writer's thread runs when it is idle (the daemon's follower does, so the
entries do not wait for the next call); a file that is not a database is moved aside
(`ledger.db.corrupt-<UTC stamp>`) and a new one started. Each failure streak logs one line and
counts `ledger_write_errors`; entries dropped from the full queue count `ledger_calls_dropped`.
After `close` nothing opens the file again. Rows older than the retention are deleted at most
once an hour.

Each write also keeps the call's session row (`sessions`): its first start, its project, the
latest title and the earliest first prompt, each kept by the start of the call it came from, so
the rows are the same whatever order the calls arrive in. With `keep_text` False (content capture
off) no title or prompt is written.

One entry never holds back another (docs/ARCHITECTURE.md, "Ledger"): when a transaction fails
because of an entry's values rather than the file, each entry is written alone. An integer
SQLite cannot hold (beyond a signed 64-bit one: `10**30` output tokens off the wire) is clamped
to that range and the row kept, counted in `ledger_values_clamped` and logged; an entry the
schema still refuses is dropped, counted in `ledger_calls_dropped` and logged.
"""

from __future__ import annotations  # Entry and CallRecord are for the type checker alone

import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.ledger.db import connect
from opik_cipx.ledger.periods import local_day
from opik_cipx.ledger.schema import RATE_LIMIT_COLUMNS, SchemaError, roll_up, roll_up_parts
from opik_cipx.stats import Counters

if TYPE_CHECKING:
    from opik_cipx.ledger.entry import Entry
    from opik_cipx.materialize.call import CallRecord

log = logging.getLogger(__name__)

WRITER_BUSY_TIMEOUT_S = 1.0  # the materializer waits at most this long for another writer
RETRY_PAUSE_S = 5.0  # after a failed write, entries wait this long before the next attempt
MAX_PENDING = 2000
RETENTION_EVERY_S = 3600.0
CORRUPT = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})
# Errors that come from one entry's values, not from the file: each entry is then written alone.
# OverflowError: an integer beyond SQLite's 64 bits, which `clamped` brings into range.
ENTRY_ERRORS = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.DataError, OverflowError, ValueError,
                TypeError)
INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # what an SQLite INTEGER holds


class Previous(NamedTuple):
    """What the calls row of a capture written again held before: the spend it counted."""

    started_at_ns: int
    cost_usd: float | None
    session_id: str | None
    project_dir: str | None


Written = Callable[["Entry", Previous | None], None]
T = TypeVar("T")


class Ledger:
    """The writer. `write` is called once per materialized capture, from one thread."""

    def __init__(self, path: Path, retention_days: float, counters: Counters | None = None,
                 clock: Clock = SYSTEM, keep_text: bool = True, on_written: Written | None = None):
        """`on_written(entry, previous)` runs for each entry once its transaction committed, with
        what its capture's row held before when it replaced one (the budget guard's feed)."""
        self.path = path
        self.on_written = on_written
        self.keep_text = keep_text
        self.clock = clock
        self.retention_days = retention_days
        self.counters = counters or Counters()
        self._conn: sqlite3.Connection | None = None
        self._file: tuple[int, int] | None = None  # (device, inode) the connection has open
        self._pending: deque[Entry] = deque()
        self._retry_at = 0.0
        self._failing: str | None = None  # the error of the current failure streak
        self._retention_at = 0.0
        self._lock = threading.Lock()  # `close` may come from another thread than the writes
        self._closed = False

    def write(self, call: CallRecord | None) -> None:
        """Record one call (nothing for an exchange without a model call: None). Never raises."""
        self.write_calls([call])

    def write_calls(self, calls: Iterable[CallRecord | None]) -> None:
        """Record calls in one transaction (a None, an exchange without a model call, records
        nothing; a call whose rows cannot be derived is counted and logged, the others written).
        Never raises."""
        real = [call for call in calls if call is not None]
        if not real:
            return
        # At the first call: a work process that records none does not load the rows' builders.
        from opik_cipx.ledger.entry import ledger_entry

        entries = []
        for call in real:
            try:
                entries.append(ledger_entry(call, self.keep_text))
            except Exception:
                self.counters.incr("ledger_write_errors")
                log.exception("ledger: cannot derive the ledger rows of capture %s", call.exchange.capture_id)
        if entries:
            self.write_entries(entries)

    def write_entries(self, entries: Iterable[Entry]) -> bool:
        """Upsert `entries` (after any still waiting) in one transaction; True once written."""
        with self._lock:
            return self._write(entries)

    def _write(self, entries: Iterable[Entry]) -> bool:
        if self._closed:
            dropped = len(list(entries))
            if dropped:
                self.counters.incr("ledger_calls_dropped", dropped)
                log.warning("ledger: %d call(s) came after it was closed; not written", dropped)
            return False
        for entry in entries:
            if len(self._pending) >= MAX_PENDING:
                self._pending.popleft()
                self.counters.incr("ledger_calls_dropped")
            self._pending.append(entry)
        if not self._pending or self.clock.monotonic() < self._retry_at:
            return not self._pending
        try:
            conn = self._connection()
            try:
                self._transaction(conn, self._pending)
            except ENTRY_ERRORS:
                self._write_one_by_one(conn)
            self._pending.clear()
            self._enforce_retention(conn)
        except (sqlite3.Error, SchemaError, OSError) as exc:
            self._failed(exc)
            return False
        if self._failing:
            log.info("ledger: writing again after: %s", self._failing)
            self._failing = None
        return True

    def flush(self) -> bool:
        """Write what is waiting now, ignoring the pause after a failure; True when nothing waits."""
        with self._lock:
            self._retry_at = 0.0
            return self._write([])

    def retry_due(self) -> None:
        """Write what is waiting if the pause after a failure is over (the writer's idle step)."""
        with self._lock:
            if self._pending:
                self._write([])

    def close(self) -> None:
        """Write what is waiting (bounded by the busy timeout) and close the file for good."""
        with self._lock:
            self._retry_at = 0.0
            if self._pending and not self._write([]):
                log.warning("ledger: %d call(s) could not be written before shutdown; "
                            "`opik-cipx replay --ledger` adds them from the stored captures", len(self._pending))
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """`query` run on the writer's connection (the file created and migrated first, as a write
        would): what the daemon reads at start. Raises sqlite3.Error, SchemaError or OSError."""
        with self._lock:
            if self._closed:
                raise sqlite3.OperationalError("the ledger is closed")
            return query(self._connection())

    # -- internals ---------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """The open connection, reopened when the file was deleted or replaced meanwhile (a user
        moved a damaged ledger away), so writes never go to a file nobody can read."""
        if self._conn is not None and self._file != _identity(self.path):
            log.info("ledger: %s was removed or replaced; opening it afresh", self.path)
            self._conn.close()
            self._conn = None
        if self._conn is None:
            self._conn = connect(self.path, WRITER_BUSY_TIMEOUT_S)
            self._file = _identity(self.path)
        return self._conn

    def _transaction(self, conn: sqlite3.Connection, entries: Iterable[Entry]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            written = [(entry, upsert(conn, entry)) for entry in entries]
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if self.on_written is not None:
            for entry, previous in written:
                try:
                    self.on_written(entry, previous)
                except Exception:  # a listener never undoes or fails a write that committed
                    log.exception("ledger: the listener on written calls failed on capture %s",
                                  entry.call.get("capture_id"))

    def _write_one_by_one(self, conn: sqlite3.Connection) -> None:
        """An entry whose values the database refuses must not hold back the others: write each
        alone; one with an integer out of SQLite's range is written clamped, one still refused
        is dropped."""
        for entry in self._pending:
            try:
                self._transaction(conn, [entry])
                continue
            except OverflowError:
                pass
            except ENTRY_ERRORS as exc:
                self._drop(entry, exc)
                continue
            fixed, where = clamped(entry)
            try:
                self._transaction(conn, [fixed])
            except ENTRY_ERRORS as exc:
                self._drop(entry, exc)
                continue
            self.counters.incr("ledger_values_clamped")
            log.warning("ledger: capture %s carries values beyond what the ledger holds (%s); recorded them "
                        "clamped to %d", entry.call.get("capture_id"), ", ".join(where), INT_MAX)

    def _drop(self, entry: Entry, exc: Exception) -> None:
        self.counters.incr("ledger_calls_dropped")
        log.error("ledger: the rows of capture %s were refused and dropped: %s",
                  entry.call.get("capture_id"), _describe(exc))

    def _failed(self, exc: Exception) -> None:
        self.counters.incr("ledger_write_errors")
        self._retry_at = self.clock.monotonic() + RETRY_PAUSE_S
        reason = _describe(exc)
        if isinstance(exc, sqlite3.DatabaseError) and getattr(exc, "sqlite_errorname", None) in CORRUPT:
            moved = self._move_aside()
            log.error("ledger: %s is not a usable database (%s); moved it to %s and starting a new one. "
                      "`opik-cipx replay --ledger` refills it from the stored captures", self.path, reason, moved)
            self._retry_at = 0.0
            return
        if self._failing is None:
            log.warning("ledger: cannot write %s (%s); calls wait in memory (at most %d) and are retried "
                        "every %.0fs", self.path, reason, MAX_PENDING, RETRY_PAUSE_S)
        self._failing = reason

    def _move_aside(self) -> str:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.clock.time()))
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            os.replace(self.path, target)
        except OSError as exc:
            return f"nowhere ({exc.strerror})"
        for suffix in ("-wal", "-shm"):
            try:
                os.unlink(f"{self.path}{suffix}")
            except FileNotFoundError:
                pass
        return target.name

    def _enforce_retention(self, conn: sqlite3.Connection) -> None:
        now = self.clock.monotonic()
        if now < self._retention_at:
            return
        self._retention_at = now + RETENTION_EVERY_S
        removed = delete_before(conn, local_day(self.clock.time_ns() - int(self.retention_days * 86400e9)))
        if removed:
            log.info("ledger: %d call(s) older than %g days deleted", removed, self.retention_days)


def upsert(conn: sqlite3.Connection, entry: Entry) -> Previous | None:
    """Write one entry, replacing the rows of the same capture if it was written before; what
    that row held (None for a new capture)."""
    call = entry.call
    old = conn.execute("SELECT id, started_at_ns, cost_usd, session_id, project_dir FROM calls WHERE capture_id = ?",
                       (call["capture_id"],)).fetchone()
    columns = list(call)
    if old is None:
        call_id = conn.execute(
            f"INSERT INTO calls ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            [call[c] for c in columns],
        ).lastrowid
        assert call_id is not None  # an INSERT sets it
    else:
        call_id = old[0]
        roll_up(conn, "c.id = ?", (call_id,), sign=-1)
        roll_up_parts(conn, "c.id = ?", (call_id,), sign=-1)
        conn.execute("DELETE FROM details WHERE call_id = ?", (call_id,))
        conn.execute("DELETE FROM call_parts WHERE call_id = ?", (call_id,))
        conn.execute(f"UPDATE calls SET {', '.join(f'{c} = ?' for c in columns)} WHERE id = ?",
                     [*(call[c] for c in columns), call_id])
    conn.executemany(
        "INSERT INTO details (call_id, bucket, detail, chars, tokens, cost_usd) VALUES (?, ?, ?, ?, ?, ?)",
        [(call_id, d.bucket, d.detail, d.chars, d.tokens, d.cost_usd) for d in entry.details],
    )
    conn.executemany(
        "INSERT OR REPLACE INTO launches (tool_span_id, call_span_id, day) VALUES (?, ?, ?)",
        [(tool, llm, call["day"]) for tool, llm in entry.launches],
    )
    conn.executemany(
        "INSERT INTO call_parts (call_id, part, name, fresh_tokens, read_tokens, write_5m_tokens, write_1h_tokens, "
        "invocations, loaded) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [(call_id, *row) for row in entry.parts])
    roll_up(conn, "c.id = ?", (call_id,))
    roll_up_parts(conn, "c.id = ?", (call_id,))
    _rate_limits(conn, call_id, entry)
    _session(conn, entry)
    return Previous(*old[1:]) if old is not None else None


_LATER_TITLE = "excluded.title_at_ns IS NOT NULL AND (title_at_ns IS NULL OR excluded.title_at_ns >= title_at_ns)"
_EARLIER_PROMPT = ("excluded.first_prompt_at_ns IS NOT NULL AND "
                   "(first_prompt_at_ns IS NULL OR excluded.first_prompt_at_ns < first_prompt_at_ns)")
_KEEP_SESSION = f"""
INSERT INTO sessions (session_id, started_at_ns, project_dir, title, title_at_ns, first_prompt, first_prompt_at_ns)
VALUES (:session, :at, :project, :title, :title_at, :prompt, :prompt_at)
ON CONFLICT (session_id) DO UPDATE SET
    started_at_ns = min(started_at_ns, excluded.started_at_ns),
    project_dir = coalesce(project_dir, excluded.project_dir),
    title = CASE WHEN {_LATER_TITLE} THEN excluded.title ELSE title END,
    title_at_ns = CASE WHEN {_LATER_TITLE} THEN excluded.title_at_ns ELSE title_at_ns END,
    first_prompt = CASE WHEN {_EARLIER_PROMPT} THEN excluded.first_prompt ELSE first_prompt END,
    first_prompt_at_ns = CASE WHEN {_EARLIER_PROMPT} THEN excluded.first_prompt_at_ns ELSE first_prompt_at_ns END
"""


def _session(conn: sqlite3.Connection, entry: Entry) -> None:
    """The call's session: its first start, its project, the latest title, the earliest prompt."""
    call, text = entry.call, entry.session
    if call["session_id"] is None:
        return
    at = call["started_at_ns"]
    conn.execute(_KEEP_SESSION, {
        "session": call["session_id"], "at": at, "project": call["project_dir"],
        "title": text.title, "title_at": at if text.title else None,
        "prompt": text.prompt, "prompt_at": at if text.prompt else None})


_RATE_LIMITS_INSERT = ", ".join(RATE_LIMIT_COLUMNS)
_UPDATE_LATEST = ", ".join(f"{c} = excluded.{c}" for c in (*RATE_LIMIT_COLUMNS[1:], "started_at_ns", "capture_id"))


def _rate_limits(conn: sqlite3.Connection, call_id: int, entry: Entry) -> None:
    """The call's windows; the latest value of each window; each day's peak utilization (a
    capture written again carries the same values, so the peak stays exact)."""
    call = entry.call
    conn.execute("DELETE FROM rate_limits WHERE call_id = ?", (call_id,))
    if not entry.rate_limits:
        return
    started, day = call["started_at_ns"], call["day"]
    conn.executemany(
        f"INSERT INTO rate_limits (call_id, {_RATE_LIMITS_INSERT}, started_at_ns, day) "
        f"VALUES (?, {', '.join('?' * len(RATE_LIMIT_COLUMNS))}, ?, ?)",
        [(call_id, *row, started, day) for row in entry.rate_limits])
    conn.executemany(
        f"INSERT INTO latest_rate_limits ({_RATE_LIMITS_INSERT}, started_at_ns, capture_id) "
        f"VALUES ({', '.join('?' * len(RATE_LIMIT_COLUMNS))}, ?, ?) "
        f"ON CONFLICT (window_name) DO UPDATE SET {_UPDATE_LATEST} WHERE excluded.started_at_ns >= started_at_ns",
        [(*row, started, call["capture_id"]) for row in entry.rate_limits])
    conn.executemany(
        "INSERT INTO daily_rate_limits (day, window_name, peak_utilization) VALUES (?, ?, ?) "
        "ON CONFLICT (day, window_name) DO UPDATE SET "
        "peak_utilization = max(peak_utilization, excluded.peak_utilization)",
        [(day, row[0], row[2]) for row in entry.rate_limits if row[2] is not None])


def clamped(entry: Entry) -> tuple[Entry, list[str]]:
    """`entry` with every integer beyond what an SQLite INTEGER holds clamped into its range, and
    where they were (column names; `details`, `rate_limits`)."""
    where: list[str] = []

    def clamp(value: Any, name: str) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and not INT_MIN <= value <= INT_MAX:
            where.append(name)
            return min(max(value, INT_MIN), INT_MAX)
        return value

    call = {column: clamp(value, column) for column, value in entry.call.items()}
    details = tuple(replace(d, chars=clamp(d.chars, "details")) for d in entry.details)
    rate_limits = tuple(tuple(clamp(value, "rate_limits") for value in row) for row in entry.rate_limits)
    return replace(entry, call=call, details=details, rate_limits=rate_limits), sorted(set(where))


def delete_before(conn: sqlite3.Connection, day: str) -> int:
    """Delete every call of a day before `day` (and its rows); the number of calls deleted."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DELETE FROM details WHERE call_id IN (SELECT id FROM calls WHERE day < ?)", (day,))
        _forget_parts(conn, day)
        removed = conn.execute("DELETE FROM calls WHERE day < ?", (day,)).rowcount
        for table in ("launches", "daily_calls", "daily_details", "days", "rate_limits", "daily_rate_limits"):
            conn.execute(f"DELETE FROM {table} WHERE day < ?", (day,))
        if removed:  # a session goes with its last call
            conn.execute("DELETE FROM sessions WHERE NOT EXISTS "
                         "(SELECT 1 FROM calls c WHERE c.session_id = sessions.session_id)")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return removed


def _forget_parts(conn: sqlite3.Connection, day: str) -> None:
    """Take the definition groups of the calls of days before `day` out of `call_parts` and of their
    sessions' sums (`session_parts`), before the calls go."""
    roll_up_parts(conn, "c.day < ?", (day,), sign=-1)
    conn.execute("DELETE FROM call_parts WHERE call_id IN (SELECT id FROM calls c WHERE c.day < ?)", (day,))


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__
