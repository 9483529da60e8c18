"""Client connections of a listener: no thread is spent on a connection until its request head is in.

(docs/ARCHITECTURE.md, "Threads": the listener loops and their handler threads.)

One loop thread per listener (`serve_forever`) accepts connections and reads request heads
without blocking. A connection gets a handler thread only once a whole head (request line to
the blank line) has arrived; one that sends nothing, or stalls mid-head, costs a file
descriptor, never a thread, and is closed at its deadline. A head cut off by the client before
its blank line is answered 400 and never reaches a handler, so nothing incomplete is forwarded.

Bounds (`Limits`, from the `client_*` options):
- idle: a connection waiting for the first byte of a request (new, or kept alive between
  requests) is closed after `idle_timeout_s`;
- head: the rest of a head must arrive within `header_timeout_s` of its first byte;
- body: a handler reading a request body gives it `body_timeout_s` in total;
- at most `max_connections` handler threads. Beyond it a connection kept alive idle in a thread
  is closed to make room (the oldest first, as nginx does); if there is none, the new request
  is refused at once with the handler's 503. Connections waiting for their head are bounded
  too (`max_pending`); beyond it the oldest waiting one is closed.
Deadlines of handler threads are enforced by the loop: it shuts the socket down, so a blocked
read ends as a closed connection. The loop also watches the client socket of an exchange that
asks for it (`ConnectionHandler.hangup_watch`) and reports the client leaving. It arms the watch
at its next scan (`SCAN_INTERVAL_S`), from its own thread: a wire thread makes no extra system
call for it (each one would hand the GIL to the materializer), and an exchange shorter than a
scan costs nothing at all; a client that leaves is noticed within about `SCAN_INTERVAL_S`.
"""

import errno
import heapq
import io
import logging
import re
import resource
import selectors
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, TypeVar

from opik_cipx.stats import Counters

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024  # request line + headers; Claude Code sends about 2 KB
MAX_HEADER_LINES = 100  # as http.client
PENDING_PER_CONNECTION = 4  # connections waiting for a head, per handler thread allowed
ACCEPT_BATCH = 64  # connections accepted per loop turn, so heads already in are not starved
SCAN_INTERVAL_S = 0.2  # how often handler deadlines are checked
LINGER_S = 1.0  # after a refusal with an unread body: how long its rest is read and dropped
LINGER_BYTES = 1024 * 1024
FD_LIMIT_WANTED = 8192
_BLANK_LINE = re.compile(rb"\n\r?\n")
HEAD_CUT_OFF = ("opik-cipx: the request head ended before its blank line (connection closed mid-head); "
                "nothing was forwarded")
_LISTENER = object()
_T = TypeVar("_T")
INFINITY = float("inf")


@dataclass(frozen=True)
class Limits:
    """Per-listener bounds on client connections (see the module docstring; defaults live in config.py)."""

    header_timeout_s: float
    body_timeout_s: float
    idle_timeout_s: float
    max_connections: int

    @property
    def max_pending(self) -> int:
        return PENDING_PER_CONNECTION * self.max_connections


