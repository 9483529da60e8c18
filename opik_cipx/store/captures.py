"""The capture log (`captures/`): every finished exchange, durable, in the order the tee saw it.

The capture thread appends; the materializer follows the log
(docs/ARCHITECTURE.md, "Capture log"). A segment `NNNNNNNNNNNN.jsonl.gz` is a file of gzip
members, one per capture: a JSON
header line (every Capture field but the bodies, plus their lengths) followed by the raw
request and response bodies. Bodies are never JSON-escaped: escaping megabytes would hold the
daemon's GIL for milliseconds, while zlib releases it. Each append is one `write` of a complete
member, so it is in the page cache (and survives `kill -9`) when `append` returns, a reader can
follow a segment while it is written, and a torn last member (a crash mid-write) costs only that
capture. A `LogPosition` (segment number, byte offset) names a place in the log.

Retention runs on the follower's thread with the position materialized through: segments
behind it go beyond the byte budget or the age limit (or at once when captures are not kept);
a segment not yet materialized is never aged out, and is deleted only when the byte budget
forces it — then its captures are counted as lost. Segments named `<stamp>-<pid>-<seq>` come
from versions before the log; they are read (replay, viewer) and treated as materialized.

Ages are measured on the store's own clock, never by the file system's mtime (kernel time,
which a copy, a backup restore or a clock that differs from the daemon's makes meaningless):
each header carries `logged_at_ns`, when the store wrote it. A segment's captures were all
logged between its first capture's stamp and the next segment's first (one capture thread, in
log order), and within `SEGMENT_MAX_AGE_S` of its first (the store rotates at least that often,
by either clock): `written_until` is the smaller bound. Both retention by age and `find_capture`
use it. Reading a segment's first header inflates a few kilobytes, not the segment.
"""

import io
import json
import logging
import os
import re
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.home import open_private, private_dir
from opik_cipx.store.runs import runs
from opik_cipx.wire.capture import Capture

log = logging.getLogger(__name__)
SUFFIX = ".jsonl.gz"
NUMBERED = re.compile(r"^(\d{12})\.jsonl\.gz$")
SEGMENT_MAX_AGE_S = 3600.0  # a quiet daemon still rotates, so age-based retention can act
SEGMENT_MAX_AGE_NS = int(SEGMENT_MAX_AGE_S * 1e9)
HEADER_MAX = 64 * 1024  # the most of a segment's first member inflated to find its header line
COMPRESS_LEVEL = 1  # the capture thread's job is to make a capture durable fast; zlib releases the GIL
READ_CHUNK = 1 << 20
RUN_BYTES = 256 * 1024


class LogPosition(NamedTuple):
    """A place in the capture log: everything before it comes first. Ordered."""

    segment: int
    offset: int


@dataclass(frozen=True)
class Appended:
    """Where `CaptureStore.append` put a capture: its segment file and its [start, end) in the log."""

    path: Path
    start: LogPosition
    end: LogPosition


@dataclass
class LogEntry:
    """One capture read back from the log; positions are None for a segment from before the log."""

    capture: Capture
    path: Path
    start: LogPosition | None
    end: LogPosition | None


