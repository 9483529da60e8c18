"""Subscription and API rate limits, read passively from every response's headers.

Anthropic answers every Messages call with its limits (docs/RATE_LIMITS.md):
- a Pro/Max (OAuth) session gets `anthropic-ratelimit-unified-*`: overall `status`, `reset`,
  `representative-claim` (the binding window), and per window (`5h`, `7d`, `7d_oi`, per-model
  weekly windows whose names vary) `-utilization` (a fraction, may exceed 1), `-reset` (epoch
  seconds), `-status` (`allowed`, `allowed_warning`, `rejected`), `-surpassed-threshold`; plus
  `overage-*` and `fallback*`;
- API-key traffic gets `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-`
  `{limit,remaining,reset}` (reset as RFC 3339).

`parse_rate_limits` keeps every header with those prefixes, generically: a window name never
seen before becomes a window like any other, so it shows in the span metadata, the ledger,
`status` and the status line without a release. A classic window's utilization is derived as
(limit - remaining) / limit, so every window has one number to compare. `RateLimits` is the
typed view a call record carries: the document as parsed (what `metadata.cc.rate_limits` shows, in
the headers' order) and its windows as typed values for readers. `RateLimitObserver` keeps the
latest observation of each window for the admin stats. Pure parsing, no I/O.
"""

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from opik_cipx.stats import utc_iso

UNIFIED_PREFIX = "anthropic-ratelimit-unified-"
CLASSIC_PREFIX = "anthropic-ratelimit-"
OVERALL = frozenset({"status", "reset", "representative-claim", "fallback", "upgrade-paths"})
# Per-window attributes, longest first so `surpassed-threshold` is not read as `...-threshold`.
WINDOW_ATTRIBUTES = ("surpassed-threshold", "utilization", "remaining", "status", "reset", "limit")
WARNING_STATUSES = frozenset({"allowed_warning", "rejected"})
KNOWN_ORDER = ("5h", "7d", "requests", "tokens", "input-tokens", "output-tokens")
MAX_VALUE_CHARS = 64
MAX_WINDOWS = 32


def parse_rate_limits(headers: list[list[str]] | None) -> dict[str, Any] | None:
    """The rate limits one response carried, or None when it carried none.

    `{"status", "resets_at", "representative_claim", "other": {name: raw}, "windows": {name:
    {"source": "unified" | "classic", "utilization", "resets_at", "status", "surpassed_threshold",
    "limit", "remaining", "other": {attribute: raw}}}}`; values the headers lack are absent,
    numbers that do not parse stay raw under `other`.
    """
    overall: dict[str, Any] = {}
    other: dict[str, str] = {}
    windows: dict[str, dict[str, Any]] = {}
    for name, value in headers or ():
        key = name.strip().lower()
        if not key.startswith(CLASSIC_PREFIX):
            continue
        value = value.strip()[:MAX_VALUE_CHARS]
        if key.startswith(UNIFIED_PREFIX):
            rest, source = key[len(UNIFIED_PREFIX):], "unified"
            if rest in OVERALL:
                _overall(overall, other, rest, value)
                continue
        else:
            rest, source = key[len(CLASSIC_PREFIX):], "classic"
        window, attribute = _split(rest)
        if not window:
            other[rest] = value
            continue
        if window not in windows and len(windows) >= MAX_WINDOWS:
            continue
        entry = windows.setdefault(window, {"source": source})
        _attribute(entry, attribute, value)
    for entry in windows.values():
        limit, remaining = entry.get("limit"), entry.get("remaining")
        if "utilization" not in entry and isinstance(limit, int) and limit > 0 and isinstance(remaining, int):
            entry["utilization"] = round((limit - remaining) / limit, 6)
    if not (overall or other or windows):
        return None
    out: dict[str, Any] = dict(overall)
    if other:
        out["other"] = other
    out["windows"] = {name: windows[name] for name in sorted(windows, key=window_order)}
    return out


@dataclass(frozen=True)
class RateLimitWindow:
    """One window as one response reported it; what the headers did not say is None."""

    name: str
    source: str  # unified | classic
    utilization: float | None = None
    resets_at: int | None = None  # epoch seconds
    status: str | None = None
    surpassed_threshold: float | None = None
    limit: int | None = None
    remaining: int | None = None


