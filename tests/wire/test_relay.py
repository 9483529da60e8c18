"""The stream relay (wire/relay.py): one thread moves every body that arrives over time, byte-exact,
without one stalled client or silent upstream holding up the others.

Each body is handed over from a thread of its own, as a handler thread does, over real socket pairs:
the test writes as the upstream on one and reads as the client on the other. The gateway's tests
run the same relay over TLS from the fake Anthropic API (test_gateway.py).
"""

import http.client
import selectors
import socket
import threading
from contextlib import closing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opik_cipx.wire import relay as relay_module
from opik_cipx.wire.framing import Dechunker
from opik_cipx.wire.relay import StreamRelay


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST = b"0\r\n\r\n"


class Body:
    """One body handed to `relay` on a thread of its own; `upstream` and `client` are the far ends."""

    def __init__(self, relay: StreamRelay, first: bytes = b"", chunked_in: bool = True, chunked_out: bool = True):
        self.upstream, upstream_near = socket.socketpair()
        client_near, self.client = socket.socketpair()
        upstream_near.setblocking(False)
        self.kept: list[bytes] = []
        self.settled: list[bool] = []
        self.outcome = None
        self._near = (upstream_near, client_near)
        self.thread = threading.Thread(target=self._run, args=(relay, first, chunked_in, chunked_out), daemon=True)
        self.thread.start()

    def _run(self, relay: StreamRelay, first: bytes, chunked_in: bool, chunked_out: bool) -> None:
        upstream, client = self._near
        self.outcome = relay.relay(upstream, first, chunked_in, client, chunked_out, self.kept.append, self._settle)

    def _settle(self, reusable: bool) -> bool:
        self.settled.append(reusable)
        return True

    def read_chunked(self) -> bytes:
        """What the client gets, de-chunked, up to the last chunk."""
        body = bytearray()
        dechunker = Dechunker(None, body.extend)
        self.client.settimeout(10)
        while not dechunker.done:
            data = self.client.recv(65536)
            assert data, "the client's stream ended before its last chunk"
            dechunker.feed(data)
        return bytes(body)

    def result(self):
        self.thread.join(10)
        assert not self.thread.is_alive(), "the relay never ended the body"
        return self.outcome

    def close(self) -> None:
        for sock in (self.upstream, self.client, *self._near):
            sock.close()

    def __enter__(self) -> "Body":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def relay():
    with closing(StreamRelay(read_timeout_s=10.0)) as made:
        yield made


def read_until(sock: socket.socket, wanted: bytes) -> bytes:
    got = b""
    sock.settimeout(10)
    while wanted not in got:
        data = sock.recv(65536)
        assert data, f"the stream ended before {wanted!r}"
        got += data
    return got


def relay_threads() -> int:
    return [thread.name for thread in threading.enumerate()].count("cipx-relay")


def test_every_stream_is_moved_by_one_thread_event_by_event(relay):
    before = relay_threads()  # other tests' relays may still be ending
    bodies = [Body(relay) for _ in range(16)]
    try:
        for event in range(5):
            for number, body in enumerate(bodies):
                body.upstream.sendall(chunk(b"data: %d/%d\n\n" % (number, event)))
            for number, body in enumerate(bodies):  # each event reaches its client before the next is sent
                assert read_until(body.client, b"data: %d/%d\n\n" % (number, event)).endswith(b"\r\n")
        assert relay_threads() == before + 1
        for body in bodies:
            body.upstream.sendall(LAST)
        for number, body in enumerate(bodies):
            assert read_until(body.client, LAST).endswith(LAST)
            outcome = body.result()
            assert outcome.complete and body.settled == [True]
            assert b"".join(body.kept) == b"".join(b"data: %d/%d\n\n" % (number, event) for event in range(5))
    finally:
        for body in bodies:
            body.close()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=3000), max_size=8), st.lists(st.integers(1, 700), max_size=12))
def test_a_body_reaches_the_client_whole_whatever_pieces_the_upstream_sends(pieces, cuts):
    stream = b"".join(chunk(piece) for piece in pieces) + LAST
    first, at = stream[:cuts[0]] if cuts else b"", cuts[0] if cuts else 0
    with closing(StreamRelay(read_timeout_s=10.0)) as relay, Body(relay, first=first) as body:
        for size in cuts[1:] + [len(stream)]:
            body.upstream.sendall(stream[at:at + size])
            at += size
        assert body.read_chunked() == b"".join(pieces)
        assert body.result().complete and b"".join(body.kept) == b"".join(pieces) and body.settled == [True]


def test_a_client_that_does_not_read_holds_up_only_its_own_body(relay):
    big = chunk(b"x" * 65536)
    written = [0]

    def flood() -> None:  # blocks once the relay stops reading the stalled body's upstream
        try:
            for _ in range(200):  # 13 MB: more than both sockets' buffers and a turn of the relay
                stalled.upstream.sendall(big)
                written[0] += 1
            stalled.upstream.sendall(LAST)
        except OSError:
            pass

    with Body(relay) as stalled, Body(relay) as flowing:
        flooder = threading.Thread(target=flood, daemon=True)
        flooder.start()
        for event in range(20):
            flowing.upstream.sendall(chunk(b"data: %d\n\n" % event))
            read_until(flowing.client, b"data: %d\n\n" % event)
        flowing.upstream.sendall(LAST)
        read_until(flowing.client, LAST)
        assert flowing.result().complete
        assert flooder.is_alive() and written[0] < 200  # the stalled body's upstream waits for its client
        assert len(stalled.read_chunked()) == 200 * 65536  # once the client reads, every byte arrives
        assert stalled.result().complete


