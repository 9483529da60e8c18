"""The link between the daemon's two processes (opik_cipx/link.py): messages in order, the wire's
end never blocks (it queues, then drops beyond its bound, never half a message), a message that
does not decode costs only itself, a closed end is seen by the other."""

import os
import pickle
import socket

import pytest

from opik_cipx import link
from opik_cipx.link import FRAME, Link


@pytest.fixture
def pair():
    wire_sock, work_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    wire, work = Link(wire_sock, blocking=False), Link(work_sock, blocking=True)
    yield wire, work
    wire.close()
    work.close()


def pump_all(wire: Link, until) -> list[tuple]:
    """The wire's link thread: pump until `until(received)` (each pump waits at most 1 s)."""
    received: list[tuple] = []
    for _ in range(1000):
        if until(received):
            return received
        got = wire.pump(1.0)
        assert got is not None, "the work's end closed"
        received += got
    raise AssertionError(f"only {len(received)} message(s)")


def test_messages_cross_in_order_both_ways_and_a_closed_end_is_seen(pair):
    wire, work = pair
    for n in range(50):
        assert wire.send("log", n, b"x" * n)
    assert [work.recv() for _ in range(50)] == [("log", n, b"x" * n) for n in range(50)]
    for n in range(3):
        work.send("stats", n, {"pid": 1})
    assert pump_all(wire, lambda got: len(got) == 3) == [("stats", n, {"pid": 1}) for n in range(3)]
    work.close()
    assert wire.pump(1.0) is None
    wire.send("log", 1)  # to a closed end: no error, nothing blocks
    wire.close()


def test_the_wires_end_never_blocks_queues_what_the_socket_does_not_take_and_drops_beyond_its_bound(pair):
    wire, work = pair
    payload = b"p" * 65536
    sent = 0
    while wire.send("log", sent, payload):  # the work process reads nothing meanwhile
        sent += 1
    assert wire.dropped == 1 and wire.pending
    assert sent * len(payload) > link.PENDING_MAX - 2 * len(payload)  # the socket's buffer and the queue
    assert not wire.send("log", -1, payload) and wire.dropped == 2
    got = []
    while len(got) < sent:  # the link thread writes the queue out as the work reads
        wire.pump(0.01)
        got.append(work.recv())
    assert got == [("log", n, payload) for n in range(sent)]  # whole, in order; the dropped ones absent
    assert not wire.pending
    assert wire.send("log", sent, b"") and work.recv() == ("log", sent, b"")


def test_a_message_that_does_not_decode_is_dropped_alone(pair):
    wire, work = pair
    bad = b"\x80\x05not a pickle"
    wire.sock.sendall(FRAME.pack(len(bad)) + bad)
    unknown = pickle.dumps(["not", "a", "tuple"])
    wire.sock.sendall(FRAME.pack(len(unknown)) + unknown)
    wire.send("log", 7)
    assert work.recv() == ("log", 7)


def test_a_frame_beyond_any_message_is_refused(pair):
    wire, work = pair
    work.sock.sendall(FRAME.pack(link.MESSAGE_MAX + 1))
    with pytest.raises(ValueError, match="another language"):
        pump_all(wire, lambda got: False)


def test_the_working_slot_is_shared_by_both_ends_and_a_torn_write_reads_as_none():
    wire, fd = link.WorkingSlot.create()
    try:
        assert os.readlink(f"/proc/self/fd/{fd}").endswith("(deleted)")  # a file no name points to
        assert os.fstat(fd).st_mode & 0o777 == 0o600
        work = link.WorkingSlot(fd)  # as the work process maps what it inherited
        assert wire.get() is None
        work.set((7, 123456789))
        assert wire.get() == (7, 123456789)
        os.pwrite(fd, b"\x08", 0)  # the segment's first byte changed, as a kill in the middle of a write would leave it
        assert wire.get() is None
        work.set((7, 1))
        work.set(None)
        assert wire.get() is None
        work.close()
    finally:
        os.close(fd)
        wire.close()