class CaptureStore:
    """The capture log of one daemon: `append` from the capture thread, `retain` from the follower."""

    def __init__(self, directory: Path, max_bytes: int, max_age_s: float, segment_bytes: int, keep: bool = True,
                 clock: Clock = SYSTEM):
        """`keep=False` (captures.enabled = false): each capture gets a segment of its own, sealed at
        once, and `retain` deletes it as soon as it is materialized. `clock` stamps each capture
        as it is logged and measures ages (see the module docstring)."""
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.segment_bytes = segment_bytes
        self.keep = keep
        self.clock = clock
        self._lock = threading.Lock()  # what other threads read: the end, the active segment, counts, stamps
        self._io = threading.Lock()  # `append` and `close` take turns: never a seal during a write
        self._fh: io.FileIO | None = None
        self._path: Path | None = None
        self._number = max((s.number for s in _segments(directory) if s.number is not None), default=0)
        self._size = 0
        self._opened_mono = 0.0
        self._opened_ns = 0  # the stamp of the segment's first capture
        self._stamps: dict[Path, int | None] = {}  # first stamps read (or written) so far
        self._active: int | None = None
        self._counts: dict[int, int] = {}  # captures appended per segment, by this process
        self._end = LogPosition(self._number + 1, 0)
        self.start_end = self._end  # the log as this process found it ends here

    @property
    def end(self) -> LogPosition:
        """The position after the last complete capture appended (or found at startup)."""
        with self._lock:
            return self._end

    def append(self, capture: Capture) -> Appended:
        """Persist one capture; raises OSError when the disk refuses it (the next append starts a
        new segment, so a torn member never sits in front of later captures)."""
        logged_at_ns = self.clock.time_ns()
        member = encode_member(capture, logged_at_ns)
        with self._io:
            return self._write(member, logged_at_ns)

    def _write(self, member: bytes, logged_at_ns: int) -> Appended:
        if (
            self._fh is None
            or self._size + len(member) > self.segment_bytes
            or self.clock.monotonic() - self._opened_mono > SEGMENT_MAX_AGE_S
            or not 0 <= logged_at_ns - self._opened_ns <= SEGMENT_MAX_AGE_NS  # by either clock
        ):
            self._rotate(logged_at_ns)
        assert self._fh is not None and self._path is not None  # a segment is open: `_rotate` opened one
        start = LogPosition(self._number, self._size)
        try:
            written = self._fh.write(member)
            if written != len(member):
                raise OSError(f"short write ({written} of {len(member)} bytes)")
        except OSError:
            path, empty = self._path, self._size == 0
            self._seal()
            if empty:  # a full disk must not leave an empty segment per failed capture
                try:
                    path.unlink()
                except OSError:
                    pass
            raise
        self._size += len(member)
        end = LogPosition(self._number, self._size)
        path = self._path
        with self._lock:
            self._counts[self._number] = self._counts.get(self._number, 0) + 1
            self._end = end
        if not self.keep:
            self._seal()
        return Appended(path, start, end)

    def _rotate(self, logged_at_ns: int) -> None:
        self._seal()
        private_dir(self.directory)
        while True:
            self._number += 1
            path = self.directory / f"{self._number:012d}{SUFFIX}"
            try:
                fh = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND)
                break
            except FileExistsError:
                continue
        self._fh, self._path, self._size = fh, path, 0
        self._opened_mono, self._opened_ns = self.clock.monotonic(), logged_at_ns
        with self._lock:
            self._stamps[path] = logged_at_ns
            self._active = self._number
            self._end = LogPosition(self._number, 0)

    def close(self) -> None:
        """Seal the segment being written, once an append in progress is done (the next append
        opens a new one)."""
        with self._io:
            self._seal()

    def _seal(self) -> None:
        fh, self._fh = self._fh, None
        with self._lock:
            self._active = None
        if fh is not None:
            try:
                fh.close()
            except OSError:
                pass

    def retain(self, materialized: LogPosition) -> int:
        """Apply retention, knowing everything before `materialized` was materialized.

        Returns how many captures not yet materialized the byte budget forced out.
        """
        now = self.clock.time_ns()
        found = _segments(self.directory)
        with self._lock:
            active = self._active
            known = dict(self._stamps)
        read = {s.path: first_stamp(s.path) for s in found if s.path not in known}  # once per segment
        with self._lock:
            self._stamps.update(read)
        until = written_until(found, {**known, **read})
        total = sum(s.size for s in found)
        lost = 0
        for segment, last_ns in zip(found, until, strict=True):
            path, size, number = segment
            if number is not None and number == active:
                continue
            done = number is None or number < materialized.segment or (
                number == materialized.segment and size <= materialized.offset)
            if done:
                aged = last_ns is not None and now - last_ns > self.max_age_s * 1e9
                if self.keep and total <= self.max_bytes and not aged:
                    continue
            elif total <= self.max_bytes:
                continue
            else:
                skip = materialized.offset if number == materialized.segment else 0
                with self._lock:
                    counted = self._counts.get(number) if not skip and number is not None else None
                lost += counted if counted is not None else count_members(path, skip)
                log.warning("capture log: over its %d-byte budget: deleting %s before it was materialized",
                            self.max_bytes, path.name)
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("capture log: cannot delete %s: %s", path.name, exc.strerror or exc)
                continue
            total -= size
            with self._lock:
                self._stamps.pop(path, None)
                if number is not None:
                    self._counts.pop(number, None)
        return lost


HEADER_FIELDS = (
    "id", "started_at_ns", "ttfb_ns", "ended_at_ns", "method", "path", "request_headers", "status",
    "response_headers", "client_aborted", "upstream_error", "response_omitted",
)


