"""Where a request ends: its head, its body's framing, and the body, taken in as the bytes arrive.

Pure code for the connection loop (connections.py), which reads every request whole before a
handler sees it (`RequestReader`). Strict on purpose: anything two HTTP parsers could read differently is refused
400, never guessed at (a request-smuggling shape is one the loop and upstream would frame
differently), so the loop and `http.server`'s header parser always agree on the request:
- a header line must be `name:value` with a token for a name: no space before the colon, no
  obsolete line folding (a line starting with a space or tab);
- `Content-Length` is digits only; sent twice (or as a list) it must say the same number each time;
- `Transfer-Encoding` must be exactly `chunked`, and never comes with a `Content-Length`;
- a body larger than the listener's limit is 413, refused before it is read.
"""

import email.parser
import http.client
import io
import re
from collections.abc import Callable
from dataclasses import dataclass

MAX_HEAD_BYTES = 64 * 1024  # request line + headers; Claude Code sends about 2 KB
_HEAD_END = re.compile(rb"\n\r?\n")
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # a header name
_HEADER_LINE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(.*?)[ \t]*\r?")
_DIGITS = re.compile(rb"[0-9]+")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r?\n")
_BLANK_LINE = re.compile(rb"\n\r?\n")
_FIELD_NAME = re.compile(_TOKEN)
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
HEAD_RECV_BYTES = 64 * 1024  # one read while a head arrives
BODY_RECV_BYTES = 256 * 1024  # one read while a body arrives
MAX_HEADER_LINES = 100  # as http.client
MAX_CHUNK_LINE = 1024  # a chunk-size line with its extensions
MAX_TRAILERS = 64 * 1024
_LINE_ROOM = {"size": MAX_CHUNK_LINE + 1, "end": 2, "trailers": MAX_TRAILERS + 2}  # bytes a state looks at, at most