def test_an_upstream_silent_past_its_timeout_ends_its_body():
    with closing(StreamRelay(read_timeout_s=0.3)) as relay, Body(relay) as body:
        body.upstream.sendall(chunk(b"data: 1\n\n"))
        read_until(body.client, b"data: 1\n\n")
        outcome = body.result()
        assert not outcome.complete and isinstance(outcome.upstream_error, TimeoutError)
        assert body.settled == []  # the connection is not handed back: the handler closes it


def test_a_client_that_takes_nothing_past_the_timeout_ends_its_body():
    with closing(StreamRelay(read_timeout_s=0.3)) as relay, Body(relay) as body:

        def flood() -> None:  # more than both sockets' buffers and a turn of the relay
            try:
                for _ in range(200):
                    body.upstream.sendall(chunk(b"x" * 65536))
            except OSError:
                pass  # closed by the test's end

        threading.Thread(target=flood, daemon=True).start()
        outcome = body.result()
        assert not outcome.complete and outcome.client_gone and body.settled == []


def test_bytes_after_the_last_chunk_keep_the_connection_out_of_the_pool(relay):
    with Body(relay) as body:
        body.upstream.sendall(chunk(b"data: 1\n\n") + LAST + b"HTTP/1.1 200 OK\r\n")
        assert body.read_chunked() == b"data: 1\n\n"
        assert body.result().complete and body.settled == [False]


def test_an_upstream_closing_inside_a_chunked_body_breaks_it(relay):
    with Body(relay) as body:
        body.upstream.sendall(chunk(b"data: 1\n\n") + b"40\r\npart")
        body.upstream.close()
        outcome = body.result()
        assert not outcome.complete and isinstance(outcome.upstream_error, http.client.IncompleteRead)
        assert body.settled == []


def test_a_body_that_runs_until_the_upstream_closes_is_complete_at_its_close(relay):
    with Body(relay, first=b"the first bytes, ", chunked_in=False, chunked_out=False) as body:
        body.upstream.sendall(b"then the rest")
        body.upstream.close()
        outcome = body.result()
        assert outcome.complete and body.settled == [False]  # a connection that closed is never reused
        assert read_until(body.client, b"rest") == b"the first bytes, then the rest"


def test_the_bytes_read_ahead_can_be_the_whole_body(relay):
    with Body(relay, first=chunk(b"all") + LAST) as body:
        assert body.read_chunked() == b"all"
        assert body.result().complete and body.settled == [True]


def test_a_client_gone_ends_its_body(relay):
    with Body(relay) as body:
        body.client.close()
        body.upstream.sendall(chunk(b"data: 1\n\n"))
        outcome = body.result()
        assert not outcome.complete and outcome.client_gone and body.settled == []


def test_close_cuts_off_the_bodies_in_flight_and_refuses_new_ones():
    before = relay_threads()
    relay = StreamRelay(read_timeout_s=10.0)
    with Body(relay) as body:
        body.upstream.sendall(chunk(b"data: 1\n\n"))
        read_until(body.client, b"data: 1\n\n")
        relay.close()
        outcome = body.result()
        assert not outcome.complete and outcome.stopped and outcome.upstream_error is None
        with Body(relay) as late:
            assert late.result().stopped
        assert relay_threads() == before  # close() waited for the thread's end


def test_a_bug_in_one_bodys_step_cuts_off_that_body_only(relay, monkeypatch):
    forward = StreamRelay._forward

    def faulty(self, body, reads, eof):
        if any(b"boom" in data for data in reads):
            raise RuntimeError("a planted bug")
        forward(self, body, reads, eof)

    monkeypatch.setattr(StreamRelay, "_forward", faulty)
    with Body(relay) as healthy, Body(relay) as doomed:
        doomed.upstream.sendall(chunk(b"boom"))
        outcome = doomed.result()
        assert not outcome.complete and isinstance(outcome.upstream_error, RuntimeError)
        healthy.upstream.sendall(chunk(b"data: fine\n\n") + LAST)
        assert healthy.read_chunked() == b"data: fine\n\n" and healthy.result().complete


def test_a_bug_in_the_loop_itself_ends_every_body_and_refuses_the_next(monkeypatch):
    class Faulty(selectors.DefaultSelector):
        def select(self, timeout=None):
            if self.get_map() and len(self.get_map()) > 2:  # the wake socket and two bodies: break
                raise RuntimeError("a planted bug in the loop")
            return super().select(timeout)

    monkeypatch.setattr(relay_module.selectors, "DefaultSelector", Faulty)
    with closing(StreamRelay(read_timeout_s=10.0)) as relay, Body(relay) as first, Body(relay) as second:
        for body in (first, second):
            outcome = body.result()
            assert not outcome.complete and outcome.stopped and outcome.upstream_error is None
        with Body(relay) as late:
            assert late.result().stopped