def encode_member(capture: Capture, logged_at_ns: int) -> bytes:
    """One gzip member: header line (with `logged_at_ns`, the store's stamp) + raw request body +
    raw response body.

    Everything is compressed `RUN_BYTES` at a time: the request in slices (no copy), the
    response's pieces (a stream has thousands of small ones) joined into runs of about that size.
    zlib releases the GIL while it works; between runs the capture thread takes it back only
    briefly, and never joins or copies a whole body.
    """
    header = {name: getattr(capture, name) for name in HEADER_FIELDS}
    header["logged_at_ns"] = logged_at_ns
    if capture.blocked is not None:  # the rare extra field: older readers ignore it
        header["blocked"] = capture.blocked
    parts = capture.response_parts
    request = memoryview(capture.request_body)
    header["request_body_len"] = len(request)
    header["response_body_len"] = sum(map(len, parts))
    packer = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, 31)
    out = [packer.compress(json.dumps(header).encode() + b"\n")]
    out += [packer.compress(request[at : at + RUN_BYTES]) for at in range(0, len(request), RUN_BYTES)]
    out += [packer.compress(run) for run in runs(parts, RUN_BYTES)]
    out.append(packer.flush())
    return b"".join(out)


def decode_capture(data: bytes) -> Capture:
    """Inverse of `encode_member` (once inflated); raises ValueError/KeyError/TypeError on a malformed record."""
    newline = data.index(b"\n")
    header = json.loads(data[:newline])
    start = newline + 1
    middle = start + int(header.pop("request_body_len"))
    end = middle + int(header.pop("response_body_len"))
    if end != len(data):
        raise ValueError("body lengths do not match the record")
    capture = Capture(**{name: header[name] for name in HEADER_FIELDS if name in header},  # older: fewer fields
                      request_body=data[start:middle])
    capture.response_parts = [data[middle:end]]
    capture.blocked = header.get("blocked")
    return capture


def segment_number(path: Path) -> int | None:
    """The number of a log segment; None for a segment from before the log (or not a segment)."""
    match = NUMBERED.match(path.name)
    return int(match.group(1)) if match else None


class SegmentFile(NamedTuple):
    path: Path
    size: int
    number: int | None  # None for a segment from before the log


def _segments(directory: Path) -> list[SegmentFile]:
    """Every segment in log order: older unnumbered ones first (by name, which starts with a stamp)."""
    out = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        if entry.name.endswith(SUFFIX) and not entry.name.startswith(".") and entry.is_file():
            try:
                size = entry.stat().st_size
            except FileNotFoundError:
                continue
            path = Path(entry.path)
            out.append(SegmentFile(path, size, segment_number(path)))
    out.sort(key=lambda s: (1, s.number, "") if s.number is not None else (0, 0, s.path.name))
    return out


def list_segments(directory: Path) -> list[SegmentFile]:
    """(path, size, number) of every segment, in log order."""
    return _segments(directory)


def first_stamp(path: Path, names: tuple[str, ...] = ("logged_at_ns", "ended_at_ns", "started_at_ns")) -> int | None:
    """When the first capture of a segment was logged (epoch ns, the store's clock; for a capture
    logged before the stamp existed, when its exchange ended); None when it has no readable one.
    `names`: the header fields to take it from, the first present wins (`("started_at_ns",)`: when
    its exchange started)."""
    try:
        with open(path, "rb") as fh:
            head = zlib.decompressobj(31).decompress(fh.read(HEADER_MAX), HEADER_MAX)
        header = json.loads(head[: head.index(b"\n")])
    except (OSError, zlib.error, ValueError):
        return None
    for name in names:
        value = header.get(name) if isinstance(header, dict) else None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def written_until(segments: list[SegmentFile], stamps: dict[Path, int | None]) -> list[int | None]:
    """For each segment (in log order), a time by which all of its captures were logged: the next
    segment's first stamp, and for a numbered one also its own first stamp plus
    `SEGMENT_MAX_AGE_S`, whichever is earlier; None when neither is known."""
    out: list[int | None] = []
    for i, segment in enumerate(segments):
        bounds = []
        following = stamps.get(segments[i + 1].path) if i + 1 < len(segments) else None
        own = stamps.get(segment.path)
        if following is not None and (own is None or following >= own):  # a clock set back breaks the order
            bounds.append(following)
        if own is not None and segment.number is not None:
            bounds.append(own + SEGMENT_MAX_AGE_NS)
        out.append(min(bounds) if bounds else None)
    return out


