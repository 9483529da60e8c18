"""The detached supervisor's parts: its restart policy, the socket it hands to the daemon, and the
answer a request gets once it gave up (real sockets on loopback; the process is tested whole in
tests/test_supervision.py)."""

import http.client
import json
import signal
import socket
import threading

from hypothesis import given
from hypothesis import strategies as st

from opik_cipx.control import down_answer
from opik_cipx.control.children import (
    LISTEN_FD_ENV,
    MAX_DEATHS,
    MAX_DELAY_S,
    WINDOW_S,
    describe_exit,
    inherited_listener,
    restart_delay,
)
from opik_cipx.control.detached import open_listener
from tests.conftest import wait_for


def test_restart_delay_at_once_then_backing_off_then_giving_up():
    assert [restart_delay([0.0] * n, 1.0) for n in range(1, 7)] == [0.0, 0.25, 0.5, 1.0, None, None]
    assert restart_delay([0.0, 1.0, 2.0, 3.0, 200.0], 200.0) == 0.0  # four of them long ago: a first death again
    assert restart_delay([0.0, 1.0, 2.0, 3.0, 4.0], 4.0) is None


@given(st.lists(st.floats(min_value=0, max_value=1000), min_size=1, max_size=20), st.floats(min_value=0, max_value=200))
def test_restart_delay_gives_up_exactly_at_max_deaths_within_the_window(deaths, after):
    now = max(deaths) + after
    recent = sum(1 for at in deaths if now - at < WINDOW_S)
    delay = restart_delay(deaths, now)
    if recent >= MAX_DEATHS:
        assert delay is None
    else:
        assert delay is not None and 0 <= delay <= MAX_DELAY_S
        assert (delay == 0) == (recent <= 1)  # a daemon that dies now and then comes back at once


def test_describe_exit():
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(1) == "exited with status 1"
    assert describe_exit(-250) == "killed by signal 250"


def test_the_daemon_takes_only_a_loopback_listening_tcp_socket_and_the_variable_goes():
    listener = open_listener(0)
    try:
        env = {LISTEN_FD_ENV: str(listener.fileno())}
        taken = inherited_listener(env)
        assert env == {} and taken is not None and taken.getsockname() == listener.getsockname()
        taken.detach()  # the same descriptor as `listener`
    finally:
        listener.close()
    assert inherited_listener({}) is None and inherited_listener({LISTEN_FD_ENV: "x"}) is None
    bound_only = socket.socket()
    bound_only.bind(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for sock in (bound_only, udp):
        fd = sock.detach()
        assert inherited_listener({LISTEN_FD_ENV: str(fd)}) is None
        try:
            socket.socket(fileno=fd)
        except OSError:
            continue  # closed, as it should be
        raise AssertionError("a socket the daemon refused was left open")


class Answering:
    """`down_answer.serve` on a loopback port in a thread, stopped at the end."""

    def __enter__(self):
        self.listener = open_listener(0)
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=down_answer.serve, args=(self.listener, self.stop), daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.listener.close()


def test_every_request_gets_the_503_claude_code_shows_at_once():
    body = json.dumps({"model": "claude-x", "messages": [{"role": "user", "content": "x" * 300_000}]}).encode()
    with Answering() as server:
        for method, path, payload in (("POST", "/v1/messages?beta=true", body), ("HEAD", "/", None),
                                      ("GET", "/v1/models", None)):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.request(method, path, body=payload, headers={"content-type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            assert resp.status == 503 and resp.getheader("x-should-retry") == "false"
            assert resp.getheader("connection") == "close"
            if method == "HEAD":
                assert data == b""
            else:
                error = {"type": "api_error", "message": down_answer.ANSWER}
                assert json.loads(data) == {"type": "error", "error": error}
            conn.close()


def test_a_chunked_body_is_read_to_its_end_and_the_connection_closed_cleanly():
    with Answering() as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n")
            sock.sendall(b"6\r\n world\r\n0\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):  # to EOF: a reset (an unread body) would raise here
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 503 ") and answer.endswith(b"}}")


def test_clients_that_stall_do_not_hold_up_the_others():
    with Answering() as server:
        stalled = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(down_answer.MAX_CONNECTIONS + 4)]
        try:
            for sock in stalled:
                sock.sendall(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n")  # and never the body
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            conn.request("GET", "/")  # every slot taken: closed at once (a client retries), not kept waiting
            try:
                conn.getresponse()
                raise AssertionError("answered while every slot was taken")
            except (http.client.RemoteDisconnected, ConnectionResetError):
                pass
            conn.close()
        finally:
            for sock in stalled:
                sock.close()
        assert wait_for(lambda: answered(server.port), what="a slot freed by the stalled clients' leaving") == 503


def answered(port: int) -> int | None:
    """The status of a GET answered on `port`; None when the connection was closed unanswered (every
    slot still taken: the threads of clients that just left have not noticed yet)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", "/")
        return conn.getresponse().status
    except (http.client.RemoteDisconnected, ConnectionResetError):
        return None
    finally:
        conn.close()
