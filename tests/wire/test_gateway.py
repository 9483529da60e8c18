"""The wire path: a Claude Code-shaped client -> the gateway -> a real TLS fake upstream.

The gateway runs in process as the daemon assembles it (tests/wire/conftest.py: real sockets, the
real upstream pool); what the tee takes is checked on its captures. The daemon itself runs where
it is what is tested: what reaches its capture log and its log file, its upstream proxy setting.
"""

import gzip
import http.client
import json
import socket
import threading

import pytest

from opik_cipx.store.captures import read_log
from tests.conftest import DaemonProcess, load_fixture, wait_for
from tests.fake_anthropic import Reply, fixture_reply, json_reply, split_sse, sse_reply
from tests.wire.conftest import InProcessWire


def client(wire) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", wire.port, timeout=10)


def fixture_headers(request: dict) -> dict[str, str]:
    skip = {"host", "content-length", "connection"}
    return {k: v for k, v in request["headers"].items() if k.lower() not in skip}


def post_fixture(conn: http.client.HTTPConnection, request: dict) -> http.client.HTTPResponse:
    conn.request(request["method"], request["path"], body=request["body"].encode(), headers=fixture_headers(request))
    return conn.getresponse()


def test_sse_stream_is_byte_identical_and_request_forwarded_verbatim(wire, upstream):
    request, response = load_fixture("simple", "001")
    upstream.script(fixture_reply(response))
    conn = client(wire)
    resp = post_fixture(conn, request)
    assert resp.status == 200
    assert resp.read() == response["body"].encode()
    assert resp.getheader("request-id") == response["headers"]["request-id"]
    assert resp.getheader("content-type") == "text/event-stream; charset=utf-8"

    seen = upstream.seen[-1]
    assert seen.body == request["body"].encode()
    assert seen.path == "/v1/messages?beta=true"
    assert seen.header("Host") == upstream.url.split("://")[1]
    assert seen.header("x-api-key") == "REDACTED"  # the fixture's own placeholder, forwarded verbatim
    assert seen.header("anthropic-beta") == request["headers"]["anthropic-beta"]
    assert seen.header("X-Claude-Code-Session-Id") == request["headers"]["X-Claude-Code-Session-Id"]
    assert seen.header("Accept-Encoding") == "gzip, deflate"  # br and zstd are not decodable by the stdlib
    assert seen.header("Connection") is None


def test_json_response_keeps_content_length_and_bytes(wire, upstream):
    request, response = load_fixture("error", "005")
    upstream.script(fixture_reply(response))
    resp = post_fixture(client(wire), request)
    body = resp.read()
    assert body == response["body"].encode()
    assert resp.getheader("Content-Length") == str(len(body))
    assert resp.getheader("Transfer-Encoding") is None


def test_gzip_response_is_forwarded_without_decoding(wire, upstream):
    payload = gzip.compress(b'{"id":"msg_1","usage":{"input_tokens":3}}' * 50)
    upstream.script(Reply(headers=[("content-type", "application/json"), ("content-encoding", "gzip")],
                          chunks=[payload[:100], payload[100:]], chunked=True))
    conn = client(wire)
    conn.request("POST", "/v1/messages", body=b"{}", headers={"Accept-Encoding": "gzip, br"})
    resp = conn.getresponse()
    assert resp.getheader("Content-Encoding") == "gzip"
    assert resp.read() == payload


def held_stream(wire, upstream) -> tuple[Reply, list[bytes], http.client.HTTPResponse]:
    """A recorded stream through the gateway whose upstream holds back all but its first 3 events until
    `gate` is set: (the reply, its events, the client's response)."""
    _, response = load_fixture("simple", "001")
    events = split_sse(response["body"])
    held = sse_reply(events, hold_after=3)
    upstream.script(held)
    conn = client(wire)
    conn.request("POST", "/v1/messages?beta=true", body=b"{}", headers={"Content-Type": "application/json"})
    return held, events, conn.getresponse()


