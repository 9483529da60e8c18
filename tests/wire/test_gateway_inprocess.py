"""Gateway behaviour that needs a hand on its internals: panics, upstream proxy (CONNECT), the pool's idle TTL."""

import http.client
import json
import select
import socket
import threading

import pytest

from opik_cipx.stats import Counters
from opik_cipx.wire.gateway import MAX_BODY_BYTES, Gateway, GatewayHandler, decodable_accept_encoding, upstream_headers
from opik_cipx.wire.loopback import LoopbackServer
from opik_cipx.wire.upstream import IDLE_TTL_S, UpstreamPool
from tests.conftest import LIMITS, DaemonProcess
from tests.fake_anthropic import CA_BUNDLE
from tests.fake_clock import FakeClock


class ExplodingPool(UpstreamPool):
    def acquire(self):
        raise RuntimeError("bug in the pool")


def test_unexpected_handler_error_is_recovered_as_502_and_counted(tmp_path):
    counters = Counters()
    captured = []
    gateway = Gateway(ExplodingPool("https://127.0.0.1:1", ca_bundle=CA_BUNDLE), captured.append, counters)
    handler = type("H", (GatewayHandler,), {"gateway": gateway})
    server = LoopbackServer("claude_code", "127.0.0.1", 0, handler, LIMITS)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        conn.request("POST", "/v1/messages", body=b"{}")
        resp = conn.getresponse()
        assert resp.status == 502
        assert json.loads(resp.read())["error"]["message"].startswith("opik-cipx:")
        assert counters.get("panics_recovered") == 1
        assert len(captured) == 1  # the exchange is still teed
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("framing, status, error_type", [
    (b"Content-Length: %d\r\n" % (MAX_BODY_BYTES + 1), 413, "request_too_large"),
    (b"Content-Length: -1\r\n", 400, "invalid_request_error"),
    (b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "invalid_request_error"),
    # issue 22, 'also': two different lengths (a request-smuggling shape; the first used to win)
    (b"Content-Length: 2\r\nContent-Length: 5\r\n", 400, "invalid_request_error"),
    (b"Content-Length: 2, 5\r\n", 400, "invalid_request_error"),
    (b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n", 400, "invalid_request_error"),
    (b"Content-Length: 1_0\r\n", 400, "invalid_request_error"),  # int() would read 10
    (b"Content-Length: +2\r\n", 400, "invalid_request_error"),
    (b"Transfer-Encoding: gzip, chunked\r\n", 400, "invalid_request_error"),
    (b"Content-Length : 2\r\n", 400, "invalid_request_error"),  # space before the colon hides it from some parsers
    (b"X-Pad: a\r\n Content-Length: 5\r\n", 400, "invalid_request_error"),  # an obsolete line folding
], ids=["too-large", "bad-length", "bad-chunk", "two-lengths", "length-list", "length-and-chunked",
        "underscore", "plus", "not-chunked", "space-before-colon", "folded"])
def test_unusable_request_framing_is_refused_in_anthropics_error_type_and_counted(framing, status, error_type):
    counters, captured = Counters(), []
    gateway = Gateway(UpstreamPool("https://127.0.0.1:1", ca_bundle=CA_BUNDLE), captured.append, counters)
    server = LoopbackServer("claude_code", "127.0.0.1", 0, type("H", (GatewayHandler,), {"gateway": gateway}),
                            LIMITS, counters)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        head = b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n" + framing
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(head if framing.endswith(b"zz\r\n") else head + b"\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line.startswith(b"HTTP/1.1 %d " % status)
        error = json.loads(rest.partition(b"\r\n\r\n")[2])
        assert error["type"] == "error" and error["error"]["type"] == error_type
        assert counters.refusals() == {"claude_code": {str(status): 1}}
        assert captured == []  # nothing forwarded, nothing captured
    finally:
        server.shutdown()
        server.server_close()



def test_a_length_sent_twice_with_one_value_is_one_length(wire, upstream):
    with socket.create_connection(("127.0.0.1", wire.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Length: 2\r\ncontent-length: 2\r\n\r\n{}")
        answer = b""
        while b'{"ok": true}' not in answer:
            answer += sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 ") and upstream.seen[-1].body == b"{}"


def expect_continue(port: int, extra: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n"
                 b"Expect: 100-continue\r\n" + extra + b"\r\n")
    return sock


def test_100_continue_is_sent_only_to_a_request_that_will_be_served(wire, upstream):
    """Issue 22, 'also': `100 Continue` went out before a request that was then refused."""
    with expect_continue(wire.port, b"Origin: https://evil.example\r\n") as refused:
        answer = refused.recv(65536)
    assert answer.startswith(b"HTTP/1.1 403 "), answer[:40]
    with expect_continue(wire.port) as served:
        assert served.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        served.sendall(b"{}")
        answer = b""
        while b'{"ok": true}' not in answer:
            answer += served.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert [seen.body for seen in upstream.seen] == [b"{}"]
    assert wire.counters.refusals() == {"claude_code": {"403": 1}}

def test_hop_by_hop_and_connection_listed_headers_are_not_forwarded():
    items = [("Host", "127.0.0.1:9909"), ("Connection", "keep-alive, X-Trace"), ("X-Trace", "1"),
             ("Keep-Alive", "timeout=5"), ("TE", "trailers"), ("x-api-key", "k"),
             ("Accept-Encoding", "gzip, deflate, br, zstd"), ("anthropic-beta", "a,b"), ("Content-Length", "2")]
    out = upstream_headers(items, "api.anthropic.com", 2)
    assert out == [("Host", "api.anthropic.com"), ("x-api-key", "k"), ("anthropic-beta", "a,b"),
                   ("Accept-Encoding", "gzip, deflate"), ("Content-Length", "2")]
    assert decodable_accept_encoding("br, zstd") == "identity"
    assert decodable_accept_encoding("gzip;q=1.0, br;q=0.9") == "gzip;q=1.0"


class ConnectProxy:
    """A minimal HTTP CONNECT proxy that records the tunnels it opened."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.tunnels: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _tunnel(self, client):
        head = b""
        while b"\r\n\r\n" not in head:
            head += client.recv(4096)
        target = head.split(b" ")[1].decode()
        self.tunnels.append(target)
        host, port = target.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        pair = {client: upstream, upstream: client}
        while True:
            readable, _, _ = select.select(list(pair), [], [], 10)
            for s in readable:
                data = s.recv(65536)
                if not data:
                    client.close()
                    upstream.close()
                    return
                pair[s].sendall(data)


def test_upstream_proxy_is_used_with_connect(home, upstream):
    proxy = ConnectProxy()
    proc = DaemonProcess(home, upstream.url, CIPX_UPSTREAM_PROXY=f"http://127.0.0.1:{proxy.port}")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=10)
        for _ in range(2):
            conn.request("POST", "/v1/messages", body=b"{}")
            assert conn.getresponse().read() == b'{"ok": true}'
        assert proxy.tunnels == [upstream.url.split("://")[1]]  # one tunnel, kept alive
        assert upstream.seen[-1].header("Host") == upstream.url.split("://")[1]
    finally:
        proc.stop()
        proxy.sock.close()


def test_a_pooled_connection_is_reused_until_it_has_been_idle_for_the_ttl(upstream):
    clock = FakeClock(0)
    pool = UpstreamPool(upstream.url, ca_bundle=CA_BUNDLE, clock=clock)

    def call() -> tuple[http.client.HTTPConnection, bool]:
        conn, reused = pool.acquire()
        conn.request("POST", "/v1/messages", body=b"{}")
        assert conn.getresponse().read() == b'{"ok": true}'
        pool.release(conn)
        return conn, reused

    first, reused = call()
    assert not reused
    clock.advance(IDLE_TTL_S - 1)
    assert call() == (first, True)  # idle for less than the TTL: reused
    clock.advance(IDLE_TTL_S)
    fresh, reused = call()  # idle for the TTL: closed, a new one opened
    assert fresh is not first and not reused and first.sock is None
