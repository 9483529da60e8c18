"""Opening `$CIPX_HOME/ledger.db`: the writer's connection (owner-only, WAL, migrated to this
version's schema) and the readers' (read-only, never migrated).

Kept apart from the writer so that readers (`report`, the dashboard, `status`) import only what
reading needs. Only the writer (`ledger/store.Ledger`, `replay --ledger`) changes the file: a
reader opens it with SQLite's `mode=ro`, so `report` run beside a daemon of another version, or
of an older one not restarted yet, never alters the daemon's database (docs/ARCHITECTURE.md,
"Ledger").
"""

import os
import sqlite3
from pathlib import Path

from opik_cipx.home import FILE_MODE, private_dir
from opik_cipx.ledger.schema import LATEST, SchemaError, migrate, unreadable_version

READER_BUSY_TIMEOUT_S = 5.0


def connect(path: Path, busy_timeout_s: float) -> sqlite3.Connection:
    """The writer's connection to the ledger at `path` (created 0600 if missing), in WAL mode,
    migrated.

    Raises sqlite3.Error or SchemaError. SQLite creates `-wal` and `-shm` with the mode of the
    database file, so all three stay owner-only.
    """
    private_dir(path.parent)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE))
    if path.stat().st_mode & 0o777 != FILE_MODE:
        os.chmod(path, FILE_MODE)
    conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL: a commit survives a crash of the process
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def read_only_uri(path: str) -> str:
    """The SQLite URI that opens `path` read-only (`%`, `?` and `#` of the path escaped)."""
    escaped = os.path.abspath(path).replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    return f"file://{escaped}?mode=ro"


def open_reader(path: Path) -> sqlite3.Connection | None:
    """A read-only connection to the ledger at this version's schema; None when there is no
    ledger yet (no file, or one the writer has not given a schema yet).

    Nothing is written to the file: a WAL ledger's `-wal` and `-shm` are created (empty,
    with its mode) when no writer has them open. Raises sqlite3.Error, or SchemaError with one
    line when an older or a newer opik-cipx wrote the file (`schema.unreadable_version`).
    """
    if not path.exists():
        return None
    conn = sqlite3.connect(read_only_uri(str(path)), uri=True, timeout=READER_BUSY_TIMEOUT_S,
                           isolation_level=None, check_same_thread=False)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except BaseException:
        conn.close()
        raise
    if version == LATEST:
        return conn
    conn.close()
    if version == 0:
        return None
    raise SchemaError(unreadable_version(version))