class FramingError(Exception):
    """A request whose framing cannot be used: `status` (400, 413) is what the client is told."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Framing:
    """How a request's body is delimited: `length` bytes, or `chunked`; `expect_continue`: the client
    waits for `100 Continue` before sending it (HTTP/1.1 and `Expect: 100-continue`)."""

    length: int = 0
    chunked: bool = False
    expect_continue: bool = False

    @property
    def has_body(self) -> bool:
        return self.chunked or self.length > 0


def head_end(data: bytes | bytearray, start: int = 0) -> int | None:
    """The index just past the blank line that ends the request head in `data`; None while incomplete.

    The first line is the request line, whatever it holds; the head ends at the first empty
    line (`\\r\\n` or `\\n`) after it. `start` skips bytes already searched (a few are re-read).
    """
    first = data.find(b"\n")
    if first < 0:
        return None
    match = _HEAD_END.search(data, max(first, start - 2))
    return match.end() if match else None


def header_fields(block: bytes) -> http.client.HTTPMessage:
    """A head's header block (the lines after its first, up to the blank line) as http.client's
    `parse_headers` reads it, without the email package's parser when every line is `name:value`
    with a token for a name (Claude Code's 21 headers: about 6 us instead of 100, on the wire for
    every request and response); a block with any other line (folded, no colon, a lone CR) is read
    by that parser, so the result is the same."""
    headers = http.client.HTTPMessage()
    for line in block.split(b"\n"):
        line = line.removesuffix(b"\r")
        if not line:
            break
        name, colon, value = line.partition(b":")
        if not colon or b"\r" in value or _FIELD_NAME.fullmatch(name) is None:
            return email.parser.Parser(_class=http.client.HTTPMessage).parsestr(block.decode("iso-8859-1"))
        headers.set_raw(name.decode("latin-1"), value.decode("latin-1").lstrip(" \t"))
    return headers


class RequestReader:
    """One request, taken in as its bytes arrive: `take_head` until the head is whole (its framing is
    then known: `framing`), then `take_body` until the body is. Raises `FramingError` for what
    `request_framing` and `Dechunker` refuse, and 431 for a head over `MAX_HEAD_BYTES`."""

    def __init__(self, max_body: int):
        self.max_body = max_body
        self.head: bytes | None = None
        self.framing: Framing | None = None
        self._buf = bytearray()  # the head so far
        self._body = io.BytesIO()  # a Content-Length body so far
        self._left = 0  # its bytes still to come
        self._dechunker: Dechunker | None = None  # or a chunked one

    @property
    def started(self) -> bool:
        """A byte of the request has arrived."""
        return bool(self._buf) or self.head is not None

    @property
    def wanted(self) -> int:
        """How many bytes to read next, at most (never beyond a Content-Length body's end)."""
        if self.head is None:
            return HEAD_RECV_BYTES
        return BODY_RECV_BYTES if self._dechunker is not None else min(BODY_RECV_BYTES, self._left)

    def take_head(self, data: bytes) -> bytes | None:
        """Add bytes of the head; once it is whole, the bytes that came after it (the body's start,
        maybe empty), else None."""
        searched = len(self._buf)
        self._buf += data
        end = head_end(self._buf, searched)
        if end is None and len(self._buf) <= MAX_HEAD_BYTES:
            return None
        if end is None or end > MAX_HEAD_BYTES:
            raise FramingError(431, f"request head larger than {MAX_HEAD_BYTES} bytes")
        self.head, after, self._buf = bytes(self._buf[:end]), bytes(self._buf[end:]), bytearray()
        self.framing = request_framing(self.head, self.max_body)
        if self.framing.chunked:
            self._dechunker = Dechunker(self.max_body)
        else:
            self._left = self.framing.length
        return after

    def take_body(self, data: bytes) -> bytes | None:
        """Add bytes of the body; once it is whole, the bytes after it (usually none), else None."""
        if self._dechunker is not None:
            used = self._dechunker.feed(data)
            return data[used:] if self._dechunker.done else None
        take = min(self._left, len(data))
        if take:
            self._body.write(memoryview(data)[:take])
            self._left -= take
        return None if self._left else data[take:]

    def body(self) -> bytes:
        """The whole body (de-chunked)."""
        return self._dechunker.data if self._dechunker is not None else self._body.getvalue()


def request_framing(head: bytes, max_body: int) -> Framing:
    """The framing of the request whose whole head (request line to blank line) is `head`.

    Raises `FramingError` 400 for a header line two parsers could read differently or framing
    headers that disagree (see the module docstring), 413 for a Content-Length above `max_body`,
    431 for more than `MAX_HEADER_LINES` header lines.
    """
    lines = head.split(b"\n")
    lengths: list[bytes] = []
    codings: list[bytes] = []
    expect = False
    for count, line in enumerate(lines[1:]):
        if line in (b"", b"\r"):
            break
        if count == MAX_HEADER_LINES:
            raise FramingError(431, f"more than {MAX_HEADER_LINES} header lines")
        match = _HEADER_LINE.fullmatch(line)
        if match is None:
            raise FramingError(400, "malformed header line (a space before its colon, or a folded line)")
        name = match.group(1).lower()
        if name == b"content-length":
            lengths += [value.strip(b" \t") for value in match.group(2).split(b",")]
        elif name == b"transfer-encoding":
            codings += [value.strip(b" \t").lower() for value in match.group(2).split(b",")]
        elif name == b"expect":
            expect = expect or match.group(2).lower() == b"100-continue"
    expect = expect and lines[0].rstrip(b"\r").endswith(b"HTTP/1.1")
    if codings:
        if lengths:
            raise FramingError(400, "both Content-Length and Transfer-Encoding (a request-smuggling shape)")
        if codings != [b"chunked"]:
            raise FramingError(400, "unsupported Transfer-Encoding (only chunked is)")
        return Framing(chunked=True, expect_continue=expect)
    if not lengths:
        return Framing(expect_continue=expect)
    if any(_DIGITS.fullmatch(value) is None for value in lengths):
        raise FramingError(400, f"invalid Content-Length {b', '.join(lengths).decode('latin-1')[:60]!r}")
    if len(set(map(int, lengths))) != 1:
        raise FramingError(400, "two different Content-Length values (a request-smuggling shape)")
    length = int(lengths[0])
    if length > max_body:
        raise FramingError(413, f"request body of {length} bytes exceeds the {max_body} byte limit")
    return Framing(length=length, expect_continue=expect)


class Dechunker:
    """A chunked body taken apart as its bytes arrive: `feed` them in order; `data` is the body once `done`,
    or, with a `sink`, each run of body bytes goes to it as it is taken (a response relayed as it
    arrives: `relay.py`) and `data` stays empty.

    Raises `FramingError` 400 for malformed framing (a size that is not hex, a chunk not followed by
    its line end, an over-long size line or trailer section) and 413 once the body would exceed
    `max_body` (None: no bound). Trailers are read and dropped (they are hop-by-hop).
    """

    def __init__(self, max_body: int | None, sink: Callable[[bytes], object] | None = None):
        self.max_body = max_body
        self.done = False
        self._body = io.BytesIO()
        self._sink = sink or self._body.write
        self._size = 0
        self._line = bytearray()  # the start of a size line, chunk end or trailer section
        self._left = 0  # data bytes of the current chunk still to come
        self._state = "size"  # size, data, end (the line end after a chunk's data), trailers

    @property
    def data(self) -> bytes:
        return self._body.getvalue()

    @property
    def size(self) -> int:
        """Body bytes taken so far."""
        return self._size

    def feed(self, data: bytes) -> int:
        """Take bytes of the body; the number used (less than `len(data)` only once `done`: the rest
        belongs to what follows the body)."""
        view, at, end = memoryview(data), 0, len(data)
        while at < end and not self.done:
            if self._state == "data":
                take = min(self._left, end - at)
                self._sink(data if take == end else data[at:at + take])
                self._size += take
                at += take
                self._left -= take
                if not self._left:
                    self._state = "end"
                continue
            before = len(self._line)
            self._line += view[at:at + _LINE_ROOM[self._state] - before]
            line_end = self._line_end()
            if line_end is None:
                at += len(self._line) - before
                continue
            at += line_end - before
            self._take_line(bytes(self._line[:line_end]))
            self._line.clear()
        return at

    def _line_end(self) -> int | None:
        """Where the size line, chunk end or trailer section at the start of `_line` ends; None while incomplete."""
        line = self._line
        if self._state == "end":
            if line.startswith(b"\r\n") or line.startswith(b"\n"):
                return 1 if line[0] == 10 else 2
            if line == b"\r":
                return None
            raise FramingError(400, "malformed chunked body (a chunk longer than its size)")
        if self._state == "size":
            end = line.find(b"\n", 0, MAX_CHUNK_LINE + 1)
            if end < 0 and len(line) > MAX_CHUNK_LINE:
                raise FramingError(400, "malformed chunked body (a chunk-size line too long)")
            return end + 1 if end >= 0 else None
        if line.startswith(b"\r\n") or line.startswith(b"\n"):  # no trailers
            return 1 if line[0] == 10 else 2
        match = _BLANK_LINE.search(line, 0, MAX_TRAILERS + 2)
        if match is None and len(line) > MAX_TRAILERS:
            raise FramingError(400, "chunked trailers too large")
        return match.end() if match else None

    def _take_line(self, line: bytes) -> None:
        if self._state == "end":
            self._state = "size"
        elif self._state == "trailers":
            self.done = True
        else:
            match = _CHUNK_SIZE.fullmatch(line)
            if match is None:
                raise FramingError(400, "malformed chunked body (a chunk size that is not hex)")
            self._left = int(match.group(1), 16)
            if self.max_body is not None and self._size + self._left > self.max_body:
                raise FramingError(413, f"request body exceeds the {self.max_body} byte limit")
            self._state = "data" if self._left else "trailers"
