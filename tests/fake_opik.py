"""A fake Opik REST API on loopback (real HTTP): every write endpoint the product uses, answered as
Opik answers it, each request checked against Opik's request schemas and our own contract.

Endpoints (paths after `base_path`), with Opik's answers:
- `POST /v1/private/traces/batch`, `POST /v1/private/spans/batch`: 204, no body; every record
  stored (an upsert: the version with the newest `last_updated_at` is the record);
- `POST /v1/private/traces`: 201, no body, `Location: {url}/v1/private/traces/{id}`; the same id
  again: 409 `{"errors": ["Trace already exists"]}`, nothing changed;
- `PATCH /v1/private/traces/{id}`, `PATCH /v1/private/spans/{id}`: 204; the update is merged into
  the stored record, or kept as a partial record that a later create completes;
- `PATCH /v1/private/spans/batch` (`{"ids", "update", "merge_tags"}`): 204; the update is merged
  into each stored span among `ids`, unknown ids are skipped silently.
Any other path or method, Opik endpoints the product does not use included (`POST .../spans`,
`PATCH .../traces/batch`): 404 `{"code": 404, "message": "HTTP 404 Not Found"}`, a violation.

Checked, in Opik's order (the first failing stage gives the answer; every problem is listed in
`violations`, which tests assert stays empty): the `Comet-Workspace` header (missing: 403
`{"code": 403, "message": "Workspace name should be provided"}`, another: 401); `Authorization`,
the bare API key or device token (missing: 401 "API key should be provided", unknown: 401); our
contract's `Content-Encoding: gzip` and a gzip JSON body (else 400 "Unable to process JSON"); the
body against the vendored schema of the endpoint (tests/json_schema.py, tests/opik_api/) and the
backend's own rules (tests/opik_schema.py: batch sizes, one id per batch, UUIDv7 ids, `Z` times,
no unknown field; for an update, only the fields it holds, each one a field of that update),
else 422 `{"errors": [...]}`; a path id that is not a UUIDv7: 400 `{"code": 400, "message":
"Invalid UUID for id", "details": ...}`.

How an update merges, as Opik's SQL does it: a field present (not null) replaces the stored one
whole (`metadata` and `usage` are not merged key by key); `name`, `model`, `provider`,
`thread_id` only when not blank; `id`, `project_name`, `trace_id`, `parent_span_id` and
`start_time` never change. `PATCH .../spans/batch` with `merge_tags` adds its tags to the stored
ones. A single update names a project (`project_name`, else "Default Project") that must be the
record's, and a span update the record's `trace_id` and `parent_span_id`, else 409 with Opik's
message. An update row is stamped with Opik's clock: modelled as newer than any `last_updated_at`
a client sends (true while clients' clocks are not ahead of Opik's), so a batch create re-sent
after an update does not undo it, nor completes a record an update made first (Opik reads the
newest row): only `POST .../traces` completes such a partial trace, the update's fields winning.

Device-token mode (`FakeOpik(device_token=...)`): that token authenticates only
`POST .../spans/batch`, `PATCH .../spans/batch`, `POST .../traces` and `PATCH .../traces/{id}`;
anything else (`POST .../traces/batch` included) is 403 `{"code": 403, "message": "User is not
allowed to access workspace"}`, kept in `requests` but not a violation. The API key, if set too,
may call everything; `api_key=None, device_token=...` accepts the token only, and with neither
`Authorization` is not checked.

Where these facts come from: comet-ml/opik's backend (`apps/opik-backend/src/main/java/com/comet/
opik/`), read in wanggebi19970203-cyber/opik-cn 00dd6ca (which merged upstream's main on
2026-07-16; the stored copies of comet-ml/opik itself are older and lack `PATCH .../spans/batch`):
- `api/resources/v1/priv/TracesResource.java`, `SpansResource.java`: the status codes above and
  the `Location` of a created trace (`getAbsolutePathBuilder().path("/{id}")`);
- `domain/TraceService.java` (`create`, `insertTrace`, `update`, `updateOrFail`),
  `domain/SpanService.java` (`update`, `updateOrFail`, `batchUpdate`, the 409 messages);
- `domain/TraceDAO.java`, `domain/SpanDAO.java` (`BATCH_INSERT`, `INSERT`, `UPDATE`,
  `BULK_UPDATE`, `PARTIAL_INSERT`, reads `ORDER BY last_updated_at DESC LIMIT 1 BY id`);
- `infrastructure/auth/AuthFilter.java`, `RemoteAuthService.java`, `RequestContext.java`,
  `api/ReactServiceErrorResponse.java`: the workspace from `Comet-Workspace` (or the
  `workspace_name` query parameter, which the fake does not take), the `Authorization` value
  passed verbatim to Comet's auth service with the workspace, the path and the endpoint's
  required permissions, the 401/403 messages;
- `api/error/ErrorMessage.java`, `EntityAlreadyExistsException.java`,
  `IdentifierMismatchException.java`, `JsonProcessingExceptionMapper.java`,
  `InvalidUUIDExceptionMapper.java`, `domain/IdGenerator.java`: the error bodies; bean-validation
  failures are Dropwizard's 422 `{"errors": [...]}`.
Assumed, not found: neither Opik's public code nor its docs (nor comet-ml/cost-intelligence-proxy's
README, commands and skills) describe a device token. All five write endpoints require the same
permission (`TRACE_SPAN_THREAD_LOG`), so the four-endpoint rule must be applied by Comet's
private auth service from the path. The fake assumes the token travels as an API key does (bare
in `Authorization`, the AI Spend workspace in `Comet-Workspace`, `project_name` in each body) and
that a refusal is that service's 403 as the backend maps it. The message for an unknown key
comes from that service too: the fake's is a stand-in. Not modelled: the ingestion time window
of UUIDv7 ids (it depends on today's date), newer Opik keeping the newest of an id sent twice in
one batch (our contract refuses it), rate limits, attachments.

Kept: every request in order (`requests`: method, path, parsed body, ids, status, whether Opik
stored it); `arrivals()`, the stored ones as `tests.cost_intelligence.Received`; every created
version by id (`received`); the records as Opik holds them now (`traces`, `spans`).

Scriptable: `down()` / `up()` (stop listening: connection refused), `delay_s` (every answer
late), `script(...)` (one-shot answers such as 429 with `RateLimit-Reset`, 500, 401),
`fail_with` (an answer repeated until cleared), `reject_ids` (400 for any request holding one of
them, with a reason), `answer_ids` (any answer, e.g. a 500 or a 409, for any request holding one
of them), `max_body_bytes` (413 beyond it), `slow` (requests above N records answered after a
delay: a gateway timeout, or stored late). A scripted answer stores nothing: `WEB_PAGE` (a web
front end at the base URL) and `NOT_JSON` are 200s a shipper must not take as stored.
"""