@dataclass(frozen=True)
class RateLimits:
    """The rate limits of one response: `document` as `parse_rate_limits` made it (read-only) and
    its windows, typed, in display order."""

    document: Mapping[str, Any]
    windows: tuple[RateLimitWindow, ...]

    @classmethod
    def of(cls, document: Mapping[str, Any]) -> "RateLimits":
        windows = tuple(
            RateLimitWindow(name, w.get("source") or "unified", w.get("utilization"), w.get("resets_at"),
                            w.get("status"), w.get("surpassed_threshold"), w.get("limit"), w.get("remaining"))
            for name, w in document.get("windows", {}).items())
        return cls(document, windows)


def window_order(name: str) -> tuple:
    """Display order: the known windows first (5h, 7d, then the classic ones), then by name."""
    return (KNOWN_ORDER.index(name) if name in KNOWN_ORDER else len(KNOWN_ORDER), name)


def warning(window: dict[str, Any]) -> bool:
    """A window past its surpassed threshold, or whose status warns or rejects."""
    return window.get("surpassed_threshold") is not None or window.get("status") in WARNING_STATUSES


def _split(rest: str) -> tuple[str, str]:
    """(window, attribute) of `5h-utilization`, `7d_oi-surpassed-threshold`, `overage-disabled-reason`."""
    for attribute in WINDOW_ATTRIBUTES:
        if rest.endswith("-" + attribute):
            return rest[: -len(attribute) - 1], attribute
    window, _, attribute = rest.partition("-")
    return (window, attribute) if attribute else ("", rest)


def _overall(overall: dict[str, Any], other: dict[str, str], rest: str, value: str) -> None:
    if rest == "reset":
        at = epoch_seconds(value)
        if at is not None:
            overall["resets_at"] = at
            return
    elif rest in ("status", "representative-claim"):
        overall[rest.replace("-", "_")] = value
        return
    other[rest] = value


def _attribute(entry: dict[str, Any], attribute: str, value: str) -> None:
    parsed: Any = None
    if attribute in ("utilization", "surpassed-threshold"):
        parsed = _float(value)
    elif attribute in ("limit", "remaining"):
        parsed = _int(value)
    elif attribute == "reset":
        parsed = epoch_seconds(value)
        attribute = "resets_at"
    elif attribute == "status":
        parsed = value
    if parsed is None:
        entry.setdefault("other", {})[attribute] = value
    else:
        entry[attribute.replace("-", "_")] = parsed


def epoch_seconds(value: str) -> int | None:
    """Epoch seconds from `1781290000` (unified) or `2026-09-17T09:13:32Z` (classic RFC 3339)."""
    number = _float(value)
    if number is not None:
        return int(number)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def _float(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number == number and abs(number) != float("inf") else None


def _int(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


class RateLimitObserver:
    """The latest observation of every window (by the calls' start times), for the admin stats.

    Fed by the materializer thread, read by the admin listener's threads. A capture
    materialized late (after a restart) never replaces a newer observation.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[int, dict[str, Any]]] = {}
        self._overall: tuple[int, dict[str, Any]] | None = None

    def note(self, limits: dict[str, Any] | None, at_ns: int) -> None:
        if not limits:
            return
        with self._lock:
            for name, window in limits.get("windows", {}).items():
                if name in self._windows or len(self._windows) < MAX_WINDOWS:
                    seen = self._windows.get(name)
                    if seen is None or seen[0] <= at_ns:
                        self._windows[name] = (at_ns, window)
            overall = {k: v for k, v in limits.items() if k != "windows"}
            if overall and (self._overall is None or self._overall[0] <= at_ns):
                self._overall = (at_ns, overall)

    def section(self) -> dict[str, Any]:
        """The `rate_limits` stats section (docs/ARCHITECTURE.md, "Admin stats")."""
        with self._lock:
            windows = dict(self._windows)
            overall = self._overall
        latest = max([at for at, _ in windows.values()] + ([overall[0]] if overall else []), default=None)
        doc: dict[str, Any] = {"observed_at": None if latest is None else utc_iso(latest / 1e9),
                               "status": None, "representative_claim": None, "resets_at": None}
        if overall:
            doc.update(overall[1])
        doc["windows"] = {name: {**windows[name][1], "observed_at": utc_iso(windows[name][0] / 1e9)}
                          for name in sorted(windows, key=window_order)}
        return doc
