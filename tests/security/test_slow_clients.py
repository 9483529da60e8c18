"""Issue 12, items 4, 5 and 8: slow, stalled, cut-off and departing clients; against the real daemon
where its threads and its `client_*` settings are the point, the rest against the gateway in process
(tests/wire/conftest.py).

- 1,000 stalled connections (silent, stopped mid-head, or mid-body after a whole head) hold no
  thread and no slot, and a normal call still gets through (its latency against the idle figure
  is `bench/bench_stalled.py`'s job);
- header, body and idle deadlines close what stalls, and the connection cap turns the excess away
  with a 503 in Anthropic's shape;
- a request head cut off before its blank line is never forwarded, credentials included;
- a client that leaves while the upstream is silent closes the upstream request (the connection
  loop notices within about `SCAN_INTERVAL_S`; tests/wire/test_connections.py checks the watch).
"""

import http.client
import json
import resource
import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import LIMITS, DaemonProcess, load_fixture, wait_for
from tests.fake_anthropic import fixture_reply, json_reply, sse_reply
from tests.security.conftest import raw_exchange, write_config
from tests.wire.conftest import InProcessWire

STALLED = 1000


def threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        pytest.skip("counting a process's threads needs /proc")
    return next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("Threads:"))


def accepted(pid: int, port: int) -> int:
    """How many connections to `port` process `pid` has accepted: its descriptors that are the
    server's side of one (other descriptors come and go with the daemon's own work)."""
    sides = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "01":  # the server's side, ESTABLISHED
            sides.add(f"socket:[{fields[9]}]")
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += fd.readlink().as_posix() in sides
        except OSError:  # closed meanwhile
            pass
    return count


def unread_server_sides(port: int) -> int | None:
    """How many connections to `port` hold bytes the server has not read yet (None if /proc/net/tcp says nothing)."""
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    unread = 0
    for line in lines:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "01":  # the server's side, ESTABLISHED
            unread += int(fields[4].split(":")[1], 16) > 0  # rx_queue
    return unread


def receive_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


def call(port: int, body: bytes = b'{"model":"m"}') -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/v1/messages", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.body = resp.read()
    return resp


@pytest.fixture
def many_sockets():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = STALLED + 256
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"needs {wanted} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_thousand_stalled_connections_hold_no_thread_and_a_call_gets_through(daemon, upstream, many_sockets):
    """A third send nothing, a third part of a head, a third (more than `client_max_connections`) a whole
    head and part of a body that never ends (issue 22, item 3: those held every slot, and calls got 503)."""
    pid = daemon.proc.pid
    assert call(daemon.port).status == 200  # warm: the first call's connection thread has come and gone
    idle_threads = threads(pid)
    stalled = []
    try:
        for i in range(STALLED):
            sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=10)
            if i % 3 == 1:
                sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: sk-")
            elif i % 3 == 2:
                sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{\"mo")
            stalled.append(sock)
        # The state being measured: the daemon's loop has accepted every connection and read every byte sent.
        wait_for(lambda: accepted(pid, daemon.port) >= STALLED and unread_server_sides(daemon.port) in (0, None),
                 what="every stalled connection accepted and read")
        assert threads(pid) <= idle_threads + 2
        resp = call(daemon.port)  # how fast is bench/bench_stalled.py's business
        assert resp.status == 200 and resp.body == b'{"ok": true}'
        assert threads(pid) <= idle_threads + 2
        assert len(upstream.seen) == 2  # nothing of the stalled heads was forwarded
    finally:
        for sock in stalled:
            sock.close()



def test_stalled_bodies_on_new_and_kept_alive_connections_leave_claude_code_its_slots(upstream):
    """Issue 22, item 3, on the gateway in process with 4 slots: 12 clients stall a body (8 on new
    connections, 4 on connections kept alive after a call), and Claude Code's calls still go through."""
    wire = InProcessWire(upstream.url, limits=replace(LIMITS, max_connections=4))
    stalled = []
    try:
        for i in range(12):
            sock = socket.create_connection(("127.0.0.1", wire.port), timeout=10)
            if i % 3 == 0:
                sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}")
                receive_until(sock, b'{"ok": true}')
                wait_for(lambda: not wire.server._active, what="the call over, its slot given back")
            sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{\"mo")
            stalled.append(sock)
        request, response = load_fixture("simple", "001")
        upstream.script(fixture_reply(response), fixture_reply(response))
        for _ in range(2):
            conn = http.client.HTTPConnection("127.0.0.1", wire.port, timeout=10)
            headers = {k: v for k, v in request["headers"].items() if k.lower() not in ("host", "content-length")}
            conn.request("POST", request["path"], body=request["body"].encode(), headers=headers)
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, response["body"].encode())
        assert len(upstream.seen) == 4 + 2  # the kept-alive clients' first calls, and Claude Code's
        assert wire.counter("connections_refused") == 0
    finally:
        for sock in stalled:
            sock.close()
        wire.close()

