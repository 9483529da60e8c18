"""`ports.json`: the loopback ports of the daemon's listeners, kept across restarts.

`claude_code` is 9909 (what `ANTHROPIC_BASE_URL` points at). `admin` and `viewer` get the port
the system assigns on first start (a listener bound to port 0), recorded and reused after that;
one whose saved port has since been taken by another program is bound to port 0 again. A port
is never picked first and bound later: another process could take it in between.
"""

from collections.abc import Callable
from pathlib import Path

from opik_cipx.home import read_json
from opik_cipx.wire.loopback import LoopbackServer, PortTaken

CLAUDE_CODE_PORT = 9909
PICKED = ("admin", "viewer")


def _valid(value: object) -> int | None:
    return value if isinstance(value, int) and 0 < value < 65536 else None


def saved_ports(path: Path) -> dict[str, int]:
    """What `ports.json` holds (only well-formed entries)."""
    saved = read_json(path)
    if not isinstance(saved, dict):
        return {}
    return {name: port for name, value in saved.items() if (port := _valid(value))}


def claude_code_port(path: Path) -> int:
    return saved_ports(path).get("claude_code", CLAUDE_CODE_PORT)


def open_picked_listeners(
    path: Path, open_listener: Callable[[str, int], LoopbackServer]
) -> dict[str, LoopbackServer]:
    """A listener for each of `admin` and `viewer`, from `open_listener(name, port)`: on its saved
    port, or on port 0 (the system assigns a free one) when none is saved or the saved one is taken.

    Raises what `open_listener` raises otherwise, after closing the listeners it opened.
    """
    saved = saved_ports(path)
    opened: dict[str, LoopbackServer] = {}
    try:
        for name in PICKED:
            port = saved.get(name)
            try:
                opened[name] = open_listener(name, port or 0)
            except PortTaken:
                if not port:
                    raise
                opened[name] = open_listener(name, 0)
    except BaseException:
        for server in opened.values():
            server.server_close()
        raise
    return opened


def record_ports(path: Path, picked: dict[str, int], write: Callable[[Path, object], object]) -> dict[str, int]:
    """The ports of every listener (`claude_code` as saved, or 9909; `picked` as bound), written
    with `write` when `ports.json` does not hold them yet."""
    saved = saved_ports(path)
    ports = {"claude_code": saved.get("claude_code", CLAUDE_CODE_PORT), **picked}
    if ports != saved:
        write(path, ports)
    return ports
