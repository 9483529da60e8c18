"""Response bodies that arrive over time, moved by one thread for every stream at once.

A response body that is chunked or runs until the upstream closes (every SSE stream Claude Code
reads) is handed over by its handler thread once the response head is written to the client
(`StreamRelay.relay`, which blocks that thread until the body is over). One thread, the relay's,
then moves the bytes of every such body from its upstream socket to its client socket, from one
selector, without blocking: what one upstream read returns is written to the client at once, and
each run of body bytes is handed to the body's `keep` (the capture's). The handler thread sleeps
meanwhile and wakes once, when its body is over.

Why one thread: with a thread per stream, each event of each stream woke its own thread, which
then took the GIL from the others in turn; at 64 streams that handing over, not the relaying, made
the wire's tail (docs/DEVELOPING.md, "What the wire bench shows"). A body with a Content-Length (a
call that is not streamed) is read by its handler thread as before: it arrives at once, and
handing it over would cost two wake-ups for nothing.

Bounds: a client that does not read holds at most one turn's bytes (`TURN_BYTES`) of its body in
the relay, and its upstream is not read again until the client has taken them (the upstream then
waits, as it would for the client itself). An upstream silent for `read_timeout_s` while its body
is read ends that body, as the socket's timeout did on a handler thread; so does a client that
takes none of what waits for it for as long (on a handler thread it held the thread for ever). One body is read for at
most `TURN_BYTES` per turn, so a fast one cannot keep the others waiting.
"""

import http.client
import logging
import selectors
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass

from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.wire.framing import Dechunker, FramingError

log = logging.getLogger(__name__)

READ_BYTES = 64 * 1024  # one upstream read
TURN_BYTES = 256 * 1024  # read from one upstream per turn of the loop, at most
SCAN_S = 1.0  # how often bodies are checked for a silent upstream (or at each timeout, if that is shorter)
LAST_CHUNK = b"0\r\n\r\n"
_WAKE = object()
_WOULD_BLOCK = (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError)


@dataclass(frozen=True)
class Outcome:
    """How a relayed body ended: `complete`, or broken by the upstream (`upstream_error`: the exception,
    as http.client would raise it), by the client (`client_gone`: it left, or took nothing for the
    timeout) or by the relay's own end (`stopped`: the daemon stopping, or a bug in its loop)."""

    complete: bool
    upstream_error: BaseException | None = None
    client_gone: bool = False
    stopped: bool = False


STOPPED = Outcome(False, stopped=True)


Settle = Callable[[bool], bool]  # the upstream side is over (reusable: no stray bytes after it); False: the client left


def _held(sock: socket.socket) -> int:
    """Bytes the TLS layer has decrypted and not handed out yet (the selector cannot see them); 0 for TCP."""
    return sock.pending() if isinstance(sock, ssl.SSLSocket) else 0


class _Body:
    """One body in the relay; after `StreamRelay.relay` hands it over, only the relay thread touches it."""

    __slots__ = ("upstream", "client", "first", "pieces", "dechunker", "chunked_out", "keep", "settle",
                 "pending", "settled", "watched", "deadline", "outcome", "done")

    def __init__(self, upstream: socket.socket, client: socket.socket, first: bytes, chunked_in: bool,
                 chunked_out: bool, keep: Callable[[bytes], None], settle: Settle):
        self.upstream = upstream
        self.client = client
        self.first = first
        self.pieces: list[bytes] = []
        self.dechunker = Dechunker(None, self.pieces.append) if chunked_in else None
        self.chunked_out = chunked_out
        self.keep = keep
        self.settle = settle
        self.pending: memoryview | None = None  # bytes the client has not taken yet
        self.settled = False  # the upstream side is over and handed back
        self.watched: socket.socket | None = None  # the socket registered with the selector: upstream or client
        self.deadline = 0.0
        self.outcome: Outcome | None = None
        self.done = threading.Event()


