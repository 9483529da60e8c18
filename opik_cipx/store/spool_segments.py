"""The spool's files: append-only JSON-lines segments `NNNNNNNNNNNN.jsonl` and `cursor.json`.

`scan` reads what a directory holds (recovery: the segment table, the cursor, and what must be
cleaned up); `SegmentFile` is the one segment being written, appended to with one fsync per
group; `save_cursor` replaces the cursor atomically. No locks here: the spool owns the state.
"""

import contextlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from opik_cipx.home import open_private, read_json, write_atomic
from opik_cipx.store.runs import runs

log = logging.getLogger(__name__)

SUFFIX = ".jsonl"
CURSOR = "cursor.json"
WRITE_RUN = 1024 * 1024  # bytes of spool lines joined for one write


class Position(NamedTuple):
    """A place in the spool: segment number, byte offset, and lines before that offset."""

    segment: int
    offset: int
    line: int


@dataclass
class Segment:
    size: int  # bytes of complete lines; anything after is torn or not yet durable
    lines: int


def segment_number(path: Path) -> int | None:
    stem = path.name[: -len(SUFFIX)]
    return int(stem) if path.name.endswith(SUFFIX) and stem.isdigit() else None


def segment_path(directory: Path, number: int) -> Path:
    return directory / f"{number:012d}{SUFFIX}"


@dataclass
class Scan:
    """The spool as found on disk, and what recovery has to clean up."""

    segments: dict[int, Segment]  # from the cursor's segment on
    cursor: Position
    next_segment: int
    shipped: list[Path]  # wholly behind the cursor
    empty: list[Path]  # not one complete line
    torn: list[tuple[Path, int]]  # ends in a partial line: (path, size of its complete lines)

    @property
    def unshipped(self) -> int:
        return sum(seg.lines for seg in self.segments.values()) - self.cursor.line


def scan(directory: Path) -> Scan:
    """Read the segments and the cursor in `directory`; changes nothing."""
    saved = read_json(directory / CURSOR)
    cursor = Position(0, 0, 0)
    if isinstance(saved, dict) and all(isinstance(saved.get(k), int) for k in ("segment", "offset")):
        cursor = Position(saved["segment"], saved["offset"], 0)
    elif (directory / CURSOR).exists():
        log.warning("spool: unreadable %s; everything in the spool will be shipped again", CURSOR)
    found = Scan({}, cursor, 1, [], [], [])
    for path in sorted(directory.iterdir()):
        number = segment_number(path)
        if number is None:
            continue
        found.next_segment = max(found.next_segment, number + 1)
        if number < cursor.segment:
            found.shipped.append(path)
            continue
        data = path.read_bytes()
        size = data.rfind(b"\n") + 1
        if size < len(data):
            found.torn.append((path, size))
        if size == 0:
            found.empty.append(path)
            continue
        found.segments[number] = Segment(size, data.count(b"\n", 0, size))
        if number == cursor.segment:
            offset = min(cursor.offset, size)
            found.cursor = Position(number, offset, data.count(b"\n", 0, offset))
    if found.cursor.segment not in found.segments:
        later = [n for n in found.segments if n > cursor.segment]
        found.cursor = Position(min(later), 0, 0) if later else Position(max(cursor.segment, 0), 0, 0)
    found.next_segment = max(found.next_segment, found.cursor.segment + 1)
    return found


def save_cursor(directory: Path, cursor: Position) -> None:
    """Everything before `cursor` was accepted by Opik; raises OSError when the disk refuses it."""
    write_atomic(directory / CURSOR, json.dumps({"segment": cursor.segment, "offset": cursor.offset}).encode() + b"\n")


def unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("spool: cannot delete %s: %s", path.name, exc.strerror or exc)


class SegmentFile:
    """The segment being written: opened (and its name made durable) by `open`, appended to with
    one fsync per group; a failed write is cut off so the next one starts on a line boundary."""

    def __init__(self, directory: Path, number: int):
        self.number = number
        path = segment_path(directory, number)
        self._fh: io.FileIO | None = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND)
        try:
            fd = os.open(directory, os.O_RDONLY)  # make the new name itself durable
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            self.close()
            unlink(path)  # no empty segment per failed retry
            raise

    @property
    def sealed(self) -> bool:
        return self._fh is None

    def append(self, lines: list[bytes], good_size: int) -> None:
        """Append `lines` and fsync; joined `WRITE_RUN` bytes at a time, since one join of a whole
        group (up to `spool.inmem_max_mb`) would hold the GIL for milliseconds. On OSError the
        file is cut back to `good_size` bytes (or sealed when it cannot be) and the error raised."""
        fh = self._fh
        assert fh is not None, "append to a sealed segment"  # the spool opens a new one instead
        try:
            for run in runs(lines, WRITE_RUN):
                view = memoryview(run)
                while view:
                    view = view[fh.write(view) :]
            os.fsync(fh.fileno())
        except OSError:
            try:  # cut the partial group off, so the retry starts on a line boundary
                os.ftruncate(fh.fileno(), good_size)
            except OSError:
                self.close()  # cannot: seal it (its recorded size hides the tail), retry in a new one
            raise

    def close(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            with contextlib.suppress(OSError):
                fh.close()
