"""The wire: forward each Claude Code exchange upstream and stream the answer straight back.

Nothing here parses bodies. The connection loop has read the request whole (Content-Length, or
de-chunked: connections.py); it is forwarded with the client's headers minus hop-by-hop ones,
and each piece of the response is written to Claude Code and flushed as soon as `read1` returns
it. The bytes already on the wire are referenced by a `Capture` that goes to the tee once the
exchange is over; of a response over `response_keep_bytes`, only its two ends (`KeptResponse`).

Only Claude Code and other local programs are served, never a web page: a request with an
`Origin` header, a browser's `Sec-Fetch-Site` / `Sec-Fetch-Mode`, a Host that is not loopback or
a target that is not a path is refused 403 (`browser_or_stranger`), not forwarded, not captured
and counted in `requests_refused` (as every listener's refusals are: `connections.count_refusal`).
Claude Code sends none of these (tests/security prove it on the recorded corpus). While an
exchange waits on the upstream, the connection loop watches the client socket: a client that
leaves closes the upstream request within a fraction of a second (`_Departure`).
"""

import http.client
import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import Message

from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.ids import new_uuid7
from opik_cipx.stats import Counters
from opik_cipx.wire.budget import Block, Guard
from opik_cipx.wire.capture import Capture, KeptResponse, redact_headers
from opik_cipx.wire.connections import worth_logging
from opik_cipx.wire.endpoints import is_known
from opik_cipx.wire.loopback import LoopbackHandler, loopback_host
from opik_cipx.wire.relay import Outcome, StreamRelay
from opik_cipx.wire.upstream import UpstreamPool

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Set by the gateway itself on the upstream request.
REWRITTEN = frozenset({"host", "content-length", "accept-encoding", "expect"})
DECODABLE_ENCODINGS = ("gzip", "deflate", "identity")
MAX_BODY_BYTES = 64 * 1024 * 1024
RESPONSE_KEEP_BYTES = 32 * 1024 * 1024  # the default of capture_response_max_mb
READ_SIZE = 64 * 1024
# A pooled connection the server closed just as we reused it fails within a round trip; a
# failure later than this may come after the upstream started work, so it is not retried.
STALE_RETRY_WINDOW_S = 0.25
# Anthropic's error type for each status the gateway answers itself.
ERROR_TYPES = {400: "invalid_request_error", 403: "permission_error", 413: "request_too_large",
               431: "invalid_request_error"}
# What the fetch API sends for a script's cross-origin call; Node's fetch (undici) sends it too,
# alone. Every other Sec-Fetch-Mode, and any Sec-Fetch-Site, comes from a browser.
NON_BROWSER_FETCH_MODE = "cors"


class Gateway:
    """State shared by the gateway's handler threads: upstream pool, stream relay, tee, counters, drain."""

    budget: Guard | None = None  # the spend caps' guard, set by the daemon when a cap is set

    def __init__(self, pool: UpstreamPool, tee: Callable[[Capture], object], counters: Counters,
                 response_keep_bytes: int = RESPONSE_KEEP_BYTES, clock: Clock = SYSTEM):
        self.pool = pool
        self.tee = tee
        self.counters = counters
        self.response_keep_bytes = response_keep_bytes  # of each response, for the capture
        self.draining = False
        self.clock = clock  # capture times
        self.relay = StreamRelay(pool.read_timeout_s, clock)  # bodies that arrive over time
        self._inflight = 0
        self._idle = threading.Condition()

    @contextmanager
    def exchange(self) -> Iterator[None]:
        with self._idle:
            self._inflight += 1
        try:
            yield
        finally:
            with self._idle:
                self._inflight -= 1
                if not self._inflight:
                    self._idle.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until no exchange is in flight (True) or `timeout_s` passes (False)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout=timeout_s)

    @property
    def inflight(self) -> int:
        with self._idle:
            return self._inflight

    def close(self) -> None:
        """Stop the relay thread (after `wait_idle`: a body still relayed is cut off)."""
        self.relay.close()


