"""The shipper: one background thread that drains the spool to Opik's REST API with urllib.

It takes a batch at the spool cursor and posts its traces, then its spans, to
`{base}/v1/private/traces/batch` and `{base}/v1/private/spans/batch`: gzip-encoded, at most
1000 records and `batch_max_bytes` per request, each id once per request (the newest
`last_updated_at` wins). These endpoints upsert by id, so a record sent again is accepted again
and never doubled. The cursor moves only once every record of the batch is settled:
- 2xx: accepted;
- 400/422 (validation), 413 (too big): the request is split until the offending record is
  alone, which then goes to the quarantine file with Opik's reason;
- 409: Opik holds a record under this id that conflicts with the one sent. Opik means it in two
  ways: `IdentifierMismatchException` (the id belongs to another project or workspace, or the
  span to another trace or parent) and `EntityAlreadyExistsException` ("... already exists").
  The request is split as for 400; a lone record that "already exists" is accepted (Opik has
  it), any other is quarantined with Opik's reason: sending it again cannot succeed;
- 500 and the other 5xx but 502/503/504 (Opik failed on the request; one record can cause it):
  wait, then split as for 400. A lone record that failed `ISOLATE_AFTER` times is quarantined
  only if Opik, asked right then to store again the last record of that kind it accepted (an
  idempotent upsert: the probe), accepts it, and then fails the record once more with a 5xx of
  this kind: Opik works and this record breaks it. Any other answer to that last try is taken
  as this list says (an outage that ended between the record's failure and the probe gets it
  accepted). If the probe fails too, every request fails: an outage, which quarantines nothing
  and waits as below. With no accepted record of that kind yet there is no probe: the record
  goes behind the rest of the batch, and when it is the last one, the batch is read again once
  newer records are in the spool, to find one;
- 502/503/504 (a gateway in front of Opik), refused connections, timeouts, other answers: all
  of Opik is down or unreachable: exponential backoff with jitter (capped), then the same request;
- 429: wait for `RateLimit-Reset` / `Retry-After`, then the same request again;
- 401/402/403 (auth), 3xx/404/405 (wrong base URL): shipping pauses with a clear
  `last_error`; the same request is re-sent every `auth_probe_s` as the probe that resumes it.
A wait after a 429 is never shorter than `MIN_WAIT_S` (1 s), whatever the headers say (0, a
date in the past, garbage); a backoff never shorter than `retry_base_s` (1 s in the daemon).
Re-sent records keep their ids and `last_updated_at`, so Opik upserts instead of duplicating.
Between batches the thread takes in what `opik-cipx ship --retry-quarantine` handed back
(`Spool.take_requeued`). The API key goes only into the `Authorization` header: never into
logs or stats.

The thread is a `worker.Worker`: the spool wakes it when records become durable, it looks
again every `IDLE_WAIT_S` otherwise, and every wait (backoff, 429, a paused Opik) goes through
its clock and ends at once on `stop`. `_settle` reads as the list above: a reply either settles
the request's records (`_settled_by`), splits the request, or counts against a lone record
(`_isolate`, the probe), and anything unsettled waits (`_failed` says how long) before the same
request goes again.
"""

import gzip
import http.client
import json
import logging
import random
import threading
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass
from typing import Any, TypeGuard

from opik_cipx import __version__
from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.outbound import Headers, opener, requested_wait_s
from opik_cipx.ship.destination import NOT_CONFIGURED, OPIK_CLOUD_URL, Destination
from opik_cipx.stats import Counters, utc_iso
from opik_cipx.store.spool import Spool
from opik_cipx.store.spool_lines import KINDS, dumps
from opik_cipx.store.spool_reader import Batch
from opik_cipx.store.spool_segments import Position
from opik_cipx.worker import Worker

log = logging.getLogger(__name__)

PATHS = {"trace": "/v1/private/traces/batch", "span": "/v1/private/spans/batch"}
FIELDS = {"trace": "traces", "span": "spans"}
BATCH_MAX_RECORDS = 1000  # Opik's limit per batch request
BATCH_MAX_BYTES = 4 * 1024 * 1024  # uncompressed JSON per request
RATE_LIMIT_MAX_S = 3600.0
MIN_WAIT_S = 1.0  # the shortest wait after a 429, whatever RateLimit-Reset / Retry-After say
IDLE_WAIT_S = 5.0  # between looks for new records and for `ship --retry-quarantine` requests
ISOLATE_AFTER = 3  # 5xx answers for a lone record before the probe may set it aside
SPLIT = frozenset({400, 409, 413, 422})
AUTH = frozenset({401, 402, 403})
WRONG_URL = frozenset({301, 302, 303, 307, 308, 404, 405})
UNAVAILABLE = frozenset({502, 503, 504})  # from a gateway or load balancer: Opik itself is down
# What `_isolate` decided for a lone record that keeps failing:
SETTLED, WAIT, ROTATE, REREAD = "settled", "wait", "rotate", "reread"