def test_events_reach_the_client_before_the_upstream_stream_ends(wire, upstream):
    held, events, resp = held_stream(wire, upstream)
    received = b""
    expected_first = b"".join(events[:3])
    while len(received) < len(expected_first):
        piece = resp.read1(65536)  # raises socket.timeout if the proxy held the events back
        assert piece, "stream ended early"
        received += piece
    assert received == expected_first
    assert not held.gate.is_set()  # upstream is still holding the rest of the stream
    held.gate.set()
    assert received + resp.read() == b"".join(events)


def test_a_stream_still_relayed_when_the_relay_stops_is_cut_off_and_says_so(wire, upstream):
    """The daemon stops its relay only after the drain; a stream still open then ends without its last
    chunk, and its capture says the proxy stopped, not that the upstream failed."""
    held, _, resp = held_stream(wire, upstream)
    assert resp.read1(65536)
    wire.gateway.close()
    try:
        with pytest.raises(http.client.IncompleteRead):
            resp.read()
        capture = wait_for(lambda: wire.captures and wire.captures[-1], what="the capture")
        assert capture.upstream_error == "cut off mid-response: opik-cipx stopped relaying before the response ended"
        assert not capture.client_aborted
    finally:
        held.gate.set()


def test_upstream_connections_are_reused(wire, upstream):
    for _ in range(3):
        conn = client(wire)  # a new client connection each time
        for _ in range(2):
            conn.request("POST", "/v1/messages/count_tokens?beta=true", body=b'{"model":"m"}')
            resp = conn.getresponse()
            assert resp.status == 200
            resp.read()
        conn.close()
    assert len(upstream.seen) == 6
    assert upstream.connections == 1


def test_upstream_closing_an_idle_connection_is_not_an_error(wire, upstream):
    upstream.script(json_reply(200, {"first": True}, close_after=True))
    conn = client(wire)
    conn.request("GET", "/v1/models")
    assert conn.getresponse().read() == b'{"first": true}'
    wait_for(lambda: upstream.closed == 1, what="upstream to drop the idle connection")
    conn.request("GET", "/v1/models")
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (200, b'{"ok": true}')
    assert upstream.connections == 2


def test_request_bodies_by_content_length_and_chunked(wire, upstream):
    body = json.dumps({"model": "claude-opus-4-8", "messages": [{"role": "user", "content": "x" * 70000}]}).encode()
    conn = client(wire)
    conn.request("POST", "/v1/messages", body=body, headers={"Content-Type": "application/json"})
    assert conn.getresponse().read() == b'{"ok": true}'
    chunks = [body[:1000], body[1000:50000], body[50000:]]
    conn.request("POST", "/v1/messages", body=iter(chunks), encode_chunked=True,
                 headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    assert conn.getresponse().read() == b'{"ok": true}'
    first, second = upstream.seen[-2:]
    assert first.body == body and first.header("Content-Length") == str(len(body))
    assert second.body == body and second.header("Content-Length") == str(len(body))
    assert second.header("Transfer-Encoding") is None


def test_529_passes_through_unchanged(wire, upstream):
    request, response = load_fixture("error", "001")
    upstream.script(fixture_reply(response))
    resp = post_fixture(client(wire), request)
    assert resp.status == 529
    assert resp.read() == response["body"].encode()
    assert resp.getheader("request-id") == response["headers"]["request-id"]


def test_mid_stream_error_event_passes_through(wire, upstream):
    request, response = load_fixture("error", "004")
    upstream.script(fixture_reply(response))
    resp = post_fixture(client(wire), request)
    assert resp.status == 200
    body = resp.read()
    assert body == response["body"].encode()
    assert b"event: error" in body


def test_upstream_down_gives_502_in_anthropic_error_shape():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]  # bound, never listening: connections are refused
        wire = InProcessWire(f"https://127.0.0.1:{dead_port}")
        try:
            conn = client(wire)
            conn.request("POST", "/v1/messages", body=b"{}")
            resp = conn.getresponse()
            doc = json.loads(resp.read())
            assert resp.status == 502
            assert doc["type"] == "error"
            assert doc["error"]["message"].startswith("opik-cipx:")
            assert "refused" in doc["error"]["message"]
            conn.request("GET", "/v1/models")  # the client connection stays usable
            assert conn.getresponse().status == 502
        finally:
            wire.close()
    assert [c.upstream_error for c in wire.captures] == [doc["error"]["message"].removeprefix("opik-cipx: ")] * 2


