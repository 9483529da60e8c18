"""A scriptable fake Anthropic API on loopback, over real TLS (tests/certs) or plain HTTP.

Each request is answered by the next scripted `Reply` (or the default one) and recorded with
its headers, body and the id of the TCP connection it arrived on, so tests can check what
was forwarded and whether upstream connections were reused.
"""

import itertools
import json
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from tests.quiet_server import QuietThreadingHTTPServer

CERTS = Path(__file__).parent / "certs"
CA_BUNDLE = str(CERTS / "ca.pem")


@dataclass
class Reply:
    """One scripted answer.

    `chunks`: body pieces, each written and flushed separately (chunked framing when
    `chunked`, else Content-Length of their sum). `hold_after`: after that many chunks, wait
    for `gate` before sending the rest. While it waits (and during `delay_s`) the fake watches
    its connection: a client (the proxy) that closes it is recorded in `FakeAnthropic.hangups`. `abort_after`:
    close the socket after that many chunks
    without finishing the body. `no_response`: close the connection without answering.
    `close_after`: close the connection after a complete answer, without announcing it (as a
    server dropping an idle keep-alive connection does). `interim`: 1xx statuses (e.g. 103
    Early Hints) sent before the answer. `declared_length`: a Content-Length that differs
    from the body actually sent (then the connection is closed). `stream`: the body's pieces made
    as they are sent, instead of `chunks` (chunked framing; e.g. events stamped with their send
    time). `pace_s`: a wait before each piece, as a model's output comes (watching the
    connection as `hold_after` does).
    """

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    chunked: bool = True
    hold_after: int | None = None
    gate: threading.Event = field(default_factory=threading.Event)
    abort_after: int | None = None
    no_response: bool = False
    close_after: bool = False
    delay_s: float = 0.0
    interim: list[int] = field(default_factory=list)
    declared_length: int | None = None
    stream: Callable[[], Iterable[bytes]] | None = None
    pace_s: float = 0.0


def sse_reply(events: list[bytes], **kw) -> Reply:
    headers = [("content-type", "text/event-stream; charset=utf-8"), ("request-id", "req_fake")]
    return Reply(headers=headers, chunks=events, **kw)


def json_reply(status: int, doc: object, **kw) -> Reply:
    body = json.dumps(doc).encode()
    return Reply(status=status, headers=[("content-type", "application/json")], chunks=[body], chunked=False, **kw)


def split_sse(body: str) -> list[bytes]:
    """A recorded SSE body split into its events (each keeps its trailing blank line)."""
    return [part.encode() + b"\n\n" for part in body.split("\n\n") if part.strip()]


def fixture_reply(response: dict) -> Reply:
    """Replay a recorded `NNN.response.json` as the fake upstream sent it."""
    headers = [(k, v) for k, v in response["headers"].items()
               if k.lower() not in ("transfer-encoding", "content-length")]
    if response["headers"].get("content-type", "").startswith("text/event-stream"):
        return Reply(status=response["status"], headers=headers, chunks=split_sse(response["body"]))
    return Reply(status=response["status"], headers=headers, chunks=[response["body"].encode()], chunked=False)


@dataclass
class Seen:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    connection: int

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


class FakeAnthropic:
    def __init__(self, tls: bool = True):
        self.replies: list[Reply] = []
        self.default = json_reply(200, {"ok": True})
        self.seen: list[Seen] = []
        self.connections = 0
        self.closed = 0
        self._lock = threading.Lock()
        self.finished = threading.Event()  # set after each reply is fully written
        self.hangups: list[float] = []  # monotonic times the proxy closed a connection the fake was holding
        self.hung_up = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with fake._lock:
                    fake.connections += 1
                    self.conn_id = fake.connections

            def finish(self):
                super().finish()
                with fake._lock:
                    fake.closed += 1

            def log_message(self, *args):
                pass

            def __getattr__(self, name):
                if name.startswith("do_"):
                    return self._answer
                raise AttributeError(name)

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with fake._lock:
                    fake.seen.append(Seen(self.command, self.path, list(self.headers.items()), body, self.conn_id))
                    reply = fake.replies.pop(0) if fake.replies else fake.default
                if reply.delay_s and not self._wait(threading.Event(), reply.delay_s):
                    return
                if reply.no_response:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                for code in reply.interim:
                    self.wfile.write(b"HTTP/1.1 %d Interim\r\nLink: </style.css>; rel=preload\r\n\r\n" % code)
                self.send_response_only(reply.status)
                for name, value in reply.headers:
                    self.send_header(name, value)
                if reply.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    length = sum(len(c) for c in reply.chunks)
                    self.send_header("Content-Length", str(reply.declared_length or length))
                    if reply.declared_length not in (None, length):
                        self.close_connection = True
                self.end_headers()
                if self.command == "HEAD":
                    fake.finished.set()
                    return
                pieces = iter(reply.stream() if reply.stream else reply.chunks)
                for i in itertools.count():
                    if reply.pace_s and not self._wait(threading.Event(), reply.pace_s):
                        return
                    chunk = next(pieces, None)  # made now, after the pause: a stamp says when it left
                    if chunk is None:
                        break
                    if reply.abort_after is not None and i == reply.abort_after:
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    if reply.hold_after is not None and i == reply.hold_after and not self._wait(reply.gate, 30):
                        return
                    self.wfile.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if reply.chunked else chunk)
                if reply.chunked:
                    self.wfile.write(b"0\r\n\r\n")
                if reply.close_after:
                    self.close_connection = True
                fake.finished.set()

            def _wait(self, gate: threading.Event, timeout_s: float) -> bool:
                """Wait for `gate` (or the timeout); False, recorded, if the proxy closed the connection."""
                deadline = time.monotonic() + timeout_s
                while not gate.wait(0.01) and time.monotonic() < deadline:
                    readable, _, _ = select.select([self.connection], [], [], 0)
                    if readable:
                        try:
                            closed = not self.connection.recv(1)
                        except (OSError, ssl.SSLError):
                            closed = True
                        if closed:
                            with fake._lock:
                                fake.hangups.append(time.monotonic())
                            fake.hung_up.set()
                            self.close_connection = True
                            return False
                return True

        self.server = QuietThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(CERTS / "server.pem", CERTS / "server.key")
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> "FakeAnthropic":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        for reply in self.replies:
            reply.gate.set()
        self.server.shutdown()
        self.server.server_close()

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self.replies.extend(replies)
