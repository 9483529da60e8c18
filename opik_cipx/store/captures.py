"""The capture log (`captures/`): every finished exchange, durable, in the order the tee saw it.

The wire process appends (`CaptureStore`, on its capture thread); the work process follows the
log, keeps it within its budget and compacts it (`store/capture_keeper.py`; docs/ARCHITECTURE.md,
"Capture log"). A capture is one record: a JSON header line (every Capture field but the
bodies, plus their lengths and `logged_at_ns`) followed by the raw request and response bodies.
Bodies are never JSON-escaped or compressed by the wire: it writes a record as the buffers it
already holds, with `writev` (no copy, no compression; the system call runs without the GIL),
into `NNNNNNNNNNNN.raw`. Each record is appended whole before `append` returns, so it is in the
page cache (and survives `kill -9`), a reader can follow a segment while it is written (a record
is complete once all the bytes its header announces are there), and a torn last record (a crash
mid-write) costs only that capture. A `LogPosition` (segment number, byte offset) names a place
in the log; every segment numbered below a `LogTail`'s `sealed_below` will never be written again.

Once a raw segment is sealed and materialized, the work process compacts it into
`NNNNNNNNNNNN.jsonl.gz`, one gzip member per record (the format of every segment written before
the log was split from the wire, still read as it is); where both files exist, the compacted one
is the segment. Segments named `<stamp>-<pid>-<seq>.jsonl.gz` come from versions before the log;
they are read (replay, viewer) and treated as materialized.

Ages are measured on the store's own clock, never by the file system's mtime (kernel time,
which a copy, a backup restore or a clock that differs from the daemon's makes meaningless):
each header carries `logged_at_ns`, when the store wrote it. A segment's captures were all
logged between its first capture's stamp and the next segment's first (one capture thread, in
log order), and within `SEGMENT_MAX_AGE_S` of its first (the store rotates at least that often,
by either clock): `written_until` is the smaller bound. Both retention by age and `find_capture`
use it. Reading a segment's first header reads (or inflates) a few kilobytes, not the segment.
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
from typing import Any, BinaryIO, NamedTuple

from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.home import open_private, private_dir
from opik_cipx.store.runs import runs
from opik_cipx.wire.capture import Capture

log = logging.getLogger(__name__)
SUFFIX = ".jsonl.gz"  # a compacted segment (and every segment written before the raw log)
RAW_SUFFIX = ".raw"  # a segment as the wire writes it
NUMBERED = re.compile(r"^(\d{12})(\.jsonl\.gz|\.raw)$")
SEGMENT_MAX_AGE_S = 3600.0  # a quiet daemon still rotates, so age-based retention can act
SEGMENT_MAX_AGE_NS = int(SEGMENT_MAX_AGE_S * 1e9)
HEADER_MAX = 64 * 1024  # the most of a compacted segment's first member inflated to find its header line
HEADER_LINE_MAX = 4 * 1024 * 1024  # a raw header line longer than this is corrupt (headers are capped far below)
COMPRESS_LEVEL = 1  # compaction runs off the wire, but on the same cores: speed first
READ_CHUNK = 1 << 20
RUN_BYTES = 256 * 1024
IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)


class LogPosition(NamedTuple):
    """A place in the capture log: everything before it comes first. Ordered."""

    segment: int
    offset: int


class LogTail(NamedTuple):
    """Where the log ends: `end`, after `seq` captures appended by this store, and every segment
    numbered below `sealed_below` closed for good (the store has none open when it equals the
    last segment's number + 1)."""

    end: LogPosition
    seq: int
    sealed_below: int


@dataclass(frozen=True)
class Appended:
    """Where `CaptureStore.append` put a capture: its segment file, its [start, end) in the log,
    and the log's tail after it."""

    path: Path
    start: LogPosition
    end: LogPosition
    tail: LogTail


@dataclass
class LogEntry:
    """One capture read back from the log; positions are None for a segment from before the log."""

    capture: Capture
    path: Path
    start: LogPosition | None
    end: LogPosition | None


class CaptureStore:
    """The writer of the capture log (the wire's capture thread): `append`, `close`, `tail`."""

    def __init__(self, directory: Path, segment_bytes: int, keep: bool = True, clock: Clock = SYSTEM):
        """`keep=False` (captures.enabled = false): each capture gets a segment of its own, sealed at
        once (the work process deletes it once materialized). `clock` stamps each capture as it is
        logged (see the module docstring)."""
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.keep = keep
        self.clock = clock
        self._lock = threading.Lock()  # what other threads read: the tail
        self._io = threading.Lock()  # `append` and `close` take turns: never a seal during a write
        self._fh: io.FileIO | None = None
        self._path: Path | None = None
        self._number = max((s.number for s in _segments(directory) if s.number is not None), default=0)
        self._size = 0
        self._opened_mono = 0.0
        self._opened_ns = 0  # the stamp of the segment's first capture
        self._tail = LogTail(LogPosition(self._number + 1, 0), 0, self._number + 1)
        self.start_end = self._tail.end  # the log as this process found it ends here

    @property
    def end(self) -> LogPosition:
        """The position after the last complete capture appended (or found at startup)."""
        return self.tail().end

    def tail(self) -> LogTail:
        with self._lock:
            return self._tail

    def append(self, capture: Capture) -> Appended:
        """Persist one capture; raises OSError when the disk refuses it (the next append starts a
        new segment, so a torn record never sits in front of later captures)."""
        logged_at_ns = self.clock.time_ns()
        buffers = record_buffers(capture, logged_at_ns)
        size = sum(map(len, buffers))
        with self._io:
            return self._write(buffers, size, logged_at_ns)

    def _write(self, buffers: list[Any], size: int, logged_at_ns: int) -> Appended:
        if (
            self._fh is None
            or self._size + size > self.segment_bytes
            or self.clock.monotonic() - self._opened_mono > SEGMENT_MAX_AGE_S
            or not 0 <= logged_at_ns - self._opened_ns <= SEGMENT_MAX_AGE_NS  # by either clock
        ):
            self._rotate(logged_at_ns)
        assert self._fh is not None and self._path is not None  # a segment is open: `_rotate` opened one
        start = LogPosition(self._number, self._size)
        try:
            write_all(self._fh.fileno(), buffers, size)
        except OSError:
            path, empty = self._path, self._size == 0
            self._seal()
            if empty:  # a full disk must not leave an empty segment per failed capture
                try:
                    path.unlink()
                except OSError:
                    pass
            raise
        self._size += size
        end, path = LogPosition(self._number, self._size), self._path
        if not self.keep:
            self._seal()
        with self._lock:
            tail = self._tail = LogTail(end, self._tail.seq + 1, self._tail.sealed_below)
        return Appended(path, start, end, tail)

    def _rotate(self, logged_at_ns: int) -> None:
        self._seal()
        private_dir(self.directory)
        while True:
            self._number += 1
            path = self.directory / f"{self._number:012d}{RAW_SUFFIX}"
            try:
                fh = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND)
                break
            except FileExistsError:
                continue
        self._fh, self._path, self._size = fh, path, 0
        self._opened_mono, self._opened_ns = self.clock.monotonic(), logged_at_ns
        with self._lock:
            self._tail = LogTail(LogPosition(self._number, 0), self._tail.seq, self._number)

    def close(self) -> None:
        """Seal the segment being written, once an append in progress is done (the next append
        opens a new one)."""
        with self._io:
            self._seal()

    def _seal(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            with self._lock:
                self._tail = self._tail._replace(sealed_below=self._number + 1)
            try:
                fh.close()
            except OSError:
                pass


def write_all(fd: int, buffers: list[Any], size: int) -> None:
    """Write `buffers` (`size` bytes in all) to `fd` in order, `IOV_MAX` at a time, resuming after a
    short write; raises OSError when the system refuses (a short write that makes no progress is
    one: ENOSPC)."""
    written = 0
    at = 0  # the first buffer not wholly written
    skip = 0  # bytes of it already written
    while written < size:
        batch = buffers[at : at + IOV_MAX]
        if skip:
            batch[0] = memoryview(batch[0])[skip:]
        done = os.writev(fd, batch)
        if done <= 0:
            raise OSError(28, f"short write ({written} of {size} bytes)")
        written += done
        done += skip
        while at < len(buffers) and done >= len(buffers[at]):
            done -= len(buffers[at])
            at += 1
        skip = done


HEADER_FIELDS = (
    "id", "started_at_ns", "ttfb_ns", "ended_at_ns", "method", "path", "request_headers", "status",
    "response_headers", "client_aborted", "upstream_error", "response_omitted",
)


def record_buffers(capture: Capture, logged_at_ns: int) -> list[Any]:
    """One record as buffers to write in order: its header line (with `logged_at_ns`, the store's
    stamp), the request body, the response's pieces; nothing is copied or joined."""
    header: dict[str, Any] = {name: getattr(capture, name) for name in HEADER_FIELDS}
    header["logged_at_ns"] = logged_at_ns
    if capture.blocked is not None:  # the rare extra field: older readers ignore it
        header["blocked"] = capture.blocked
    parts = capture.response_parts
    header["request_body_len"] = len(capture.request_body)
    header["response_body_len"] = sum(map(len, parts))
    line = json.dumps(header).encode() + b"\n"
    return [line, capture.request_body, *parts] if capture.request_body else [line, *parts]


def compress_record(buffers: list[Any]) -> bytes:
    """A record (`record_buffers`, or the pieces of one read back) as one gzip member, compressed
    `RUN_BYTES` at a time: zlib releases the GIL while it works."""
    packer = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, 31)
    out = []
    for buffer in buffers:
        view = memoryview(buffer)
        out += [packer.compress(view[at : at + RUN_BYTES]) for at in range(0, len(view), RUN_BYTES)]
    out.append(packer.flush())
    return b"".join(out)