def error_body(message: str, error_type: str = "api_error") -> bytes:
    """An error in the Anthropic API's JSON shape, so Claude Code shows the message."""
    return json.dumps({"type": "error", "error": {"type": error_type, "message": message}}).encode()


def upstream_headers(items: list[tuple[str, str]], host: str, body_len: int | None) -> list[tuple[str, str]]:
    """The client's headers as sent upstream: hop-by-hop dropped, Host and framing rewritten."""
    listed: set[str] = set()
    for name, value in items:
        if name.lower() == "connection":
            listed.update(token.strip().lower() for token in value.split(","))
    out = [("Host", host)]
    accept_encoding = None
    for name, value in items:
        lowered = name.lower()
        if lowered in HOP_BY_HOP or lowered in REWRITTEN or lowered in listed:
            if lowered == "accept-encoding":
                accept_encoding = value
            continue
        out.append((name, value))
    if accept_encoding is not None:
        out.append(("Accept-Encoding", decodable_accept_encoding(accept_encoding)))
    if body_len is not None:
        out.append(("Content-Length", str(body_len)))
    return out


def decodable_accept_encoding(value: str) -> str:
    """Keep only the codings the stdlib can decode later (gzip, deflate, identity)."""
    kept = []
    for token in value.split(","):
        coding = token.split(";", 1)[0].strip().lower()
        if coding in DECODABLE_ENCODINGS:
            kept.append(token.strip())
    return ", ".join(kept) or "identity"


def browser_or_stranger(target: str, headers: Message) -> str | None:
    """Why a request must not be forwarded: it comes from a web page or is not addressed to us; None for a
    local program such as Claude Code. `"host"` when the Host is not one loopback name (the caller words it).

    One pass over the raw headers: each `Message` lookup would walk (and clean) every header again.
    """
    hosts, origin, site, mode = [], False, False, None
    for name, value in headers.raw_items():
        lowered = name.lower()
        if lowered == "host":
            hosts.append(value)
        elif lowered == "origin":
            origin = True
        elif lowered == "sec-fetch-site":
            site = True
        elif lowered == "sec-fetch-mode" and mode is None:
            mode = value.strip().lower()
    if not loopback_host(hosts):
        return "host"
    if origin:
        return "requests from web pages (Origin header) are refused"
    if site or (mode is not None and mode != NON_BROWSER_FETCH_MODE):
        return "requests from a web browser (Sec-Fetch-* headers) are refused"
    if not target.startswith("/"):
        return "the request target must be a path (this is not a forward proxy)"
    return None


