"""The shipper: one background thread that drains the spool to Opik's REST API with urllib.

It takes a batch at the spool cursor and sends its traces, then its spans (`ship/batching.py`),
through the routes of the destination (`ship/opik_api.py`: the batch endpoints with an API key;
with a device token, each trace created once and updated after): gzip-encoded, at most
`batch_max_records` (1000) records and `batch_max_bytes` per request. Opik upserts by id, so a
record sent again is never doubled. The cursor moves only once every record of the batch is
settled:
- a 2xx whose body is Opik's (none, or JSON): accepted. A 2xx with anything else (a web page
  from a front end at the base URL, plain text) stores nothing: shipping pauses as for a wrong URL;
- 400/422 (validation), 413 (too big): the request is split until the offending record is
  alone, which then goes to the quarantine file with Opik's reason;
- 409: Opik holds a record under this id that conflicts with the one sent. Opik means it in two
  ways: `IdentifierMismatchException` (the id belongs to another project or workspace, or the
  span to another trace or parent) and `EntityAlreadyExistsException` ("... already exists").
  The request is split as for 400; a lone record that "already exists" is accepted on a batch
  endpoint (Opik has it) and sent as an update after a trace create (device token); any other
  is quarantined with Opik's reason: sending it again cannot succeed;
- 500 and the other 5xx but 502/503/504 (Opik failed on the request; one record can cause it):
  wait, then split as for 400. A lone record that failed `ISOLATE_AFTER` times is quarantined
  once Opik has accepted another record on the same route since its previous failure and then
  fails it once more (`_isolate`): Opik works and this record breaks it. To find out, the
  records behind it go first (`ROTATE`); when none is left, the last record accepted on that
  route is sent again (an idempotent upsert: the probe), and when none was accepted yet, the
  batch is read again with the newer records the spool holds (`REREAD`). An Opik that fails
  everything accepts nothing, so it quarantines nothing. The rule needs no memory of earlier
  runs: after a restart the records behind a poison one are what shows that Opik works;
- a timeout, or a gateway's 504: Opik is too slow for the request. A request of several records
  is split, and later requests hold at most half as many records (doubling again after
  `GROW_AFTER` accepted requests); a lone record gets a timeout twice as long (up to
  `TIMEOUT_MAX_S`); either way after a backoff;
- 502/503, refused connections, other answers: Opik is down or unreachable: exponential backoff
  with jitter (capped), then the same request;
- 429: wait for `RateLimit-Reset` / `Retry-After`, then the same request again;
- 401/402/403 (auth), 3xx/404/405 (wrong base URL): shipping pauses with a clear `last_error`;
  the same request is re-sent every `auth_probe_s` as the probe that resumes it.
A wait after a 429 is never shorter than `MIN_WAIT_S` (1 s), whatever the headers say (0, a
date in the past, garbage); a backoff never shorter than `retry_base_s` (1 s in the daemon).
Re-sent records keep their ids and `last_updated_at`, so Opik upserts instead of duplicating.
A record set aside clears the error its failures left (`status` shows the quarantine instead).
Between batches the thread takes in what `opik-cipx ship --retry-quarantine` handed back
(`Spool.take_requeued`). The credential goes only into the `Authorization` header: never into
logs or stats.

The thread is a `worker.Worker`: the spool wakes it when records become durable, it looks
again every `IDLE_WAIT_S` otherwise, and every wait (backoff, 429, a paused Opik) goes through
its clock and ends at once on `stop`. `_settle` reads as the list above: a reply either settles
the request's records (`_settled_by`), splits the request, or counts against a lone record
(`_isolate`), and anything unsettled waits (`_failed` says how long) before the same request
goes again.
"""

import logging
import random
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from itertools import islice
from typing import Any

from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.ship.batching import Key, Record, Request, plan_requests, record_key
from opik_cipx.ship.destination import NOT_CONFIGURED, Destination, cost_intelligence
from opik_cipx.ship.failures import describe_failure
from opik_cipx.ship.opik_api import (
    SPANS_BATCH,
    TRACE_CREATE,
    TRACE_UPDATE,
    TRACES_BATCH,
    OpikClient,
    Reply,
    Route,
    accepted,
    already_exists,
    record_suspect,
    too_slow,
)
from opik_cipx.stats import Counters, utc_iso
from opik_cipx.store.spool import Spool
from opik_cipx.store.spool_reader import Batch
from opik_cipx.store.spool_segments import Position
from opik_cipx.worker import Worker

log = logging.getLogger(__name__)

