"""The shipper: one background thread that drains the spool to Opik's REST API with urllib.

It takes a batch at the spool cursor and posts its traces, then its spans, to
`{base}/v1/private/traces/batch` and `{base}/v1/private/spans/batch`: gzip-encoded, at most
1000 records and `batch_max_bytes` per request, each id once per request (the newest
`last_updated_at` wins). The cursor moves only once every record of the batch is settled:
- 2xx or 409: accepted;
- 400/422: the request is split until the offending record is alone, which then goes to the
  quarantine file with the server's reason (413 splits the same way: a lone record too big
  for Opik is quarantined too);
- 429: wait for `RateLimit-Reset` / `Retry-After`, then the same request again;
- 5xx, other answers, network errors: exponential backoff with jitter, capped;
- 401/402/403 (auth), 3xx/404/405 (wrong base URL): shipping pauses with a clear
  `last_error`; the same request is re-sent every `auth_probe_s` as the probe that resumes it.
Re-sent records keep their ids and `last_updated_at`, so Opik upserts instead of duplicating.
The API key goes only into the `Authorization` header: never into logs or stats.
"""

import gzip
import http.client
import json
import logging
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Mapping

from opik_cipx import __version__
from opik_cipx.config import is_loopback_host
from opik_cipx.ship.destination import NOT_CONFIGURED, OPIK_CLOUD_URL, Destination
from opik_cipx.stats import Counters, utc_iso
from opik_cipx.store.spool import KINDS, Batch, Spool

log = logging.getLogger(__name__)

PATHS = {"trace": "/v1/private/traces/batch", "span": "/v1/private/spans/batch"}
FIELDS = {"trace": "traces", "span": "spans"}
BATCH_MAX_RECORDS = 1000  # Opik's limit per batch request
BATCH_MAX_BYTES = 4 * 1024 * 1024  # uncompressed JSON per request
RATE_LIMIT_MAX_S = 3600.0
IDLE_WAIT_S = 60.0
SPLIT = frozenset({400, 413, 422})
AUTH = frozenset({401, 402, 403})
WRONG_URL = frozenset({301, 302, 303, 307, 308, 404, 405})

Item = tuple[dict[str, Any], int]  # body, its size on disk


@dataclass
class Reply:
    status: int | None  # None: no HTTP answer (refused, reset, timeout, TLS)
    headers: Mapping[str, str]
    body: bytes
    error: str | None = None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a redirected POST would lose its body: report the 3xx instead


class OpikClient:
    """Posts one batch request to Opik per call; retrying is the shipper's business."""

    def __init__(self, destination: Destination, timeout_s: float):
        assert destination.base_url is not None
        self.destination = destination
        self.timeout_s = timeout_s
        handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
        if is_loopback_host(urllib.parse.urlsplit(destination.base_url).hostname or ""):
            handlers.append(urllib.request.ProxyHandler({}))  # never send a local Opik through a proxy
        self._opener = urllib.request.build_opener(*handlers)

    def post(self, kind: str, bodies: list[dict[str, Any]]) -> Reply:
        payload = json.dumps({FIELDS[kind]: bodies}, separators=(",", ":")).encode()
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
            self.destination.base_url + PATHS[kind], data=gzip.compress(payload, 6), headers=headers, method="POST"
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


