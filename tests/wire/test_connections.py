"""The connection loop: whole requests read without a thread, deadlines, the caps, the owner check,
Expect, the hang-up watch.

A tiny handler on a real `LoopbackServer` (in-process, real sockets): every test counts what the
handler saw, so "never handled" is checked, not assumed.
"""

import io
import os
import socket
import sys
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opik_cipx.stats import Counters
from opik_cipx.wire.connections import Connection, Limits
from opik_cipx.wire.framing import MAX_HEAD_BYTES, head_end
from opik_cipx.wire.loopback import LoopbackHandler, LoopbackServer
from tests.conftest import LIMITS, examples, wait_for

REQUEST = b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class Recorder(LoopbackHandler):
    """Answers 200 with the request's path (a POST once its body is read); blocks while `hold` is clear."""

    seen: list[str]
    hold: threading.Event

    def do_GET(self) -> None:
        self.seen.append(self.path)
        self.hold.wait(10)
        body = self.path.encode()
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))  # one segment

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.do_GET()


@pytest.fixture
def serve():
    servers = []

    def start(limits: Limits = LIMITS) -> tuple[LoopbackServer, type[Recorder], Counters]:
        hold = threading.Event()
        hold.set()
        handler = type("H", (Recorder,), {"seen": [], "hold": hold})
        counters = Counters()
        server = LoopbackServer("test", "127.0.0.1", 0, handler, limits, counters)
        threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
        servers.append(server)
        return server, handler, counters

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def connect(server: LoopbackServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection; fails the test if it never does."""
    chunks = []
    sock.settimeout(30)  # a deadline for a server that never closes, not a speed target
    try:
        while data := sock.recv(65536):
            chunks.append(data)
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail("the server never closed the connection")
    return b"".join(chunks)


def request(server: LoopbackServer, raw: bytes = REQUEST) -> bytes:
    with connect(server) as sock:
        sock.sendall(raw)
        sock.settimeout(5)
        head = sock.recv(65536)
        return head


def idle(server: LoopbackServer) -> bool:
    """No request in service: a handler that sent its answer has also given its slot back (a moment later)."""
    with server._lock:
        return not server._active


def handler_threads(name: str = "test") -> int:
    return sum(1 for t in threading.enumerate() if t.name == f"cipx-{name}-conn")


# ---- where a head ends ----------------------------------------------------------------------

def test_head_end_examples():
    assert head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody") == len(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert head_end(b"GET / HTTP/1.1\nHost: a\n\n") == len(b"GET / HTTP/1.1\nHost: a\n\n")
    assert head_end(b"GET / HTTP/1.1\r\nHost: a\r\n") is None
    assert head_end(b"GET / HTTP/1.1\r\n") is None
    assert head_end(b"GET / HTTP/1.1\r\n\r\n") == 18  # no headers at all


@settings(max_examples=examples(300))
@given(st.lists(st.sampled_from([b"GET / HTTP/1.1", b"Host: x", b"\r\n", b"\n", b"\r", b"a", b": "]), max_size=14),
       st.lists(st.integers(1, 8), max_size=12))
def test_a_head_ends_at_the_same_place_however_its_bytes_arrive(parts, cuts):
    """The loop searches only what it had not searched (`head_end(buf, start)`), a few bytes back."""
    data = b"".join(parts)
    buf, at, found = b"", 0, None
    for size in cuts + [len(data)]:
        searched, buf, at = len(buf), buf + data[at:at + size], at + size
        found = head_end(buf, searched)
        if found is not None or at >= len(data):
            break
    assert found == head_end(data)


# ---- the loop -------------------------------------------------------------------------------

def test_stalled_connections_take_no_thread_and_a_normal_request_still_passes(serve):
    server, handler, _ = serve()
    silent = [connect(server) for _ in range(150)]
    partial = [connect(server) for _ in range(150)]
    for sock in partial:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and then nothing
    assert request(server).startswith(b"HTTP/1.1 200")
    assert handler.seen == ["/x"]
    assert handler_threads() <= 1  # the normal request's thread, at most
    for sock in silent + partial:
        sock.close()



def unread_by(server: LoopbackServer) -> int | None:
    """Bytes clients sent to `server` that it has not read yet (None without /proc/net/tcp): 0 once the
    loop has taken in everything, e.g. every stalled connection's head."""
    try:
        rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    local = f"0100007F:{server.port:04X}"
    return sum(int(row.split()[4].split(":")[1], 16) for row in rows if row.split()[1] == local)


def test_stalled_request_bodies_take_no_thread_and_no_slot(serve):
    """Issue 22, item 3: connections with a whole head and a body that never comes held every slot."""
    server, handler, counters = serve(replace(LIMITS, max_connections=2))  # and 8 connections in the loop
    stalled = [connect(server) for _ in range(6)]
    for sock in stalled:
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"partial")
    wait_for(lambda: unread_by(server) in (0, None), what="every stalled head read")
    for _ in range(3):
        assert request(server).startswith(b"HTTP/1.1 200")
        wait_for(lambda: idle(server), what="the slot given back")
    assert handler.seen == ["/x"] * 3  # only requests that were whole reached a handler
    assert counters.get("connections_refused") == 0
    for sock in stalled:
        sock.close()


