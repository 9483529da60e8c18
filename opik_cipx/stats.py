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

# Counters that mean something went wrong when nonzero; `status` flags them.
PROBLEM_COUNTERS = frozenset(
    {
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
        "connections_not_owner",
    }
)


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


def build_stats(
    base: dict[str, Any], counters: Counters, providers: dict[str, SectionProvider]
) -> dict[str, Any]:
    """The admin stats: `base` (pid, version, listeners, ...) + counters + each provider's section.

    A provider's keys are merged over the section defaults, so a component reports only
    what it owns.
    """
    doc = dict(base)
    sections = default_sections()
    for name, provide in providers.items():
        sections.setdefault(name, {}).update(provide())
    doc.update(sections)
    doc["counters"] = counters.snapshot()
    doc["refusals"] = counters.refusals()
    return doc