def test_upstream_tls_failure_gives_502(upstream):
    wire = InProcessWire(upstream.url, ca_bundle="")  # the system's trust only: the test CA is unknown
    try:
        conn = client(wire)
        conn.request("POST", "/v1/messages", body=b"{}")
        resp = conn.getresponse()
        assert resp.status == 502
        assert "CERTIFICATE_VERIFY_FAILED" in json.loads(resp.read())["error"]["message"]
        assert upstream.seen == []
    finally:
        wire.close()


def test_client_abort_marks_capture_and_drops_upstream_connection(wire, upstream):
    _, response = load_fixture("simple", "001")
    events = split_sse(response["body"])
    held = sse_reply(events, hold_after=2)
    upstream.script(held)
    sock = socket.create_connection(("127.0.0.1", wire.port), timeout=10)
    sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}")
    received = b""
    while b"message_start" not in received:
        received += sock.recv(65536)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # RST: the client is gone mid-stream
    held.gate.set()

    def aborted_capture():
        return [c for c in wire.captures if c.client_aborted]

    capture = wait_for(aborted_capture, what="a client_aborted capture teed")[0]
    assert capture.status == 200
    # The next call must not get the dead upstream connection from the pool.
    conn = client(wire)
    conn.request("GET", "/v1/models")
    assert conn.getresponse().read() == b'{"ok": true}'
    assert upstream.seen[-1].connection != upstream.seen[0].connection


def test_every_auth_header_is_redacted_in_captures_on_disk_and_logs(daemon, upstream):
    secrets = {
        "x-api-key": "sk-ant-api03-SECRETKEY",
        "Authorization": "Bearer sk-ant-oat01-SECRETTOKEN",
        "Proxy-Authorization": "Basic U0VDUkVUUFJPWFk=",
        "Cookie": "session=SECRETCOOKIE",
    }
    conn = client(daemon)
    conn.request("POST", "/v1/messages", body=b'{"model":"m"}', headers=secrets)
    conn.getresponse().read()
    assert upstream.seen[-1].header("x-api-key") == secrets["x-api-key"]
    assert upstream.seen[-1].header("Authorization") == secrets["Authorization"]
    captures = wait_for(lambda: [e.capture for e in read_log(daemon.home / "captures")], what="capture on disk")
    headers = {k.lower(): v for k, v in captures[0].request_headers}
    for name in secrets:
        assert headers[name.lower()] == "[redacted]"
    daemon.stop()
    on_disk = b"".join(p.read_bytes() if p.name.endswith(".raw") else gzip.decompress(p.read_bytes())
                       for p in (daemon.home / "captures").iterdir())
    on_disk += b"".join(p.read_bytes() for p in (daemon.home / "logs").iterdir())
    for value in secrets.values():
        assert value.encode() not in on_disk
        assert value.split()[-1].encode() not in on_disk


def test_unknown_endpoint_is_forwarded_and_counted(wire, upstream):
    conn = client(wire)
    conn.request("GET", "/v1/brand-new-endpoint?x=1")
    assert conn.getresponse().read() == b'{"ok": true}'
    conn.request("HEAD", "/")
    conn.getresponse().read()
    assert upstream.seen[-2].path == "/v1/brand-new-endpoint?x=1"
    assert wire.counter("unknown_endpoints") == 1