class HeadError(Exception):
    """A request head that cannot be used: `status` is what the client is told."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def head_end(data: bytes | bytearray, start: int = 0) -> int | None:
    """The index just past the blank line that ends the request head in `data`; None while incomplete.

    The first line is the request line, whatever it holds; the head ends at the first empty
    line (`\\r\\n` or `\\n`) after it. `start` skips bytes already searched (a few are re-read).
    """
    first = data.find(b"\n")
    if first < 0:
        return None
    match = _BLANK_LINE.search(data, max(first, start - 2))
    return match.end() if match else None


def read_head(rfile: io.BufferedIOBase) -> bytes | None:
    """The next request head read from `rfile`, line by line; None at a clean end before any byte.

    Raises `HeadError` 400 when the stream ends inside the head (the client closed mid-head)
    and 431 when the head exceeds `MAX_HEAD_BYTES` or `MAX_HEADER_LINES`. Agrees with
    `head_end` on where a head ends.
    """
    lines: list[bytes] = []
    total = 0
    while True:
        line = rfile.readline(MAX_HEAD_BYTES + 1 - total)
        total += len(line)
        if total > MAX_HEAD_BYTES:
            raise HeadError(431, f"opik-cipx: request head larger than {MAX_HEAD_BYTES} bytes")
        if not line.endswith(b"\n"):
            if not lines and not line:
                return None
            raise HeadError(400, HEAD_CUT_OFF)
        lines.append(line)
        if len(lines) > 1 and line in (b"\r\n", b"\n"):
            return b"".join(lines)
        if len(lines) > MAX_HEADER_LINES + 1:
            raise HeadError(431, f"opik-cipx: more than {MAX_HEADER_LINES} header lines")


def raise_fd_limit(wanted: int = FD_LIMIT_WANTED) -> None:
    """Lift the soft open-file limit towards `wanted` (within the hard limit): waiting connections cost a
    descriptor each."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as exc:
        log.debug("cannot raise the open-file limit: %s", exc)


def worth_logging(count: int) -> bool:
    """Log the 1st, 2nd, 4th, 8th... occurrence only: a flood must not turn into disk writes on the wire."""
    return count & (count - 1) == 0


def http_response(status: int, content_type: str, body: bytes, headers: Iterable[tuple[str, str]] = (),
                  close: bool = False) -> bytes:
    """One whole HTTP/1.1 response, framed: every answer a listener makes itself (errors, admin
    documents, viewer pages) is built here, never a relayed upstream one.

    `headers` first, then `Content-Type`, `Content-Length`, `Cache-Control: no-store`, and
    `Connection: close` when `close`. Header values must be latin-1.
    """
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{name}: {value}" for name, value in headers),
             f"Content-Type: {content_type}", f"Content-Length: {len(body)}", "Cache-Control: no-store"]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def count_refusal(counters: Counters, listener: str, status: int, what: str, message: str) -> None:
    """A request `listener` answers `status` itself instead of serving it: counted
    (`Counters.refused`), logged at the 1st, 2nd, 4th... (`what`: the method and route, never a query)."""
    refused = counters.refused(listener, status)
    if worth_logging(refused):
        log.warning("%s listener: refused %s with %d (%d refusals so far): %s",
                    listener, what, status, refused, message)


class _Pending:
    """A connection whose request head is still arriving (owned by the loop thread)."""

    __slots__ = ("sock", "addr", "buf", "deadline")

    def __init__(self, sock: socket.socket, addr: tuple[str, int], deadline: float):
        self.sock = sock
        self.addr = addr
        self.buf = bytearray()
        self.deadline = deadline


