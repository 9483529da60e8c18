"""A fake Sentry ingest endpoint on loopback (real HTTP) that parses every envelope it gets.

`dsn(key)` is a DSN pointing at it. Each POST to `/api/<project>/envelope/` is parsed as a Sentry
envelope (envelope header line, item header line with `type` and `length`, payload) and kept in
`envelopes` with its raw bytes and request headers; anything malformed lands in `violations`.
Scriptable: `answers` (statuses to answer with, in order, then 200), `retry_after`, `hang`
(read the request and answer nothing until the fake closes).
"""

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

from tests.quiet_server import QuietThreadingHTTPServer


@dataclass
class Envelope:
    path: str
    headers: dict[str, str]
    raw: bytes
    header: dict
    item_header: dict
    event: dict


def parse_envelope(raw: bytes) -> tuple[dict, dict, dict]:
    """(envelope header, item header, event) of a one-item envelope; ValueError when malformed."""
    head, _, rest = raw.partition(b"\n")
    item_line, _, rest = rest.partition(b"\n")
    item = json.loads(item_line)
    if item.get("type") != "event" or not isinstance(item.get("length"), int):
        raise ValueError(f"bad item header {item!r}")
    payload, tail = rest[: item["length"]], rest[item["length"]:]
    if tail not in (b"", b"\n"):
        raise ValueError("bytes after the only item")
    return json.loads(head), item, json.loads(payload)


class FakeSentry:
    def __init__(self, project: str = "42"):
        self.project = project
        self.envelopes: list[Envelope] = []
        self.violations: list[str] = []
        self.posts = 0
        self.answers: list[int] = []
        self.retry_after: str | None = None
        self.hang = False
        self._release = threading.Event()
        self.got = threading.Condition()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with fake.got:
                    fake.posts += 1
                    status = fake.answers.pop(0) if fake.answers else 200
                    fake.got.notify_all()
                if fake.hang:
                    fake._release.wait(30)
                    return
                if self.path != f"/api/{fake.project}/envelope/":
                    fake.violations.append(f"path {self.path}")
                try:
                    header, item, event = parse_envelope(raw)
                except ValueError as exc:
                    fake.violations.append(f"malformed envelope: {exc}")
                else:
                    if status == 200:
                        with fake.got:
                            fake.envelopes.append(Envelope(self.path, dict(self.headers), raw, header, item, event))
                            fake.got.notify_all()
                self.send_response(status)
                if fake.retry_after is not None:
                    self.send_header("Retry-After", fake.retry_after)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = QuietThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def dsn(self, key: str = "public-key-1") -> str:
        return f"http://{key}@127.0.0.1:{self.port}/{self.project}"

    def __enter__(self) -> "FakeSentry":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()
