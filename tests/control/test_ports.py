"""ports.json and the picked listeners: bound to port 0 on first start, kept after, never picked-then-bound."""

import json
import socket

import pytest

from opik_cipx.control.ports import CLAUDE_CODE_PORT, open_picked_listeners, record_ports
from opik_cipx.wire.loopback import ListenError, LoopbackHandler, LoopbackServer
from tests.conftest import LIMITS, ReservedPort


@pytest.fixture
def opened():
    servers = []

    def open_listener(name: str, port: int) -> LoopbackServer:
        asked.append((name, port))
        server = LoopbackServer(name, "127.0.0.1", port, LoopbackHandler, LIMITS)
        servers.append(server)
        return server

    asked: list[tuple[str, int]] = []
    open_listener.asked = asked
    yield open_listener
    for server in servers:
        server.server_close()


def test_first_start_binds_port_zero_and_records_what_the_system_gave(tmp_path, opened):
    path = tmp_path / "ports.json"
    picked = open_picked_listeners(path, opened)
    assert opened.asked == [("admin", 0), ("viewer", 0)]  # never a number chosen before binding
    bound = {name: server.port for name, server in picked.items()}
    assert all(bound.values()) and bound["admin"] != bound["viewer"]
    written = {}
    ports = record_ports(path, bound, lambda p, doc: written.update({p: doc}))
    assert ports == {"claude_code": CLAUDE_CODE_PORT, **bound}
    assert written == {path: ports}


def test_saved_ports_are_reused_and_not_rewritten(tmp_path, opened):
    path = tmp_path / "ports.json"
    held = [ReservedPort(), ReservedPort()]
    try:
        saved = {"claude_code": 9911, "admin": held[0].port, "viewer": held[1].port}
        path.write_text(json.dumps(saved))
        picked = open_picked_listeners(path, opened)
        assert {name: server.port for name, server in picked.items()} == {"admin": held[0].port,
                                                                          "viewer": held[1].port}
        writes = []
        assert record_ports(path, {"admin": held[0].port, "viewer": held[1].port},
                            lambda *args: writes.append(args)) == saved
        assert writes == []
    finally:
        for port in held:
            port.close()


def test_a_saved_port_taken_meanwhile_is_replaced_by_one_the_system_assigns(tmp_path, opened):
    path = tmp_path / "ports.json"
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        path.write_text(json.dumps({"admin": taken}))
        picked = open_picked_listeners(path, opened)
        assert opened.asked[:2] == [("admin", taken), ("admin", 0)]
        assert picked["admin"].port not in (0, taken)
        written = {}
        record_ports(path, {name: server.port for name, server in picked.items()}, lambda _, doc: written.update(doc))
    assert written["admin"] == picked["admin"].port  # the new port is what ports.json keeps


def test_a_listener_that_fails_otherwise_closes_the_ones_already_opened(tmp_path):
    opened = []

    def open_listener(name: str, port: int) -> LoopbackServer:
        if name == "viewer":
            raise ListenError("cannot listen (viewer)")
        server = LoopbackServer(name, "127.0.0.1", port, LoopbackHandler, LIMITS)
        opened.append(server)
        return server

    with pytest.raises(ListenError):
        open_picked_listeners(tmp_path / "ports.json", open_listener)
    assert opened and opened[0].socket.fileno() == -1  # closed
