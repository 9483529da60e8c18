"""Client connections of a listener: a thread serves a request only once the whole request is in.

(docs/ARCHITECTURE.md, "Processes and threads": the listener loops and their handler threads.)

One loop thread per listener (`serve_forever`) accepts connections and reads every request, head
and body, without blocking. Only a whole request (request line to the last byte of its body,
delimited by `framing.py`) is handed to a handler thread. A connection that sends nothing,
stalls mid-head or mid-body, or waits between requests costs a file descriptor and the bytes it
sent, never a thread or a slot, and is closed at its deadline; after its answer a kept-alive
connection goes back to the loop. A head cut off by the client before its blank line is answered
400, and a body whose framing is unusable 400 or 413: neither reaches a handler, so nothing
incomplete is forwarded.

Bounds (`Limits`, from the `client_*` options):
- idle: a connection waiting for the first byte of a request (new, or kept alive between
  requests) is closed after `idle_timeout_s`;
- head: the rest of a head must arrive within `header_timeout_s` of its first byte;
- body: the body must arrive within `body_timeout_s` of the end of the head;
- at most `max_connections` requests are served at once (handler threads busy); a whole request
  beyond it is refused at once with the handler's 503. Connections in the loop are bounded too
  (`max_pending`); beyond it the oldest is closed;
- at most `max_buffered_bytes` of requests are held at once: the bytes the loop has read of
  requests still arriving, and the requests in service until their answer is over. Bytes that
  would go beyond it first make room by turning away requests that have been arriving for
  `stale_after_s` or longer, oldest first (a stalled body cannot keep its room from a request
  that is ready); if that is not enough, the request they belong to is turned away. Turned away
  is a 503, counted in `connections_refused`, after which what the client still sends is read and
  dropped (bounded) so it reads the answer rather than a reset.
Only the user who runs the daemon is served: on Linux a connection whose peer socket is another
user's is answered 403 as it is accepted, counted in `connections_not_owner` and closed
(`peer.py`); the requests it would carry are never read. `Expect: 100-continue` is answered by
the loop, and only for a request the handler would serve (`ConnectionHandler.screen_head`);
any other gets its refusal at once instead.
Handler threads are pooled (`_Workers`): an idle one takes the next request at once, and one is
started only when none is idle. The loop also watches the client socket of an exchange that asks
for it (`ConnectionHandler.hangup_watch`) and reports the client leaving. It arms the watch at
its next scan (`SCAN_INTERVAL_S`), from its own thread: a wire thread makes no extra system call
for it (each one would hand the GIL to the materializer), and an exchange shorter than a scan
costs nothing at all; a client that leaves is noticed within about `SCAN_INTERVAL_S`.
"""

import errno
import heapq
import http.client
import io
import logging
import os
import queue
import resource
import selectors
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, TypeVar

from opik_cipx.clock import SYSTEM
from opik_cipx.stats import Counters
from opik_cipx.wire.framing import BODY_RECV_BYTES, CONTINUE, FramingError, RequestReader, header_fields
from opik_cipx.wire.peer import PeerLookup

log = logging.getLogger(__name__)

PENDING_PER_CONNECTION = 4  # connections in the loop, per handler thread allowed
ACCEPT_BATCH = 64  # connections accepted per loop turn, so requests already in are not starved
SCAN_INTERVAL_S = 0.2  # how often hang-up watches are armed
DRAIN_S = 30.0  # after a refusal, how long what the client still sends is read and dropped
DRAIN_BYTES = 80 * 1024 * 1024  # and how much of it at most (above the gateway's largest body)
WORKER_IDLE_S = 60.0  # a handler thread with nothing to serve for this long ends
STALE_AFTER_S = 1.0  # a request still arriving after this long may be dropped to make room for others
FD_LIMIT_WANTED = 8192
HEAD_CUT_OFF = ("opik-cipx: the request head ended before its blank line (connection closed mid-head); "
                "nothing was forwarded")
_LISTENER = object()
_WAKE = object()
_T = TypeVar("_T")
INFINITY = float("inf")


