"""Listeners that only ever listen on 127.0.0.1 and only answer requests addressed to loopback.

Every opik-cipx listener (gateway, admin, viewer) is a `LoopbackServer` (a `ConnectionServer`:
bounded connections, see connections.py) serving a `LoopbackHandler`. Anything but 127.0.0.1 is
refused before a socket is opened, and a port that is taken fails with a message naming it.
Every request must carry exactly one Host header naming loopback (`loopback_host`), so a web
page cannot reach a listener by DNS rebinding: it would have to send its own host name.
"""

import errno
import logging
import re
import socket
import sys
from email.message import Message

from opik_cipx.config import LOOPBACK_HOST
from opik_cipx.stats import Counters
from opik_cipx.wire.connections import ConnectionHandler, ConnectionServer, Limits

log = logging.getLogger(__name__)
# `localhost`, `127.0.0.1` or `[::1]`, then an optional `:port` of digits: nothing else. Other
# 127/8 addresses are not accepted: we bind 127.0.0.1 only, so a browser never sends them.
_LOOPBACK_HOST = re.compile(r"(?:localhost|127\.0\.0\.1|\[::1\])(?::([0-9]{1,5}))?", re.ASCII | re.IGNORECASE)


class ListenError(Exception):
    """A listener could not start; the message is one line fit for the user."""


class PortTaken(ListenError):
    """The port asked for is held by another socket."""


class LoopbackServer(ConnectionServer):
    """`listener`: a socket already listening on `host` (handed over by the detached supervisor,
    control/detached.py) to serve instead of binding `port`."""

    def __init__(self, name: str, host: str, port: int, handler: type["LoopbackHandler"], limits: Limits,
                 counters: Counters | None = None, listener: socket.socket | None = None):
        self._listener = listener
        if host != LOOPBACK_HOST:
            raise ListenError(
                f"refusing to listen on {host!r} for {name}: opik-cipx only binds {LOOPBACK_HOST} "
                "(unset CIPX_LISTEN_HOST / listen_host)"
            )
        self.name = name
        try:
            super().__init__((host, port), handler, limits, counters)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortTaken(
                    f"port {port} on {host} ({name}) is already in use by another process; "
                    "stop it, or run `opik-cipx status` to see whether opik-cipx is already running"
                ) from None
            raise ListenError(f"cannot listen on {host}:{port} ({name}): {exc.strerror}") from None

    def server_bind(self) -> None:
        if self._listener is None:
            return super().server_bind()
        self.socket.close()
        self.socket, self.server_address = self._listener, self._listener.getsockname()

    def server_activate(self) -> None:
        if self._listener is None:
            super().server_activate()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that resets its connection is routine: one debug line, no traceback on stderr."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            log.debug("%s listener: client connection ended: %s", self.name, exc)
        else:
            log.exception("%s listener: unexpected error", self.name)


def loopback_host(values: list[str] | None) -> bool:
    """True when a request's Host headers (`values`, all of them) are exactly one loopback `host[:port]`.

    Accepted: `localhost`, `127.0.0.1` or `[::1]` (any case), optionally followed by `:` and a
    port 1-65535, with only the optional whitespace HTTP allows around a header value. Refused:
    no Host, two Host headers, userinfo or `@`, other names, extra colons or inner whitespace.
    """
    if not values or len(values) != 1:
        return False
    match = _LOOPBACK_HOST.fullmatch(values[0].strip(" \t"))
    return match is not None and (match.group(1) is None or 0 < int(match.group(1)) < 65536)


class LoopbackHandler(ConnectionHandler):
    """Base of the gateway, admin and viewer handlers: a request not addressed to loopback is refused 403."""

    server: LoopbackServer

    @classmethod
    def screen(cls, listener: str, command: str, target: str, headers: Message) -> tuple[int, str] | None:
        if not loopback_host([value for name, value in headers.raw_items() if name.lower() == "host"]):
            return cls.not_loopback(listener)
        return super().screen(listener, command, target, headers)

    @staticmethod
    def not_loopback(listener: str) -> tuple[int, str]:
        return 403, (f"opik-cipx: the {listener} listener answers only requests addressed to "
                     "localhost or 127.0.0.1 (one Host header, host[:port])")
