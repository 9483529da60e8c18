"""Reading the spool for the shipper: the acknowledged records at the cursor, as one batch.

A batch never reaches past what the spool acknowledged (each segment's recorded size), and moves
on to the next segment only once the one it reads is sealed; a corrupt line is passed over and
counted. Reading changes nothing: `Spool.commit` moves the cursor once Opik took the batch.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opik_cipx.store.spool_lines import decode
from opik_cipx.store.spool_segments import Position, segment_path


@dataclass
class Batch:
    """Durable records from `start` to `end`, for the shipper; `corrupt` lines were skipped."""

    start: Position
    end: Position
    records: list[tuple[str, dict[str, Any], int]]  # kind, body, bytes on disk
    corrupt: int


def read_batch(directory: Path, segments: list[tuple[int, int, bool]], start: Position, max_records: int,
               max_bytes: int) -> Batch | None:
    """The records from `start` on, up to `max_records` and `max_bytes` (at least one), in the
    `segments` given as (number, acknowledged size, sealed) from the cursor's on. None when nothing
    is waiting, or when a segment was deleted meanwhile (the disk budget moved the cursor)."""
    records: list[tuple[str, dict[str, Any], int]] = []
    nbytes = corrupt = 0
    pos = start
    for i, (number, size, sealed) in enumerate(segments):
        if number != pos.segment:
            pos = Position(number, 0, 0)
        offset, line = pos.offset, pos.line
        try:
            with open(segment_path(directory, number), "rb") as fh:
                fh.seek(offset)
                while offset < size and len(records) < max_records:
                    raw = fh.readline(size - offset)
                    if not raw or (records and nbytes + len(raw) > max_bytes):
                        break
                    offset, line = offset + len(raw), line + 1
                    parsed = decode(raw)
                    if parsed is None:
                        corrupt += 1
                    else:
                        records.append((parsed[0], parsed[1], len(raw)))
                        nbytes += len(raw)
        except FileNotFoundError:
            return None  # dropped by the disk budget meanwhile; the cursor has moved on
        pos = Position(number, offset, line)
        if offset >= size and sealed and i + 1 < len(segments):
            pos = Position(segments[i + 1][0], 0, 0)
            if len(records) < max_records and nbytes < max_bytes:
                continue
        break
    return None if pos == start else Batch(start, pos, records, corrupt)
