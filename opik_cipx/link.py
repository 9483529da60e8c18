"""The link between the daemon's two processes (docs/ARCHITECTURE.md, "Processes and threads").

A stream socket pair: the wire process keeps one end, the work process inherits the other
(`WORK_FD_ENV`). Each message is a 4-byte length and a pickled tuple whose first item names it
(the kinds and what they carry are listed in ARCHITECTURE.md). Both processes run the same
code as the same user, so a message is trusted as the process's own data would be; one that
does not decode (another version of opik-cipx on the other end) is logged and dropped.

Where the work process is in the capture log (the capture it is materializing) does not go over
the link: it would wake the wire's link thread twice per capture, for a position the wire reads
only after the work process has died. It is kept in a `WorkingSlot` instead: a few bytes of
memory both processes map, written by the work with no system call, read by the wire at a death.

The wire's end never blocks (`Link(..., blocking=False)`): `send` writes what the socket takes at
once and queues the rest (at most `PENDING_MAX` bytes; a message beyond is dropped and `send`
says so), and `pump`, on the wire's link thread, writes the queue out as the socket drains while
it reads. The work's end blocks: it is the work's to wait.
"""

import logging
import mmap
import os
import pickle
import select
import socket
import struct
import tempfile
import threading
import zlib
from typing import Any

log = logging.getLogger(__name__)

WORK_FD_ENV = "CIPX_WORK_FD"  # the work process's end of the link, inherited
WORKING_FD_ENV = "CIPX_WORKING_FD"  # the file of its `WorkingSlot`, inherited
PROTOCOL = 2  # the messages' vocabulary (2: `working` is a slot, not a message); another one refuses to run
PROTOCOL_MISMATCH = 3  # the work process's exit status when the executable on disk speaks another protocol
PENDING_MAX = 4 * 1024 * 1024
FRAME = struct.Struct("!I")
RECV_BYTES = 256 * 1024
MESSAGE_MAX = 256 * 1024 * 1024


class Link:
    """One end of the link (see the module docstring)."""

    def __init__(self, sock: socket.socket, blocking: bool):
        self.sock = sock
        self.blocking = blocking
        sock.setblocking(blocking)
        self._send_lock = threading.Lock()
        self._pending = bytearray()  # frames the socket did not take yet (the wire's end)
        self._inbox = bytearray()
        self.dropped = 0  # messages not sent because the queue was full

    def send(self, *message: Any) -> bool:
        """Send one message; False when it was dropped (the wire's end, its queue full) or the other
        end is gone."""
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        frame = FRAME.pack(len(data)) + data
        with self._send_lock:
            try:
                if self.blocking:
                    self.sock.sendall(frame)
                    return True
                if self._pending:
                    self._flush()
                if not self._pending:
                    try:
                        sent = self.sock.send(frame)
                    except (BlockingIOError, InterruptedError):
                        sent = 0
                    if sent == len(frame):
                        return True
                    if sent:  # begun: the rest must follow, whatever the queue holds
                        self._pending += frame[sent:]
                        return True
            except OSError:
                return False
            if len(self._pending) + len(frame) > PENDING_MAX:
                self.dropped += 1
                return False
            self._pending += frame
            return True

    def _flush(self) -> None:
        try:
            sent = self.sock.send(self._pending)
        except (BlockingIOError, InterruptedError):
            return
        del self._pending[:sent]

    @property
    def pending(self) -> bool:
        with self._send_lock:
            return bool(self._pending)

    def pump(self, timeout_s: float) -> list[tuple] | None:
        """(The wire's end.) Wait up to `timeout_s` for messages, writing the queue out meanwhile;
        the messages that arrived (maybe none), or None once the other end is gone."""
        writing = [self.sock] if self.pending else []
        try:
            readable, writable, _ = select.select([self.sock], writing, [], timeout_s)
        except (OSError, ValueError):
            return None
        if writable:
            with self._send_lock:
                try:
                    self._flush()
                except OSError:
                    return None
        if not readable:
            return []
        try:
            data = self.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            return None
        if not data:
            return None
        self._inbox += data
        return self._messages()

    def recv(self) -> tuple | None:
        """(The work's end.) The next message, waiting for it; None once the other end is gone."""
        while True:
            messages = self._messages(limit=1)
            if messages:
                return messages[0]
            try:
                data = self.sock.recv(RECV_BYTES)
            except InterruptedError:
                continue
            except OSError:
                return None
            if not data:
                return None
            self._inbox += data

    def _messages(self, limit: int | None = None) -> list[tuple]:
        out: list[tuple] = []
        while len(self._inbox) >= FRAME.size and (limit is None or len(out) < limit):
            (size,) = FRAME.unpack_from(self._inbox)
            if size > MESSAGE_MAX:
                raise ValueError(f"a link message of {size} bytes: the other end speaks another language")
            if len(self._inbox) < FRAME.size + size:
                break
            data = bytes(self._inbox[FRAME.size : FRAME.size + size])
            del self._inbox[: FRAME.size + size]
            try:
                message = pickle.loads(data)
            except Exception as exc:  # another version's class, say: that message alone is lost
                log.warning("link: a message that does not decode was dropped (%s)", type(exc).__name__)
                continue
            if isinstance(message, tuple) and message and isinstance(message[0], str):
                out.append(message)
        return out

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class WorkingSlot:
    """The capture the work process is materializing (`(segment, offset)`), or None, in memory the wire
    and the work process both map: a file no name points to, made by the wire for each work process
    it starts and inherited by it (`WORKING_FD_ENV`).

    The work process `set`s it before and after each capture (a store into memory: no system call,
    nothing for the wire to wake for); the wire `get`s it once the work process has died, to pass
    over a capture it died on twice. The position carries a checksum, so a store cut short by a
    kill reads as None rather than as another position.
    """

    _LAYOUT = struct.Struct("<QQI")  # segment, offset, crc32 of the two

    def __init__(self, fd: int):
        self._map = mmap.mmap(fd, self._LAYOUT.size)

    @classmethod
    def create(cls) -> tuple["WorkingSlot", int]:
        """(The wire.) A new slot, empty, and the descriptor of its file, for the work process to inherit
        (the caller closes it once passed)."""
        with tempfile.TemporaryFile() as file:
            fd = os.dup(file.fileno())
        os.ftruncate(fd, cls._LAYOUT.size)
        return cls(fd), fd

    def set(self, position: tuple[int, int] | None) -> None:
        if position is None:
            self._map[:] = bytes(self._LAYOUT.size)
            return
        self._map[:] = self._LAYOUT.pack(*position, _checksum(*position))

    def get(self) -> tuple[int, int] | None:
        segment, offset, check = self._LAYOUT.unpack(self._map[:])
        return (segment, offset) if check == _checksum(segment, offset) else None

    def close(self) -> None:
        self._map.close()


def _checksum(segment: int, offset: int) -> int:
    return zlib.crc32(struct.pack("<QQ", segment, offset))