BATCH_MAX_RECORDS = 1000  # Opik's limit per batch request
BATCH_MAX_BYTES = 4 * 1024 * 1024  # uncompressed JSON per request
IDLE_WAIT_S = 5.0  # between looks for new records and for `ship --retry-quarantine` requests
ISOLATE_AFTER = 3  # 5xx answers for a lone record before it may be set aside
GROW_AFTER = 4  # accepted requests before the request size, cut by a slow Opik, doubles again
TIMEOUT_MAX_S = 300.0  # the longest a request may take, however slow Opik is
KNOWN_TRACES_MAX = 10_000  # trace ids (device token) remembered as held by Opik
SPLIT = frozenset({400, 409, 413, 422})
# What `_isolate` decided for a lone record that keeps failing:
SETTLED, WAIT, ROTATE, REREAD, AGAIN = "settled", "wait", "rotate", "reread", "again"


@dataclass
class Strikes:
    """A lone record's 5xx answers, and how many records its route had accepted at the last one."""

    failures: int = 0
    accepts_seen: int = 0


class Shipper(Worker):
    """Drains `spool` to the Opik `destination`; does nothing when Opik is not configured."""

    def __init__(
        self,
        spool: Spool,
        destination: Destination,
        counters: Counters,
        *,
        timeout_s: float = 30.0,
        retry_base_s: float = 1.0,
        retry_max_s: float = 300.0,
        auth_probe_s: float = 300.0,
        batch_max_records: int = BATCH_MAX_RECORDS,
        batch_max_bytes: int = BATCH_MAX_BYTES,
        client: OpikClient | None = None,
        clock: Clock = SYSTEM,
    ):
        super().__init__("shipper", counters, log, clock, idle_s=IDLE_WAIT_S)
        self.failure_wait_s = retry_max_s  # a bug must not end shipping, nor make it spin
        self.spool = spool
        self.destination = destination
        self.retry_base_s = min(retry_base_s, retry_max_s)
        self.retry_max_s = retry_max_s
        self.auth_probe_s = auth_probe_s
        self.batch_max_records = min(batch_max_records, BATCH_MAX_RECORDS)
        self.batch_max_bytes = batch_max_bytes
        if client is None and destination.configured:
            client = OpikClient(destination)
        self.client = client
        self._lock = threading.Lock()
        self._inflight = 0
        self._failures = 0
        self._paused = False
        self._last_error: str | None = None if destination.configured else NOT_CONFIGURED
        self._last_ok_at: float | None = None
        self._limit = self.batch_max_records  # records per request: cut while Opik is too slow
        self._grown_after = 0  # accepted requests since the limit last changed
        self._timeout_s = min(timeout_s, TIMEOUT_MAX_S)  # lengthened for a lone record Opik is too slow for
        self._probes: dict[Route, dict[str, Any]] = {}  # route -> the last record Opik accepted there
        self._accepts: dict[Route, int] = {}  # route -> requests Opik accepted there
        self._known: OrderedDict[str, str] = OrderedDict()  # trace id -> newest last_updated_at Opik holds
        self._settled_at: Position | None = None  # the cursor the sets below belong to
        self._settled: set[Key] = set()  # records accepted there (a re-read skips them)
        self._set_aside: set[Key] = set()  # records quarantined there
        self._strikes: dict[Key, Strikes] = {}  # lone records failing with a 5xx there
        spool.subscribe(self.wake)  # records became durable: look at once

    def start(self) -> None:
        if self.client is not None:
            super().start()

    def step(self, _: None) -> float | None:
        self._take_requeued()
        return 0.0 if self.ship_once() else None

    def _take_requeued(self) -> None:
        """Records `ship --retry-quarantine` handed back: into the spool, behind what waits there."""
        count = self.spool.take_requeued()
        if count:
            self._set_aside.clear()  # the same records may be back: a re-read must not skip them
            log.info("shipper: %d record(s) from the quarantine are back in the spool", count)

    def ship_once(self) -> bool:
        """Ship the batch at the spool cursor; False when nothing was waiting."""
        batch = self.spool.read_batch(self.batch_max_records, self.batch_max_bytes)
        if batch is None:
            return False
        if batch.start != self._settled_at:
            self._settled_at, self._settled, self._set_aside, self._strikes = batch.start, set(), set(), {}
        with self._lock:
            self._inflight = len(batch.records)
        try:
            if self._settle(batch):
                self.spool.commit(batch)
        finally:
            with self._lock:
                self._inflight = 0
        return True

    # ---- one batch ---------------------------------------------------------------------------

    def _settle(self, batch: Batch) -> bool:
        """Send until every record is accepted or quarantined; False to read the batch again
        (stopped, dropped by the disk budget, or to take newer records in)."""
        work = deque(self._plan(batch))
        while work:
            request = self._next(work)
            reply = self._send(request)
            if self._settled_by(request, reply):
                work.popleft()
                continue
            if request.route is TRACE_CREATE and already_exists("trace", reply):
                work[0] = request.updating()  # Opik holds the trace: this version is an update
                continue
            slow = too_slow(reply)
            if not request.alone and (reply.status in SPLIT or record_suspect(reply.status) or slow):
                work.popleft()
                work.extendleft(reversed(request.halves()))  # a verdict on the records, or one may cause it
                if slow:
                    self._shrink(len(request.items))
                if reply.status in SPLIT:
                    continue
            elif slow:
                self._lengthen()
            elif record_suspect(reply.status):
                decision = self._isolate(request, reply, work, batch)
                if decision == SETTLED:
                    work.popleft()
                    continue
                if decision == AGAIN:
                    continue  # the probe shows Opik works: this record once more, now
                if decision == ROTATE:
                    work.rotate(-1)  # the records behind it first: they show whether Opik works
                elif decision == REREAD:
                    self.rest(self._failed(reply, request))
                    return False  # read again: newer records show whether Opik works
            if self.rest(self._failed(reply, request)) or not self.spool.is_current(batch):
                return False
        return True

    def _plan(self, batch: Batch) -> list[Request]:
        """The requests for what is not settled yet at this cursor. With a device token a trace
        version older than one Opik holds is not sent again (an update would bring it back)."""
        done = self._settled | self._set_aside
        waiting: list[Record] = []
        for kind, body, size in batch.records:
            key = record_key(kind, body)
            if key in done:
                continue
            if kind == "trace" and self._device and key[2] < self._known.get(body["id"], ""):
                self._settled.add(key)
                continue
            waiting.append((kind, body, size))
        trace_route = self._trace_route if self._device else None
        return plan_requests(waiting, self._limit, self.batch_max_bytes, trace_route)

    @property
    def _device(self) -> bool:
        return self.destination.endpoints == "device_token"

    def _trace_route(self, body: dict[str, Any]) -> Route:
        return TRACE_UPDATE if body["id"] in self._known else TRACE_CREATE

    def _next(self, work: deque[Request]) -> Request:
        """The request at the head, split while it holds more records than requests may now."""
        while len(work[0].items) > self._limit:
            work.extendleft(reversed(work.popleft().halves()))
        return work[0]

    def _send(self, request: Request, bodies: list[dict[str, Any]] | None = None) -> Reply:
        assert self.client is not None, "shipping with no destination"  # `start` needs a client
        bodies = [body for body, _ in request.items] if bodies is None else bodies
        started = self.clock.monotonic()
        reply = self.client.send(request.route, bodies, self._timeout_s)
        log.debug("shipper: %d record(s) %s -> %s in %.0f ms", len(bodies), request.route.name,
                  reply.status or reply.error, (self.clock.monotonic() - started) * 1000)
        return reply

    def _settled_by(self, request: Request, reply: Reply) -> bool:
        """Accepted, or a verdict that sets the lone record aside; either way, nothing to retry."""
        if accepted(request.route, reply, request.alone):
            self._accepted(request)
            return True
        if request.alone and reply.status in SPLIT and not (request.route is TRACE_CREATE
                                                            and already_exists("trace", reply)):
            self._quarantine(request, reply.status, reply)
            return True
        return False

    def _isolate(self, request: Request, reply: Reply, work: deque[Request], batch: Batch) -> str:
        """A lone record got a 5xx it may cause (see the module docstring): what to do next."""
        strikes = self._strikes.setdefault(request.key, Strikes())
        accepts = self._accepts.get(request.route, 0)
        evidence = accepts > strikes.accepts_seen
        strikes.failures += 1
        strikes.accepts_seen = accepts
        if strikes.failures > ISOLATE_AFTER and evidence:
            self._quarantine(request, reply.status or 500, reply,
                             f" ({strikes.failures} times, while Opik accepted another record)")
            return SETTLED
        if strikes.failures < ISOLATE_AFTER:
            return WAIT
        if any(not self._stuck(other) for other in islice(work, 1, None)):
            return ROTATE
        probe = self._probe(request.route)
        if probe:
            return AGAIN
        if probe is None and self._more_records_than(batch):
            return REREAD
        return WAIT  # a failed probe: every request fails, an outage; or nothing newer to send yet

    def _stuck(self, request: Request) -> bool:
        """A lone record that keeps failing and waits for a sign that Opik works."""
        strikes = self._strikes.get(request.key)
        return request.alone and strikes is not None and strikes.failures >= ISOLATE_AFTER

    def _probe(self, route: Route) -> bool | None:
        """Does Opik accept, now, again, the last record it accepted on `route`? None: there is none."""
        body = self._probes.get(route)
        if body is None:
            return None
        reply = self._send(Request(route, [(body, 0)]))
        ok = accepted(route, reply, alone=True) or (route is TRACE_CREATE and already_exists("trace", reply))
        if ok:
            self._accepts[route] = self._accepts.get(route, 0) + 1
        return ok

    def _more_records_than(self, batch: Batch) -> bool:
        return self.spool.counts()[1] > len(batch.records) + batch.corrupt

    # ---- outcomes ------------------------------------------------------------------------------

    def _accepted(self, request: Request) -> None:
        route = request.route
        self.counters.incr("spans_shipped", len(request.items))
        self._accepts[route] = self._accepts.get(route, 0) + 1
        self._probes[route] = request.items[-1][0]
        self._settled.update(record_key(route.kind, body) for body, _ in request.items)
        if route in (TRACE_CREATE, TRACE_UPDATE):
            self._remember_trace(request.items[0][0])
        self._grow()
        with self._lock:
            was_failing = self._last_error is not None
            self._failures = 0
            self._paused = False
            self._last_error = None
            self._last_ok_at = self.clock.time()
        if was_failing:
            log.info("shipper: Opik accepts records again")

    def _remember_trace(self, body: dict[str, Any]) -> None:
        """Opik holds this trace (device token): later versions are updates, older ones are not sent."""
        self._known[body["id"]] = max(str(body.get("last_updated_at", "")), self._known.get(body["id"], ""))
        self._known.move_to_end(body["id"])
        while len(self._known) > KNOWN_TRACES_MAX:
            self._known.popitem(last=False)  # forgotten: its next version is created, 409, then updated

    def _quarantine(self, request: Request, status: int, reply: Reply, why: str = "") -> None:
        body = request.items[0][0]
        reason = (reply.body[:2000].decode("utf-8", "replace").strip() or f"HTTP {status}") + why
        self.spool.quarantine(request.route.kind, body, status, reason)
        self._set_aside.add(request.key)
        self._strikes.pop(request.key, None)
        with self._lock:  # what its failures said is told by the quarantine now
            self._failures = 0
            self._paused = False
            self._last_error = None
        log.warning("shipper: Opik refused %s %s (HTTP %d%s); set aside in quarantine.jsonl, "
                    "`opik-cipx ship --retry-quarantine` sends it again", request.route.kind, body["id"], status, why)

    def _shrink(self, records: int) -> None:
        """Opik was too slow for a request of `records`: later ones hold at most half as many."""
        self._limit = max(1, min(self._limit, records // 2))
        self._grown_after = 0

    def _grow(self) -> None:
        if self._limit < self.batch_max_records:
            self._grown_after += 1
            if self._grown_after >= GROW_AFTER:
                self._limit = min(self.batch_max_records, self._limit * 2)
                self._grown_after = 0

    def _lengthen(self) -> None:
        """Opik was too slow for one record: give requests twice as long."""
        self._timeout_s = min(TIMEOUT_MAX_S, self._timeout_s * 2)

    def _failed(self, reply: Reply, request: Request) -> float:
        """Record why the request failed; the seconds to wait before trying it again."""
        failure = describe_failure(reply, request.route, len(request.items), self.destination, self.clock.time(),
                                   self.auth_probe_s, self._limit, self._timeout_s, self._backoff)
        with self._lock:
            changed = self._last_error is None or self._last_error.split(";")[0] != failure.error.split(";")[0]
            self._paused = failure.paused
            self._last_error = failure.error
        (log.warning if changed else log.debug)("shipper: %s", failure.error)
        return failure.wait_s

    def _backoff(self) -> float:
        with self._lock:
            self._failures += 1
            ceiling = min(self.retry_max_s, self.retry_base_s * 2 ** min(self._failures - 1, 30))
        return max(self.retry_base_s, ceiling / 2 + random.uniform(0, ceiling / 2))

    # ---- stats ---------------------------------------------------------------------------------

    def section(self) -> dict[str, Any]:
        """The `opik` section of the admin stats (the credential is never part of it)."""
        quarantine = self.spool.quarantine_counts()
        dest = self.destination
        routes = [TRACE_CREATE, TRACE_UPDATE, SPANS_BATCH] if self._device else [TRACES_BATCH, SPANS_BATCH]
        with self._lock:
            return {
                "configured": dest.configured,
                "base_url": dest.display_url,
                "workspace": dest.workspace,
                "endpoints": dest.endpoints if dest.configured else None,
                "routes": [route.name for route in routes] if dest.configured else [],
                "cost_intelligence": {"project": dest.project, "why_not": cost_intelligence(dest)},
                "cleartext": dest.cleartext,
                "last_error": self._last_error,
                "last_ok_at": utc_iso(self._last_ok_at) if self._last_ok_at else None,
                "paused": self._paused,
                "request_records": self._limit,
                "request_timeout_s": self._timeout_s,
                **quarantine,
            }

    def queue_section(self) -> dict[str, int]:
        """The `queue` section: waiting for the disk, durable and waiting for Opik, being posted."""
        in_memory, unshipped = self.spool.counts()
        with self._lock:
            inflight = self._inflight
        return {"in_memory": in_memory, "ready": max(0, unshipped - inflight), "inflight": inflight}
