"""Loopback ports a test holds by number, so that tests running in parallel never race for one."""

import itertools
import os
import socket
from pathlib import Path


def _ephemeral_low(default: int = 32768) -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


# Ports a test may ask for by number: below the range the system assigns from (to a listener bound
# to port 0, and to every outgoing connection), so nothing else on the machine takes one by chance.
RESERVABLE = range(max(1024, _ephemeral_low() - 12_000), _ephemeral_low())
_next_candidate = itertools.count(os.getpid() * 37)


class ReservedPort:
    """A loopback port held for one test, for a listener that must be on a known port (Claude Code's),
    or that goes away and comes back on the same port (a fake Opik's outage).

    Held by a bound, non-listening socket with SO_REUSEADDR: a server (which binds with it too)
    can listen on the port, while `ReservedPort` in any other process or test, which first binds
    without it, cannot take the same port, and nothing bound to port 0 is given it. So tests running
    in parallel, in one suite or in several, never race for a port, and while nothing listens on it
    a connection is refused. `close()` when the test is over.
    """

    def __init__(self) -> None:
        for _ in range(len(RESERVABLE)):
            port = RESERVABLE[next(_next_candidate) % len(RESERVABLE)]
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", port))  # without SO_REUSEADDR: fails if any socket holds the port
            except OSError:
                sock.close()
                continue
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # from now on a server may bind it too
            self.port, self._sock = port, sock
            return
        raise RuntimeError(f"no free port in {RESERVABLE}")

    def close(self) -> None:
        self._sock.close()