class Connection:
    """A client connection served by a handler thread; its phase, deadline and hang-up watch are read by the loop."""

    def __init__(self, sock: socket.socket, addr: tuple[str, int], prefix: bytes):
        self.sock = sock
        self.addr = addr
        self.prefix = prefix  # bytes the loop already read: the first head, maybe more
        self.linger = False  # the handler refused a request whose body is unread
        self._lock = threading.Lock()
        self.phase: str | None = None
        self.since = time.monotonic()
        self.deadline = INFINITY
        self.cut_reason: str | None = None
        self.on_hangup: Callable[[], None] | None = None  # set by the handler while an exchange wants watching
        self._armed_for: Callable[[], None] | None = None  # what the loop registered the socket for
        self._spent: Callable[[], None] | None = None  # a watch ended by bytes from the client: not re-armed
        self._released = False

    def arm(self, selector: selectors.BaseSelector) -> None:
        """On the loop thread: register the socket for the watch the handler wants now, or unregister it."""
        with self._lock:
            wanted = self.on_hangup
            if self._released or wanted is self._armed_for or (wanted is not None and wanted is self._spent):
                return
            if self._armed_for is not None:
                _unregister(selector, self.sock)
                self._armed_for = None
            if wanted is not None:
                try:
                    selector.register(self.sock, selectors.EVENT_READ, self)
                except (KeyError, ValueError, OSError):  # closed under us: nothing to watch
                    return
                self._armed_for = wanted

    def readable(self, selector: selectors.BaseSelector) -> Callable[[], None] | None:
        """On the loop thread, the socket being readable: the callback to run if the client has left."""
        with self._lock:
            if self._released or self._armed_for is None:
                return None
            try:
                data = self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:
                data = b""  # reset
            callback, self._armed_for, self._spent = self._armed_for, None, self._armed_for
            _unregister(selector, self.sock)  # bytes waiting (a pipelined request) end the watch too
            return callback if not data and self.on_hangup is callback else None

    def release(self, selector: selectors.BaseSelector) -> None:
        """On the handler thread, before the socket closes: the loop lets go of it."""
        with self._lock:
            self._released = True
            if self._armed_for is not None:
                _unregister(selector, self.sock)
                self._armed_for = None

    def enter(self, phase: str | None, timeout_s: float | None = None) -> bool:
        """Start `phase` (idle, head, body; None: no deadline); False if the loop already cut the connection.

        Plain attribute writes, no lock: this runs several times per request on the wire, and the
        loop only reads them (at worst it sees a deadline a moment late or early).
        """
        if self.cut_reason:
            return False
        if timeout_s is None:
            self.deadline, self.phase = INFINITY, phase
        else:
            now = time.monotonic()
            self.deadline, self.phase, self.since = now + timeout_s, phase, now
        return True

    def cut(self, reason: str) -> bool:
        """End the connection from the loop thread: a blocked read in the handler returns end-of-stream."""
        with self._lock:
            if self.cut_reason:
                return False
            self.cut_reason = reason
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        return True

    def close(self) -> None:
        if self.linger and not self.cut_reason:
            _drain_and_close(self.sock)
        else:
            _close(self.sock)


class _ConnReader(io.RawIOBase):
    """The client socket as a raw stream, starting with the bytes the loop read ahead."""

    def __init__(self, sock: socket.socket, prefix: bytes):
        self._sock = sock
        self._prefix: memoryview | None = memoryview(prefix) if prefix else None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]  # BufferedReader passes a memoryview
        if self._prefix is not None:
            n = min(len(buffer), len(self._prefix))
            buffer[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:] if n < len(self._prefix) else None
            return n
        return self._sock.recv_into(buffer)


class _ConnWriter(io.BufferedIOBase):
    """Unbuffered writes straight to the socket (what http.server does with wbufsize 0)."""

    def __init__(self, sock: socket.socket):
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]  # what handlers write
        self._sock.sendall(data)
        with memoryview(data) as view:
            return view.nbytes


def _unregister(selector: selectors.BaseSelector, sock: socket.socket) -> None:
    try:
        selector.unregister(sock)
    except (KeyError, ValueError):
        pass


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()