def test_a_kept_alive_connection_stalling_its_next_body_takes_no_slot(serve):
    server, handler, counters = serve(replace(LIMITS, max_connections=2))
    stalled = []
    for _ in range(4):
        sock = connect(server)
        sock.sendall(REQUEST)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        wait_for(lambda: idle(server), what="the slot given back")
        sock.sendall(b"POST /y HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n")  # then nothing
        stalled.append(sock)
    wait_for(lambda: unread_by(server) in (0, None), what="every stalled head read")
    assert request(server).startswith(b"HTTP/1.1 200")
    assert handler.seen == ["/x"] * 5 and counters.get("connections_refused") == 0
    for sock in stalled:
        sock.close()



def post(path: bytes, body: bytes, length: int | None = None) -> bytes:
    return b"POST %b HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%b" % (
        path, len(body) if length is None else length, body)


def test_requests_held_at_once_are_capped_and_a_stalled_one_makes_room(serve):
    """Issue 22, item 7: request bytes held across connections had no bound (~1 GB at 20 x 40 MB)."""
    server, handler, counters = serve(replace(LIMITS, max_buffered_bytes=100_000, stale_after_s=0))
    stalled = connect(server)
    stalled.sendall(post(b"/stalled", b"a" * 90_000, length=95_000))
    wait_for(lambda: unread_by(server) in (0, None), what="the stalled body read")
    assert request(server, post(b"/x", b"b" * 50_000)).startswith(b"HTTP/1.1 200")  # room made for it
    dropped = answer(stalled)  # the stalled one was dropped for it, and told so
    assert dropped.startswith(b"HTTP/1.1 503 ") and b"still arriving" in dropped
    assert handler.seen == ["/x"] and counters.get("connections_refused") == 1
    stalled.close()


def test_beyond_the_bytes_held_at_once_a_request_gets_503_until_others_are_done(serve):
    server, handler, counters = serve(replace(LIMITS, max_buffered_bytes=100_000, stale_after_s=60))
    handler.hold.clear()
    served = connect(server)
    served.sendall(post(b"/served", b"a" * 40_000))  # held while its handler works on it
    slow = connect(server)
    slow.sendall(post(b"/slow", b"b" * 30_000, length=35_000))  # still arriving, and young
    wait_for(lambda: handler.seen == ["/served"] and unread_by(server) in (0, None), what="both taken in")
    refused = request(server, post(b"/x", b"c" * 40_000))
    assert refused.startswith(b"HTTP/1.1 503 ") and b"client_buffer_max_mb" in refused
    assert counters.get("connections_refused") == 1
    handler.hold.set()
    assert served.recv(65536).startswith(b"HTTP/1.1 200")
    slow.sendall(b"b" * 5_000)  # the slow one was kept: it completes
    assert slow.recv(65536).startswith(b"HTTP/1.1 200")
    assert request(server, post(b"/x", b"c" * 40_000)).startswith(b"HTTP/1.1 200")  # room again
    for sock in (served, slow):
        sock.close()

def test_100_continue_only_for_a_request_the_handler_would_serve(serve):
    server, handler, counters = serve()
    expect = b"Host: 127.0.0.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    with connect(server) as sock:  # a method this listener does not serve: refused at once, never a 100
        sock.sendall(b"PUT /x HTTP/1.1\r\n" + expect)
        assert answer(sock).startswith(b"HTTP/1.1 501 ")
    with connect(server) as sock:  # served: 100, then the body, then the answer
        sock.sendall(b"POST /x HTTP/1.1\r\n" + expect)
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"body")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    with connect(server) as sock:  # the body came with the head: no 100 to send
        sock.sendall(b"POST /x HTTP/1.1\r\n" + expect + b"body")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    assert handler.seen == ["/x", "/x"] and counters.refusals() == {"test": {"501": 1}}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peers are identified on Linux only")
