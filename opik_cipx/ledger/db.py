"""Opening `$CIPX_HOME/ledger.db`: owner-only, WAL journal, migrated to this version's schema.

Kept apart from the writer so that readers (`report`, the dashboard, a status line) import
only what reading needs.
"""

import os
import sqlite3
from pathlib import Path

from opik_cipx.home import FILE_MODE, private_dir
from opik_cipx.ledger.schema import migrate

READER_BUSY_TIMEOUT_S = 5.0


def connect(path: Path, busy_timeout_s: float) -> sqlite3.Connection:
    """A connection to the ledger at `path` (created 0600 if missing), in WAL mode, migrated.

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


def open_reader(path: Path) -> sqlite3.Connection | None:
    """A read-only use of the ledger (migrated first if an older opik-cipx wrote it); None when
    there is no ledger yet. Raises sqlite3.Error or SchemaError."""
    if not path.exists():
        return None
    conn = connect(path, READER_BUSY_TIMEOUT_S)
    conn.execute("PRAGMA query_only = 1")
    return conn
