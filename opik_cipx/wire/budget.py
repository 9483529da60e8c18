"""The budget guard: a billable request in a scope at or over its cap is answered here, never
sent upstream (docs/BUDGETS.md).

`Guard.check` runs on the request thread before a request is forwarded. Only `POST /v1/messages`
starts a billable call (main loop, subagents, side calls, compactions alike); `count_tokens`
and every other route pass untouched. It reads in-memory totals alone (no disk, no body): the
session from the `x-claude-code-session-id` header (subagents and side calls send their
session's), the day, ISO week and month from the clock. A scope whose spend is at or over its
cap blocks; below every cap nothing does. It never raises: an internal error lets the request
through and is counted (`errors`), as is every request checked while the guard has nothing to
decide on (`undecided`: the ledger could not be read at start).

The totals come from the work side, in step with the ledger: `add` takes a `Spend` per call the
ledger wrote (and one taking back the old cost of a capture written again, so a re-materialized
capture counts once); `seed` takes what the ledger holds, and replaces the totals: the wire
reads it once at start, and each work process sends its own reading before it writes, then its
spends, over the link between the daemon's two processes (docs/ARCHITECTURE.md,
"Processes and threads"), so a work process that died between a write and its report leaves no
drift.

A call's cost is known only once it is materialized, after it ended. So that a call starting
just after another crossed a cap is still blocked, the wire tells the guard when each billable
call ends (`finished`) and the work when it has recorded it (`settle`): a request whose scope
could reach its cap with the calls still unrecorded (each counted at the largest cost seen)
waits for them, at most `SETTLE_WAIT_S` (`waiting` counts the requests doing so). Far from every
cap nothing waits. Overshoot is then what calls in flight when the
cap was crossed cost, plus any that ended unrecorded for longer than `UNPRICED_MAX_S`.
"""

import json
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from email.message import Message
from typing import Any, NamedTuple

from opik_cipx.caps import PERIODS, Budget, Period, duration, period, periods, usd
from opik_cipx.clock import SYSTEM, Clock

log = logging.getLogger(__name__)

BILLABLE_ROUTE = "/v1/messages"
SESSION_HEADER = "x-claude-code-session-id"
STATUS = 429  # with x-should-retry: false, Claude Code shows the message at once (docs/BUDGETS.md)
ERROR_TYPE = "rate_limit_error"
SETTLE_WAIT_S = 2.0  # the longest a request waits for earlier calls to be recorded
UNPRICED_MAX_S = 10.0  # an ended call not recorded after this is no longer waited for
SESSION_KEEP_S = 35 * 86400  # a session with no call for this long leaves the totals
RECENT_BLOCKS = 8


@dataclass(frozen=True)
class Spend:
    """What one call the ledger wrote cost, as the work side reports it; `usd` is negative when it
    takes back what an earlier write of the same capture counted."""

    at_ns: int  # when the call started: the day, week and month it counts in
    usd: float
    session_id: str | None = None
    directory: str | None = None  # where its session works, when known
    capture_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Spend":
        return cls(**doc)


@dataclass(frozen=True)
class Seed:
    """What the ledger held at start: spend per local day and directory since the start of the
    earliest period a cap counts in, each session's whole spend (the sessions with a call since),
    and the most one call cost."""

    days: tuple[tuple[str, str | None, float], ...] = ()  # (YYYY-MM-DD, directory, usd)
    sessions: tuple[tuple[str, str | None, float, int], ...] = ()  # (id, directory, usd, latest start ns)
    largest_usd: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Seed":
        return cls(tuple((day, directory, float(usd)) for day, directory, usd in doc["days"]),
                   tuple((sid, directory, float(usd), int(last)) for sid, directory, usd, last in doc["sessions"]),
                   float(doc["largest_usd"]))