def test_a_connection_from_another_user_is_refused_403_counted_and_never_handled(serve):
    server, handler, counters = serve()
    server.owner_uid = os.geteuid() + 1  # this process is now "another user" to the listener
    with connect(server) as sock:
        sock.sendall(REQUEST)
        refused = answer(sock)
    assert refused.startswith(b"HTTP/1.1 403 ") and b"serves only the user who runs it" in refused
    assert handler.seen == [] and counters.get("connections_not_owner") == 1
    server._peers.available = False  # where the system cannot tell (macOS): everyone is served
    assert request(server).startswith(b"HTTP/1.1 200") and handler.seen == ["/x"]

def test_a_head_cut_off_mid_way_is_answered_400_and_never_handled(serve):
    server, handler, counters = serve()
    with connect(server) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: sk-secret\r\nContent-Le")
        sock.shutdown(socket.SHUT_WR)
        assert answer(sock).startswith(b"HTTP/1.1 400 ")
    assert handler.seen == []
    assert counters.refusals() == {"test": {"400": 1}}


def test_a_head_too_large_is_431(serve):
    server, handler, counters = serve()
    with connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD_BYTES + 10))
        assert answer(sock).startswith(b"HTTP/1.1 431 ")
    assert handler.seen == []
    assert counters.refusals() == {"test": {"431": 1}} and counters.get("requests_refused") == 1


@pytest.mark.parametrize("raw, status", [
    (b"GET /x HTTP/1.1\r\nHost: evil.com\r\n\r\n", 403),  # not addressed to loopback
    (b"DELETE /x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 501),  # a method the listener does not serve
    (b"GARBAGE\r\nHost: 127.0.0.1\r\n\r\n", 400),  # http.server's own refusal of a request line
    (b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431),
], ids=["host", "method", "request-line", "header-lines"])
def test_every_refusal_of_a_handler_is_counted_in_the_listeners_own_error_document(serve, raw, status):
    server, handler, counters = serve()
    with connect(server) as sock:
        sock.sendall(REQUEST)  # a kept-alive connection: the next request comes back through the loop
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.sendall(raw)
        head, _, body = answer(sock).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), head
    assert b"Content-Type: text/plain; charset=utf-8" in head and b"Connection: close" in head
    assert body.startswith(b"opik-cipx: ") and b"<html" not in body.lower()
    assert handler.seen == ["/x"]
    assert counters.refusals() == {"test": {str(status): 1}} and counters.get("requests_refused") == 1


def test_header_and_idle_deadlines_close_connections_and_count_only_stalled_heads(serve):
    server, handler, counters = serve(replace(LIMITS, header_timeout_s=0.3, idle_timeout_s=0.6))
    partial, silent = connect(server), connect(server)
    partial.sendall(b"GET / HTTP/1.1\r\n")
    started = time.monotonic()
    assert answer(partial) == b""  # closed without an answer
    assert time.monotonic() - started > 0.25  # not before its deadline (when is the loop's business)
    assert answer(silent) == b""
    assert counters.get("requests_timed_out") == 1  # a silent connection is routine, not a timeout
    assert handler.seen == []


def test_a_kept_alive_connection_waits_in_the_loop_and_is_closed_at_its_idle_deadline(serve):
    server, handler, counters = serve(replace(LIMITS, idle_timeout_s=0.5))
    with connect(server) as sock:
        sock.sendall(REQUEST)
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        wait_for(lambda: idle(server), what="the request served: nothing in a handler")
        assert answer(sock) == b""  # then closed for idling, by the loop
    assert counters.get("requests_timed_out") == 0  # an idle connection is routine, not a timeout


def test_over_the_cap_a_whole_request_is_refused_503_and_idle_connections_keep_their_place(serve):
    server, handler, counters = serve(replace(LIMITS, max_connections=2))
    kept = connect(server)
    kept.sendall(REQUEST)
    kept.settimeout(5)
    assert kept.recv(65536).startswith(b"HTTP/1.1 200")
    wait_for(lambda: idle(server), what="the answered request's slot given back")
    handler.hold.clear()
    busy = [connect(server) for _ in range(2)]
    for sock in busy:
        sock.sendall(REQUEST)
    wait_for(lambda: len(handler.seen) == 3, what="two busy requests")
    refused = request(server)
    assert refused.startswith(b"HTTP/1.1 503 ") and b"too many connections" in refused
    assert counters.get("connections_refused") == 1
    handler.hold.set()
    for sock in busy:
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.close()
    kept.sendall(REQUEST)  # the kept-alive connection held no slot, and was not closed to make room
    assert kept.recv(65536).startswith(b"HTTP/1.1 200")
    kept.close()


class Watcher(LoopbackHandler):
    """Waits (up to 5 s) inside a hang-up watch, as the gateway does while the upstream is silent."""

    left: threading.Event

    def do_GET(self) -> None:
        self.conn.on_hangup = self.left.set
        try:
            self.left.wait(5)
        finally:
            self.conn.on_hangup = None