class GatewayHandler(LoopbackHandler):
    """One client connection; every method on every path is forwarded."""

    gateway: Gateway  # set on the subclass the daemon builds
    max_body_bytes = MAX_BODY_BYTES

    def __getattr__(self, name: str) -> Callable[[], None]:
        if name.startswith("do_"):
            return self._exchange
        raise AttributeError(name)

    @classmethod
    def screen(cls, listener: str, command: str, target: str, headers: Message) -> tuple[int, str] | None:
        reason = browser_or_stranger(target, headers)
        if reason == "host":
            return cls.not_loopback(listener)
        return (403, f"opik-cipx: {reason}; only Claude Code and local programs may use this proxy") if reason else None

    @classmethod
    def error_document(cls, status: int, message: str) -> tuple[str, bytes]:
        return "application/json", error_body(message, ERROR_TYPES.get(status, "api_error"))

    def _exchange(self) -> None:
        gw = self.gateway
        with gw.exchange():
            if gw.draining:
                self.close_connection = True
            self._headers_sent = False
            try:
                self._forward(gw)
            except Exception:
                gw.counters.incr("panics_recovered")
                log.exception("gateway: unexpected error on %s %s", self.command, self.path.split("?", 1)[0])
                if self._headers_sent:
                    self.close_connection = True
                else:
                    self._reply_error(502, "opik-cipx: internal proxy error; see `opik-cipx logs`")

    def _forward(self, gw: Gateway) -> None:
        started = self.conn.head_at_ns
        capture = Capture(
            id=new_uuid7(started // 1_000_000),
            started_at_ns=started,
            method=self.command,
            path=self.path,
            request_headers=redact_headers(self.headers.items()),
        )
        capture.request_body = body = self.body
        if not is_known(self.command, self.path):
            gw.counters.incr("unknown_endpoints")
        try:
            block = gw.budget.check(self.command, self.path, self.headers) if gw.budget else None
            if block is None:
                self._relay(gw, capture, body)
            else:
                self._answer_blocked(capture, block)
        finally:
            capture.ended_at_ns = gw.clock.time_ns()
            gw.tee(capture)

    def _send_upstream(
        self, gw: Gateway, body: bytes, departure: "_Departure"
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send the request and read the response head.

        A reused pooled connection that turns out to be closed is replaced once, and only when
        the failure shows the upstream cannot have acted on the request: an error while
        sending, or a disconnect with no response byte within `STALE_RETRY_WINDOW_S` (and never
        once the client has left: that disconnect was ours).
        """
        framed = body or "content-length" in self.headers or "transfer-encoding" in self.headers
        headers = upstream_headers(self.headers.items(), gw.pool.target.host_header, len(body) if framed else None)
        retried = False
        while True:
            conn, reused = gw.pool.acquire()
            try:
                if not departure.attach(conn):
                    raise ClientDeparted()
                try:
                    conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for name, value in headers:
                        conn.putheader(name, value)
                    conn.endheaders(body or None)
                except (ConnectionError, ssl.SSLEOFError):
                    if not reused or retried or departure.departed:
                        raise
                    sent = None  # never reached the upstream
                else:
                    sent = gw.clock.monotonic()
                    try:
                        return conn, conn.getresponse()
                    except (http.client.RemoteDisconnected, ConnectionResetError, ssl.SSLEOFError):
                        if (not reused or retried or departure.departed
                                or gw.clock.monotonic() - sent > STALE_RETRY_WINDOW_S):
                            raise
            except BaseException:
                departure.detach()
                gw.pool.discard(conn)
                raise
            departure.detach()
            gw.pool.discard(conn)
            retried = True
            log.debug("gateway: pooled upstream connection was closed by the server; retrying on a new one")

    def _relay(self, gw: Gateway, capture: Capture, body: bytes) -> None:
        departure = _Departure()
        self.conn.on_hangup = departure  # watched by the connection loop meanwhile
        try:
            self._relay_watched(gw, capture, body, departure)
        finally:
            self.conn.on_hangup = None
        if departure.finish() and not capture.client_aborted:
            capture.client_aborted = True
            self.close_connection = True
            log.info("gateway: client left while the upstream was silent; upstream request closed")

    def _relay_watched(self, gw: Gateway, capture: Capture, body: bytes, departure: "_Departure") -> None:
        try:
            conn, resp = self._send_upstream(gw, body, departure)
        except (OSError, http.client.HTTPException, ClientDeparted) as exc:
            if departure.departed:
                return  # the client is gone: nobody to answer, and the upstream error was ours
            capture.upstream_error = describe_upstream_error(exc)
            log.warning("gateway: upstream request failed: %s", capture.upstream_error)
            self._reply_error(502, f"opik-cipx: {capture.upstream_error}")
            return
        capture.ttfb_ns = gw.clock.time_ns()
        capture.status = resp.status
        resp_headers = resp.getheaders()
        capture.response_headers = redact_headers(resp_headers)
        settled = False

        def settle(reusable: bool = True) -> bool:
            """The upstream response is complete: hand its connection back (before the client has the
            last bytes, so its next call finds it pooled) unless it must close or is not `reusable`
            (bytes came after the response); False if the client had left."""
            nonlocal settled
            settled = True
            if departure.finish():
                gw.pool.discard(conn)
                return False
            resp.close()
            (gw.pool.discard if resp.will_close or not reusable else gw.pool.release)(conn)
            return True

        complete = self._stream_response(capture, conn, resp, resp_headers, departure, settle)
        if not settled:
            if complete:
                complete = settle()  # a response without a body
            else:
                departure.finish()
                gw.pool.discard(conn)
        if not complete:
            self.close_connection = True

    def _stream_response(
        self, capture: Capture, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse,
        resp_headers: list[tuple[str, str]], departure: "_Departure", settle: Callable[[bool], bool],
    ) -> bool:
        """Write the response to the client as it arrives, calling `settle` once the upstream side is
        complete (before the last write); False when the exchange broke."""
        has_body = self.command != "HEAD" and resp.status not in (204, 304) and resp.status >= 200
        chunked = has_body and resp.length is None
        if chunked and self.request_version == "HTTP/1.0":
            chunked = False
            self.close_connection = True  # an HTTP/1.0 client reads to EOF instead
        self.send_response_only(resp.status, resp.reason)
        for name, value in resp_headers:
            lowered = name.lower()
            if lowered not in HOP_BY_HOP and not (chunked and lowered == "content-length"):
                self.send_header(name, value)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        if self.close_connection:
            self.send_header("Connection", "close")
        try:
            self.end_headers()
            self._headers_sent = True
        except OSError:
            capture.client_aborted = True
            return False
        if not has_body:
            return True
        kept = KeptResponse(capture.response_parts, self.gateway.response_keep_bytes)
        try:
            if resp.length is None:  # chunked, or until the upstream closes: it arrives over time
                return self._relay_body(capture, conn, resp, departure, settle, kept.add, chunked)
            return self._read_body(capture, resp, departure, settle, kept.add)
        finally:
            if kept.finish(capture):
                truncated = self.gateway.counters.incr("responses_truncated")
                if worth_logging(truncated):
                    log.info("gateway: a response of %d bytes kept in part for the capture (capture_response_max_mb; "
                             "%d so far)", kept.total, truncated)

    def _relay_body(self, capture: Capture, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse,
                    departure: "_Departure", settle: Callable[[bool], bool], keep: Callable[[bytes], None],
                    chunked: bool) -> bool:
        """Hand a body that arrives over time to the relay thread (`relay.py`) and wait for its end."""
        upstream = conn.sock
        upstream.setblocking(False)
        outcome = self.gateway.relay.relay(upstream, read_ahead(resp), bool(resp.chunked), self.conn.sock, chunked,
                                           keep, settle)
        return self._settle_outcome(capture, outcome, departure)

    def _settle_outcome(self, capture: Capture, outcome: Outcome, departure: "_Departure") -> bool:
        """Record how a relayed body ended on the capture (and the log); whether it is complete."""
        if outcome.client_gone:
            capture.client_aborted = True
            log.info("gateway: client disconnected or stopped reading mid-response; upstream connection closed")
        elif outcome.stopped:
            capture.upstream_error = "cut off mid-response: opik-cipx stopped relaying before the response ended"
            log.warning("gateway: %s", capture.upstream_error)
        elif outcome.upstream_error is not None and not departure.departed:  # else the shutdown was ours
            capture.upstream_error = describe_upstream_error(outcome.upstream_error, mid_stream=True)
            log.warning("gateway: upstream broke mid-response: %s", capture.upstream_error)
        return outcome.complete

    def _read_body(self, capture: Capture, resp: http.client.HTTPResponse, departure: "_Departure",
                   settle: Callable[[bool], bool], keep: Callable[[bytes], None]) -> bool:
        """Forward a body of known length piece by piece as it arrives (see `_stream_response`); `keep`
        each piece."""
        write = self.wfile.write
        while True:
            try:
                data = resp.read1(READ_SIZE)
            except (OSError, http.client.HTTPException) as exc:
                if not departure.departed:  # else the shutdown was ours
                    capture.upstream_error = describe_upstream_error(exc, mid_stream=True)
                    log.warning("gateway: upstream broke mid-response: %s", capture.upstream_error)
                return False
            if not data and resp.length:  # EOF before the promised Content-Length
                if not departure.departed:
                    capture.upstream_error = ("upstream connection failed mid-response: "
                                              "body shorter than its Content-Length")
                    log.warning("gateway: %s", capture.upstream_error)
                return False
            last = not data or resp.length == 0
            if last and not settle(True):
                return False
            try:
                if data:
                    keep(data)
                    write(data)
                if last:
                    return True
            except OSError:
                capture.client_aborted = True
                log.info("gateway: client disconnected mid-response; upstream connection closed")
                return False

    def _answer_blocked(self, capture: Capture, block: Block) -> None:
        """A request a spend cap keeps from the upstream: the guard's answer, captured as an
        upstream one would be, marked with the cap (docs/BUDGETS.md)."""
        status, headers, body = block.answer()
        capture.ttfb_ns, capture.status, capture.blocked = self.gateway.clock.time_ns(), status, block.tag
        capture.response_headers = [[name, value] for name, value in [*headers, ("content-type", "application/json")]]
        capture.response_parts.append(body)
        try:
            self._headers_sent = True
            self.send_whole(status, "application/json", body, headers)
        except OSError:
            capture.client_aborted = True
            self.close_connection = True

    def _reply_error(self, status: int, message: str) -> None:
        """The gateway's own answer when the upstream cannot give one (502), in Anthropic's error shape."""
        try:
            self._headers_sent = True
            self.send_whole(status, "application/json", error_body(message))
        except OSError:
            self.close_connection = True


class ClientDeparted(Exception):
    """The client closed its connection before the upstream request was sent."""


class _Departure:
    """The client leaving mid-exchange, reported by the connection loop (`Connection.on_hangup`).

    The loop calls it on its own thread: it marks the exchange and shuts the upstream socket
    down, so a read blocked on a silent upstream ends at once and the upstream request is
    closed. `attach`/`detach` bracket the use of one upstream connection; `finish` marks the
    upstream side done. After either, the loop can no longer touch that connection (it may be
    back in the pool), and after `finish` a client closing is no longer a departure.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._finished = False
        self.departed = False

    def attach(self, conn: http.client.HTTPConnection) -> bool:
        """Watch `conn` on behalf of the client; False if the client has already left."""
        with self._lock:
            self._sock = conn.sock
            return not self.departed

    def detach(self) -> None:
        with self._lock:
            self._sock = None

    def finish(self) -> bool:
        """The upstream side is over; True if the client left before (the connection was shut down)."""
        with self._lock:
            self._sock = None
            self._finished = True
            return self.departed

    def __call__(self) -> None:
        with self._lock:
            if self._finished:
                return
            self.departed = True
            if self._sock is not None:
                try:  # the plain socket's shutdown: SSLSocket.shutdown would drop its TLS state under the reader
                    socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
                except OSError:
                    pass


def read_ahead(resp: http.client.HTTPResponse) -> bytes:
    """The body's first bytes, which http.client read along with the head, taken out of its buffer (the
    upstream socket must be non-blocking: with nothing buffered, this must not wait for the body)."""
    fp = resp.fp
    if fp is None:
        return b""
    try:
        data: bytes = fp.peek()
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
        return b""
    fp.read(len(data))
    return data


def describe_upstream_error(exc: BaseException, mid_stream: bool = False) -> str:
    """One line for the user (and the capture); never includes request or response bytes."""
    where = "mid-response" if mid_stream else "before a response"
    if isinstance(exc, TimeoutError):
        return f"upstream timed out {where}"
    if isinstance(exc, ConnectionRefusedError):
        return "upstream refused the connection (is the API reachable from this machine?)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the upstream host: {exc.strerror}"
    kind = type(exc).__name__
    if isinstance(exc, http.client.HTTPException):
        return f"upstream sent an invalid response {where}: {kind}"  # its message may quote upstream bytes
    detail = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"upstream connection failed {where}: {kind}{': ' + detail if detail else ''}"