def encode_member(capture: Capture, logged_at_ns: int) -> bytes:
    """One capture as a gzip member of a compacted segment (header line + raw request body + raw
    response body); the response's pieces are joined in runs, never whole."""
    head, *rest = record_buffers(capture, logged_at_ns)
    return compress_record([head, *runs(rest, RUN_BYTES)])


def decode_capture(data: bytes) -> Capture:
    """Inverse of `encode_member` (once inflated); raises ValueError/KeyError/TypeError on a malformed record."""
    newline = data.index(b"\n")
    header = json.loads(data[:newline])
    start = newline + 1
    middle = start + int(header.pop("request_body_len"))
    end = middle + int(header.pop("response_body_len"))
    if end != len(data):
        raise ValueError("body lengths do not match the record")
    return _capture(header, data[start:middle], data[middle:end])


def _capture(header: dict[str, Any], request: bytes, response: bytes) -> Capture:
    capture = Capture(**{name: header[name] for name in HEADER_FIELDS if name in header},  # older: fewer fields
                      request_body=request)
    capture.response_parts = [response]
    capture.blocked = header.get("blocked")
    return capture


def segment_number(path: Path) -> int | None:
    """The number of a log segment; None for a segment from before the log (or not a segment)."""
    match = NUMBERED.match(path.name)
    return int(match.group(1)) if match else None


