"""`advise`: what to change, and what it would have saved (docs/ADVICE.md).

Read from the ledger alone (so it works with the daemon down): each finding is a counterfactual
over the calls of a period — definitions removed, cache writes made 1-hour ones, a session
compacted earlier, calls run on a smaller model — re-priced call by call with the call's own cache
tiers and the price table in use at the call's start (`ledger/reprice.py`), never a fixed
percentage. Findings are ranked by the dollars they would have saved; what a finding cannot know
(how answers would differ) is stated, not estimated. `realised` lists what an earlier change did:
definitions listed in the period before and not any more.

The kinds, each in its module: `advice_parts` (unused or rarely used MCP servers, skills and
agents, per project; memory files; what is no longer listed), `advice_calls` (cache breaks by
cause; 1-hour cache writes, per project; side calls and subagents on a large model),
`advice_history` (sessions whose earlier turns dominate the bill, and the best point to have
compacted).
"""

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from opik_cipx.ledger import advice_calls, advice_history, advice_parts
from opik_cipx.ledger.findings import Finding
from opik_cipx.ledger.queries import Selection
from opik_cipx.ledger.reprice import Repricer
from opik_cipx.store.captures import first_stamp, list_segments


@dataclass
class Advice:
    """The findings of a period, ranked, and what earlier changes realised."""

    since_ns: int
    until_ns: int
    findings: list[Finding]
    realised: list[Finding]

    def to_json(self) -> dict[str, Any]:
        return {"findings": [f.to_json() for f in self.findings], "realised": [f.to_json() for f in self.realised]}


# -- putting it together -----------------------------------------------------------------------

def previous(sel: Selection) -> Selection:
    """The period of the same length just before `sel`'s (both ends set)."""
    since, until = sel.since_ns or 0, sel.until_ns or 0
    return Selection(since_ns=max(0, 2 * since - until), until_ns=since, project=sel.project)


def advise(conn: sqlite3.Connection, sel: Selection, repricer: Repricer, now_ns: int,
           captures_dir: Path | None = None) -> Advice:
    """Every finding of the calls of `sel` (its window, from the ledger's first call and up to
    `now_ns` when open, and its project), ranked by saving, and what the changes made since the
    period of the same length before it realised."""
    first = conn.execute("SELECT min(first_ns) FROM days").fetchone()[0]
    since = sel.since_ns if sel.since_ns is not None else (first or now_ns)
    until = sel.until_ns if sel.until_ns is not None else now_ns
    sel = replace(sel, since_ns=since, until_ns=until)
    found: list[Finding] = []
    found += advice_parts.findings(conn, sel, repricer)
    found += advice_calls.cache_findings(conn, sel, repricer)
    found += advice_history.findings(conn, sel, repricer)
    found += advice_calls.model_findings(conn, sel, repricer)
    found = ranked(f for f in found if f.saving_usd is None or f.saving_usd > 0)
    realised = ranked(advice_parts.realised(conn, sel, previous(sel), repricer))
    note_captures(found + realised, captures_dir)
    return Advice(since, until, found, realised)


def ranked(found: Iterable[Finding]) -> list[Finding]:
    """Largest saving first; findings whose saving cannot be computed last."""
    return sorted(found, key=lambda f: (f.saving_usd is None, -(f.saving_usd or 0), f.kind, f.subject))


def note_captures(found: list[Finding], captures_dir: Path | None) -> None:
    """Say in each finding's evidence whether the raw captures of its calls are still stored (the
    dashboard's call pages show their requests) or were deleted by retention."""
    oldest = oldest_capture_ns(captures_dir)
    for finding in found:
        if oldest is None:
            finding.evidence["captures"] = "none stored: deleted by retention (or never kept); figures from the ledger"
        elif finding.first_ns and finding.first_ns < oldest:
            finding.evidence["captures"] = (f"deleted by retention for calls before {moment(oldest)}; "
                                            "figures from the ledger")
        else:
            finding.evidence["captures"] = "stored"


def oldest_capture_ns(captures_dir: Path | None) -> int | None:
    """When the exchange of the oldest capture still stored started (a finding's calls are dated by
    their start); None when none is."""
    if captures_dir is None:
        return None
    for segment in list_segments(captures_dir):
        stamp = first_stamp(segment.path, ("started_at_ns",))
        if stamp is not None:
            return stamp
    return None


def moment(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ns / 1e9))