Item = tuple[dict[str, Any], int]  # body, its size on disk


@dataclass
class Reply:
    status: int | None  # None: no HTTP answer (refused, reset, timeout, TLS)
    headers: Headers
    body: bytes
    error: str | None = None


@dataclass
class _Request:
    """One planned request of a batch, and how many 5xx answers it got."""

    kind: str
    items: list[Item]
    failures: int = 0

    @property
    def alone(self) -> bool:
        return len(self.items) == 1

    def halves(self) -> list["_Request"]:
        half = len(self.items) // 2
        return [_Request(self.kind, self.items[:half]), _Request(self.kind, self.items[half:])]


def record_suspect(status: int | None) -> TypeGuard[int]:
    """A 5xx that can come from one record of the request (not from a gateway in front of Opik)."""
    return status is not None and 500 <= status < 600 and status not in UNAVAILABLE


def accepted(kind: str, reply: Reply, alone: bool) -> bool:
    """Opik holds the records of the request now: a 2xx, or for a lone record, "already exists"."""
    status = reply.status
    return status is not None and (200 <= status < 300 or (alone and already_exists(kind, reply)))


def already_exists(kind: str, reply: Reply) -> bool:
    """A 409 saying this record is stored already ("Trace already exists", "Span already exists":
    `EntityAlreadyExistsException`), rather than a mismatch."""
    return reply.status == 409 and f"{kind} already exists".encode() in reply.body.lower()


class OpikClient:
    """Posts one batch request to Opik per call; retrying is the shipper's business."""

    def __init__(self, destination: Destination, timeout_s: float):
        assert destination.base_url is not None
        self.destination = destination
        self.base_url = destination.base_url
        self.timeout_s = timeout_s
        self._opener = opener(destination.base_url)  # never a local Opik through a proxy

    def post(self, kind: str, bodies: list[dict[str, Any]]) -> Reply:
        # One record at a time, long strings in steps: one dumps of a 4 MB batch would hold the GIL.
        payload = ("{" + json.dumps(FIELDS[kind]) + ":[" + ",".join(map(dumps, bodies)) + "]}").encode()
        headers = {
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "Accept": "application/json",
            "User-Agent": f"opik-cipx/{__version__}",
            "Comet-Workspace": self.destination.workspace,
        }
        if self.destination.api_key:
            headers["Authorization"] = self.destination.api_key  # Opik takes the bare key, no "Bearer"
        request = urllib.request.Request(
            self.base_url + PATHS[kind], data=gzip.compress(payload, 6), headers=headers, method="POST"
        )
        try:
            with self._opener.open(request, timeout=self.timeout_s) as resp:
                return Reply(resp.status, resp.headers, resp.read())
        except urllib.error.HTTPError as exc:
            with exc:
                try:
                    body = exc.read()
                except (OSError, http.client.HTTPException):
                    body = b""
                return Reply(exc.code, exc.headers, body)
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            return Reply(None, {}, b"", f"{type(exc).__name__}: {reason}")


def _key(kind: str, body: dict[str, Any]) -> tuple[str, str, str]:
    return kind, body["id"], str(body.get("last_updated_at", ""))


def plan_requests(
    records: list[tuple[str, dict[str, Any], int]], max_records: int, max_bytes: int
) -> list[tuple[str, list[Item]]]:
    """The batch's requests: traces first, then spans; each id once (newest `last_updated_at`)."""
    out: list[tuple[str, list[Item]]] = []
    for kind in KINDS:
        latest: dict[str, Item] = {}
        for record_kind, body, size in records:
            if record_kind != kind:
                continue
            seen = latest.get(body["id"])
            if seen is None or str(body.get("last_updated_at", "")) >= str(seen[0].get("last_updated_at", "")):
                latest[body["id"]] = (body, size)
        chunk: list[Item] = []
        nbytes = 0
        for item in latest.values():
            if chunk and (len(chunk) >= max_records or nbytes + item[1] > max_bytes):
                out.append((kind, chunk))
                chunk, nbytes = [], 0
            chunk.append(item)
            nbytes += item[1]
        if chunk:
            out.append((kind, chunk))
    return out


