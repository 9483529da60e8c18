"""A ThreadingHTTPServer that only ever listens on 127.0.0.1.

Every opik-cipx listener (gateway, admin, viewer) is one of these. Anything but 127.0.0.1 is
refused before a socket is opened, and a port that is taken fails with a message naming it.
"""

import errno
import logging
import socket
import socketserver
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opik_cipx.config import LOOPBACK_HOST, is_loopback_host

log = logging.getLogger(__name__)


class ListenError(Exception):
    """A listener could not start; the message is one line fit for the user."""


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, name: str, host: str, port: int, handler: type[BaseHTTPRequestHandler]):
        if host != LOOPBACK_HOST:
            raise ListenError(
                f"refusing to listen on {host!r} for {name}: opik-cipx only binds {LOOPBACK_HOST} "
                "(unset CIPX_LISTEN_HOST / listen_host)"
            )
        self.name = name
        try:
            super().__init__((host, port), handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ListenError(
                    f"port {port} on {host} ({name}) is already in use by another process; "
                    "stop it, or run `opik-cipx status` to see whether opik-cipx is already running"
                ) from None
            raise ListenError(f"cannot listen on {host}:{port} ({name}): {exc.strerror}") from None

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, a DNS lookup that can stall startup.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    @property
    def port(self) -> int:
        return self.server_address[1]

    def handle_error(self, request, client_address) -> None:
        """A client that resets its connection is routine: one debug line, no traceback on stderr."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            log.debug("%s listener: client connection ended: %s", self.name, exc)
        else:
            log.exception("%s listener: unexpected error", self.name)


def host_is_loopback(host_header: str | None) -> bool:
    """True for `127.0.0.1[:port]`, `localhost[:port]`, `[::1][:port]`."""
    if not host_header:
        return False
    host = host_header.strip()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return is_loopback_host(host)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK_HOST, 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK_HOST, port))
        except OSError:
            return False
        return True