class StreamRelay:
    """The relay thread and the bodies it moves (see the module docstring). Started at the first body."""

    def __init__(self, read_timeout_s: float, clock: Clock = SYSTEM):
        self.read_timeout_s = read_timeout_s
        self.clock = clock  # the upstreams' silence
        self._scan_s = min(SCAN_S, read_timeout_s)
        self._lock = threading.Lock()
        self._incoming: list[_Body] = []
        self._bodies: set[_Body] = set()  # owned by the relay thread
        self._again: list[_Body] = []  # bodies to read again at once: their TLS layer may hold bytes already
        self._selector: selectors.BaseSelector | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        for sock in (self._wake_r, self._wake_w):
            sock.setblocking(False)
        self._thread: threading.Thread | None = None
        self._closing = False

    def relay(self, upstream: socket.socket, first: bytes, chunked_in: bool, client: socket.socket,
              chunked_out: bool, keep: Callable[[bytes], None], settle: Settle) -> Outcome:
        """Move one response body from `upstream` (non-blocking already; `first`: its bytes read ahead with
        the head) to `client`, re-chunked when `chunked_out`; block until it is over. `chunked_in`: the
        upstream body is chunked, else it runs until the upstream closes. `keep` gets each run of body
        bytes; `settle(reusable)` is called once the upstream side is over, before the last bytes are
        written (False: the client left meanwhile, and the body is not complete). The upstream socket gets
        its timeout back before `settle`; the client socket is blocking again on return."""
        body = _Body(upstream, client, first, chunked_in, chunked_out, keep, settle)
        with self._lock:
            if self._closing:
                return STOPPED
            if self._thread is None:
                self._selector = selectors.DefaultSelector()
                self._selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)
                self._thread = threading.Thread(target=self._run, name="cipx-relay", daemon=True)
                self._thread.start()
            self._incoming.append(body)
        self._wake()
        body.done.wait()
        assert body.outcome is not None  # set before `done`
        return body.outcome

    def close(self, timeout_s: float = 5.0) -> None:
        """End the thread; bodies still in flight end broken (the daemon waits for them first)."""
        with self._lock:
            self._closing = True
            thread = self._thread
        if thread is not None:
            self._wake()
            thread.join(timeout_s)
        if thread is None or not thread.is_alive():
            self._wake_r.close()
            self._wake_w.close()
            if self._selector is not None:
                self._selector.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:  # full: the loop is being woken already
            pass

    # ---- the relay thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # a bug in the loop itself: every body ends, none waits for ever
            log.exception("relay: unexpected error; the responses in flight are cut off")
        finally:
            with self._lock:
                self._closing = True  # a body handed over from now on is refused at once
                incoming, self._incoming = self._incoming, []
            for body in [*incoming, *self._bodies]:
                self._end(body, STOPPED)

    def _loop(self) -> None:
        selector = self._selector
        assert selector is not None  # made with the thread
        next_scan = self.clock.monotonic() + self._scan_s
        while not self._closing:
            events = selector.select(0 if self._again else self._scan_s)
            for key, _ in events:
                if key.data is _WAKE:
                    self._woken()
                else:
                    self._guarded(self._ready, key.data, key.fileobj)
            again, self._again = self._again, []
            for body in again:
                if body.outcome is None and body.pending is None:
                    self._guarded(self._pull, body)
            now = self.clock.monotonic()
            if now >= next_scan:
                next_scan = now + self._scan_s
                for body in [body for body in self._bodies if body.deadline <= now]:
                    stalled = body.pending is not None  # the client took nothing, else the upstream sent nothing
                    self._end(body, Outcome(False, client_gone=True) if stalled
                              else Outcome(False, upstream_error=TimeoutError()))

    def _guarded(self, step: Callable[..., None], body: _Body, *args: object) -> None:
        """One body's step: a bug in it breaks that body (logged), never the relay."""
        try:
            step(body, *args)
        except Exception as exc:
            log.exception("relay: unexpected error; the response is cut off")
            self._end(body, Outcome(False, upstream_error=exc))

    def _woken(self) -> None:
        try:
            self._wake_r.recv(4096)
        except OSError:
            pass
        with self._lock:
            incoming, self._incoming = self._incoming, []
        for body in incoming:
            self._guarded(self._start, body)

    def _start(self, body: _Body) -> None:
        """A body handed over: watch its upstream, forward the bytes read ahead, read what waits."""
        self._bodies.add(body)
        body.deadline = self.clock.monotonic() + self.read_timeout_s
        body.client.setblocking(False)
        self._watch(body, body.upstream)
        first, body.first = body.first, b""
        if first:
            self._forward(body, [first], False)
        if body.outcome is None and body.pending is None:
            self._again.append(body)

    def _ready(self, body: _Body, sock: object) -> None:
        if body.outcome is not None:
            return
        if sock is body.upstream:
            self._pull(body)
        else:
            self._push(body)

    def _pull(self, body: _Body) -> None:
        """Read what the upstream has (up to `TURN_BYTES`) and forward it."""
        reads: list[bytes] = []
        taken, eof = 0, False
        while taken < TURN_BYTES:
            try:
                data = body.upstream.recv(READ_BYTES)
            except _WOULD_BLOCK:
                break
            except OSError as exc:
                self._end(body, Outcome(False, upstream_error=exc))
                return
            if not data:
                eof = True
                break
            reads.append(data)
            taken += len(data)
            if not _held(body.upstream) and len(data) < READ_BYTES:
                break  # the socket's next bytes, if any, wake the selector again
        else:
            self._again.append(body)  # more may wait in the TLS layer, where the selector cannot see it
        if reads:
            body.deadline = self.clock.monotonic() + self.read_timeout_s
            self._forward(body, reads, eof)
        elif eof:
            self._forward(body, [], True)

    def _forward(self, body: _Body, reads: list[bytes], eof: bool) -> None:
        """Take `reads` (then the upstream's end, if `eof`) into the body; write what the client gets."""
        dechunker, over, reusable = body.dechunker, eof, not eof
        if dechunker is None:
            body.pieces.extend(reads)
        else:
            for data in reads:
                try:
                    used = dechunker.feed(data)
                except FramingError:
                    self._end(body, Outcome(False, upstream_error=http.client.IncompleteRead(b"")))
                    return
                if dechunker.done:
                    over, reusable = True, used == len(data) and data is reads[-1]  # nothing after its end
                    break
            if eof and not dechunker.done:  # the upstream closed inside the body
                self._end(body, Outcome(False, upstream_error=http.client.IncompleteRead(b"")))
                return
        pieces = body.pieces[:]  # the dechunker's sink appends to this very list
        body.pieces.clear()
        for piece in pieces:
            body.keep(piece)
        payload = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        out = b"%x\r\n%b\r\n" % (len(payload), payload) if body.chunked_out and payload else payload
        if over:
            self._watch(body, None)
            body.upstream.settimeout(self.read_timeout_s)
            body.settled = True
            if not body.settle(reusable):
                self._end(body, Outcome(False))
                return
            if body.chunked_out:
                out += LAST_CHUNK
        self._send(body, memoryview(out))

    def _send(self, body: _Body, out: memoryview) -> None:
        """Write `out` to the client as far as it takes it; wait for it to take the rest before reading on."""
        try:
            sent = body.client.send(out) if out else 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._end(body, Outcome(False, client_gone=True))
            return
        if sent < len(out):
            if sent or body.pending is None:  # the client's turn: it must take something within the timeout
                body.deadline = self.clock.monotonic() + self.read_timeout_s
            self._watch(body, body.client)
            body.pending = out[sent:]
            return
        if body.pending is not None:
            body.pending = None
            if not body.settled:
                body.deadline = self.clock.monotonic() + self.read_timeout_s
                self._watch(body, body.upstream)
                self._again.append(body)
        if body.settled:
            self._end(body, Outcome(True))

    def _push(self, body: _Body) -> None:
        """The client can take more of what waits for it."""
        pending = body.pending
        if pending is not None:
            self._send(body, pending)

    def _end(self, body: _Body, outcome: Outcome) -> None:
        """Let go of `body` and wake its handler thread. The upstream socket is left to the handler: put
        back in the pool by `settle`, or closed by the handler when the body broke."""
        if body.outcome is not None:
            return
        body.outcome = outcome
        self._bodies.discard(body)
        try:
            self._watch(body, None)
        except (OSError, ValueError):
            pass
        try:
            body.client.setblocking(True)
        except OSError:
            pass
        body.done.set()

    def _watch(self, body: _Body, sock: socket.socket | None) -> None:
        """Have the selector watch `sock` of `body` (its upstream for reading, its client for writing), or none."""
        if body.watched is sock:
            return
        assert self._selector is not None  # made with the thread
        if body.watched is not None:
            self._selector.unregister(body.watched)
            body.watched = None
        if sock is not None:
            events = selectors.EVENT_READ if sock is body.upstream else selectors.EVENT_WRITE
            self._selector.register(sock, events, body)
            body.watched = sock
