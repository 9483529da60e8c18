#!/usr/bin/env python3
"""A fast fake Anthropic upstream for benchmarks (plain HTTP on loopback).

`x-bench-size: N` answers N bytes of JSON with Content-Length; `x-bench-events: N` with
`x-bench-interval-ms` streams N SSE events, each stamped with its send time (`time.time_ns`).
Writes its port to the file named by argv[1] once listening.
"""

import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


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
        if events:
            self._stream(int(events), float(self.headers.get("x-bench-interval-ms", "1")))
        else:
            self._json(int(self.headers.get("x-bench-size", "100")))

    def _json(self, size: int) -> None:
        body = self._bodies.get(size)
        if body is None:
            filler = size - len(b'{"pad":""}')
            body = self._bodies[size] = b'{"pad":"' + b"z" * filler + b'"}'
        self.send_response_only(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, events: int, interval_ms: float) -> None:
        self.send_response_only(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for _ in range(events):
            time.sleep(interval_ms / 1000)
            event = b'event: content_block_delta\ndata: {"t": %d}\n\n' % time.time_ns()
            self.wfile.write(b"%x\r\n%b\r\n" % (len(event), event))
        self.wfile.write(b"0\r\n\r\n")


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.request_queue_size = 128
    Path(sys.argv[1]).write_text(str(server.server_address[1]))
    server.serve_forever()


if __name__ == "__main__":
    main()