import gzip
import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from typing import Any

from opik_cipx.ids import is_uuid7
from tests.cost_intelligence import Received
from tests.json_schema import opik_schema
from tests.opik_schema import batch_problems, blank, problems
from tests.ports import ReservedPort
from tests.quiet_server import QuietThreadingHTTPServer

API_KEY = "test-api-key"
DEVICE_TOKEN = "test-device-token"
WORKSPACE = "test-workspace"
DEFAULT_PROJECT = "Default Project"  # Opik's project for a record or update without project_name
UUID = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
NOT_ALLOWED = "User is not allowed to access workspace"
IMMUTABLE = frozenset({"id", "project_name", "project_id", "trace_id", "parent_span_id", "start_time"})
NOT_IF_BLANK = frozenset({"name", "model", "provider", "thread_id"})


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def opik_error(status: int, message: str, details: str | None = None) -> Answer:
    """Dropwizard's error body, as Opik sends it for auth, JSON and id errors."""
    doc = {"code": status, "message": message} | ({"details": details} if details else {})
    return Answer(status, {"Content-Type": "application/json"}, json.dumps(doc).encode())


def opik_errors(status: int, errors: list[str]) -> Answer:
    """Opik's `{"errors": [...]}` body (conflicts, validation)."""
    return Answer(status, {"Content-Type": "application/json"}, json.dumps({"errors": errors}).encode())


WEB_PAGE = Answer(200, {"Content-Type": "text/html; charset=utf-8"},
                  b'<!doctype html><html><head><title>Opik</title></head><body><div id="root"></div></body></html>')