@pytest.fixture
def strict_daemon(home, upstream):
    write_config(home, "client_header_timeout_s = 1\nclient_body_timeout_s = 1\nclient_idle_timeout_s = 1.5\n"
                       "client_max_connections = 2\ndrain_timeout_s = 2\n")
    daemon = DaemonProcess(home, upstream.url)
    yield daemon
    daemon.stop()


def closed_after(sock: socket.socket) -> float:
    """Seconds until the daemon closes `sock` without answering (fails on any answer, or if it never closes)."""
    started = time.monotonic()
    sock.settimeout(30)  # a deadline for a daemon that never closes, not a speed target
    try:
        data = sock.recv(65536)
    except ConnectionResetError:
        data = b""
    except TimeoutError:
        pytest.fail("the daemon never closed the stalled connection")
    assert data == b"", data[:200]
    return time.monotonic() - started


def test_header_body_and_idle_deadlines_close_stalled_clients(strict_daemon, upstream):
    port = strict_daemon.port
    head = socket.create_connection(("127.0.0.1", port))
    head.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    body = socket.create_connection(("127.0.0.1", port))
    body.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"model\":")
    idle = socket.create_connection(("127.0.0.1", port))
    assert closed_after(head) > 0.8  # not before its 1 s deadline
    closed_after(body)
    closed_after(idle)
    assert upstream.seen == []
    stats = strict_daemon.stats()
    assert stats["counters"]["requests_timed_out"] == 2  # the idle one is routine, not a timeout
    assert stats["counters"]["requests_captured"] == 0
    for sock in (head, body, idle):
        sock.close()


def test_beyond_the_connection_cap_a_clean_503(strict_daemon, upstream):
    held = [sse_reply([b"event: ping\ndata: {}\n\n", b"event: ping\ndata: {}\n\n"], hold_after=1) for _ in range(2)]
    upstream.script(*held)
    streams = []
    for _ in range(2):
        sock = socket.create_connection(("127.0.0.1", strict_daemon.port), timeout=10)
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}")
        receive_until(sock, b"event: ping")
        streams.append(sock)
    answer = raw_exchange(strict_daemon.port,
                          b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    error = json.loads(body)["error"]
    assert error["type"] == "api_error" and error["message"].startswith("opik-cipx: too many connections")
    assert len(upstream.seen) == 2
    assert strict_daemon.counter("connections_refused") == 1
    for reply in held:
        reply.gate.set()
    for sock in streams:
        sock.close()
    assert wait_for(lambda: call(strict_daemon.port).status == 200, what="served again")


def test_a_head_cut_off_before_its_end_is_never_forwarded(wire, upstream):
    cut = (b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nx-api-key: sk-ant-api03-cut-off\r\n"
           b"Content-Type: application/json\r\nContent-Le" % wire.port)
    answer = raw_exchange(wire.port, cut, half_close=True)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400 ")
    # the same on a kept-alive connection, after a complete call (the handler thread reads this head)
    with socket.create_connection(("127.0.0.1", wire.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}")
        assert receive_until(sock, b'{"ok": true}').startswith(b"HTTP/1.1 200 ")
        sock.sendall(cut)
        sock.shutdown(socket.SHUT_WR)
        rest = sock.recv(65536)
        assert rest == b"" or rest.startswith(b"HTTP/1.1 400 ")
    assert len(upstream.seen) == 1
    assert "sk-ant-api03-cut-off" not in json.dumps([s.headers for s in upstream.seen])
    wait_for(lambda: len(wire.captures) == 1, what="the complete call teed")
    assert wire.counter("requests_refused") == 2 and len(wire.captures) == 1  # the cut-off heads: refused, not captured


@pytest.mark.parametrize("silent", ["before the response head", "mid-stream"])
def test_a_client_leaving_while_the_upstream_is_silent_closes_the_upstream_request(wire, upstream, silent):
    if silent == "mid-stream":
        upstream.script(sse_reply([b"event: message_start\ndata: {}\n\n", b"event: message_stop\ndata: {}\n\n"],
                                  hold_after=1))  # a long thinking pause: nothing for 30 s
    else:
        upstream.script(json_reply(200, {"ok": True}, delay_s=30))  # a non-streaming call thinking
    sock = socket.create_connection(("127.0.0.1", wire.port), timeout=10)
    sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}")
    if silent == "mid-stream":
        receive_until(sock, b"message_start")
    else:
        wait_for(lambda: upstream.seen, what="request upstream")
    sock.close()  # Claude Code's user pressed Esc
    assert upstream.hung_up.wait(20)  # closed by the wire: the upstream itself would stay silent for 30 s
    capture = wait_for(lambda: list(wire.captures), what="capture teed")[0]
    assert capture.client_aborted and capture.upstream_error is None
    assert wire.counter("panics_recovered") == 0
