"""Retention and compaction of the capture log, in the work process (the follower's thread).

The wire appends raw segments (store/captures.py) and never deletes one; the follower calls
`LogKeeper.retain` with the position its checkpoint covers and the wire's `sealed_below` (every
segment numbered below it is closed for good; docs/ARCHITECTURE.md, "Capture log"):
- a segment the wire may still write is never touched;
- materialized segments are deleted beyond the byte budget or the age limit (or at once when
  captures are not kept);
- a segment not yet materialized is never aged out, and is deleted only when the byte budget
  forces it: its captures are counted as lost;
- a raw segment wholly behind the checkpoint is compacted, one per call: each record becomes a
  gzip member of `NNNNNNNNNNNN.jsonl.gz`, written under a hidden name, fsynced and renamed in
  place, then the raw file is deleted. A crash in between leaves both; the compacted one is the
  segment for every reader, and the next pass deletes the raw one.
"""

import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.home import open_private
from opik_cipx.store.captures import (
    HEADER_LINE_MAX,
    RAW_SUFFIX,
    SUFFIX,
    LogPosition,
    compress_record,
    count_members,
    first_stamp,
    is_raw,
    list_segments,
    written_until,
)

log = logging.getLogger(__name__)
BODY_RUN = 1 << 20  # a compacted record's body is read this much at a time


class LogKeeper:
    """The capture log's retention and compaction (see the module docstring)."""

    def __init__(self, directory: Path, max_bytes: int, max_age_s: float, keep: bool = True, clock: Clock = SYSTEM):
        """`keep=False` (captures.enabled = false): a segment is deleted as soon as it is materialized.
        `clock` measures ages against the stamps the log holds."""
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.keep = keep
        self.clock = clock
        self._stamps: dict[Path, int | None] = {}  # first stamps read so far
        self._lock = threading.Lock()
        self._swept = False  # leftovers of a compaction cut short, looked for once

    def retain(self, materialized: LogPosition, sealed_below: int) -> int:
        """Apply retention, knowing everything before `materialized` was materialized and every segment
        numbered below `sealed_below` is closed. Returns how many captures not yet materialized the
        byte budget forced out."""
        now = self.clock.time_ns()
        found = list_segments(self.directory)
        stamps = {s.path: self._stamp(s.path) for s in found}
        until = written_until(found, stamps)
        total = sum(s.size for s in found)
        lost = 0
        for segment, last_ns in zip(found, until, strict=True):
            path, size, number = segment
            if number is not None and number >= sealed_below:
                continue  # the wire may still write it
            done = number is None or number < materialized.segment or (
                number == materialized.segment and size <= materialized.offset)
            if done:
                aged = last_ns is not None and now - last_ns > self.max_age_s * 1e9
                if self.keep and total <= self.max_bytes and not aged:
                    continue
            elif total <= self.max_bytes:
                continue
            else:
                lost += count_members(path, materialized.offset if number == materialized.segment else 0)
                log.warning("capture log: over its %d-byte budget: deleting %s before it was materialized",
                            self.max_bytes, path.name)
            if self._delete(path):
                total -= size
        return lost

    def compact(self, materialized: LogPosition, sealed_below: int) -> Path | None:
        """Compact the oldest raw segment wholly behind `materialized` (and closed); the compacted
        segment, or None when there was none to compact (or it failed: logged, tried again later)."""
        if not self.keep:
            return None
        if not self._swept:
            self._swept = True
            self._remove_leftovers()
        for path, _, number in list_segments(self.directory):
            if number is None or not is_raw(path):
                continue
            if number >= min(materialized.segment, sealed_below):
                return None
            try:
                compacted = compact_segment(path, number)  # the raw segment is gone
            except OSError as exc:
                log.warning("capture log: cannot compact %s: %s", path.name, exc.strerror or exc)
                return None
            with self._lock:
                self._stamps.pop(path, None)
            return compacted
        return None

    def _remove_leftovers(self) -> None:
        """Raw segments a compaction cut short left beside their compacted one (hidden by it)."""
        for path, _, number in list_segments(self.directory):
            raw = path.with_name(f"{number:012d}{RAW_SUFFIX}") if number is not None and not is_raw(path) else None
            if raw is not None and raw.exists():
                self._delete(raw)

    def _stamp(self, path: Path) -> int | None:
        with self._lock:
            if path in self._stamps:
                return self._stamps[path]
        stamp = first_stamp(path)
        with self._lock:
            self._stamps[path] = stamp
        return stamp

    def _delete(self, path: Path) -> bool:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("capture log: cannot delete %s: %s", path.name, exc.strerror or exc)
            return False
        with self._lock:
            self._stamps.pop(path, None)
        raw = self.directory / (path.name.removesuffix(SUFFIX) + RAW_SUFFIX)
        if path.name.endswith(SUFFIX) and raw.exists():
            return self._delete(raw)  # a compaction's leftover, hidden behind the compacted file until now
        return True


def compact_segment(path: Path, number: int) -> Path:
    """Write the raw segment `path` as `NNNNNNNNNNNN.jsonl.gz` (one gzip member per complete record, a
    torn tail dropped), durable before it replaces `path`; raises OSError (nothing changed then)."""
    target = path.with_name(f"{number:012d}{SUFFIX}")
    temp = path.with_name(f".{target.name}.compacting")
    try:
        with open(path, "rb") as src, open_private(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC) as out:
            for record in raw_record_bytes(src):
                out.write(compress_record(record))
            os.fsync(out.fileno())
        os.replace(temp, target)
    except BaseException:
        try:
            temp.unlink()
        except OSError:
            pass
        raise
    try:
        path.unlink()
    except OSError as exc:  # the compacted segment hides it; the next pass deletes it with that one
        log.warning("capture log: cannot delete %s after compacting it: %s", path.name, exc.strerror or exc)
    return target


def raw_record_bytes(fh: BinaryIO) -> Iterator[list[bytes]]:
    """The bytes of each complete record of an open raw segment, in order: [header line, body runs...];
    a record that is not whole (a torn tail) or does not read ends it."""
    size = os.fstat(fh.fileno()).st_size
    pos = 0
    while True:
        line = fh.readline(HEADER_LINE_MAX)
        if not line.endswith(b"\n"):
            return
        try:
            header = json.loads(line)
            length = int(header["request_body_len"]) + int(header["response_body_len"])
        except (ValueError, KeyError, TypeError):
            return
        if pos + len(line) + length > size:
            return
        record, left = [line], length
        while left:
            run = fh.read(min(left, BODY_RUN))
            if not run:
                return
            record.append(run)
            left -= len(run)
        yield record
        pos += len(line) + length
