"""The dashboard's spend caps: each cap of `[budget]` as a bar, spent against the cap
(docs/BUDGETS.md), coloured past `warn_at` and once reached, with what is left and when it resets.

The figures are the ledger's (`ledger/spent.standings`): the period caps, global and per project,
and the session cap of the sessions active today. Not narrowed by the page's filters: a cap
counts what it counts.
"""

import sqlite3

from opik_cipx.caps import Budget, period, usd
from opik_cipx.ledger.spent import OVER, WARNING, Standing, recent_sessions, standings
from opik_cipx.views.markup import esc, short_path

COLOURS = {"ok": "#16a34a", WARNING: "#d97706", OVER: "#dc2626"}


def caps_section(conn: sqlite3.Connection, budget: Budget, now_ns: int) -> str:
    """The section, or '' when no cap is set."""
    if not budget.enabled:
        return ""
    rows = standings(conn, budget, now_ns, every_project=True)
    if budget.has_session_caps:
        for sid, directory, _ in recent_sessions(conn, period("day", now_ns).start_ns):
            rows += [s for s in standings(conn, budget, now_ns, session_id=sid, directory=directory)
                     if s.scope == "session"]
    body = "".join(_row(row, budget.warn_at, now_ns) for row in rows)
    note = (f"Past {budget.warn_at:.0%} of a cap the next Claude Code prompt says so; at a cap, new calls are kept "
            "from Anthropic (<span class=mono>opik-cipx budget allow</span> lets a session go on).")
    return (f"<section id=budget><h2>Spend caps</h2><table class=caps>{body}</table>"
            f"<p class=muted>{note}</p></section>")


def _row(row: Standing, warn_at: float, now_ns: int) -> str:
    level = row.level(warn_at)
    name = f"session {row.session_id[:8]}" if row.scope == "session" and row.session_id else row.scope
    resets = "never resets" if row.resets_at_ns is None else f"resets {row.resets(now_ns)}"
    share = min(1.0, row.spent_usd / row.cap_usd)
    label = f"{name}{' of ' + row.project if row.project else ''}: {share:.0%} of the cap"
    bar = (f"<svg class=cap style='display:block;width:100%;height:12px' xmlns='http://www.w3.org/2000/svg' "
           f"viewBox='0 0 100 10' preserveAspectRatio=none "
           f"role=img aria-label='{esc(label)}'>"
           f"<rect width=100 height=10 fill='#e5e7eb'/><rect width={100 * share:.2f} height=10 "
           f"fill='{COLOURS[level]}'/><line x1={100 * warn_at:.2f} x2={100 * warn_at:.2f} y1=0 y2=10 "
           "stroke='#6b7280' stroke-width=0.6/></svg>")
    figures = f"{usd(row.spent_usd)} of {usd(row.cap_usd)}"
    left = "reached" if level == OVER else f"{usd(row.remaining_usd)} left"
    where = f" of {short_path(row.project)}" if row.project else ""
    return (f"<tr class='{level}'><td>{esc(name)}{where}</td><td style='width:45%'>{bar}</td>"
            f"<td class=num>{figures}</td><td class=num>{left}</td><td class=muted>{esc(resets)}</td></tr>")
