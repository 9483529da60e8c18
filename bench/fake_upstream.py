#!/usr/bin/env python3
"""A fast fake Anthropic upstream for benchmarks, on loopback, over TLS like the real one.

`x-bench-size: N` answers N bytes of JSON with Content-Length; `x-bench-events: N` with
`x-bench-interval-ms` streams N SSE events, each stamped with its send time (`time.time_ns`);
`x-bench-replay: 1` answers a recorded Claude Code SSE stream (bench/claude_session.py). Every
answer carries the headers the API sends Claude Code (`API_HEADERS`: the rate-limit headers a
subscription gets, docs/RATE_LIMITS.md, and the edge's own), so that a proxy reads as many as
it would in use.
Usage: fake_upstream.py PORT_FILE [--plain]; serves TLS with the test certificate
(tests/certs, trusted through its ca.pem) unless `--plain`, and writes its port once listening.
"""

import socket
import ssl
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CERTS = ROOT / "tests" / "certs"
sys.path.insert(0, str(ROOT / "bench"))

from claude_session import sse_answer  # noqa: E402

_, RECORDED = sse_answer()
API_HEADERS = [
    ("date", "Mon, 07 Dec 2026 06:00:00 GMT"), ("request-id", "req_011CwHffpLcADGU2lndzZ1"),
    ("strict-transport-security", "max-age=31536000; includeSubDomains; preload"),
    ("anthropic-organization-id", "00000000-0000-4000-8000-000000000000"),
    ("anthropic-ratelimit-unified-status", "allowed"), ("anthropic-ratelimit-unified-reset", "1765105200"),
    ("anthropic-ratelimit-unified-5h-status", "allowed"), ("anthropic-ratelimit-unified-5h-reset", "1765105200"),
    ("anthropic-ratelimit-unified-5h-utilization", "0.12"), ("anthropic-ratelimit-unified-7d-status", "allowed"),
    ("anthropic-ratelimit-unified-7d-reset", "1765580400"), ("anthropic-ratelimit-unified-7d-utilization", "0.31"),
    ("anthropic-ratelimit-unified-representative-claim", "five_hour"),
    ("anthropic-ratelimit-unified-fallback-percentage", "0.5"),
    ("anthropic-ratelimit-unified-overage-status", "rejected"),
    ("anthropic-ratelimit-unified-overage-disabled-reason", "org_level_disabled"),
    ("via", "1.1 google"), ("cf-cache-status", "DYNAMIC"), ("x-robots-tag", "none"), ("server", "cloudflare"),
    ("cf-ray", "8f0c1a9e2b3d4c5e-SJC"),
]
RECORDED_EVENTS = [event + b"\n\n" for event in RECORDED.split(b"\n\n") if event]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    _bodies: dict[int, bytes] = {}

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        events = self.headers.get("x-bench-events")
        if self.headers.get("x-bench-replay"):
            self._chunked("text/event-stream; charset=utf-8", RECORDED_EVENTS)
        elif events:
            self._stream(int(events), float(self.headers.get("x-bench-interval-ms", "1")))
        else:
            self._json(int(self.headers.get("x-bench-size", "100")))

    def _json(self, size: int) -> None:
        body = self._bodies.get(size)
        if body is None:
            filler = size - len(b'{"pad":""}')
            body = self._bodies[size] = b'{"pad":"' + b"z" * filler + b'"}'
        self.send_response_only(200)
        self._api_headers()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _api_headers(self) -> None:
        for name, value in API_HEADERS:
            self.send_header(name, value)

    def _chunked(self, content_type: str, pieces) -> None:
        self.send_response_only(200)
        self._api_headers()
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for piece in pieces:
            self.wfile.write(b"%x\r\n%b\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")

    def _stream(self, events: int, interval_ms: float) -> None:
        def stamped():
            for _ in range(events):
                time.sleep(interval_ms / 1000)
                yield b'event: content_block_delta\ndata: {"t": %d}\n\n' % time.time_ns()

        self._chunked("text/event-stream", stamped())


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.request_queue_size = 128
    if "--plain" not in sys.argv:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(CERTS / "server.pem", CERTS / "server.key")
        server.socket = context.wrap_socket(server.socket, server_side=True)
    Path(sys.argv[1]).write_text(str(server.server_address[1]))
    server.serve_forever()


if __name__ == "__main__":
    main()
