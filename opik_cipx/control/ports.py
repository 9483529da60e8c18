"""`ports.json`: the loopback ports of the daemon's listeners, kept across restarts.

`claude_code` is 9909 (what `ANTHROPIC_BASE_URL` points at). `admin` and `viewer` are picked
free on first start and kept; one that has since been taken by another program is re-picked.
"""

from pathlib import Path
from typing import Callable

from opik_cipx.home import read_json
from opik_cipx.wire.loopback import free_port, port_is_free

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


def assign_picked_ports(path: Path, write: Callable[[Path, object], object]) -> dict[str, int]:
    """Ports for every listener; picks free ones for `admin` and `viewer` and records them with `write`."""
    saved = saved_ports(path)
    ports = {"claude_code": saved.get("claude_code", CLAUDE_CODE_PORT)}
    for name in PICKED:
        port = saved.get(name)
        ports[name] = port if port and port_is_free(port) else free_port()
    if ports != saved:
        write(path, ports)
    return ports
