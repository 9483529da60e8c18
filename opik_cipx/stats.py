"""Process-wide counters and the `/admin/stats` document (docs/ARCHITECTURE.md, "Admin stats").

Counters are plain integers behind one lock: increments come from the wire and worker threads
and cost a lock round-trip, nothing more. Sections a component has not filled yet are present
with zero/null values, so `status` can always render the full document.
"""

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

COUNTER_NAMES = (
    "requests_captured",
    "events_materialized",
    "spans_shipped",
    "materializer_errors_total",
    "raw_captures_dropped",
    "requests_dropped_queue_full",
    "captures_dropped_budget",
    "spans_dropped_term",
    "unknown_endpoints",
    "panics_recovered",
    "ledger_write_errors",
    "ledger_calls_dropped",
    "ledger_values_clamped",
    "calls_flagged",
    "requests_refused",
    "connections_refused",
    "requests_timed_out",
    "responses_truncated",
    "connections_not_owner",
)

# Counters that mean something went wrong when nonzero; `status` flags them: all but progress and
# `responses_truncated` (a response over the capture cap is kept in part by design: the wire
# forwarded every byte).
PROBLEM_COUNTERS = frozenset(COUNTER_NAMES) - {
    "requests_captured", "events_materialized", "spans_shipped", "responses_truncated"}


def utc_iso(ts: float) -> str:
    """A stats timestamp: ISO-8601 UTC with a `Z` suffix, millisecond precision."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Counters:
    """Named monotonically increasing counters, safe to bump from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(COUNTER_NAMES, 0)
        self._refusals: dict[tuple[str, int], int] = {}

    def incr(self, name: str, amount: int = 1) -> int:
        """Add `amount` to counter `name`; its new value."""
        with self._lock:
            self._values[name] += amount
            return self._values[name]

    def refused(self, listener: str, status: int) -> int:
        """A request `listener` answered `status` itself instead of serving it: counted in
        `requests_refused` and by listener and status (`refusals`); the total so far."""
        with self._lock:
            self._refusals[listener, status] = self._refusals.get((listener, status), 0) + 1
            self._values["requests_refused"] += 1
            return self._values["requests_refused"]

    def refusals(self) -> dict[str, dict[str, int]]:
        """`requests_refused` by listener, then by status (as a string: JSON keys)."""
        with self._lock:
            items = sorted(self._refusals.items())
        out: dict[str, dict[str, int]] = {}
        for (listener, status), count in items:
            out.setdefault(listener, {})[str(status)] = count
        return out

    def get(self, name: str) -> int:
        with self._lock:
            return self._values[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


def default_sections() -> dict[str, Any]:
    """Every section of the admin stats with its zero/null values."""
    return {
        "opik": {"configured": False, "base_url": None, "endpoints": None, "cost_intelligence": None, "cleartext": None,
                 "last_error": None, "last_ok_at": None, "quarantined": 0, "retry_pending": 0},
        "queue": {"in_memory": 0, "ready": 0, "inflight": 0},
        "wal": {
            "hot_bytes": 0,
            "segments": 0,
            "last_sync_at": None,
            "degraded": False,
            "last_write_error": None,
            "dropped_events_inmem": 0,
            "dropped_events_disk": 0,
            "keep": True,
            "discarded": 0,
        },
        "materializer": {"lag_events": 0, "inflight_raw": 0, "ready_raw": 0},
        "unknown_models": {"calls": 0, "ids": []},
        "rate_limits": {"observed_at": None, "status": None, "representative_claim": None, "resets_at": None,
                        "windows": {}},
        "home": {"degraded": False, "unsaved": [], "problems": [], "layout": []},
        "telemetry": {"enabled": False, "reason": None, "sent": 0, "dropped": 0, "suppressed": 0,
                      "last_error": None},
    }


SectionProvider = Callable[[], dict[str, Any]]
TELEMETRY_COUNTS = ("sent", "dropped", "suppressed")


class ProcessTotals:
    """What the work processes reported (docs/ARCHITECTURE.md, "Processes and threads"): the latest
    stats of the running one, and the counters and refusals of those that ended, up to the last
    stats each sent, so a restart of the work process does not take its counts back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._latest: dict[str, Any] = {}
        self._carried: dict[str, int] = {}
        self._carried_refusals: dict[str, dict[str, int]] = {}

    def report(self, reply: dict[str, Any]) -> None:
        """A work process's stats (`pid`, `sections`, `counters`, `refusals`)."""
        with self._lock:
            if reply.get("pid") != self._pid and self._latest:
                _add(self._carried, self._latest.get("counters") or {})
                for listener, by_status in (self._latest.get("refusals") or {}).items():
                    _add(self._carried_refusals.setdefault(listener, {}), by_status)
            self._pid, self._latest = reply.get("pid"), reply

    def sections(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self._latest.get("sections") or {})

    def counters(self) -> dict[str, int]:
        with self._lock:
            return _add(dict(self._carried), self._latest.get("counters") or {})

    def refusals(self) -> dict[str, dict[str, int]]:
        with self._lock:
            out = {listener: dict(by_status) for listener, by_status in self._carried_refusals.items()}
            for listener, by_status in (self._latest.get("refusals") or {}).items():
                _add(out.setdefault(listener, {}), by_status)
            return out


def _add(into: dict[str, int], more: dict[str, int]) -> dict[str, int]:
    for name, value in more.items():
        if isinstance(value, int):
            into[name] = into.get(name, 0) + value
    return into


def build_stats(
    base: dict[str, Any], counters: Counters, providers: dict[str, SectionProvider],
    totals: ProcessTotals | None = None,
) -> dict[str, Any]:
    """The admin stats: `base` (pid, version, listeners, ...) + counters + each provider's section,
    and what the work processes reported (`totals`): their sections under this process's own, their
    counters and refusals added to this process's (their telemetry counts too).

    A provider's keys are merged over the section defaults, so a component reports only
    what it owns.
    """
    doc = dict(base)
    sections = default_sections()
    reported = totals.sections() if totals is not None else {}
    for name, section in reported.items():
        if isinstance(section, dict):
            sections.setdefault(name, {}).update(section)
    for name, provide in providers.items():
        own = provide()
        if name == "telemetry" and "telemetry" in reported:
            other = reported["telemetry"]
            own = {**own, **{key: (own.get(key) or 0) + (other.get(key) or 0) for key in TELEMETRY_COUNTS},
                   "last_error": own.get("last_error") or other.get("last_error")}
        sections.setdefault(name, {}).update(own)
    doc.update(sections)
    doc["counters"] = _add(counters.snapshot(), totals.counters()) if totals is not None else counters.snapshot()
    refusals = counters.refusals()
    if totals is not None:
        for listener, by_status in totals.refusals().items():
            _add(refusals.setdefault(listener, {}), by_status)
    doc["refusals"] = refusals
    return doc
