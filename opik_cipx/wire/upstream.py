"""The upstream leg: a keep-alive pool of `http.client` connections to the Anthropic API.

Connections are opened over `ssl` (the system trust store plus `CIPX_CA_BUNDLE`), optionally
tunnelled with CONNECT through `CIPX_UPSTREAM_PROXY`, with TCP_NODELAY set. A connection goes
back to the pool only after a complete exchange; anything that failed is closed instead. An
idle connection the server has already closed is noticed (readable socket) and dropped before
it is handed out.
"""

import http.client
import select
import socket
import ssl
import threading
import urllib.parse
from dataclasses import dataclass

from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.wire.framing import header_fields

IDLE_TTL_S = 55.0  # below common server idle timeouts, so we rarely race a server-side close
MAX_IDLE = 32


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int

    @classmethod
    def from_url(cls, url: str) -> "Endpoint":
        parts = urllib.parse.urlsplit(url)
        default = 443 if parts.scheme == "https" else 80
        return cls(parts.scheme, parts.hostname or "", parts.port or default)

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


class FinalResponse(http.client.HTTPResponse):
    """http.client's response, read past every interim 1xx response (103 Early Hints, ...; http.client
    skips only 100), its header block split by `framing.header_fields` rather than parsed by the
    email package (about 90 us less for the API's two dozen headers, on the wire for every call).

    Without the first, a 103 would be taken as the whole response and the real one left unread on
    a connection going back to the pool, for the next call to receive. `begin` is http.client's
    (Python 3.11-3.13) but for those two points: status, version, headers, framing and `will_close`
    come out the same (tests/wire/test_upstream.py holds it to http.client's on any head).
    """

    def begin(self) -> None:
        if self.headers is not None:
            return
        while True:
            version, status, reason = self._read_status()
            if status == 101 or not 100 <= status < 200:
                break
            http.client._read_headers(self.fp)  # the interim response's header block
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        self.headers = self.msg = header_fields(b"".join(http.client._read_headers(self.fp)))
        coding = self.headers.get("transfer-encoding")
        self.chunked = bool(coding) and coding.lower() == "chunked"
        self.chunk_left = None
        self.will_close = self._check_close()
        self.length = None
        length = self.headers.get("content-length")
        if length and not self.chunked:
            try:
                self.length = int(length)
            except ValueError:
                pass
            if self.length is not None and self.length < 0:
                self.length = None
        if status in (http.client.NO_CONTENT, http.client.NOT_MODIFIED) or 100 <= status < 200 \
                or self._method == "HEAD":
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True


def ssl_context(ca_bundle: str) -> ssl.SSLContext:
    """System trust plus an optional extra CA file; raises OSError/ssl.SSLError if unusable."""
    ctx = ssl.create_default_context()
    if ca_bundle:
        ctx.load_verify_locations(cafile=ca_bundle)
    return ctx


class UpstreamPool:
    """Hands out connected upstream connections and keeps finished ones alive for reuse."""

    def __init__(
        self,
        upstream_url: str,
        proxy_url: str = "",
        ca_bundle: str = "",
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 600.0,
        clock: Clock = SYSTEM,
    ):
        self.target = Endpoint.from_url(upstream_url)
        self.proxy = Endpoint.from_url(proxy_url) if proxy_url else None
        self._ctx = ssl_context(ca_bundle) if self.target.scheme == "https" else None
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.clock = clock  # the idle connections' ages
        self._idle: list[tuple[http.client.HTTPConnection, float]] = []
        self._lock = threading.Lock()

    def acquire(self) -> tuple[http.client.HTTPConnection, bool]:
        """A connected connection and whether it was reused from the pool."""
        now = self.clock.monotonic()
        while True:
            with self._lock:
                if not self._idle:
                    break
                conn, since = self._idle.pop()
            if now - since < IDLE_TTL_S and _still_open(conn):
                return conn, True
            conn.close()
        return self._open(), False

    def _open(self) -> http.client.HTTPConnection:
        hop = self.proxy or self.target
        if self.target.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                hop.host, hop.port, timeout=self.connect_timeout_s, context=self._ctx
            )
        else:
            conn = http.client.HTTPConnection(hop.host, hop.port, timeout=self.connect_timeout_s)
        conn.response_class = FinalResponse
        if self.proxy:
            conn.set_tunnel(self.target.host, self.target.port)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sock.settimeout(self.read_timeout_s)
        return conn

    def release(self, conn: http.client.HTTPConnection) -> None:
        """Return a connection whose last exchange completed cleanly."""
        if conn.sock is None:
            return
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append((conn, self.clock.monotonic()))
                return
        conn.close()

    @staticmethod
    def discard(conn: http.client.HTTPConnection) -> None:
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()


def _still_open(conn: http.client.HTTPConnection) -> bool:
    """An idle keep-alive socket should have nothing to read; readable means closed or broken."""
    sock = conn.sock
    if sock is None:
        return False
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return False
    poller = select.poll()
    try:
        poller.register(sock, select.POLLIN)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False
