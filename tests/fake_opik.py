"""A fake Opik REST API on loopback (real HTTP) that checks every batch request it gets.

Checked: method and path, `Authorization` (the bare API key, no `Bearer`), `Comet-Workspace`,
`Content-Encoding: gzip`, a JSON body `{"traces": [...]}` / `{"spans": [...]}` with 1..1000
records and no id twice, each record valid against Opik's write models and their validation
annotations (tests/opik_schema.py). A request that breaks a rule is answered 400 and listed in
`violations`; tests assert that list stays empty.

Accepted records are kept by id (`received`, every version that arrived), each request in
`requests`. Scriptable: `down()` / `up()` (stop listening: connection refused), `delay_s`
(slow answers), `script(...)` (one-shot answers such as 429 with `RateLimit-Reset`, 500, 401),
`fail_with` (an answer repeated until cleared), `reject_ids` (400 for any request holding one
of them, with a reason), `answer_ids` (any answer, e.g. a 500 or a 409, for any request holding
one of them), `max_body_bytes` (413 beyond it).
"""

import gzip
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.opik_schema import batch_problems

PATHS = {"/v1/private/traces/batch": "traces", "/v1/private/spans/batch": "spans"}
API_KEY = "test-api-key"
WORKSPACE = "test-workspace"


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class Request:
    at: float  # time.monotonic() when it arrived
    path: str
    field: str  # "traces" or "spans"
    ids: list[str]
    raw_bytes: int
    status: int


class FakeOpik:
    def __init__(self, api_key: str | None = API_KEY, workspace: str = WORKSPACE, base_path: str = "/api"):
        self.api_key = api_key
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
        self._script: deque[Answer] = deque()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.base_path}"

    def __enter__(self) -> "FakeOpik":
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> None:
        """Listen (again, on the same port after `down`)."""
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def down(self) -> None:
        """Stop listening: new connections are refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def script(self, *answers: Answer) -> None:
        """Answer the next requests with these, in order (after the checks)."""
        with self.lock:
            self._script.extend(answers)

    def ids(self) -> set[str]:
        with self.lock:
            return set(self.received)

    def accepted_count(self) -> int:
        with self.lock:
            return sum(len(r.ids) for r in self.requests if 200 <= r.status < 300)

    def answer(self, path: str, headers, raw: bytes) -> Answer:
        time.sleep(self.delay_s)
        route = path[len(self.base_path):] if path.startswith(self.base_path) else path
        field_name = PATHS.get(route)
        problems = [] if field_name else [f"unexpected path {path}"]
        if self.api_key is not None and headers.get("Authorization") != self.api_key:
            problems.append(f"Authorization is not the bare API key: {headers.get('Authorization')!r}")
        if headers.get("Comet-Workspace") != self.workspace:
            problems.append(f"Comet-Workspace is {headers.get('Comet-Workspace')!r}")
        if headers.get("Content-Encoding") != "gzip":
            problems.append("body is not gzip-encoded")
        items: list = []
        try:
            doc = json.loads(gzip.decompress(raw))
            items = doc.get(field_name) if field_name and isinstance(doc, dict) else None
            if field_name and (set(doc) != {field_name}):
                problems.append(f"body keys {sorted(doc)}")
            problems += batch_problems(field_name or "?", items)
        except (OSError, ValueError, EOFError) as exc:
            problems.append(f"body is not gzip JSON: {exc}")
        ids = [item.get("id") for item in items] if isinstance(items, list) else []
        with self.lock:
            if problems:
                self.violations.extend(problems)
                answer = Answer(400, body=json.dumps({"errors": problems}).encode())
            elif self._script:
                answer = self._script.popleft()
            elif self.fail_with is not None:
                answer = self.fail_with
            elif rejected := [i for i in ids if i in self.reject_ids]:
                answer = Answer(400, body=json.dumps({"errors": [self.reject_ids[i] for i in rejected]}).encode())
            elif special := [i for i in ids if i in self.answer_ids]:
                answer = self.answer_ids[special[0]]
            elif self.max_body_bytes is not None and len(raw) > self.max_body_bytes:
                answer = Answer(413, body=b'{"errors":["Payload too large"]}')
            else:
                answer = Answer(204)
                for item in items:
                    self.received.setdefault(item["id"], []).append(item)
            self.requests.append(Request(time.monotonic(), route, field_name or "?", ids, len(raw), answer.status))
        return answer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeOpik

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        answer = self.fake.answer(self.path, self.headers, raw)
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(answer.body)
        self.close_connection = True