NOT_JSON = Answer(200, {"Content-Type": "text/plain"}, b"OK")
GATEWAY_TIMEOUT = Answer(504, {"Content-Type": "text/html"}, b"<html><body><h1>504 Gateway Time-out</h1></body></html>")


@dataclass
class Request:
    at: float  # time.monotonic() when it was answered
    path: str  # after base_path
    field: str  # "traces" or "spans" (what the endpoint writes), "?" for an unknown path
    ids: list[str]
    raw_bytes: int
    status: int
    method: str = "POST"
    body: Any = None  # the parsed JSON body; None if it was not gzip JSON
    stored: bool = False  # Opik did the write (a 2xx of its own, not a scripted answer)


@dataclass(frozen=True)
class Slow:
    """Requests carrying more than `above` records are answered after `delay_s`: by a gateway's
    504 with nothing kept (`stored` False), or as usual, the records kept late (`stored` True)."""

    above: int
    delay_s: float
    stored: bool = False


@dataclass(frozen=True)
class Endpoint:
    name: str  # "POST traces/batch", "PATCH traces/{id}", ...
    kind: str  # "traces" or "spans"
    schema: str  # the vendored request schema
    device: bool  # a device token may call it


ENDPOINTS = {
    ("POST", "traces/batch"): Endpoint("POST traces/batch", "traces", "TraceBatch_Write", False),
    ("POST", "spans/batch"): Endpoint("POST spans/batch", "spans", "SpanBatch_Write", True),
    ("POST", "traces"): Endpoint("POST traces", "traces", "Trace_Write", True),
    ("PATCH", "traces/{id}"): Endpoint("PATCH traces/{id}", "traces", "TraceUpdate", True),
    ("PATCH", "spans/batch"): Endpoint("PATCH spans/batch", "spans", "SpanBatchUpdate", True),
    ("PATCH", "spans/{id}"): Endpoint("PATCH spans/{id}", "spans", "SpanUpdate", False),
}
ROUTE = re.compile(rf"/v1/private/(?P<kind>traces|spans)(?:/(?P<rest>batch|{UUID}))?\Z")


def endpoint_of(method: str, route: str) -> tuple[Endpoint | None, str | None]:
    """The endpoint a request calls and the id in its path, if any."""
    match = ROUTE.match(route.split("?", 1)[0])
    if not match:
        return None, None
    rest = match.group("rest")
    path_id = rest if rest and rest != "batch" else None
    name = match.group("kind") + ("/{id}" if path_id else f"/{rest}" if rest else "")
    return ENDPOINTS.get((method, name)), path_id


def update_problems(kind: str, schema: str, update: object) -> list[str]:
    """Our contract for an update: each field one the update schema names, valid as in a record."""
    if not isinstance(update, dict):
        return ["update is not an object"]
    allowed = opik_schema(schema).schema["properties"]
    if schema.endswith("BatchUpdate"):
        allowed = allowed["update"]["properties"]
    out = [f"{key!r} is not a field of {schema}" for key in update if key not in allowed]
    found = problems({"kind": kind[:-1], "body": {k: v for k, v in update.items() if k in allowed}})
    return out + [p for p in found if not p.startswith("missing ")]  # an update requires nothing of a record


def body_problems(endpoint: Endpoint, body: object) -> list[str]:
    """Everything wrong with a parsed request body: Opik's schema, then our contract's rules."""
    out = [f"schema: {error}" for error in opik_schema(endpoint.schema).errors(body)]
    if not isinstance(body, dict):
        return out
    if endpoint.name in ("POST traces/batch", "POST spans/batch"):
        out += [f"body keys {sorted(body)}"] if set(body) != {endpoint.kind} else []
        return out + batch_problems(endpoint.kind, body.get(endpoint.kind))
    if endpoint.name == "POST traces":
        return out + problems({"kind": "trace", "body": body})
    if endpoint.name == "PATCH spans/batch":
        out += [f"body key {key!r}" for key in body if key not in ("ids", "update", "merge_tags")]
        ids = body.get("ids") if isinstance(body.get("ids"), list) else []
        out += [f"ids: not a UUIDv7: {i!r}" for i in ids if not (isinstance(i, str) and is_uuid7(i))]
        return out + update_problems("spans", endpoint.schema, body.get("update"))
    return out + update_problems(endpoint.kind, endpoint.schema, body)