@dataclass(frozen=True)
class Block:
    """Why a request was kept from the upstream: the scope whose cap was reached."""

    scope: str  # session | day | week | month
    cap_usd: float
    spent_usd: float
    resets_at_ns: int | None  # None for a session: its cap never resets
    project: str | None  # the project whose own cap this is; None for a global cap
    session_id: str | None
    message: str

    @property
    def tag(self) -> str:
        """Which cap, as the capture and the ledger name it: `day`, `session`, `project_day`, ..."""
        return f"project_{self.scope}" if self.project else self.scope

    def answer(self) -> tuple[int, list[tuple[str, str]], bytes]:
        """(status, headers, body) of the answer: a 429 in the Anthropic API's error shape, not to
        be retried."""
        body = json.dumps({"type": "error", "error": {"type": ERROR_TYPE, "message": self.message}}).encode()
        return STATUS, [("x-should-retry", "false")], body


def block_message(scope: str, cap_usd: float, spent_usd: float, resets_at_ns: int | None, project: str | None,
                  now_ns: int, settings_hint: str) -> str:
    """The line Claude Code shows: which cap, what was spent, when it resets, how to go on."""
    where = f" of {project}" if project else ""
    spent = f"{usd(spent_usd)} spent of the {usd(cap_usd)} {scope} cap{where}"
    if resets_at_ns is None:
        when = "a session cap does not reset (a new session starts from $0)"
    else:
        moment = time.strftime("%a %H:%M", time.localtime(resets_at_ns / 1e9))
        when = f"it resets {moment} (in {duration(resets_at_ns - now_ns)})"
    key = f'[budget.projects."{project}"] {scope}_usd' if project else f"[budget] {scope}_usd"
    return (f"opik-cipx kept this request from Anthropic: {spent}; {when}. To go on: run "
            f"`opik-cipx budget allow` (this session) or `opik-cipx budget allow --for 2h`, or raise {key} "
            f"in {settings_hint} and run `opik-cipx restart`.")


class _Scope(NamedTuple):
    """A cap that applies to a call, and what it counted so far."""

    scope: str
    cap: float
    spent: float
    resets_at_ns: int | None
    project: str | None  # the project whose own cap it is; None for a global one


class _Session:
    __slots__ = ("usd", "project", "last_ns")

    def __init__(self) -> None:
        self.usd = 0.0
        self.project: str | None = None
        self.last_ns = 0