@dataclass(frozen=True)
class Limits:
    """Per-listener bounds on client connections (see the module docstring; defaults live in config.py)."""

    header_timeout_s: float
    body_timeout_s: float
    idle_timeout_s: float
    max_connections: int
    max_buffered_bytes: int = 256 * 1024 * 1024
    stale_after_s: float = STALE_AFTER_S

    @property
    def max_pending(self) -> int:
        return PENDING_PER_CONNECTION * self.max_connections


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


def request_what(head: bytes | None) -> str:
    """How a refusal names a request in the log: its method and route (never the query), or "a request head"."""
    if not head:
        return "a request head"
    method, _, rest = head.split(b"\n", 1)[0].decode("latin-1").partition(" ")
    return f"{method[:20]} {rest.split(' ', 1)[0].split('?', 1)[0][:200]}"


class _Incoming:
    """A connection in the loop: waiting for a request, or reading one (owned by the loop thread)."""

    __slots__ = ("sock", "addr", "deadline", "reader", "head_at_ns", "since", "held", "draining")

    def __init__(self, sock: socket.socket, addr: tuple[str, int], deadline: float, max_body: int):
        self.sock = sock
        self.addr = addr
        self.deadline = deadline
        self.reader = RequestReader(max_body)
        self.head_at_ns = 0  # wall clock, when the head was whole
        self.since = 0.0  # monotonic time the request's first byte arrived
        self.held = 0  # its bytes counted against `max_buffered_bytes`
        self.draining = 0  # after a refusal: bytes of the client's request still to read and drop, at most

    @classmethod
    def after_refusal(cls, sock: socket.socket, addr: tuple[str, int], response: bytes) -> "_Incoming | None":
        """Send `response` (a refusal), and the connection in which to read and drop what the client still
        sends (`drain`, at most `DRAIN_BYTES` for `DRAIN_S`), so that a client still sending its body
        reads the answer rather than a reset; None if the client is gone already."""
        try:
            sock.setblocking(False)
            sock.send(response)  # a few hundred bytes: the socket's buffer takes them at once
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return None
        drain = cls(sock, addr, SYSTEM.monotonic() + DRAIN_S, 0)
        drain.draining = DRAIN_BYTES
        return drain

    def drain(self) -> bool:
        """After a refusal: read and drop what the client still sends; True once done (it closed, or enough came)."""
        try:
            data = self.sock.recv(BODY_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        self.draining -= len(data)
        return not data or self.draining <= 0


class _Waiting:
    """The connections in the loop, oldest first, each under its deadline (owned by the loop thread)."""

    def __init__(self, most: int):
        self.most = most
        self._by_fd: dict[int, _Incoming] = {}
        self._deadlines: list[tuple[float, int, _Incoming]] = []  # a heap; entries of deadlines since moved stay
        self._seq = 0

    def full(self) -> bool:
        return len(self._by_fd) >= self.most

    def add(self, incoming: _Incoming) -> None:
        self._by_fd[incoming.sock.fileno()] = incoming
        self._push(incoming)

    def holds(self, incoming: _Incoming) -> bool:
        return self._by_fd.get(incoming.sock.fileno()) is incoming

    def remove(self, incoming: _Incoming) -> bool:
        return self._by_fd.pop(incoming.sock.fileno(), None) is not None

    def oldest(self) -> _Incoming | None:
        return next(iter(self._by_fd.values()), None)

    def all(self) -> list[_Incoming]:
        return list(self._by_fd.values())

    def set_deadline(self, incoming: _Incoming, timeout_s: float) -> None:
        incoming.deadline = SYSTEM.monotonic() + timeout_s
        self._push(incoming)

    def next_deadline(self) -> float:
        return self._deadlines[0][0] if self._deadlines else INFINITY

    def expired(self, now: float) -> list[_Incoming]:
        """The connections whose deadline has passed (still to be closed by the caller)."""
        out = []
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, _, incoming = heapq.heappop(self._deadlines)
            if incoming.deadline == deadline and self.holds(incoming):
                out.append(incoming)
        return out

    def stale(self, now: float, after_s: float, besides: _Incoming) -> list[_Incoming]:
        """Connections whose request has been arriving for `after_s` or longer, oldest first."""
        return sorted((other for other in self._by_fd.values() if other is not besides and other.reader.started
                       and now - other.since >= after_s), key=lambda other: other.since)

    def _push(self, incoming: _Incoming) -> None:
        self._seq += 1
        heapq.heappush(self._deadlines, (incoming.deadline, self._seq, incoming))


class _Budget:
    """Request bytes held at once by a listener, within `limit` (`Limits.max_buffered_bytes`); any thread."""

    def __init__(self, limit: int):
        self.limit = limit
        self._held = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        """Count `size` more bytes, if they fit."""
        with self._lock:
            if self._held + size > self.limit:
                return False
            self._held += size
            return True

    def give(self, size: int) -> None:
        with self._lock:
            self._held -= size


class Connection:
    """A whole request, served by a handler thread; its hang-up watch is armed and reported by the loop.

    `keep_alive` (set by the handler) hands the connection back to the loop after the answer,
    with `rest`: bytes the client sent after this request (a pipelined one).
    """

    def __init__(self, sock: socket.socket, addr: tuple[str, int], head: bytes, head_at_ns: int, body: bytes,
                 rest: bytes, held: int):
        self.sock = sock
        self.addr = addr
        self.head = head
        self.head_at_ns = head_at_ns  # wall clock, when the head was whole
        self.body = body
        self.rest = rest
        self.held = held  # bytes counted against `max_buffered_bytes` until the answer is over
        self.keep_alive = False
        self._lock = threading.Lock()
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
        """On the handler thread, after the answer: the loop lets go of the watch."""
        with self._lock:
            self._released = True
            if self._armed_for is not None:
                _unregister(selector, self.sock)
                self._armed_for = None


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


class _Workers:
    """A listener's handler threads: an idle one takes the next request at once (no thread is started
    on the wire), a new one only when none is idle; one left idle for `WORKER_IDLE_S` ends."""

    def __init__(self, name: str, serve: Callable[[Connection], None]):
        self._name = name
        self._serve = serve
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._closed = False

    def run(self, conn: Connection) -> bool:
        """Serve `conn` on a worker; False if no thread could be started (a system limit)."""
        with self._lock:
            if self._idle:
                self._idle -= 1
                self._queue.put(conn)
                return True
        try:
            threading.Thread(target=self._work, args=(conn,), name=self._name, daemon=True).start()
        except RuntimeError:
            return False
        return True

    def close(self) -> None:
        """End the idle workers now and the busy ones after their request."""
        with self._lock:
            idle, self._idle, self._closed = self._idle, 0, True
        for _ in range(idle):
            self._queue.put(None)

    def _work(self, conn: Connection | None) -> None:
        while conn is not None:
            self._serve(conn)
            with self._lock:
                if self._closed:
                    return
                self._idle += 1
            try:
                conn = self._queue.get(timeout=WORKER_IDLE_S)
            except queue.Empty:
                with self._lock:
                    try:
                        conn = self._queue.get_nowait()  # handed over just as the wait ended
                    except queue.Empty:
                        self._idle -= 1
                        return


def _wake_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair the loop listens on, so another thread can wake it (`ConnectionServer._wake`)."""
    pair = socket.socketpair()
    for sock in pair:
        sock.setblocking(False)
    return pair


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


class ConnectionServer(socketserver.TCPServer):
    """A TCP server whose loop reads whole requests itself and hands them to handler threads.

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
        self._waiting = _Waiting(limits.max_pending)
        self._budget = _Budget(limits.max_buffered_bytes)
        self._active: set[Connection] = set()
        self._returned: list[tuple[_Incoming, bytes]] = []  # kept-alive connections handed back by handler threads
        self._wake_r, self._wake_w = _wake_pair()
        self._workers = _Workers(f"cipx-{self.name}-conn", self._serve)
        self.owner_uid = os.geteuid()
        self._peers = PeerLookup()  # used by the loop thread only
        self._stop = False
        self._stopped = threading.Event()
        self._stopped.set()
        self._accepting = True
        self._accept_closed = threading.Event()
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
            self._selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)
            while not self._stop:
                timeout = max(0.0, min(poll_interval, self._waiting.next_deadline() - SYSTEM.monotonic()))
                events = self._selector.select(timeout)
                if self._returned:  # first: a connection handed back may be among the events
                    self._guarded(self._take_returned, None)
                for key, _ in events:
                    self._guarded(self._event, key.data)
                self._guarded(self._expire, SYSTEM.monotonic())
        finally:
            if not self._accepting:
                self._close_listener()
            self._stopped.set()

    def _event(self, data: object) -> None:
        if data is _LISTENER:
            self._accept()
        elif data is _WAKE:
            try:
                self._wake_r.recv(4096)
            except OSError:
                pass
            if not self._accepting:
                self._close_listener()
        elif isinstance(data, _Incoming):
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

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:  # full: the loop is being woken already
            pass

    def stop_accepting(self) -> None:
        """Close the listening socket (the system refuses new connections) and go on serving the
        connections already open until `shutdown`: a stopping daemon lets their calls in and finish."""
        self._accepting = False
        if self._stopped.is_set():
            self._close_listener()
        else:
            self._wake()
        self._accept_closed.wait()

    def _close_listener(self) -> None:
        if self._accept_closed.is_set():
            return
        _unregister(self._selector, self.socket)
        self.socket.close()
        self._accept_closed.set()

    def shutdown(self) -> None:
        """Stop the loop (no new connections or requests); handler threads finish on their own."""
        self._stop = True
        self._wake()
        self._stopped.wait()

    def server_close(self) -> None:
        for incoming in self._waiting.all():
            self._drop(incoming)
        with self._lock:
            returned, self._returned = self._returned, []
        for incoming, _ in returned:
            _unregister(self._selector, incoming.sock)
            incoming.sock.close()
        self._workers.close()
        self._peers.close()
        super().server_close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

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
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # already reset by the client
                sock.close()
                continue
            if not self._from_owner(sock, addr):
                continue
            incoming = _Incoming(sock, addr, SYSTEM.monotonic() + self.limits.idle_timeout_s,
                                 self.RequestHandlerClass.max_body_bytes)
            self._watch(incoming)
            self._selector.register(sock, selectors.EVENT_READ, incoming)

    def _from_owner(self, sock: socket.socket, addr: tuple[str, int]) -> bool:
        """Whether the peer's socket belongs to the user the daemon runs as (where the system can tell:
        `PeerLookup`); a connection from anyone else is answered 403, counted and closed. Once per
        connection: the requests it carries after the first cost nothing more."""
        if not self._peers.available:
            return True
        try:
            uid = self._peers.uid(sock.getsockname(), addr)
        except OSError:  # reset by the client already
            uid = None
        if uid == self.owner_uid:
            return True
        refused = self.counters.incr("connections_not_owner")
        if worth_logging(refused):
            log.warning("%s listener: refused a connection from uid %s, not the daemon's owner (%d so far)",
                        self.name, "unknown" if uid is None else uid, refused)
        message = "opik-cipx: this listener serves only the user who runs it"
        self._answer_and_drain(sock, addr, self.RequestHandlerClass.canned_response(403, message))
        return False

    def _watch(self, incoming: _Incoming) -> None:
        """Count `incoming` among the loop's connections, under its idle deadline."""
        if self._waiting.full():
            self._evict_oldest()
        self._waiting.add(incoming)

    def _take_returned(self, _: None) -> None:
        """Connections handed back after their answer (`_hand_back`): idle again, or their next request."""
        with self._lock:
            returned, self._returned = self._returned, []
        now = SYSTEM.monotonic()
        for incoming, rest in returned:
            incoming.deadline = now + self.limits.idle_timeout_s
            self._watch(incoming)
            if rest and self._waiting.holds(incoming):
                self._take(incoming, rest)

    def _pause_accept(self) -> None:
        self._selector.unregister(self.socket)
        self._accept_paused_until = SYSTEM.monotonic() + 0.1

    def _evict_oldest(self) -> bool:
        oldest = self._waiting.oldest()
        if oldest is None:
            return False
        self.counters.incr("connections_refused")
        self._drop(oldest)
        return True

    def _forget(self, incoming: _Incoming, release: bool = True) -> None:
        """The loop lets go of `incoming` (its heap entry may outlive it until its deadline), and of the
        bytes it held unless they go on being held (`release`: False for a request dispatched)."""
        if self._waiting.remove(incoming):
            _unregister(self._selector, incoming.sock)
        if release:
            self._budget.give(incoming.held)
        incoming.held = 0
        incoming.reader = RequestReader(0)  # the bytes it held go now, though its heap entry stays

    def _drop(self, incoming: _Incoming) -> None:
        self._forget(incoming)
        incoming.sock.close()

    def _read(self, incoming: _Incoming) -> None:
        if incoming.draining:
            if incoming.drain():
                self._drop(incoming)
            return
        try:
            data = incoming.sock.recv(incoming.reader.wanted)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            self._take(incoming, data)
        elif incoming.reader.started and incoming.reader.head is None:  # the client ended its side inside the head
            self._refuse(incoming, 400, HEAD_CUT_OFF)
        else:  # nothing begun, or the client left mid-body: nothing was forwarded
            self._drop(incoming)

    def _take(self, incoming: _Incoming, data: bytes) -> None:
        """Bytes that arrived on `incoming`: its head, then its body; a whole request is dispatched."""
        reader = incoming.reader
        if not reader.started:
            incoming.since = SYSTEM.monotonic()
            self._waiting.set_deadline(incoming, self.limits.header_timeout_s)
        if not self._hold(incoming, len(data)):
            return
        try:
            if reader.head is None:
                after = reader.take_head(data)
                if after is None or not self._head_in(incoming, waiting=not after):
                    return
                data = after
            rest = reader.take_body(data)
        except FramingError as exc:
            self._refuse(incoming, exc.status, f"opik-cipx: {exc}")
            return
        if rest is not None:
            self._dispatch(incoming, rest)

    def _head_in(self, incoming: _Incoming, waiting: bool) -> bool:
        """The head is whole: the body's deadline, and `100 Continue` when the client waits for it (no
        byte of the body came with the head) and the handler would serve the request; False if refused."""
        incoming.head_at_ns = SYSTEM.time_ns()
        head, framing = incoming.reader.head, incoming.reader.framing
        assert head is not None and framing is not None  # take_head sets both once the head is whole
        if not framing.has_body:
            return True
        self._waiting.set_deadline(incoming, self.limits.body_timeout_s)
        if framing.expect_continue and waiting:
            refusal = self.RequestHandlerClass.screen_head(self.name, head)
            if refusal is not None:  # the client is told now, instead of sending a body for nothing
                self._refuse(incoming, *refusal)
                return False
            try:
                incoming.sock.send(CONTINUE)
            except OSError:
                pass
        return True

    def _refuse(self, incoming: _Incoming, status: int, message: str) -> None:
        count_refusal(self.counters, self.name, status, request_what(incoming.reader.head), message)
        self._forget(incoming)
        self._answer_and_drain(incoming.sock, incoming.addr, self.RequestHandlerClass.canned_response(status, message))

    def _hold(self, incoming: _Incoming, size: int) -> bool:
        """Count `size` more bytes held for `incoming`'s request. Beyond `max_buffered_bytes`, requests
        arriving for `stale_after_s` or longer are dropped to make room, oldest first; if that is not
        enough, this request is turned away with 503 (False)."""
        if not self._budget.take(size):
            now = SYSTEM.monotonic()
            for other in self._waiting.stale(now, self.limits.stale_after_s, besides=incoming):
                self._turn_away(other, f"opik-cipx: this request was still arriving after {now - other.since:.1f} s "
                                       "and others needed its room (client_buffer_max_mb); retry shortly")
                if self._budget.take(size):
                    break
            else:
                self._turn_away(incoming, f"opik-cipx: requests in progress already hold {self._budget.limit >> 20} "
                                          "MiB (client_buffer_max_mb); retry shortly")
                return False
        incoming.held += size
        return True

    def _turn_away(self, incoming: _Incoming, message: str) -> None:
        """Answer `incoming` 503 for want of room, counted in `connections_refused`."""
        self.counters.incr("connections_refused")
        refused = self.counters.get("connections_refused")
        if worth_logging(refused):
            log.warning("%s listener: %s (%d connections refused so far)", self.name,
                        message.removeprefix("opik-cipx: "), refused)
        self._forget(incoming)
        self._answer_and_drain(incoming.sock, incoming.addr, self.RequestHandlerClass.canned_response(503, message))

    def _dispatch(self, incoming: _Incoming, rest: bytes) -> None:
        with self._lock:
            room = len(self._active) < self.limits.max_connections  # only this thread adds to it
        if not room:
            self._turn_away(incoming, f"opik-cipx: too many connections at once (more than "
                                      f"{self.limits.max_connections}); retry shortly")
            return
        reader = incoming.reader
        assert reader.head is not None  # only a whole request is dispatched
        conn = Connection(incoming.sock, incoming.addr, reader.head, incoming.head_at_ns, reader.body(), rest,
                          incoming.held)
        self._forget(incoming, release=False)
        with self._lock:
            self._active.add(conn)
        conn.sock.setblocking(True)
        if not self._workers.run(conn):  # the system cannot start another thread
            with self._lock:
                self._active.discard(conn)
            self._budget.give(conn.held)
            self.counters.incr("connections_refused")
            self._answer_and_drain(conn.sock, conn.addr, self.RequestHandlerClass.canned_response(
                503, "opik-cipx: cannot start a thread for this connection (system limit); retry shortly"))

    def _answer_and_drain(self, sock: socket.socket, addr: tuple[str, int], response: bytes) -> None:
        """Send a refusal and close once the client has stopped sending (`_Incoming.after_refusal`)."""
        drain = _Incoming.after_refusal(sock, addr, response)
        if drain is not None:
            self._watch(drain)
            self._selector.register(sock, selectors.EVENT_READ, drain)

    def _serve(self, conn: Connection) -> None:
        """On a handler thread: answer the request, then hand the connection back to the loop or close it."""
        try:
            self.RequestHandlerClass(conn, conn.addr, self)  # type: ignore[arg-type]  # setup() takes the Connection
        except Exception:
            self.handle_error(conn.sock, conn.addr)
        finally:
            with self._lock:
                self._active.discard(conn)
            self._budget.give(conn.held)
            conn.release(self._selector)
            if conn.keep_alive and not self._stop:
                self._hand_back(conn)
            else:
                _close(conn.sock)

    def _hand_back(self, conn: Connection) -> None:
        """On the handler thread: the kept-alive connection goes back to the loop, to wait for its next request."""
        # No deadline yet: the loop sets the idle one as it takes the connection back.
        incoming = _Incoming(conn.sock, conn.addr, INFINITY, self.RequestHandlerClass.max_body_bytes)
        entry = (incoming, conn.rest)
        # Listed, then registered, under the lock the loop takes them back with: an event of this
        # socket implies the entry is listed, and the loop never takes it back half done.
        with self._lock:
            self._returned.append(entry)
            try:
                conn.sock.setblocking(False)
                self._selector.register(conn.sock, selectors.EVENT_READ, incoming)
            except (OSError, ValueError, KeyError):  # closed under us, or the loop is gone
                self._returned.remove(entry)
                _close(conn.sock)
                return
        if conn.rest:
            self._wake()

    def _expire(self, now: float) -> None:
        """Close connections past their deadline; arm the hang-up watches handlers asked for."""
        for incoming in self._waiting.expired(now):
            if incoming.reader.started:
                self.counters.incr("requests_timed_out")
                log.info("%s listener: closed a connection whose request %s took too long", self.name,
                         "head" if incoming.reader.head is None else "body")
            self._drop(incoming)
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            if self._accepting:
                self._selector.register(self.socket, selectors.EVENT_READ, _LISTENER)
        if now < self._next_scan:
            return
        self._next_scan = now + SCAN_INTERVAL_S
        with self._lock:
            active = list(self._active)
        for conn in active:
            conn.arm(self._selector)

    def _hangup(self, conn: Connection) -> None:
        callback = conn.readable(self._selector)
        if callback is not None:
            try:
                callback()
            except Exception:  # the loop serves every connection: a bug here must not end it
                log.exception("%s listener: hang-up callback failed", self.name)


