"""Raw captures on disk (`captures/`), for `replay` and the viewer, within a size and age budget.

A segment is a file of gzip members, one member per capture: a JSON header line (every
Capture field but the bodies, plus their lengths) followed by the raw request and response
bodies. Bodies are never JSON-escaped: escaping megabytes would hold the daemon's GIL for
milliseconds, while zlib releases it. Every append is a complete member, so a reader can use
a segment while it is still being written and a torn last member (crash mid-write) costs only
that capture. Segments rotate by size; the oldest are deleted when the directory exceeds its
byte budget or a segment outlives the age limit.
"""

import gzip
import json
import logging
import os
import time
import zlib
from pathlib import Path
from typing import Iterator

from opik_cipx.home import open_private, private_dir
from opik_cipx.wire.capture import Capture

log = logging.getLogger(__name__)
SUFFIX = ".jsonl.gz"
SEGMENT_MAX_AGE_S = 3600.0  # a quiet daemon still rotates, so age-based retention can act


class CaptureStore:
    """Appends captures to rotating segments. Used from one thread (the pipeline worker)."""

    def __init__(self, directory: Path, max_bytes: int, max_age_s: float, segment_bytes: int):
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.segment_bytes = segment_bytes
        self._fh = None
        self._path: Path | None = None
        self._size = 0
        self._opened_at = 0.0
        self._seq = 0

    def append(self, capture: Capture) -> Path:
        """Persist one capture and return its segment; raises OSError when the disk refuses it."""
        member = gzip.compress(encode_capture(capture), compresslevel=6, mtime=0)
        if (
            self._fh is None
            or self._size + len(member) > self.segment_bytes
            or time.monotonic() - self._opened_at > SEGMENT_MAX_AGE_S
        ):
            self._rotate()
        try:
            written = self._fh.write(member)
            if written != len(member):
                raise OSError(f"short write ({written} of {len(member)} bytes)")
        except OSError:
            self.close()  # a torn member must not sit in front of the next captures
            raise
        self._size += len(member)
        return self._path

    def _rotate(self) -> None:
        self.close()
        private_dir(self.directory)
        self._seq += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self._path = self.directory / f"{stamp}-{os.getpid()}-{self._seq:04d}{SUFFIX}"
        self._fh = open_private(self._path)
        self._size = 0
        self._opened_at = time.monotonic()
        self.enforce_retention()

    def enforce_retention(self, now: float | None = None) -> list[Path]:
        """Delete the oldest segments beyond the byte budget or age limit; return them."""
        now = time.time() if now is None else now
        segments = list_segments(self.directory)
        total = sum(size for _, size, _ in segments)
        removed = []
        for path, size, mtime in segments:
            if path == self._path:
                continue
            if total > self.max_bytes or now - mtime > self.max_age_s:
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
                total -= size
                removed.append(path)
        return removed

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            finally:
                self._fh = None
                self._path = None


HEADER_FIELDS = (
    "id", "started_at_ns", "ttfb_ns", "ended_at_ns", "method", "path", "request_headers", "status",
    "response_headers", "client_aborted", "upstream_error",
)


def encode_capture(capture: Capture) -> bytes:
    """Header line + raw request body + raw response body."""
    header = {name: getattr(capture, name) for name in HEADER_FIELDS}
    request, response = capture.request_body, capture.response_body
    header["request_body_len"], header["response_body_len"] = len(request), len(response)
    return b"".join((json.dumps(header).encode(), b"\n", request, response))


def decode_capture(data: bytes) -> Capture:
    """Inverse of `encode_capture`; raises ValueError/KeyError/TypeError on a malformed record."""
    newline = data.index(b"\n")
    header = json.loads(data[:newline])
    start = newline + 1
    middle = start + int(header.pop("request_body_len"))
    end = middle + int(header.pop("response_body_len"))
    if end != len(data):
        raise ValueError("body lengths do not match the record")
    capture = Capture(**{name: header[name] for name in HEADER_FIELDS}, request_body=data[start:middle])
    capture.response_parts = [data[middle:end]]
    return capture


def list_segments(directory: Path) -> list[tuple[Path, int, float]]:
    """(path, size, mtime) of every segment, oldest first."""
    out = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        if entry.name.endswith(SUFFIX) and entry.is_file():
            st = entry.stat()
            out.append((Path(entry.path), st.st_size, st.st_mtime))
    out.sort(key=lambda item: (item[2], item[0].name))
    return out


def read_segment(path: Path) -> Iterator[Capture]:
    """Captures in one segment; a torn or corrupt member ends the segment quietly."""
    data = path.read_bytes()
    while data:
        inflater = zlib.decompressobj(wbits=31)
        try:
            record = inflater.decompress(data)
        except zlib.error:
            log.warning("capture segment %s: corrupt member skipped with the rest of the file", path.name)
            return
        if not inflater.eof:
            return  # torn last member
        data = inflater.unused_data
        try:
            yield decode_capture(record)
        except (ValueError, KeyError, TypeError):
            log.warning("capture segment %s: unreadable record skipped", path.name)


def find_capture(directory: Path, capture_id: str, started_at_ns: int) -> Capture | None:
    """The stored capture with `capture_id`, or None (deleted by retention, or never stored).

    Only segments written to after the exchange started can hold it (a capture is appended once
    it is over), so older segments are not opened.
    """
    for path, _, mtime in list_segments(directory):
        if mtime < started_at_ns / 1e9 - 1:
            continue
        try:
            found = next((c for c in read_segment(path) if c.id == capture_id), None)
        except FileNotFoundError:
            continue
        if found is not None:
            return found
    return None


def read_captures(directory: Path) -> Iterator[Capture]:
    """Every stored capture, oldest segment first."""
    for path, _, _ in list_segments(directory):
        try:
            yield from read_segment(path)
        except FileNotFoundError:
            continue
