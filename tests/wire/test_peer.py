"""The owner of a loopback peer's socket (wire/peer.py): netlink, the /proc tables, and the rows they hold.

Another user's connection is tested end to end in tests/security/test_other_user.py (it needs root).
"""

import os
import socket
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opik_cipx.wire import peer as peer_module
from opik_cipx.wire.peer import PeerLookup, row_key, scan_table, uid_in

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peers are identified on Linux only")


@pytest.fixture
def accepted():
    """`accepted(family)`: (local, peer) of a loopback connection this process made and accepted."""
    listener = socket.create_server(("127.0.0.1", 0))
    held = [listener]

    def connect(family: int = socket.AF_INET) -> tuple[tuple[str, int], tuple[str, int]]:
        client = socket.socket(family)
        client.connect(("127.0.0.1" if family == socket.AF_INET else "::ffff:127.0.0.1", listener.getsockname()[1]))
        server, addr = listener.accept()
        held.extend((client, server))
        return server.getsockname(), addr

    yield connect
    for sock in held:
        sock.close()


def test_the_owner_of_a_connection_from_this_process_is_this_user(accepted):
    lookup = PeerLookup()
    try:
        assert lookup.available
        local, peer = accepted()
        assert lookup.uid(local, peer) == os.geteuid()  # netlink where it answers, else the tables
        assert lookup.from_tables(local, peer) == os.geteuid()
        local6, peer6 = accepted(socket.AF_INET6)  # an IPv6 client socket, connected to ::ffff:127.0.0.1
        assert lookup.uid(local6, peer6) == os.geteuid()
        assert lookup.from_tables(local6, peer6) == os.geteuid()  # its row is in tcp6
        assert lookup.uid(local, ("127.0.0.1", 1)) is None  # no such socket
    finally:
        lookup.close()


def test_without_netlink_the_tables_answer(accepted, monkeypatch):
    monkeypatch.setattr(peer_module, "_open_netlink", lambda: None)
    lookup = PeerLookup()
    local, peer = accepted()
    assert lookup.available and lookup.uid(local, peer) == os.geteuid()


def test_a_netlink_answer_that_is_late_is_answered_from_the_tables_and_netlink_kept(accepted, monkeypatch):
    """A slow answer must not cost the connection loop more than the socket's short timeout, nor
    netlink itself (a timeout closed it for good, leaving every later lookup to the slower tables)."""
    silent, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)  # sends go nowhere, no answer comes
    silent.settimeout(0.01)
    monkeypatch.setattr(peer_module, "_open_netlink", lambda: silent)
    lookup = PeerLookup()
    try:
        local, peer = accepted()
        assert lookup.uid(local, peer) == os.geteuid()  # from the tables
        assert lookup._netlink is silent  # kept for the next lookup
    finally:
        lookup.close()
        other.close()


def test_with_neither_nothing_can_be_said(monkeypatch):
    monkeypatch.setattr(peer_module, "_open_netlink", lambda: None)
    assert not PeerLookup(tables=("/nonexistent/tcp", "/nonexistent/tcp6")).available


HEADER = b"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
ADDRESSES = st.tuples(st.sampled_from(["127.0.0.1", "127.0.0.2", "10.0.0.1"]), st.integers(1, 65535))


def table_row(number: int, local: tuple[str, int], remote: tuple[str, int], uid: int, v6: bool) -> bytes:
    addresses = row_key(remote, local, v6).strip()  # row_key names the peer's row: its local address first
    return b"%4d: %b 01 00000000:00000000 00:00000000 00000000 %5d        0 %d 1 0000000000000000 20 4 30 10 -1\n" % (
        number, addresses, uid, 1000 + number)


@given(st.lists(st.tuples(ADDRESSES, ADDRESSES, st.integers(0, 70000)), min_size=1, max_size=30), st.data(),
       st.booleans(), st.integers(40, 400))
def test_the_row_of_the_peer_is_found_whole_in_a_table_read_in_pieces(tmp_path_factory, rows, data, v6, piece):
    """Whatever the table holds and wherever its pieces are cut, the uid is the one on the peer's row."""
    table = HEADER + b"".join(table_row(i, local, remote, uid, v6) for i, (local, remote, uid) in enumerate(rows))
    path = tmp_path_factory.mktemp("proc") / "tcp"
    path.write_bytes(table)
    local, remote, _ = data.draw(st.sampled_from(rows))
    expected = next(uid for row_local, row_remote, uid in rows if (row_local, row_remote) == (local, remote))
    key = row_key(remote, local, v6)  # the peer of a connection accepted at `remote` is the socket at `local`
    assert uid_in(table, key) == expected
    saved, peer_module.READ_BYTES = peer_module.READ_BYTES, piece
    try:
        assert scan_table(str(path), key) == expected
    finally:
        peer_module.READ_BYTES = saved


def test_a_row_key_is_the_kernels_spelling():
    assert row_key(("127.0.0.1", 9909), ("127.0.0.1", 40000), v6=False) == b" 0100007F:9C40 0100007F:26B5 "
    assert row_key(("127.0.0.1", 9909), ("127.0.0.1", 40000), v6=True) == (
        b" 0000000000000000FFFF00000100007F:9C40 0000000000000000FFFF00000100007F:26B5 ")