def is_raw(path: Path) -> bool:
    """A segment as the wire writes it (not compacted)."""
    return path.name.endswith(RAW_SUFFIX)


class SegmentFile(NamedTuple):
    path: Path
    size: int
    number: int | None  # None for a segment from before the log


def _segments(directory: Path) -> list[SegmentFile]:
    """Every segment in log order: older unnumbered ones first (by name, which starts with a stamp);
    of a number both raw and compacted (a compaction that did not get to delete the raw one), the
    compacted one."""
    found: dict[Any, SegmentFile] = {}
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        if entry.name.startswith(".") or not entry.name.endswith((SUFFIX, RAW_SUFFIX)) or not entry.is_file():
            continue
        path = Path(entry.path)
        number = segment_number(path)
        if number is None and is_raw(path):
            continue
        try:
            size = entry.stat().st_size
        except FileNotFoundError:
            continue
        key = number if number is not None else entry.name
        if key in found and is_raw(path):
            continue
        found[key] = SegmentFile(path, size, number)
    return sorted(found.values(), key=lambda s: (1, s.number, "") if s.number is not None else (0, 0, s.path.name))


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
            if is_raw(path):
                head = fh.readline(HEADER_LINE_MAX)
            else:
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
    """(inflated member, start, end) from `offset` of an open compacted segment, up to `limit` bytes in.

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


def _raw_records(fh: BinaryIO, offset: int, limit: int | None,
                 keep: bool = True) -> Iterator[tuple[Capture | None, int, int]]:
    """(capture, start, end) of each complete record from `offset` of an open raw segment, up to
    `limit` bytes in; the capture is None with `keep=False` (counting only: the bodies are skipped).

    Stops quietly at the first record that is not whole (still being written, or torn) or whose
    header does not read (corrupt: what follows cannot be told apart)."""
    fh.seek(offset)
    size, pos = os.fstat(fh.fileno()).st_size, offset
    while limit is None or pos < limit:
        line = fh.readline(HEADER_LINE_MAX)
        if not line.endswith(b"\n"):
            return
        try:
            header = json.loads(line)
            request_len, response_len = int(header.pop("request_body_len")), int(header.pop("response_body_len"))
        except (ValueError, KeyError, TypeError, AttributeError):
            return
        end = pos + len(line) + request_len + response_len
        if end > size:  # not whole when the reading began: perhaps by now
            size = os.fstat(fh.fileno()).st_size
        if end > size or (limit is not None and end > limit):
            return
        capture = None
        if keep:
            request, response = fh.read(request_len), fh.read(response_len)
            if len(request) != request_len or len(response) != response_len:
                return
            try:
                capture = _capture(header, request, response)
            except TypeError:
                return
        else:
            fh.seek(end)
        yield capture, pos, end
        pos = end


def _read(path: Path, offset: int, limit: int | None, keep: bool = True) -> Iterator[tuple[Capture | None, int, int]]:
    """(capture, start, end) of each capture of a segment of either kind from `offset` (see
    `_raw_records`, `_members`): a compacted member that does not decode is skipped and logged;
    raises OSError, and zlib.error on a corrupt compacted member."""
    with open(path, "rb") as fh:
        if is_raw(path):
            yield from _raw_records(fh, offset, limit, keep)
            return
        for data, begin, end in _members(fh, offset, limit, keep):
            if not keep:
                yield None, begin, end
                continue
            try:
                capture = decode_capture(data)
            except (ValueError, KeyError, TypeError):
                log.warning("capture segment %s: unreadable record skipped", path.name)
                continue
            yield capture, begin, end


def count_members(path: Path, offset: int = 0) -> int:
    """Complete captures in a segment from `offset` on (0 when it is gone or unreadable)."""
    try:
        return sum(1 for _ in _read(path, offset, None, keep=False))
    except (OSError, zlib.error):
        return 0


def count_log(directory: Path, start: LogPosition, until: LogPosition | None) -> int:
    """How many captures the log holds from `start` up to `until` (None: the end; read, not kept)."""
    total = 0
    for path, _, number in _segments(directory):
        if number is None or number < start.segment or (until is not None and number > until.segment):
            continue
        offset = start.offset if number == start.segment else 0
        limit = until.offset if until is not None and number == until.segment else None
        total += count_members(path, offset) if limit is None else _count_until(path, offset, limit)
    return total


def _count_until(path: Path, offset: int, limit: int) -> int:
    try:
        return sum(1 for _ in _read(path, offset, limit, keep=False))
    except (OSError, zlib.error):
        return 0


def read_segment_entries(path: Path, number: int | None, offset: int = 0,
                         limit: int | None = None) -> Iterator[LogEntry]:
    """The captures of one segment from `offset` (up to `limit`), in order; a compacted segment that
    turns out corrupt ends quietly (the caller decides whether that is worth a warning). Raises
    OSError (FileNotFoundError: deleted meanwhile)."""
    try:
        for capture, begin, end in _read(path, offset, limit):
            assert capture is not None  # read with `keep`
            if number is None:
                yield LogEntry(capture, path, None, None)
            else:
                yield LogEntry(capture, path, LogPosition(number, begin), LogPosition(number, end))
    except zlib.error:
        log.warning("capture segment %s: corrupt member skipped with the rest of the file", path.name)


def read_log(directory: Path, start: LogPosition | None = None, until: LogPosition | None = None) -> Iterator[LogEntry]:
    """The captures of the log in order, from `start` (None: the very beginning, segments from before
    the log included) up to `until` (None: everything there is). A segment deleted meanwhile is
    skipped; a torn or corrupt record ends its segment."""
    for path, _, number in _segments(directory):
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
            yield from read_segment_entries(path, number, offset, limit)
        except FileNotFoundError:
            continue  # deleted by retention (or compacted) meanwhile


def read_segment(path: Path) -> Iterator[Capture]:
    """Captures in one segment; a torn or corrupt record ends the segment quietly."""
    for entry in read_segment_entries(path, segment_number(path)):
        yield entry.capture


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
