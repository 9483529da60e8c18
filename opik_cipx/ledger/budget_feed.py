"""The budget guard's feed, from the ledger (docs/BUDGETS.md, "How the totals are kept").

The guard (`wire/budget.Guard`) decides on the wire from totals in memory; this is where they
come from, on the work side: `read_seed` sums what the ledger holds when the daemon starts, and
`spends` turns each entry the ledger writes into `Spend` messages, one for the call and, for a
capture written again (materialized anew after a restart), one taking back what its old row
counted. The guard's totals so stay equal to the ledger's, whatever is materialized twice.
"""

from __future__ import annotations  # Entry and Previous are for the type checker alone

import sqlite3

from opik_cipx.caps import period
from opik_cipx.wire.budget import SESSION_KEEP_S, Seed, Spend

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing; type checkers take it as True
if TYPE_CHECKING:
    # The wire process reads the seed at start (`read_seed`) and must not load the work side's
    # modules (the ledger's writer, the call record) to do it (docs/ARCHITECTURE.md, "Imports at start").
    from opik_cipx.ledger.entry import Entry
    from opik_cipx.ledger.store import Previous


def spends(entry: Entry, previous: Previous | None) -> list[Spend]:
    """What one written entry changes in the totals."""
    call = entry.call
    out = []
    if previous is not None and previous.cost_usd:
        out.append(Spend(previous.started_at_ns, -previous.cost_usd, previous.session_id, previous.project_dir))
    out.append(Spend(call["started_at_ns"], call["cost_usd"] or 0.0, call["session_id"], call["project_dir"],
                     call["capture_id"]))
    return out


def read_seed(conn: sqlite3.Connection, now_ns: int) -> Seed:
    """The ledger's spend by local day and directory since the start of this ISO week or month
    (the earlier), and the whole spend of each session with a call in the last `SESSION_KEEP_S`."""
    since = min(period("week", now_ns).start_ns, period("month", now_ns).start_ns)
    first_day = period("day", since).label
    days = conn.execute("SELECT day, nullif(project, ''), total(cost_usd) FROM daily_calls WHERE day >= ? "
                        "GROUP BY day, project", (first_day,)).fetchall()
    largest = conn.execute("SELECT max(cost_usd) FROM calls WHERE day >= ?", (first_day,)).fetchone()[0]
    sessions = conn.execute(
        "SELECT c.session_id, max(c.project_dir), total(c.cost_usd), max(c.started_at_ns) FROM calls c "
        "WHERE c.session_id IN (SELECT DISTINCT session_id FROM calls WHERE started_at_ns >= ?) "
        "GROUP BY c.session_id", (now_ns - SESSION_KEEP_S * 1_000_000_000,)).fetchall()
    return Seed(tuple((day, directory, usd) for day, directory, usd in days if usd),
                tuple((sid, directory, usd, last) for sid, directory, usd, last in sessions),
                largest or 0.0)
