"""Opik's REST API as the shipper uses it: the routes, one request per call, and what an answer means.

Two sets of routes (docs/OPIK.md, "Endpoints: batch or device token"):
- with an API key, the batch endpoints: `POST .../traces/batch` and `POST .../spans/batch`, any
  number of records each (Opik upserts by id: the newest `last_updated_at` wins);
- with a device token, which may call only `POST .../traces`, `PATCH .../traces/{id}` and
  `POST`/`PATCH .../spans/batch`: a trace is created once (`POST .../traces`, one record; Opik
  answers 409 "Trace already exists" to a second create) and its later versions are updates
  (`PATCH .../traces/{id}` with every field an update may carry: a field sent replaces the stored
  one whole, so the update holds the full metadata and the project); spans go to the batch
  endpoint as with an API key.

Every body is gzip JSON; the credential goes bare in `Authorization` (Opik takes no "Bearer"),
never anywhere else. Only an answer Opik itself gives counts as stored: a 2xx whose body is
empty or JSON (`is_opik_answer`); a 2xx with a web page or plain text comes from something else
at the base URL (a web front end) and stores nothing. A request that timed out, or a gateway's
504, says Opik is too slow for it (`too_slow`).
"""

import http.client
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard

from opik_cipx import __version__
from opik_cipx.ship.destination import Destination
from opik_cipx.store.spool_lines import dumps

if TYPE_CHECKING:
    from opik_cipx.outbound import Headers

FIELDS = {"trace": "traces", "span": "spans"}
# What `PATCH .../traces/{id}` may carry (Opik's TraceUpdate); `id`, `start_time` and
# `last_updated_at` never change.
TRACE_UPDATE_FIELDS = ("project_name", "name", "end_time", "input", "output", "metadata", "tags", "error_info",
                       "thread_id")
UNAVAILABLE = frozenset({502, 503, 504})  # from a gateway or load balancer: Opik itself is down


@dataclass(frozen=True)
class Route:
    """Where a request of records goes: `path` after the base URL (`{id}`: the record's id)."""

    kind: str  # "trace" or "span"
    method: str
    path: str
    batch: bool  # any number of records, as `{"traces": [...]}`; else one record's own body

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"


TRACES_BATCH = Route("trace", "POST", "/v1/private/traces/batch", True)
SPANS_BATCH = Route("span", "POST", "/v1/private/spans/batch", True)
TRACE_CREATE = Route("trace", "POST", "/v1/private/traces", False)
TRACE_UPDATE = Route("trace", "PATCH", "/v1/private/traces/{id}", False)


@dataclass
class Reply:
    status: int | None  # None: no HTTP answer (refused, reset, timeout, TLS)
    headers: "Headers"
    body: bytes
    error: str | None = None
    timed_out: bool = False  # no answer within the request's timeout


def is_opik_answer(reply: Reply) -> bool:
    """The body is what Opik answers: none, or JSON (not a web page, not plain text)."""
    body = reply.body.strip()
    if not body:
        return True
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


def accepted(route: Route, reply: Reply, alone: bool) -> bool:
    """Opik holds the records of the request now: a 2xx of Opik's own; for a lone record sent to a
    batch endpoint, also "already exists" (a create route means it differently: see the shipper)."""
    status = reply.status
    if status is not None and 200 <= status < 300:
        return is_opik_answer(reply)
    return alone and route.batch and already_exists(route.kind, reply)


def already_exists(kind: str, reply: Reply) -> bool:
    """A 409 saying this record is stored already ("Trace already exists", "Span already exists":
    `EntityAlreadyExistsException`), rather than a mismatch."""
    return reply.status == 409 and f"{kind} already exists".encode() in reply.body.lower()


def record_suspect(status: int | None) -> TypeGuard[int]:
    """A 5xx that can come from one record of the request (not from a gateway in front of Opik)."""
    return status is not None and 500 <= status < 600 and status not in UNAVAILABLE


def too_slow(reply: Reply) -> bool:
    """Opik did not answer in time: our timeout, or a gateway's (504)."""
    return reply.timed_out or reply.status == 504


def trace_update(body: dict[str, Any]) -> dict[str, Any]:
    """The `PATCH .../traces/{id}` body that makes Opik hold the trace version `body`."""
    return {key: body[key] for key in TRACE_UPDATE_FIELDS if body.get(key) is not None}


class OpikClient:
    """Sends one request to Opik per call; retrying is the shipper's business."""

    def __init__(self, destination: Destination):
        assert destination.base_url is not None
        self.destination = destination
        self.base_url = destination.base_url
        # urllib.request (and what it loads) only for a destination: without one, no client is made
        from opik_cipx.outbound import opener

        self._opener = opener(destination.base_url)  # never a local Opik through a proxy

    def send(self, route: Route, bodies: list[dict[str, Any]], timeout_s: float) -> Reply:
        import gzip
        import urllib.error
        import urllib.request  # loaded by the opener in __init__

        path = route.path
        if route.batch:
            # One record at a time, long strings in steps: one dumps of a 4 MB batch would hold the GIL.
            text = "{" + json.dumps(FIELDS[route.kind]) + ":[" + ",".join(map(dumps, bodies)) + "]}"
        elif route is TRACE_UPDATE:
            text, path = dumps(trace_update(bodies[0])), path.format(id=bodies[0]["id"])
        else:
            text = dumps(bodies[0])
        headers = {
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "Accept": "application/json",
            "User-Agent": f"opik-cipx/{__version__}",
            "Comet-Workspace": self.destination.workspace,
        }
        if self.destination.credential:
            headers["Authorization"] = self.destination.credential  # bare, no "Bearer"
        request = urllib.request.Request(self.base_url + path, data=gzip.compress(text.encode(), 6),
                                         headers=headers, method=route.method)
        try:
            with self._opener.open(request, timeout=timeout_s) as resp:
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
            timed_out = isinstance(exc, TimeoutError) or isinstance(reason, TimeoutError)
            return Reply(None, {}, b"", f"{type(exc).__name__}: {reason}", timed_out)