class ConnectionHandler(BaseHTTPRequestHandler):
    """Base of every handler served by a `ConnectionServer`: one whole request per instance.

    The loop has read the request: `self.body` is its body (de-chunked; also readable from
    `self.rfile`). Subclasses answer `do_<METHOD>`, may refuse a request on its head alone in
    `screen` (the loop asks it too, before it answers `Expect: 100-continue`), shape error bodies
    in `error_document` and bound bodies with `max_body_bytes`. A handler waiting on something
    slow sets `self.conn.on_hangup` to a callback the loop calls (on its thread) if the client
    closes the connection meanwhile (a half-close counts, as with nginx), and clears it after.
    """

    protocol_version = "HTTP/1.1"
    server: ConnectionServer
    max_body_bytes = 1024 * 1024  # a listener's own pages take no body; the gateway's says more

    def setup(self) -> None:
        conn: Connection = self.request
        self.conn = conn
        self.request = self.connection = conn.sock
        self.body = conn.body
        self.rfile = io.BytesIO(conn.body)
        self.wfile = _ConnWriter(conn.sock)

    def handle(self) -> None:
        """Answer the request; `conn.keep_alive` says whether the connection may carry another."""
        self.close_connection = True
        head = self.conn.head
        split = head.index(b"\n") + 1
        self.raw_requestline = head[:split]
        body, self.rfile = self.rfile, io.BytesIO(b"\r\n")  # the request line only: `_take_headers` below
        try:
            parsed = self.parse_request()
        finally:
            self.rfile = body
        if parsed:
            self._take_headers(head[split:])
            refusal = self.screen(self.server.name, self.command, self.path, self.headers)
            if refusal is not None:
                self.refuse(*refusal)
            else:
                getattr(self, f"do_{self.command}")()
        self.conn.keep_alive = not self.close_connection

    def _take_headers(self, block: bytes) -> None:
        """`self.headers` from the head's header block, and what its `Connection` says, as http.server's
        `parse_request` would have them, but split by `framing.header_fields`: the loop has checked every
        line already (`framing.request_framing`). `Expect` needs nothing here (`handle_expect_100`)."""
        self.headers = header_fields(block)
        connection = self.headers.get("Connection", "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive" and self.protocol_version >= "HTTP/1.1":
            self.close_connection = False

    def handle_expect_100(self) -> bool:
        """The loop answered `Expect: 100-continue` (or had the body already): nothing to send here."""
        return True

    @classmethod
    def screen(cls, listener: str, command: str, target: str, headers: Message) -> tuple[int, str] | None:
        """(status, message) to refuse a request on its head alone; None to serve it."""
        if not hasattr(cls, f"do_{command}"):
            return 501, f"opik-cipx: the {listener} listener does not serve {command} requests"
        return None

    @classmethod
    def screen_head(cls, listener: str, head: bytes) -> tuple[int, str] | None:
        """`screen` on a whole head, parsed as http.server parses it: the loop asks before `100 Continue`."""
        line, _, fields = head.partition(b"\n")
        words = line.decode("latin-1").split()
        if len(words) != 3:
            return 400, "opik-cipx: malformed request line"
        try:
            headers = http.client.parse_headers(io.BytesIO(fields))
        except http.client.HTTPException:
            return 400, "opik-cipx: malformed header block"
        return cls.screen(listener, words[0], words[1], headers)

    def refuse(self, status: int, message: str) -> None:
        """Answer `status` and close. Counted and logged as a refusal (`count_refusal`)."""
        count_refusal(self.server.counters, self.server.name, status,
                      f"{self.command} {self.path.split('?', 1)[0][:200]}", message)
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