def test_head_preconnect_passes_through(wire, upstream):
    upstream.script(Reply(status=200, headers=[], chunks=[], chunked=False))
    conn = client(wire)
    conn.request("HEAD", "/", headers={"User-Agent": "Bun/1.4.0"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == b""
    assert resp.getheader("Content-Length") == "0"
    conn.request("GET", "/v1/models")  # same client connection still in sync
    assert conn.getresponse().read() == b'{"ok": true}'


def test_concurrent_streams(wire, upstream):
    _, response = load_fixture("tools", "001")
    n = 16
    upstream.script(*(fixture_reply(response) for _ in range(n)))
    results = []

    def one():
        conn = client(wire)
        conn.request("POST", "/v1/messages", body=b"{}")
        results.append(conn.getresponse().read())

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [response["body"].encode()] * n


def test_interim_1xx_responses_are_skipped_and_do_not_desync_the_pool(wire, upstream):
    upstream.script(json_reply(200, {"first": True}, interim=[103]), json_reply(200, {"second": True}))
    conn = client(wire)
    conn.request("POST", "/v1/messages", body=b"{}")
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (200, b'{"first": true}')
    other = client(wire)  # may reuse the same upstream connection: it must be in sync
    other.request("POST", "/v1/messages", body=b"{}")
    assert other.getresponse().read() == b'{"second": true}'


def test_body_shorter_than_its_content_length_is_a_broken_exchange_not_a_hang(wire, upstream):
    upstream.script(Reply(headers=[("content-type", "application/json")], chunks=[b'{"partial'],
                          chunked=False, declared_length=100))
    conn = client(wire)
    conn.request("POST", "/v1/messages", body=b"{}")
    resp = conn.getresponse()
    try:
        resp.read()
        raise AssertionError("a truncated body must not look complete")
    except http.client.IncompleteRead as exc:
        assert exc.partial == b'{"partial'  # the client sees the truncation at once, no timeout
    capture = wait_for(lambda: [c for c in wire.captures if c.upstream_error], what="the broken exchange teed")[0]
    assert "shorter than its Content-Length" in capture.upstream_error


def test_a_request_is_not_sent_twice_when_the_upstream_drops_it_late(wire, upstream):
    upstream.script(json_reply(200, {"warm": True}), Reply(no_response=True, delay_s=0.6))
    conn = client(wire)
    conn.request("POST", "/v1/messages", body=b'{"n":1}')
    conn.getresponse().read()
    conn.request("POST", "/v1/messages", body=b'{"n":2}')  # reuses the pooled connection
    resp = conn.getresponse()
    assert resp.status == 502 and b"opik-cipx:" in resp.read()
    assert [s.body for s in upstream.seen].count(b'{"n":2}') == 1  # never re-sent: it may have been acted on


def test_a_pooled_connection_dropped_at_once_is_retried_transparently(wire, upstream):
    upstream.script(json_reply(200, {"warm": True}), Reply(no_response=True), json_reply(200, {"ok": 2}))
    conn = client(wire)
    conn.request("POST", "/v1/messages", body=b"{}")
    conn.getresponse().read()
    conn.request("POST", "/v1/messages", body=b"{}")
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (200, b'{"ok": 2}')


def test_a_rechunked_response_never_carries_content_length_too(wire, upstream):
    upstream.script(Reply(headers=[("content-type", "text/event-stream"), ("Content-Length", "999")],
                          chunks=[b"data: 1\n\n"], chunked=True))
    sock = socket.create_connection(("127.0.0.1", wire.port), timeout=10)
    sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}")
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(65536)
    sock.close()
    lowered = head.split(b"\r\n\r\n")[0].lower()
    assert b"transfer-encoding: chunked" in lowered and b"content-length" not in lowered


def test_set_cookie_reaches_the_client_but_not_the_capture(wire, upstream):
    upstream.script(Reply(headers=[("content-type", "application/json"), ("Set-Cookie", "sid=SECRETSESSION")],
                          chunks=[b"{}"], chunked=False))
    conn = client(wire)
    conn.request("GET", "/v1/models")
    resp = conn.getresponse()
    resp.read()
    assert resp.getheader("Set-Cookie") == "sid=SECRETSESSION"
    capture = wait_for(lambda: list(wire.captures), what="capture teed")[0]
    assert ["Set-Cookie", "[redacted]"] in capture.response_headers



def test_secret_headers_are_redacted_by_name_and_forwarded_as_sent(wire, upstream):
    """Issue 22: `anthropic-api-key` and `x-goog-api-key` were stored as sent (only five names were redacted)."""
    upstream.script(Reply(headers=[("content-type", "application/json"), ("x-upstream-token", "SECRETUP"),
                                   ("anthropic-ratelimit-input-tokens-remaining", "39000")],
                          chunks=[b"{}"], chunked=False))
    sent = {"anthropic-api-key": "sk-ant-SECRETA", "x-goog-api-key": "SECRETG", "X-Auth-Token": "SECRETT",
            "X-Claude-Code-Session-Id": "0b5c6c2e-5f8a-4ef4-9d0e-0d4b8e0b6a11"}
    conn = client(wire)
    conn.request("POST", "/v1/messages", body=b"{}", headers=sent)
    resp = conn.getresponse()
    resp.read()
    assert resp.getheader("x-upstream-token") == "SECRETUP"
    assert all(upstream.seen[-1].header(name) == value for name, value in sent.items())
    capture = wait_for(lambda: list(wire.captures), what="capture teed")[0]
    request = dict(map(tuple, capture.request_headers))
    assert [request[name] for name in sent] == ["[redacted]"] * 3 + [sent["X-Claude-Code-Session-Id"]]
    response = dict(map(tuple, capture.response_headers))
    assert response["x-upstream-token"] == "[redacted]"
    assert response["anthropic-ratelimit-input-tokens-remaining"] == "39000"


def big_stream(total: int) -> list[bytes]:
    """An SSE message of about `total` bytes: usage at the start and in the last events, as Anthropic sends it."""
    start = (b'event: message_start\ndata: {"type":"message_start","message":{"model":"claude-opus-4-8",'
             b'"usage":{"input_tokens":10,"output_tokens":1}}}\n\n')
    delta = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta",' \
            b'"text":"' + b"x" * 900 + b'"}}\n\n'
    end = (b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
           b'"usage":{"output_tokens":123456}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n')
    middle = [delta * 60] * (total // len(delta * 60))
    return [start, *middle, end]


def test_a_response_over_the_cap_reaches_the_client_whole_and_is_kept_head_and_tail(upstream):
    """Issue 22, item 7: a 100 MB response peaked at 829 MB RSS, all of it kept for materialization."""
    wire = InProcessWire(upstream.url, response_keep_bytes=1024 * 1024)
    try:
        chunks = big_stream(5 * 1024 * 1024)
        whole = b"".join(chunks)
        upstream.script(sse_reply(chunks), sse_reply(chunks[:1] + chunks[-1:]))
        for expected in (whole, chunks[0] + chunks[-1]):
            conn = client(wire)
            conn.request("POST", "/v1/messages", body=b'{"stream":true}')
            assert conn.getresponse().read() == expected  # every byte forwarded
        big, small = wait_for(lambda: wire.captures if len(wire.captures) == 2 else None, what="both teed")
        at, omitted = big.response_omitted
        kept = big.response_body
        assert kept == whole[:at] + whole[at + omitted:]  # the start, then the end
        assert 1024 * 1024 <= len(kept) < 1024 * 1024 + 128 * 1024 and at + omitted + len(kept) - at == len(whole)
        assert kept.endswith(chunks[-1]) and kept.startswith(chunks[0])  # both usages are kept
        assert small.response_omitted is None and small.response_body == chunks[0] + chunks[-1]
        assert wire.counter("responses_truncated") == 1
    finally:
        wire.close()


def test_the_capture_log_says_what_a_kept_in_part_response_is_missing(home, upstream):
    home.mkdir(parents=True)
    (home / "config.toml").write_text("capture_response_max_mb = 1\n")
    daemon = DaemonProcess(home, upstream.url)
    try:
        chunks = big_stream(3 * 1024 * 1024)
        upstream.script(sse_reply(chunks))
        conn = client(daemon)
        conn.request("POST", "/v1/messages", body=b'{"stream":true}')
        assert conn.getresponse().read() == b"".join(chunks)
        capture = wait_for(lambda: [e.capture for e in read_log(home / "captures")], what="capture on disk")[0]
        at, omitted = capture.response_omitted
        assert capture.response_body == b"".join(chunks)[:at] + b"".join(chunks)[at + omitted:]
        assert daemon.counter("responses_truncated") == 1
    finally:
        daemon.stop()