def _drain_and_close(sock: socket.socket) -> None:
    """Close after a refusal without resetting the connection: stop writing, read and drop what the
    client still sends (bounded), then close, so it reads our answer instead of a reset."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(LINGER_S)
        deadline, left = time.monotonic() + LINGER_S, LINGER_BYTES
        while left > 0 and time.monotonic() < deadline and (data := sock.recv(min(left, 65536))):
            left -= len(data)
    except OSError:
        pass
    sock.close()


def _send_and_close(sock: socket.socket, response: bytes) -> None:
    """Best effort from the loop thread: never blocks."""
    try:
        sock.send(response)
        for _ in range(16):  # what the client already sent, so the close is not a reset
            if not sock.recv(65536):
                break
    except OSError:
        pass
    _close(sock)


class ConnectionServer(socketserver.TCPServer):
    """A TCP server whose loop reads request heads itself and hands complete ones to handler threads.

    `RequestHandlerClass` must be a `ConnectionHandler`. `serve_forever`, `shutdown` and
    `server_close` keep the meaning they have in `socketserver`.
    """

    allow_reuse_address = True
    request_queue_size = 128
    RequestHandlerClass: type["ConnectionHandler"]

    def __init__(self, address: tuple[str, int], handler: type["ConnectionHandler"], limits: Limits,
                 counters: Counters | None = None):
        self.limits = limits
        self.counters = counters or Counters()
        self.name = getattr(self, "name", "listener")
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}  # by fd, oldest first
        self._deadlines: list[tuple[float, int, _Pending]] = []
        self._seq = 0
        self._active: set[Connection] = set()
        self._stop = False
        self._stopped = threading.Event()
        self._stopped.set()
        self._accept_paused_until = 0.0
        self._next_scan = 0.0
        super().__init__(address, handler)

    # ---- the loop ---------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._stop = False
        self._stopped.clear()
        try:
            self.socket.setblocking(False)
            self._selector.register(self.socket, selectors.EVENT_READ, _LISTENER)
            while not self._stop:
                now = time.monotonic()
                timeout = poll_interval
                if self._deadlines:
                    timeout = max(0.0, min(timeout, self._deadlines[0][0] - now))
                for key, _ in self._selector.select(timeout):
                    self._guarded(self._event, key.data)
                self._guarded(self._expire, time.monotonic())
        finally:
            self._stopped.set()

    def _event(self, data: object) -> None:
        if data is _LISTENER:
            self._accept()
        elif isinstance(data, _Pending):
            self._read(data)
        else:
            assert isinstance(data, Connection)  # the only other thing the loop registers
            self._hangup(data)

    def _guarded(self, step: Callable[[_T], None], arg: _T) -> None:
        """One step of the loop: a bug in it is logged and counted, never the end of the listener."""
        try:
            step(arg)
        except Exception:
            self.counters.incr("panics_recovered")
            log.exception("%s listener: unexpected error in the connection loop", self.name)

    def shutdown(self) -> None:
        """Stop the loop (no new connections or heads); handler threads finish on their own."""
        self._stop = True
        self._stopped.wait()

    def server_close(self) -> None:
        for pending in list(self._pending.values()):
            self._drop(pending)
        super().server_close()
        self._selector.close()

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = self.socket.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: make room by closing the oldest waiting connection, or
                    # stop accepting for a moment instead of spinning on the listener.
                    if not self._evict_oldest():
                        self._pause_accept()
                    log.warning("%s listener: cannot accept: %s", self.name, exc.strerror)
                return
            if len(self._pending) >= self.limits.max_pending:
                self._evict_oldest()
            sock.setblocking(False)
            pending = _Pending(sock, addr, time.monotonic() + self.limits.idle_timeout_s)
            self._pending[sock.fileno()] = pending
            self._push_deadline(pending)
            self._selector.register(sock, selectors.EVENT_READ, pending)

    def _pause_accept(self) -> None:
        self._selector.unregister(self.socket)
        self._accept_paused_until = time.monotonic() + 0.1

    def _evict_oldest(self) -> bool:
        if not self._pending:
            return False
        self.counters.incr("connections_refused")
        self._drop(next(iter(self._pending.values())))
        return True

    def _push_deadline(self, pending: _Pending) -> None:
        self._seq += 1
        heapq.heappush(self._deadlines, (pending.deadline, self._seq, pending))

    def _drop(self, pending: _Pending) -> None:
        if self._pending.pop(pending.sock.fileno(), None) is not None:
            self._selector.unregister(pending.sock)
        pending.sock.close()

    def _read(self, pending: _Pending) -> None:
        try:
            data = pending.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if pending.buf:  # the client ended its side inside the head: nothing is forwarded
                self._refuse(pending, 400, HEAD_CUT_OFF)
            else:
                self._drop(pending)
            return
        searched = len(pending.buf)
        if not searched:
            pending.deadline = time.monotonic() + self.limits.header_timeout_s
            self._push_deadline(pending)
        pending.buf += data
        end = head_end(pending.buf, searched)
        if end is None and len(pending.buf) <= MAX_HEAD_BYTES:
            return
        if end is None or end > MAX_HEAD_BYTES:
            self._refuse(pending, 431, f"opik-cipx: request head larger than {MAX_HEAD_BYTES} bytes")
            return
        self._dispatch(pending)

    def _refuse(self, pending: _Pending, status: int, message: str) -> None:
        count_refusal(self.counters, self.name, status, "a request head", message)
        self._pending.pop(pending.sock.fileno(), None)
        self._selector.unregister(pending.sock)
        pending.buf = bytearray()
        _send_and_close(pending.sock, self.RequestHandlerClass.canned_response(status, message))

    def _dispatch(self, pending: _Pending) -> None:
        self._pending.pop(pending.sock.fileno(), None)
        self._selector.unregister(pending.sock)
        with self._lock:
            room = len(self._active) < self.limits.max_connections or self._reclaim_idle()
            if room:
                conn = Connection(pending.sock, pending.addr, bytes(pending.buf))
                self._active.add(conn)
        pending.buf = bytearray()  # its heap entry may outlive it until its deadline
        if not room:
            self.counters.incr("connections_refused")
            refused = self.counters.get("connections_refused")
            if worth_logging(refused):
                log.warning("%s listener: %d connections busy; refused a request (client_max_connections; %d so far)",
                            self.name, self.limits.max_connections, refused)
            message = (f"opik-cipx: too many connections at once (more than {self.limits.max_connections}); "
                       "retry shortly")
            _send_and_close(pending.sock, self.RequestHandlerClass.canned_response(503, message))
            return
        pending.sock.setblocking(True)
        try:
            threading.Thread(target=self._serve, args=(conn,), name=f"cipx-{self.name}-conn", daemon=True).start()
        except RuntimeError:  # the system cannot start another thread
            with self._lock:
                self._active.discard(conn)
            self.counters.incr("connections_refused")
            pending.sock.setblocking(False)
            _send_and_close(pending.sock, self.RequestHandlerClass.canned_response(
                503, "opik-cipx: cannot start a thread for this connection (system limit); retry shortly"))

    def _reclaim_idle(self) -> bool:
        """Close the connection that has waited longest, idle, for its next request (lock held)."""
        idle = [conn for conn in self._active if conn.phase == "idle"]
        for conn in sorted(idle, key=lambda c: c.since):
            if conn.cut("reclaimed"):
                self._active.discard(conn)
                return True
        return False

    def _serve(self, conn: Connection) -> None:
        try:
            self.RequestHandlerClass(conn, conn.addr, self)  # type: ignore[arg-type]  # setup() takes the Connection
        except Exception:
            self.handle_error(conn.sock, conn.addr)
        finally:
            with self._lock:
                self._active.discard(conn)
            conn.release(self._selector)
            conn.close()

    def _expire(self, now: float) -> None:
        """Close waiting connections past their deadline, cut handler connections past theirs."""
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, _, pending = heapq.heappop(self._deadlines)
            if pending.deadline == deadline and self._pending.get(pending.sock.fileno()) is pending:
                if pending.buf:
                    self.counters.incr("requests_timed_out")
                self._drop(pending)
                pending.buf = bytearray()
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self._selector.register(self.socket, selectors.EVENT_READ, _LISTENER)
        if now < self._next_scan:
            return
        self._next_scan = now + SCAN_INTERVAL_S
        with self._lock:
            active = list(self._active)
        for conn in active:
            conn.arm(self._selector)
        for conn in (conn for conn in active if conn.deadline <= now):
            phase = conn.phase
            if conn.cut(f"{phase} timeout") and phase != "idle":
                self.counters.incr("requests_timed_out")
                log.info("%s listener: closed a connection whose request %s took too long", self.name, phase)

    def _hangup(self, conn: Connection) -> None:
        callback = conn.readable(self._selector)
        if callback is not None:
            try:
                callback()
            except Exception:  # the loop serves every connection: a bug here must not end it
                log.exception("%s listener: hang-up callback failed", self.name)


class ConnectionHandler(BaseHTTPRequestHandler):
    """Base of every handler served by a `ConnectionServer`.

    Reads each head with `read_head` (a head cut off mid-way is a 400, never a request) and
    runs each phase of the connection under its deadline. Subclasses answer `do_<METHOD>`,
    may refuse a request in `check_request` and shape error bodies in `error_document`. A handler
    reading a body brackets it with `self.conn.enter("body", limits.body_timeout_s)` and
    `self.conn.enter(None)`; one waiting on something slow sets `self.conn.on_hangup` to a
    callback the loop calls (on its thread) if the client closes the connection meanwhile (a
    half-close counts, as with nginx), and clears it after.
    """

    protocol_version = "HTTP/1.1"
    server: ConnectionServer
    rfile: io.BufferedReader

    def setup(self) -> None:
        conn: Connection = self.request
        self.conn = conn
        self.request = self.connection = conn.sock
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = io.BufferedReader(_ConnReader(conn.sock, conn.prefix))
        self.wfile = _ConnWriter(conn.sock)
        conn.prefix = b""

    def handle_one_request(self) -> None:
        limits = self.server.limits
        self.close_connection = True
        if not self.conn.enter("idle", limits.idle_timeout_s):
            return
        buffered = self.rfile.peek(1)  # waits for the first byte of the next request
        if not buffered:
            return
        end = head_end(buffered)
        if end is not None:  # the whole head is buffered (always so for the first one): no line-by-line read
            head: bytes | None = self.rfile.read(end)
        else:
            if not self.conn.enter("head", limits.header_timeout_s):
                return
            try:
                head = read_head(self.rfile)
            except HeadError as exc:
                count_refusal(self.server.counters, self.server.name, exc.status, "a request head", str(exc))
                self.send_canned(exc.status, str(exc))
                return
        self.conn.enter(None)
        if head is None:
            return
        split = head.index(b"\n") + 1
        self.raw_requestline, headers = head[:split], head[split:]
        rfile, self.rfile = self.rfile, io.BytesIO(headers)  # type: ignore[assignment]  # for parse_request only
        try:
            parsed = self.parse_request()
        finally:
            self.rfile = rfile
        if not parsed:
            return
        refusal = self.check_request()
        if refusal is not None:
            self.refuse(*refusal)
            return
        method = getattr(self, f"do_{self.command}", None)
        if method is None:
            self.refuse(501, f"opik-cipx: the {self.server.name} listener does not serve {self.command} requests")
            return
        method()
        self.wfile.flush()

    def check_request(self) -> tuple[int, str] | None:
        """(status, message) to refuse the request before it is handled; None to handle it."""
        return None

    def refuse(self, status: int, message: str) -> None:
        """Answer `status` without reading the body, then close (lingering so the answer is read).
        Counted and logged as a refusal (`count_refusal`)."""
        count_refusal(self.server.counters, self.server.name, status,
                      f"{self.command} {self.path.split('?', 1)[0][:200]}", message)
        self.close_connection = True
        if "content-length" in self.headers or "transfer-encoding" in self.headers:
            self.conn.linger = True
        self.send_canned(status, message)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a malformed request line or header block, from `parse_request`):
        the listener's error document, counted, instead of http.server's HTML page."""
        text = f"opik-cipx: {message or HTTPStatus(code).phrase}"
        count_refusal(self.server.counters, self.server.name, code, "a malformed request", HTTPStatus(code).phrase)
        self.send_canned(code, text)

    def send_canned(self, status: int, message: str) -> None:
        self.close_connection = True
        try:
            self.wfile.write(self.canned_response(status, message))
        except OSError:
            pass

    def send_whole(self, status: int, content_type: str, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Answer with one whole response of the handler's own (`http_response`), in one write."""
        self.wfile.write(http_response(status, content_type, body, headers, close=self.close_connection))

    @classmethod
    def error_document(cls, status: int, message: str) -> tuple[str, bytes]:
        """(content type, body) of an error answer; subclasses speak their clients' language."""
        return "text/plain; charset=utf-8", message.encode() + b"\n"

    @classmethod
    def canned_response(cls, status: int, message: str) -> bytes:
        """The error answer that closes the connection (the loop sends it too: it has no handler)."""
        content_type, body = cls.error_document(status, message)
        return http_response(status, content_type, body, close=True)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s: " + format, self.server.name, *args)
