"""What a request on Claude Code's port gets once the daemon is down for good: an answer Claude
Code shows at once, instead of minutes of silent retries.

Measured with the real Claude Code CLI (docs/LIFECYCLE.md, "What Claude Code sees when the
daemon is down"): a refused connection, a connection closed or reset without an answer, a 401, a
503 or a 529 are retried for minutes without a word, and a listener that never answers is waited
on for ten; a 503 with `x-should-retry: false` is shown at once, not retried, and Claude Code
adds that the inference gateway (our port) is the one to check. The detached supervisor holds
that port (control/detached.py) and, once it gave up on the daemon, answers every request on it
with `ANSWER`.

The answer is the same fixed text for every request: no reason, path or state, since the port is
open to every local user. Each request is read whole first (its head within 5 s, a body of its
Content-Length within 30 s), so that closing the connection does not reset it before the answer is
read; at most 16 connections are answered at once, the others closed.
"""

import json
import socket
import threading

from opik_cipx.clock import SYSTEM, Clock

ANSWER = ("opik-cipx, the local proxy this Claude Code session was started with, is down and could not be "
          "restarted. New Claude Code sessions talk to Anthropic directly: start a new one. "
          "`opik-cipx status` says why; `opik-cipx sync` tries again.")
HEAD_MAX = 64 * 1024
BODY_MAX = 64 * 1024 * 1024
HEAD_TIMEOUT_S = 5.0
BODY_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 16
ACCEPT_POLL_S = 1.0  # how soon a stop is noticed


def response(message: str, head_only: bool = False) -> bytes:
    """A 503 in Anthropic's error shape that Claude Code does not retry (`x-should-retry: false`)."""
    body = json.dumps({"type": "error", "error": {"type": "api_error", "message": message}}).encode()
    head = ("HTTP/1.1 503 Service Unavailable\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
            "x-should-retry: false\r\n"
            "connection: close\r\n\r\n").encode()
    return head if head_only else head + body


def _recv(conn: socket.socket, deadline: float, clock: Clock) -> bytes:
    left = deadline - clock.monotonic()
    if left <= 0:
        return b""
    conn.settimeout(left)
    try:
        return conn.recv(65536)
    except (TimeoutError, OSError):
        return b""


def read_request(conn: socket.socket, clock: Clock = SYSTEM) -> str | None:
    """Read one request whole; its method, or None when the client stalled, went, or sent a head too large."""
    deadline = clock.monotonic() + HEAD_TIMEOUT_S
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = _recv(conn, deadline, clock)
        if not chunk or len(data) + len(chunk) > HEAD_MAX:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    method = lines[0].split(b" ", 1)[0].decode("latin-1")
    length, chunked = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length" and value.isdigit():
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value:
            chunked = True
    if length > BODY_MAX:
        return method  # not worth reading: answered, and the reset that may follow is the client's problem
    deadline = clock.monotonic() + BODY_TIMEOUT_S
    got, tail = len(body), body[-5:]
    while not (tail.endswith(b"0\r\n\r\n") if chunked else got >= length):
        chunk = _recv(conn, deadline, clock)
        if not chunk:
            break
        got, tail = got + len(chunk), (tail + chunk)[-5:]
    return method


def _answer(conn: socket.socket, message: str, slots: threading.BoundedSemaphore, clock: Clock) -> None:
    try:
        method = read_request(conn, clock)
        if method is not None:
            conn.settimeout(HEAD_TIMEOUT_S)
            conn.sendall(response(message, head_only=method == "HEAD"))
            conn.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        conn.close()
        slots.release()


def serve(listener: socket.socket, stop: threading.Event, message: str = ANSWER, clock: Clock = SYSTEM) -> None:
    """Answer every connection on `listener` with `message` until `stop` is set (noticed within a second)."""
    slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
    listener.settimeout(ACCEPT_POLL_S)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:  # out of file descriptors, say: the backlog keeps the client until we can
            clock.wait(stop, ACCEPT_POLL_S)
            continue
        if not slots.acquire(blocking=False):
            conn.close()
            continue
        threading.Thread(target=_answer, args=(conn, message, slots, clock), name="cipx-down-answer",
                         daemon=True).start()