def request_ids(endpoint: Endpoint | None, path_id: str | None, body: object) -> list[str]:
    if path_id or endpoint is None or not isinstance(body, dict):
        return [path_id] if path_id else []
    if endpoint.name == "POST traces":
        return [body.get("id")]
    items = body.get("ids") if endpoint.name == "PATCH spans/batch" else body.get(endpoint.kind)
    if not isinstance(items, list):
        return []
    return [item.get("id") if isinstance(item, dict) else item for item in items]


def merged(stored: dict, update: dict, merge_tags: bool = False) -> dict:
    """The record after an update, as Opik's UPDATE / BULK_UPDATE write it."""
    out = dict(stored)
    for key, value in update.items():
        if value is None or key in IMMUTABLE or (key in NOT_IF_BLANK and blank(value)):
            continue
        out[key] = value
    if merge_tags and update.get("tags") is not None:
        kept = list(stored.get("tags") or [])
        out["tags"] = kept + [tag for tag in update["tags"] if tag not in kept]
    return out


def project(record: dict) -> str:
    return record.get("project_name") or DEFAULT_PROJECT


class Store:
    """The records as Opik holds them: one current version per id, versions ranked as Opik's tables
    rank rows (a client's `last_updated_at`, below any row Opik stamped itself; ties: the later)."""

    def __init__(self):
        self.records: dict[str, dict[str, dict]] = {"traces": {}, "spans": {}}
        self.partial: set[str] = set()  # made by an update before any create
        self._stamps: dict[str, tuple] = {}
        self._clock = 0  # Opik's own stamps, in arrival order

    def _put(self, kind: str, record: dict, stamp: tuple) -> None:
        if stamp >= self._stamps.get(record["id"], stamp):
            self.records[kind][record["id"]] = record
            self._stamps[record["id"]] = stamp

    def _opik_stamp(self) -> tuple:
        self._clock += 1
        return (1, self._clock)

    def create(self, kind: str, record: dict) -> None:
        """A batch create: a plain insert of a new row version."""
        updated = record.get("last_updated_at")
        stamp = (0, datetime.fromisoformat(updated)) if updated else self._opik_stamp()
        self._put(kind, record, stamp)

    def create_trace(self, record: dict, location: str) -> Answer:
        """`POST .../traces`: refused for a trace already created; completes a partial one."""
        stored = self.records["traces"].get(record["id"])
        if stored is not None and project(stored) != project(record):
            return opik_errors(409, ["Project name and workspace name do not match the existing trace"])
        if stored is not None and record["id"] not in self.partial:
            return opik_errors(409, ["Trace already exists"])
        self.partial.discard(record["id"])
        self._put("traces", record | (stored or {}), self._opik_stamp())  # the update's fields stay
        return Answer(201, {"Location": location})

    def update(self, kind: str, record_id: str, update: dict) -> Answer:
        """`PATCH .../{id}`: merged into the stored record, else kept as a partial record."""
        stored = self.records[kind].get(record_id)
        if stored is None:
            self.partial.add(record_id)
            keep = {k: v for k, v in update.items() if v is not None and not (k in NOT_IF_BLANK and blank(v))}
            self._put(kind, {"id": record_id, "project_name": project(update), **keep}, self._opik_stamp())
            return Answer(204)
        noun = kind[:-1]
        if project(stored) != project(update):
            return opik_errors(409, [f"Project name and workspace name do not match the existing {noun}"])
        if kind == "spans" and stored.get("parent_span_id") != update.get("parent_span_id"):
            return opik_errors(409, ["parent_span_id does not match the existing span"])
        if kind == "spans" and stored.get("trace_id") != update.get("trace_id"):
            return opik_errors(409, ["trace_id does not match the existing span"])
        self._put(kind, merged(stored, update), self._opik_stamp())
        return Answer(204)

    def update_spans(self, ids: list[str], update: dict, merge_tags: bool) -> Answer:
        """`PATCH .../spans/batch`: each stored span among `ids`; the others are skipped."""
        for span_id in ids:
            if span_id in self.records["spans"]:
                self._put("spans", merged(self.records["spans"][span_id], update, merge_tags), self._opik_stamp())
        return Answer(204)