def rate_limit_wait_s(headers: Headers, now: float) -> float | None:
    """Seconds a 429 asks us to wait (`outbound.requested_wait_s`), never less than `MIN_WAIT_S`
    (a 0, a date in the past) nor more than `RATE_LIMIT_MAX_S`; None when the headers say nothing
    usable."""
    wait = requested_wait_s(headers, now)
    return None if wait is None else min(max(wait, MIN_WAIT_S), RATE_LIMIT_MAX_S)


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
            client = OpikClient(destination, timeout_s)
        self.client = client
        self._lock = threading.Lock()
        self._inflight = 0
        self._failures = 0
        self._paused = False
        self._last_error: str | None = None if destination.configured else NOT_CONFIGURED
        self._last_ok_at: float | None = None
        self._probes: dict[str, dict[str, Any]] = {}  # kind -> the last record of that kind Opik accepted
        self._settled_at: Position | None = None  # the cursor `_settled` and `_set_aside` belong to
        self._settled: set[tuple[str, str, str]] = set()  # records accepted there (a re-read skips them)
        self._set_aside: set[tuple[str, str, str]] = set()  # records quarantined there
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
            self._settled_at, self._settled, self._set_aside = batch.start, set(), set()
        with self._lock:
            self._inflight = len(batch.records)
        try:
            if self._settle(batch):
                self.spool.commit(batch)
        finally:
            with self._lock:
                self._inflight = 0
        return True

    def _settle(self, batch: Batch) -> bool:
        """Post until every record is accepted or quarantined; False to read the batch again
        (stopped, dropped by the disk budget, or waiting for newer records to probe with)."""
        done = self._settled | self._set_aside
        waiting = [(kind, body, size) for kind, body, size in batch.records if _key(kind, body) not in done]
        work = deque(_Request(kind, items)
                     for kind, items in plan_requests(waiting, self.batch_max_records, self.batch_max_bytes))
        while work:
            request = work[0]
            reply = self._post(request.kind, [body for body, _ in request.items])
            if self._settled_by(request, reply):
                work.popleft()
                continue
            if not request.alone and (reply.status in SPLIT or record_suspect(reply.status)):
                work.popleft()
                work.extendleft(reversed(request.halves()))  # a verdict on the records, or one may cause it
                if reply.status in SPLIT:
                    continue
            elif record_suspect(reply.status):
                request.failures += 1
                decision, reply = self._isolate(request, reply, batch, others=len(work) > 1)
                if decision == SETTLED:
                    work.popleft()
                    continue
                if decision == ROTATE:
                    work.rotate(-1)  # no record of its kind accepted yet: let the others go first
                elif decision == REREAD:
                    self.rest(self._failed(reply))
                    return False  # read again: the newer records may give a probe
            if self.rest(self._failed(reply)) or not self.spool.is_current(batch):
                return False
        return True

    def _settled_by(self, request: _Request, reply: Reply) -> bool:
        """Accepted, or a verdict that sets the lone record aside; either way, nothing to retry."""
        if accepted(request.kind, reply, request.alone):
            self._accepted(request)
            return True
        if request.alone and reply.status in SPLIT:
            self._quarantine(request, reply.status, reply)
            return True
        return False

    def _isolate(self, request: _Request, reply: Reply, batch: Batch, others: bool) -> tuple[str, Reply]:
        """A lone record that got a 5xx it may cause: after `ISOLATE_AFTER` of them, the probe
        decides (see the module docstring). The decision, and the reply to wait on."""
        if request.failures < ISOLATE_AFTER:
            return WAIT, reply
        probe = self._probe(request.kind)
        if probe is None:
            if others:
                return ROTATE, reply
            return (REREAD if self._more_records_than(batch) else WAIT), reply
        if not probe:
            return WAIT, reply  # the probe failed too: an outage
        reply = self._post(request.kind, [request.items[0][0]])  # once more, Opik up
        if self._settled_by(request, reply):  # the outage ended between failure and probe, or a verdict
            return SETTLED, reply
        if record_suspect(reply.status):
            self._quarantine(request, reply.status, reply,
                             f" ({request.failures + 1} times, while Opik accepted another record)")
            return SETTLED, reply
        return WAIT, reply

    def _post(self, kind: str, bodies: list[dict[str, Any]]) -> Reply:
        assert self.client is not None, "shipping with no destination"  # `start` needs a client
        started = self.clock.monotonic()
        reply = self.client.post(kind, bodies)
        log.debug("shipper: %d %s(s) -> %s in %.0f ms", len(bodies), kind, reply.status or reply.error,
                  (self.clock.monotonic() - started) * 1000)
        return reply

    def _probe(self, kind: str) -> bool | None:
        """Does Opik accept, now, again, the last record of `kind` it accepted? None: there is none."""
        body = self._probes.get(kind)
        if body is None:
            return None
        reply = self._post(kind, [body])
        return reply.status is not None and 200 <= reply.status < 300

    def _more_records_than(self, batch: Batch) -> bool:
        return self.spool.counts()[1] > len(batch.records) + batch.corrupt

    def _accepted(self, request: _Request) -> None:
        self.counters.incr("spans_shipped", len(request.items))
        self._probes[request.kind] = request.items[-1][0]
        self._settled.update(_key(request.kind, body) for body, _ in request.items)
        with self._lock:
            was_failing = self._last_error is not None
            self._failures = 0
            self._paused = False
            self._last_error = None
            self._last_ok_at = self.clock.time()
        if was_failing:
            log.info("shipper: Opik accepts records again")

    def _quarantine(self, request: _Request, status: int, reply: Reply, why: str = "") -> None:
        body = request.items[0][0]
        reason = (reply.body[:2000].decode("utf-8", "replace").strip() or f"HTTP {status}") + why
        self.spool.quarantine(request.kind, body, status, reason)
        self._set_aside.add(_key(request.kind, body))
        log.warning("shipper: Opik refused %s %s (HTTP %d%s); set aside in quarantine.jsonl, "
                    "`opik-cipx ship --retry-quarantine` sends it again", request.kind, body["id"], status, why)

    def _failed(self, reply: Reply) -> float:
        """Record why the request failed; the seconds to wait before trying it again."""
        status = reply.status
        url = self.destination.display_url
        paused = False
        if status == 429:
            wait = rate_limit_wait_s(reply.headers, self.clock.time())
            wait = max(MIN_WAIT_S, self._backoff()) if wait is None else wait
            error = f"Opik rate limit (HTTP 429); waiting {wait:.0f}s"
        elif status in AUTH:
            paused, wait = True, self.auth_probe_s
            error = (
                f"Opik refused the credentials (HTTP {status}) for workspace '{self.destination.workspace}': "
                f"check OPIK_CIPX_API_KEY / OPIK_CIPX_WORKSPACE. Shipping is paused and spans stay in the spool; "
                f"retrying every {wait:.0f}s and on restart"
            )
        elif status in WRONG_URL:
            paused, wait = True, self.auth_probe_s
            error = (
                f"Opik answered HTTP {status} at {url}: check OPIK_CIPX_BASE_URL (Opik Cloud: {OPIK_CLOUD_URL}, "
                f"local Opik: http://localhost:5173/api). Shipping is paused; retrying every {wait:.0f}s and on restart"
            )
        elif status is None:
            wait = self._backoff()
            error = f"cannot reach Opik at {url}: {reply.error}; retrying in {wait:.0f}s"
        else:
            wait = self._backoff()
            snippet = reply.body[:200].decode("utf-8", "replace").strip()
            error = f"Opik answered HTTP {status} at {url}: {snippet}; retrying in {wait:.0f}s"
        with self._lock:
            changed = self._last_error is None or self._last_error.split(";")[0] != error.split(";")[0]
            self._paused = paused
            self._last_error = error
        (log.warning if changed else log.debug)("shipper: %s", error)
        return wait

    def _backoff(self) -> float:
        with self._lock:
            self._failures += 1
            ceiling = min(self.retry_max_s, self.retry_base_s * 2 ** min(self._failures - 1, 30))
        return max(self.retry_base_s, ceiling / 2 + random.uniform(0, ceiling / 2))

    def section(self) -> dict[str, Any]:
        """The `opik` section of the admin stats (the API key is never part of it)."""
        quarantine = self.spool.quarantine_counts()
        with self._lock:
            return {
                "configured": self.destination.configured,
                "base_url": self.destination.display_url,
                "workspace": self.destination.workspace,
                "last_error": self._last_error,
                "last_ok_at": utc_iso(self._last_ok_at) if self._last_ok_at else None,
                "paused": self._paused,
                **quarantine,
            }

    def queue_section(self) -> dict[str, int]:
        """The `queue` section: waiting for the disk, durable and waiting for Opik, being posted."""
        in_memory, unshipped = self.spool.counts()
        with self._lock:
            inflight = self._inflight
        return {"in_memory": in_memory, "ready": max(0, unshipped - inflight), "inflight": inflight}