def _members(fh: BinaryIO, offset: int, limit: int | None, keep: bool = True) -> Iterator[tuple[bytes, int, int]]:
    """(inflated member, start, end) from `offset` of an open segment, up to `limit` bytes in.

    Stops quietly at the end of the data or at a torn member; raises zlib.error on a corrupt one.
    With `keep=False` the inflated bytes are thrown away (counting only).
    """
    fh.seek(offset)
    buf, pos = b"", offset  # `buf` holds the bytes read from `pos` on and not yet inflated
    while True:
        inflater, parts, start = zlib.decompressobj(31), [], pos
        while True:
            if not buf:
                want = READ_CHUNK if limit is None else min(READ_CHUNK, limit - pos)
                buf = fh.read(want) if want > 0 else b""
                if not buf:
                    return  # the end, or a member cut off by a crash
            out = inflater.decompress(buf)
            if keep:
                parts.append(out)
            if inflater.eof:
                used = len(buf) - len(inflater.unused_data)
                pos, buf = pos + used, inflater.unused_data
                yield b"".join(parts), start, pos
                break
            pos, buf = pos + len(buf), b""


def count_members(path: Path, offset: int = 0) -> int:
    """Complete captures in a segment from `offset` on (0 when it is gone or unreadable)."""
    try:
        with open(path, "rb") as fh:
            return sum(1 for _ in _members(fh, offset, None, keep=False))
    except (OSError, zlib.error):
        return 0


def count_log(directory: Path, start: LogPosition, until: LogPosition) -> int:
    """How many captures the log holds from `start` up to `until` (inflated, not kept)."""
    total = 0
    for path, _, number in _segments(directory):
        if number is None or number < start.segment or number > until.segment:
            continue
        offset = start.offset if number == start.segment else 0
        limit = until.offset if number == until.segment else None
        try:
            with open(path, "rb") as fh:
                total += sum(1 for _ in _members(fh, offset, limit, keep=False))
        except (OSError, zlib.error):
            continue
    return total


def read_log(directory: Path, start: LogPosition | None = None, until: LogPosition | None = None) -> Iterator[LogEntry]:
    """The captures of the log in order, from `start` (None: the very beginning, segments from before
    the log included) up to `until` (None: everything there is). A segment deleted meanwhile is
    skipped; a torn or corrupt member ends its segment (logged, unless it is the last one)."""
    found = _segments(directory)
    for i, (path, _, number) in enumerate(found):
        if number is None and start is not None:
            continue
        if number is not None:
            if start is not None and number < start.segment:
                continue
            if until is not None and number > until.segment:
                return
        offset = start.offset if start is not None and number == start.segment else 0
        limit = until.offset if until is not None and number == until.segment else None
        try:
            with open(path, "rb") as fh:
                for data, begin, end in _members(fh, offset, limit):
                    try:
                        capture = decode_capture(data)
                    except (ValueError, KeyError, TypeError):
                        log.warning("capture segment %s: unreadable record skipped", path.name)
                        continue
                    if number is None:
                        yield LogEntry(capture, path, None, None)
                    else:
                        yield LogEntry(capture, path, LogPosition(number, begin), LogPosition(number, end))
        except FileNotFoundError:
            continue  # deleted by retention meanwhile
        except zlib.error:
            if i + 1 < len(found):
                log.warning("capture segment %s: corrupt member skipped with the rest of the file", path.name)


def read_segment(path: Path) -> Iterator[Capture]:
    """Captures in one segment; a torn or corrupt member ends the segment quietly."""
    try:
        with open(path, "rb") as fh:
            for data, _, _ in _members(fh, 0, None):
                try:
                    yield decode_capture(data)
                except (ValueError, KeyError, TypeError):
                    log.warning("capture segment %s: unreadable record skipped", path.name)
    except zlib.error:
        log.warning("capture segment %s: corrupt member skipped with the rest of the file", path.name)


def find_capture(directory: Path, capture_id: str, started_at_ns: int) -> Capture | None:
    """The stored capture with `capture_id`, or None (deleted by retention, or never stored).

    Only segments written to after the exchange started can hold it (a capture is logged once
    it is over), so segments whose captures were all logged before then (`written_until`, with a
    second's margin) are not opened.
    """
    found = _segments(directory)
    until = written_until(found, {s.path: first_stamp(s.path) for s in found})
    for segment, last_ns in zip(found, until, strict=True):
        if last_ns is not None and last_ns < started_at_ns - 10**9:
            continue
        try:
            hit = next((c for c in read_segment(segment.path) if c.id == capture_id), None)
        except FileNotFoundError:
            continue
        if hit is not None:
            return hit
    return None