def rate_limit_wait_s(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds a 429 asks us to wait: `RateLimit-Reset`, else `Retry-After` (seconds or a date)."""
    for name in ("RateLimit-Reset", "Retry-After"):
        raw = (headers.get(name) or "").strip()
        if not raw:
            continue
        try:
            value = float(raw)
            if value > 1e9:  # an epoch timestamp rather than a delay
                value -= now
        except ValueError:
            try:
                value = parsedate_to_datetime(raw).timestamp() - now
            except (TypeError, ValueError):
                continue
        return min(max(value, 0.0), RATE_LIMIT_MAX_S)
    return None


class Shipper:
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
    ):
        self.spool = spool
        self.destination = destination
        self.counters = counters
        self.retry_base_s = min(retry_base_s, retry_max_s)
        self.retry_max_s = retry_max_s
        self.auth_probe_s = auth_probe_s
        self.batch_max_records = min(batch_max_records, BATCH_MAX_RECORDS)
        self.batch_max_bytes = batch_max_bytes
        if client is None and destination.configured:
            client = OpikClient(destination, timeout_s)
        self.client = client
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cipx-shipper", daemon=True)
        self._lock = threading.Lock()
        self._inflight = 0
        self._failures = 0
        self._paused = False
        self._last_error: str | None = None if destination.configured else NOT_CONFIGURED
        self._last_ok_at: float | None = None
        self._quarantined = 0

    def start(self) -> None:
        if self.client is not None:
            self._thread.start()

    def stop(self, timeout_s: float) -> bool:
        """Stop after the request in flight (unsettled records stay in the spool); False if still busy."""
        self._stop.set()
        self.spool.wake()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.ship_once():
                    self.spool.wait_ready(IDLE_WAIT_S, self._stop)
            except Exception:  # a bug must not end shipping for the daemon's lifetime
                self.counters.incr("panics_recovered")
                log.exception("shipper: unexpected error; retrying in %.0fs", self.retry_max_s)
                self._stop.wait(self.retry_max_s)

    def ship_once(self) -> bool:
        """Ship the batch at the spool cursor; False when nothing was waiting."""
        batch = self.spool.read_batch(self.batch_max_records, self.batch_max_bytes)
        if batch is None:
            return False
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
        """Post until every record is accepted or quarantined; False when stopped or the batch was dropped."""
        work = deque(plan_requests(batch.records, self.batch_max_records, self.batch_max_bytes))
        while work:
            kind, items = work[0]
            started = time.monotonic()
            reply = self.client.post(kind, [body for body, _ in items])
            log.debug("shipper: %d %s(s) -> %s in %.0f ms", len(items), kind, reply.status or reply.error,
                      (time.monotonic() - started) * 1000)
            status = reply.status
            if status is not None and (200 <= status < 300 or status == 409):
                work.popleft()
                self._accepted(len(items))
            elif status in SPLIT:
                work.popleft()
                if len(items) > 1:
                    half = len(items) // 2
                    work.extendleft([(kind, items[half:]), (kind, items[:half])])
                else:
                    self._quarantine(kind, items[0][0], status, reply)
            elif self._stop.wait(self._failed(reply)) or not self.spool.is_current(batch):
                return False
        return True

    def _accepted(self, count: int) -> None:
        self.counters.incr("spans_shipped", count)
        with self._lock:
            was_failing = self._last_error is not None
            self._failures = 0
            self._paused = False
            self._last_error = None
            self._last_ok_at = time.time()
        if was_failing:
            log.info("shipper: Opik accepts records again")

    def _quarantine(self, kind: str, body: dict[str, Any], status: int, reply: Reply) -> None:
        reason = reply.body[:2000].decode("utf-8", "replace") or f"HTTP {status}"
        self.spool.quarantine(kind, body, status, reason)
        with self._lock:
            self._quarantined += 1
        log.warning("shipper: Opik rejected %s %s (HTTP %d); set aside in quarantine.jsonl", kind, body["id"], status)

    def _failed(self, reply: Reply) -> float:
        """Record why the request failed; the seconds to wait before trying it again."""
        status = reply.status
        url = self.destination.display_url
        paused = False
        if status == 429:
            wait = rate_limit_wait_s(reply.headers, time.time())
            wait = self._backoff() if wait is None else wait
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
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def section(self) -> dict[str, Any]:
        """The `opik` section of the admin stats (the API key is never part of it)."""
        with self._lock:
            return {
                "configured": self.destination.configured,
                "base_url": self.destination.display_url,
                "workspace": self.destination.workspace,
                "last_error": self._last_error,
                "last_ok_at": utc_iso(self._last_ok_at) if self._last_ok_at else None,
                "paused": self._paused,
                "quarantined": self._quarantined,
            }

    def queue_section(self) -> dict[str, int]:
        """The `queue` section: waiting for the disk, durable and waiting for Opik, being posted."""
        in_memory, unshipped = self.spool.counts()
        with self._lock:
            inflight = self._inflight
        return {"in_memory": in_memory, "ready": max(0, unshipped - inflight), "inflight": inflight}