class Guard:
    """The caps and the spend they count, shared by the gateway's threads and the work that feeds it."""

    def __init__(self, budget: Budget, settings_hint: str = "config.toml", clock: Clock = SYSTEM):
        self.budget = budget
        self.settings_hint = settings_hint  # where the caps are set, for the message
        self.clock = clock
        self._cond = threading.Condition()
        self._totals: dict[tuple[str, str | None], float] = {}  # (period label, project or None) -> usd
        self._sessions: dict[str, _Session] = {}
        self._largest = 0.0  # the most one call cost: how far an unrecorded call may move a total
        # capture id of an ended billable call, not recorded yet -> monotonic end, oldest first
        self._unpriced: OrderedDict[str, float] = OrderedDict()
        self._now: tuple[Period, ...] = ()  # the current day, week and month
        self._undecided: str | None = "the spend recorded so far was not read yet"
        self._allowed: set[str] = set()
        self._allowed_until_ns = 0
        self._allow_serial: str | None = None
        self._counts = {"blocked": 0, "errors": 0, "undecided": 0, "waited": 0}
        self._recent: deque[tuple[str | None, str, int]] = deque(maxlen=RECENT_BLOCKS)
        self.waiting = 0  # requests waiting for ended calls to be recorded

    # ---- the wire ------------------------------------------------------------------------

    def check(self, method: str, path: str, headers: Message) -> Block | None:
        """Whether to keep this request from the upstream (the cap it reached), else None. Never raises."""
        if method != "POST" or path.split("?", 1)[0] != BILLABLE_ROUTE:
            return None
        try:
            return self._check(headers.get(SESSION_HEADER) or None)
        except Exception:
            with self._cond:
                self._counts["errors"] += 1
                first = self._counts["errors"] == 1
            if first:
                log.exception("budget: cannot decide; the request goes through (counted in the budget errors)")
            return None

    def finished(self, capture_id: str, method: str, path: str, blocked: bool) -> None:
        """A billable call ended on the wire (its cost is not known yet); cheap, never waits."""
        if blocked or method != "POST" or path.split("?", 1)[0] != BILLABLE_ROUTE:
            return
        with self._cond:
            self._unpriced[capture_id] = self.clock.monotonic()
            self._drop_stale()  # bounded, whatever the work does

    def _check(self, session_id: str | None) -> Block | None:
        now = self.clock.time_ns()
        with self._cond:
            if self._undecided is not None:
                self._counts["undecided"] += 1
                return None
            if now < self._allowed_until_ns or (session_id is not None and session_id in self._allowed):
                return None
            block = self._decide(session_id, now)
            if block is None and self._unpriced and self._at_risk(session_id, now):
                block = self._settled_decision(session_id)
            if block is not None:
                self._counts["blocked"] += 1
                self._recent.append((session_id, block.tag, now))
            return block

    def _settled_decision(self, session_id: str | None) -> Block | None:
        """The decision once the calls that ended before now are recorded (bounded wait)."""
        since = self.clock.monotonic()
        self.waiting += 1
        self._counts["waited"] += 1
        try:
            self.clock.wait_for(self._cond, lambda: not self._unrecorded(since), SETTLE_WAIT_S)
        finally:
            self.waiting -= 1
        return self._decide(session_id, self.clock.time_ns())

    def _unrecorded(self, before: float) -> bool:
        """Whether a call that ended before `before` (and not too long ago) is not recorded yet.
        Constant time: ended calls are kept in the order they ended, the stale ones dropped."""
        self._drop_stale()
        return bool(self._unpriced) and next(iter(self._unpriced.values())) <= before

    def _drop_stale(self) -> None:
        """Forget ended calls unrecorded for longer than `UNPRICED_MAX_S` (the work far behind, or
        a capture it never reported): nothing waits for them."""
        oldest = self.clock.monotonic() - UNPRICED_MAX_S
        while self._unpriced and next(iter(self._unpriced.values())) < oldest:
            self._unpriced.popitem(last=False)

    def _scopes(self, session_id: str | None, now: int) -> list[_Scope]:
        """Every cap that applies to a call of `session_id` now."""
        budget = self.budget
        session = self._sessions.get(session_id) if session_id else None
        project = session.project if session else None
        out = []
        cap = budget.session_cap(project)
        if cap is not None and session_id is not None:
            out.append(_Scope("session", cap, session.usd if session else 0.0, None, None))
        own = budget.project_caps(project)
        for current in self._periods(now):
            cap = budget.caps.cap(current.scope)
            if cap is not None:
                out.append(_Scope(current.scope, cap, self._totals.get((current.label, None), 0.0), current.end_ns,
                                  None))
            cap = own.cap(current.scope) if own else None
            if cap is not None:
                out.append(_Scope(current.scope, cap, self._totals.get((current.label, project), 0.0),
                                  current.end_ns, project))
        return out

    def _decide(self, session_id: str | None, now: int) -> Block | None:
        reached = [scope for scope in self._scopes(session_id, now) if scope.spent >= scope.cap]
        if not reached:
            return None
        # The cap that holds longest: a session's never resets, then the latest reset.
        held = max(reached, key=lambda s: math.inf if s.resets_at_ns is None else s.resets_at_ns)
        message = block_message(*held, now, self.settings_hint)
        return Block(*held, session_id, message)

    def _at_risk(self, session_id: str | None, now: int) -> bool:
        """Whether the calls not recorded yet could take a scope of this call to its cap."""
        self._drop_stale()
        margin = len(self._unpriced) * self._largest
        return any(scope.spent + margin >= scope.cap for scope in self._scopes(session_id, now))

    def _periods(self, now: int) -> tuple[Period, ...]:
        """The current day, week and month, recomputed when the day changes (then old totals go)."""
        if not self._now or not self._now[0].start_ns <= now < self._now[0].end_ns:
            self._now = periods(now)
            self._prune(now)
        return self._now

    def _prune(self, now: int) -> None:
        labels = {current.label for current in self._now}
        self._totals = {key: usd for key, usd in self._totals.items() if key[0] in labels}
        horizon = now - SESSION_KEEP_S * 1_000_000_000
        self._sessions = {sid: s for sid, s in self._sessions.items() if s.last_ns >= horizon}

    # ---- the work side -------------------------------------------------------------------

    def seed(self, seed: Seed) -> None:
        """Start from what the ledger holds (the calls `add` counted before are in it: replaced); the
        guard decides from now on."""
        with self._cond:
            self._totals, self._sessions, self._largest = {}, {}, 0.0
            for day, directory, usd in seed.days:
                self._count(_day_ns(day), usd, self.budget.project_of(directory))
            for session_id, directory, usd, last_ns in seed.sessions:
                session = self._sessions.setdefault(session_id, _Session())
                session.usd += usd
                session.project = self.budget.project_of(directory) or session.project
                session.last_ns = max(session.last_ns, last_ns)
            self._largest = max(self._largest, seed.largest_usd)
            self._undecided = None

    def cannot_seed(self, reason: str) -> None:
        """The ledger could not be read: every request goes through, counted, until `seed`."""
        with self._cond:
            self._undecided = reason

    def add(self, spends: Iterable[Spend]) -> None:
        """Count calls the ledger wrote (or take back a capture's earlier cost)."""
        with self._cond:
            for spend in spends:
                project = self.budget.project_of(spend.directory)
                self._count(spend.at_ns, spend.usd, project)
                if spend.session_id:
                    session = self._sessions.setdefault(spend.session_id, _Session())
                    session.usd += spend.usd
                    if spend.directory:
                        session.project = project
                    session.last_ns = max(session.last_ns, spend.at_ns)
                self._largest = max(self._largest, spend.usd)
                if spend.capture_id is not None:
                    self._unpriced.pop(spend.capture_id, None)
            self._cond.notify_all()

    def settle(self, capture_id: str) -> None:
        """The work is done with this capture, recorded or not: nothing waits for it any more."""
        with self._cond:
            if self._unpriced.pop(capture_id, None) is not None:
                self._cond.notify_all()
            self._drop_stale()

    def _count(self, at_ns: int, usd: float, project: str | None) -> None:
        for scope in PERIODS:
            label = period(scope, at_ns).label
            self._totals[label, None] = self._totals.get((label, None), 0.0) + usd
            if project:
                self._totals[label, project] = self._totals.get((label, project), 0.0) + usd

    # ---- allowances (`opik-cipx budget allow`) ---------------------------------------------

    def allow(self, sessions: Iterable[str], until_ns: int, serial: str | None) -> None:
        """Let these sessions go on whatever they spend, and every call until `until_ns`."""
        with self._cond:
            self._allowed = set(sessions)
            self._allowed_until_ns = until_ns
            self._allow_serial = serial

    # ---- stats ------------------------------------------------------------------------------

    def section(self) -> dict[str, Any]:
        """The `budget` section of the admin stats: the global caps with what they count, the
        counts, the latest blocked sessions and the allowances (no directory: the admin port is
        open to every local user)."""
        now = self.clock.time_ns()
        with self._cond:
            caps = [{"scope": s.scope, "cap_usd": s.cap, "spent_usd": round(s.spent, 6), "resets_at_ns": s.resets_at_ns}
                    for s in self._scopes(None, now) if s.project is None]
            if self.budget.caps.session_usd is not None:
                caps.insert(0, {"scope": "session", "cap_usd": self.budget.caps.session_usd, "spent_usd": None,
                                "resets_at_ns": None})
            return {
                "enabled": self.budget.enabled,
                "deciding": self._undecided is None,
                "undecided_reason": self._undecided,
                "caps": caps,
                "project_caps": len(self.budget.projects),
                **self._counts,
                "blocked_sessions": [sid for sid, _, _ in self._recent if sid],
                "allow_serial": self._allow_serial,
                "allowed_sessions": len(self._allowed),
                "allowed_until_ns": self._allowed_until_ns or None,
            }


def _day_ns(day: str) -> int:
    """Noon of a local day (`YYYY-MM-DD`): a moment inside it, whatever its length."""
    year, month, dom = (int(part) for part in day.split("-"))
    return int(time.mktime((year, month, dom, 12, 0, 0, 0, 0, -1))) * 1_000_000_000