@pytest.fixture
def watcher():
    left = threading.Event()
    server = LoopbackServer("test", "127.0.0.1", 0, type("W", (Watcher,), {"left": left}), LIMITS)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server, left
    left.set()
    server.shutdown()
    server.server_close()


def watched(server: LoopbackServer, what: str) -> Connection:
    """The one handler connection, once the loop holds its hang-up watch in state `what`:
    "armed" (registered for the client socket) or "spent" (ended by bytes from the client)."""
    def find():
        with server._lock:
            conns = list(server._active)
        if len(conns) == 1 and (conns[0]._armed_for if what == "armed" else conns[0]._spent) is not None:
            return conns[0]
        return None
    return wait_for(find, what=f"hang-up watch {what}")


def test_hang_up_watch_reports_the_client_leaving(watcher):
    server, left = watcher
    sock = connect(server)
    sock.sendall(REQUEST)
    watched(server, "armed")
    assert not left.is_set()  # armed, with nothing to report
    sock.close()
    assert left.wait(4)  # reported by the loop: the handler would have given up waiting at 5 s


def test_hang_up_watch_sees_a_client_that_left_before_it_was_armed(watcher):
    server, left = watcher
    with connect(server) as sock:
        sock.sendall(REQUEST)
    assert left.wait(2)


def test_hang_up_watch_ignores_a_client_that_sends_more(watcher):
    server, left = watcher
    with connect(server) as sock:
        sock.sendall(REQUEST)
        watched(server, "armed")
        sock.sendall(b"GET /next HTTP/1.1\r\n")  # a pipelined request is not a departure
        watched(server, "spent")  # the loop saw the bytes and ended the watch without a report
        assert not left.is_set()


def test_a_bug_in_the_loop_is_counted_and_the_listener_keeps_serving(serve, monkeypatch):
    server, handler, counters = serve()
    real_read, calls = server._read, []

    def read_once_broken(pending):
        calls.append(pending)
        if len(calls) == 1:
            raise RuntimeError("bug")
        real_read(pending)

    monkeypatch.setattr(server, "_read", read_once_broken)
    with connect(server) as broken:
        broken.sendall(REQUEST)
        wait_for(lambda: counters.get("panics_recovered") == 1, what="the bug counted")
    assert request(server).startswith(b"HTTP/1.1 200")


class _Recorded(LoopbackHandler):
    """Serves nothing: keeps the headers and keep-alive verdict a handler starts from."""

    seen: list = []

    def do_POST(self) -> None:
        self.seen.append((self.headers.items(), [self.headers.get(name) for name in ("host", "X-Mixed")],
                          self.close_connection))


class _Stdlib(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def __init__(self) -> None:  # no socket: the head is given
        pass


_NAME = st.text("abcxyzABCXYZ0123456789-_!#$%&'*+.^`|~", min_size=1, max_size=12)
_VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"), max_size=20)


@settings(max_examples=60)
@given(st.lists(st.tuples(_NAME, st.sampled_from(["", " ", "  ", "\t"]), _VALUE), max_size=12),
       st.sampled_from([None, "close", "keep-alive", "Keep-Alive", "CLOSE", "upgrade"]),
       st.sampled_from(["HTTP/1.1", "HTTP/1.0"]), st.booleans())
def test_a_handler_reads_the_headers_and_keep_alive_as_http_server_does(fields, connection, version, lf_only):
    """The loop's handler splits the header block itself (`ConnectionHandler._take_headers`); what it
    gets is what http.server's email-based `parse_request` would make of the same head."""
    end = "\n" if lf_only else "\r\n"
    lines = [f"Host: 127.0.0.1:9{end}", *(f"{name}:{space}{value.rstrip()}{end}" for name, space, value in fields)]
    if connection is not None:
        lines.append(f"Connection: {connection}{end}")
    head = (f"POST /v1/messages {version}{end}" + "".join(lines) + end).encode("latin-1")
    split = head.index(b"\n") + 1

    stdlib = _Stdlib()
    stdlib.raw_requestline, stdlib.rfile = head[:split], io.BytesIO(head[split:])
    assert stdlib.parse_request()

    near, far = socket.socketpair()
    try:
        _Recorded.seen = []
        server = type("Server", (), {"name": "claude_code", "counters": Counters()})()
        _Recorded(Connection(near, ("127.0.0.1", 1), head, 0, b"", b"", 0), ("127.0.0.1", 1), server)
    finally:
        near.close()
        far.close()
    assert _Recorded.seen == [(stdlib.headers.items(), [stdlib.headers.get(name) for name in ("host", "X-Mixed")],
                               stdlib.close_connection)]