class FakeOpik:
    def __init__(self, api_key: str | None = API_KEY, workspace: str = WORKSPACE, base_path: str = "/api",
                 device_token: str | None = None):
        self.api_key = api_key
        self.device_token = device_token
        self.workspace = workspace
        self.base_path = base_path
        self.lock = threading.Lock()
        self.received: dict[str, list[dict]] = {}
        self.requests: list[Request] = []
        self.violations: list[str] = []
        self.delay_s = 0.0
        self.max_body_bytes: int | None = None
        self.fail_with: Answer | None = None
        self.reject_ids: dict[str, str] = {}
        self.answer_ids: dict[str, Answer] = {}
        self.slow: Slow | None = None
        self.held = 0  # requests `slow` is holding now
        self._store = Store()
        self._script: deque[Answer] = deque()
        self._server: _Server | None = None
        self._stopping = threading.Event()
        self._held: ReservedPort | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.base_path}"

    @property
    def traces(self) -> dict[str, dict]:
        """Trace id -> the trace as Opik holds it now (a snapshot)."""
        with self.lock:
            return dict(self._store.records["traces"])

    @property
    def spans(self) -> dict[str, dict]:
        """Span id -> the span as Opik holds it now (a snapshot)."""
        with self.lock:
            return dict(self._store.records["spans"])

    def __enter__(self) -> "FakeOpik":
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()
        if self._held is not None:
            self._held.close()
            self._held = None

    def up(self) -> None:
        """Listen (again, on the same port after `down`). The port stays held from the first `up` to
        the end of the `with` block: while down, a connection is refused, never answered by another
        test's server that was given the freed port."""
        if self._held is None:
            self._held = ReservedPort()
            self.port = self._held.port
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = _Server(("127.0.0.1", self.port), handler)
        self._stopping = threading.Event()
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def down(self) -> None:
        """Stop listening: new connections are refused; a request held by `slow` is dropped unanswered."""
        if self._server is not None:
            self._stopping.set()
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def script(self, *answers: Answer) -> None:
        """Answer the next requests with these, in order (after the checks)."""
        with self.lock:
            self._script.extend(answers)

    def ids(self) -> set[str]:
        """The ids of every record created (an update alone creates none here)."""
        with self.lock:
            return set(self.received)

    def accepted_count(self) -> int:
        with self.lock:
            return sum(len(r.ids) for r in self.requests if r.stored)

    def arrivals(self) -> list[Received]:
        """The requests Opik stored, in the order it did, as Cost Intelligence reads them (its
        `ingest` refuses `PATCH .../spans/{id}`, an endpoint it does not read)."""
        with self.lock:
            return [Received(r.method, r.path, r.body) for r in self.requests if r.stored]

    def answer(self, method: str, path: str, headers, raw: bytes) -> Answer | None:
        """Opik's answer to one request; None: drop the connection unanswered (the fake went down)."""
        if self.delay_s and self._stopping.wait(self.delay_s):
            return None
        route = path[len(self.base_path):] if path.startswith(self.base_path) else path
        endpoint, path_id = endpoint_of(method, route)
        body = None
        try:
            body = json.loads(gzip.decompress(raw))
        except (OSError, ValueError, EOFError) as exc:
            decode_error = f"body is not gzip JSON: {exc}"
        else:
            decode_error = None
        ids = request_ids(endpoint, path_id, body)
        refusal, found = self._checks(endpoint, path_id, headers, body, decode_error)
        slow = self.slow
        if refusal is None and slow is not None and len(ids) > slow.above:
            if not self._hold(slow.delay_s):
                return None
            refusal = None if slow.stored else GATEWAY_TIMEOUT
        with self.lock:
            self.violations.extend(found)
            answer, stored = refusal, False
            if answer is None:
                answer, stored = self._decide(endpoint, path_id, body, ids, len(raw))
            self.requests.append(Request(time.monotonic(), route, endpoint.kind if endpoint else "?", ids, len(raw),
                                         answer.status, method, body, stored))
        return answer

    def _hold(self, seconds: float) -> bool:
        """Wait `seconds`, counted in `held`; False if the fake went down meanwhile."""
        stopping = self._stopping
        with self.lock:
            self.held += 1
        try:
            return not stopping.wait(seconds)
        finally:
            with self.lock:
                self.held -= 1

    def _checks(self, endpoint, path_id, headers, body, decode_error) -> tuple[Answer | None, list[str]]:
        """(the refusal, if any, by the first stage that fails; every problem found, for `violations`)."""
        found: list[str] = []
        refusal: Answer | None = None

        def fail(answer: Answer, *why: str) -> None:
            nonlocal refusal
            refusal = refusal or answer
            found.extend(why)

        if endpoint is None:
            fail(opik_error(404, "HTTP 404 Not Found"), "unexpected path")
        workspace, auth = headers.get("Comet-Workspace"), headers.get("Authorization")
        scopes = {key: scope for key, scope in ((self.device_token, "device"), (self.api_key, "all")) if key}
        if not workspace:
            fail(opik_error(403, "Workspace name should be provided"), "no Comet-Workspace header")
        elif workspace != self.workspace:
            fail(opik_error(401, NOT_ALLOWED), f"Comet-Workspace is {workspace!r}")
        if scopes and not auth:
            fail(opik_error(401, "API key should be provided"), "no Authorization header")
        elif scopes and auth not in scopes:
            fail(opik_error(401, "User not allowed to access workspace!"),
                 f"Authorization is not the bare API key or device token: {auth!r}")
        elif scopes.get(auth) == "device" and endpoint is not None and not endpoint.device:
            refusal = refusal or opik_error(403, NOT_ALLOWED)  # a device token's limit: not a violation
        if headers.get("Content-Encoding") != "gzip":
            fail(opik_error(400, "Unable to process JSON. Not gzip"), "body is not gzip-encoded")
        if decode_error:
            fail(opik_error(400, f"Unable to process JSON. {decode_error}"), decode_error)
        elif endpoint is not None and (wrong := body_problems(endpoint, body)):
            fail(opik_errors(422, wrong), *wrong)
        if path_id and not is_uuid7(path_id):
            noun = endpoint.kind[:-1].capitalize() if endpoint else "Record"
            fail(opik_error(400, "Invalid UUID for id", f"{noun} id must be a version 7 UUID"),
                 f"path id is not a UUIDv7: {path_id}")
        return refusal, found

    def _decide(self, endpoint: Endpoint, path_id, body: dict, ids: list, size: int) -> tuple[Answer, bool]:
        """Under the lock, for a request that passed the checks: (the answer, whether Opik stored it)."""
        if self._script:
            return self._script.popleft(), False
        if self.fail_with is not None:
            return self.fail_with, False
        if rejected := [i for i in ids if i in self.reject_ids]:
            return opik_errors(400, [self.reject_ids[i] for i in rejected]), False
        if special := [i for i in ids if i in self.answer_ids]:
            return self.answer_ids[special[0]], False
        if self.max_body_bytes is not None and size > self.max_body_bytes:
            return opik_errors(413, ["Payload too large"]), False
        answer = self._write(endpoint, path_id, body)
        return answer, 200 <= answer.status < 300

    def _write(self, endpoint: Endpoint, path_id, body: dict) -> Answer:
        store = self._store
        if endpoint.name in ("POST traces/batch", "POST spans/batch"):
            for item in body[endpoint.kind]:
                self.received.setdefault(item["id"], []).append(item)
                store.create(endpoint.kind, item)
            return Answer(204)
        if endpoint.name == "POST traces":
            answer = store.create_trace(body, f"{self.url}/v1/private/traces/{body['id']}")
            if answer.status == 201:
                self.received.setdefault(body["id"], []).append(body)
            return answer
        if endpoint.name == "PATCH spans/batch":
            return store.update_spans(body["ids"], body["update"], body.get("merge_tags") is True)
        return store.update(endpoint.kind, path_id, body)


class _Server(QuietThreadingHTTPServer):
    request_queue_size = 128  # many shipper threads may connect at once


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeOpik

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        answer = self.fake.answer(self.command, self.path, self.headers, raw)
        self.close_connection = True
        if answer is None:
            return
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(answer.body)

    do_PATCH = do_POST
