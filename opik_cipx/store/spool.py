"""The write-ahead spool (`spool/`): records wait here, durable, until Opik has acknowledged them.

Spool records (docs/ARCHITECTURE.md, "Spool records") come from the materializer thread through `append`, which never waits for
the disk (or `offer`, which waits for room instead of dropping): they join a bounded in-memory queue (overflow is dropped whole and counted as
`dropped_events_inmem`) and a writer thread group-commits them, one write and one fsync for
everything queued, at most one commit per `commit_interval_s` while records keep coming.
A record is *acknowledged* once its commit returned: only then does the shipper see it, and
`durable_seq` (the ticket `append` returned) says so to whoever waits.

On disk: append-only JSON-lines segments `NNNNNNNNNNNN.jsonl` (a new one on each start and on
rotation by size) and `cursor.json`, the position up to which Opik accepted everything. The
shipper reads a batch at the cursor and moves the cursor (atomically) only after Opik took the
whole batch, so a crash in between re-ships the same records, same ids and same
`last_updated_at`: Opik upserts, nothing is skipped. Segments behind the cursor are deleted.
Beyond the disk budget the oldest unshipped segments are dropped (`dropped_events_disk`).

Records Opik refused for good wait in `quarantine.jsonl` (rotated once to `.1`) with the reason.
`opik-cipx ship --retry-quarantine` hands them back (`request_requeue`): it renames the
quarantine files to `requeue-<ns>-<n>.jsonl`, an atomic step that is safe with the daemon up
or down (a record set aside meanwhile lands in one file or the other). The daemon's shipper
thread, which alone writes the quarantine, then appends their records through the normal group
commit (`take_requeued`, within `IDLE_WAIT_S` or at the next start) and deletes a requeue file
only once all of its records are durable in a segment: a crash in between appends them again,
and Opik upserts the same ids.

Recovery: a torn last line (crash mid-write) is cut off and counted; a corrupt line is skipped
and counted when read; everything after the cursor is shipped again. A disk error never
reaches the caller: the spool turns `degraded`, keeps records in memory (bounded), retries,
and recovers by itself once a write succeeds.
"""

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any, NamedTuple

from opik_cipx.home import open_private, private_dir, read_json, write_atomic
from opik_cipx.stats import utc_iso
from opik_cipx.store.runs import runs

log = logging.getLogger(__name__)

KINDS = ("trace", "span")
SUFFIX = ".jsonl"
CURSOR = "cursor.json"
QUARANTINE = "quarantine.jsonl"
QUARANTINE_MAX_BYTES = 16 * 1024 * 1024  # then rotated once to quarantine.jsonl.1
REQUEUE_PREFIX = "requeue-"
REQUEUE_WAIT_S = 5.0  # how long one look at the requeue files may wait for room or for the disk
GROUP_MAX = 1000  # records that trigger a commit before the interval is over
STRING_STEP = 16 * 1024  # characters of one string escaped at once (about 0.1 ms)
WRITE_RUN = 1024 * 1024  # bytes of spool lines joined for one write
SPLIT_DEPTH = 4  # container levels of a spool line encoded member by member
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


class Position(NamedTuple):
    """A place in the spool: segment number, byte offset, and lines before that offset."""

    segment: int
    offset: int
    line: int


@dataclass
class Segment:
    size: int  # bytes of complete lines; anything after is torn or not yet durable
    lines: int


@dataclass
class Batch:
    """Durable records from `start` to `end`, for the shipper; `corrupt` lines were skipped."""

    start: Position
    end: Position
    records: list[tuple[str, dict[str, Any], int]]  # kind, body, bytes on disk
    corrupt: int


def encode(record: dict[str, Any]) -> bytes:
    """One spool line; ValueError/TypeError for anything that is not a spool record (or not JSON).

    Runs on the materializer's thread: a long string (a request of up to `spans.max_io_kb`, a
    preview) is escaped in steps (`dumps`), so no single call holds the interpreter for long.
    """
    if not isinstance(record, dict) or record.get("kind") not in KINDS:
        raise ValueError(f"not a spool record (kind must be trace or span): {str(record)[:200]}")
    body = record.get("body")
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        raise ValueError(f"spool record body without an id: {str(record)[:200]}")
    return dumps({"kind": record["kind"], "body": body}).encode() + b"\n"


def dumps(value: Any) -> str:
    """`json.dumps(value, separators=(",", ":"), allow_nan=False)`, in pieces: the containers of the
    first `SPLIT_DEPTH` levels (a record, its body, a request as span input, its messages) one
    member at a time, every long string `STRING_STEP` characters at a time. Off the wire, one call
    that encodes a quarter of a megabyte holds the GIL for a millisecond."""
    long: dict[str, str] = {}
    text = _pieces(value, SPLIT_DEPTH, long, uuid.uuid4().hex)
    for marker, string in long.items():
        text = text.replace(_encode(marker), _string_literal(string), 1)
    return text


def _pieces(value: Any, depth: int, long: dict[str, str], nonce: str) -> str:
    if depth and isinstance(value, list):
        return "[" + ",".join([_pieces(item, depth - 1, long, nonce) for item in value]) + "]"
    if depth and isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return "{" + ",".join([_encode(key) + ":" + _pieces(item, depth - 1, long, nonce)
                               for key, item in value.items()]) + "}"
    return _encode(_set_aside(value, long, nonce))


def _set_aside(value: Any, long: dict[str, str], nonce: str) -> Any:
    """`value` with each string longer than `STRING_STEP` replaced by a unique marker (kept in
    `long`), so `json.dumps` never escapes a long text in one call; containers on the way to one
    are copied, the record itself is not changed."""
    if isinstance(value, str):
        if len(value) <= STRING_STEP:
            return value
        marker = f"\x00{nonce}:{len(long)}\x00"
        long[marker] = value
        return marker
    if isinstance(value, dict):
        out = None
        for key, item in value.items():
            kept = _set_aside(item, long, nonce)
            if kept is not item:
                out = out if out is not None else dict(value)
                out[key] = kept
        return out if out is not None else value
    if isinstance(value, list):
        out = None
        for index, item in enumerate(value):
            kept = _set_aside(item, long, nonce)
            if kept is not item:
                out = out if out is not None else list(value)
                out[index] = kept
        return out if out is not None else value
    return value


def _string_literal(text: str) -> str:
    """`json.dumps(text)`, escaped `STRING_STEP` characters at a time (escaping is per character,
    so the pieces join into the same literal)."""
    pieces = [encode_basestring_ascii(text[at : at + STRING_STEP])[1:-1] for at in range(0, len(text), STRING_STEP)]
    return '"' + "".join(pieces) + '"'


def decode(line: bytes) -> tuple[str, dict[str, Any]] | None:
    """(kind, body) of one spool line, or None when it is corrupt."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("kind") not in KINDS:
        return None
    body = record.get("body")
    return (record["kind"], body) if isinstance(body, dict) and isinstance(body.get("id"), str) else None


def segment_number(path: Path) -> int | None:
    stem = path.name[: -len(SUFFIX)]
    return int(stem) if path.name.endswith(SUFFIX) and stem.isdigit() else None


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


def unshipped_records(directory: Path) -> int:
    """Acknowledged records in the spool at `directory` that Opik has not accepted yet."""
    try:
        return scan(directory).unshipped
    except FileNotFoundError:
        return 0


def _lines(path: Path) -> int:
    """Newline-terminated lines in `path` (0 when it is missing or unreadable)."""
    try:
        with open(path, "rb") as fh:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    except OSError:
        return 0


def quarantine_counts(directory: Path) -> dict[str, int]:
    """`quarantined`: records set aside in the quarantine files; `retry_pending`: records handed
    back by `ship --retry-quarantine` that the daemon has not put into the spool yet."""
    try:
        requeued = [p for p in directory.iterdir() if p.name.startswith(REQUEUE_PREFIX) and p.name.endswith(SUFFIX)]
    except OSError:
        requeued = []
    return {
        "quarantined": _lines(directory / QUARANTINE) + _lines(directory / (QUARANTINE + ".1")),
        "retry_pending": sum(map(_lines, requeued)),
    }


def request_requeue(directory: Path) -> int:
    """Hand every quarantined record back to the spool's owner: how many were handed back.

    Renames the quarantine files (the older first) to requeue files the daemon takes in; works
    whether the daemon runs or not.
    """
    moved, stamp = 0, time.time_ns()
    for n, name in enumerate((QUARANTINE + ".1", QUARANTINE)):
        target = directory / f"{REQUEUE_PREFIX}{stamp}-{n}{SUFFIX}"
        try:
            os.rename(directory / name, target)
        except FileNotFoundError:
            continue
        moved += _lines(target)
    return moved


def _requeue_line(line: bytes) -> bytes | None:
    """The spool line for one quarantine entry, or None when it holds no spool record."""
    try:
        entry = json.loads(line)
        return encode({"kind": entry["kind"], "body": entry["body"]})
    except (ValueError, TypeError, KeyError):
        return None


class Spool:
    """The spool of one daemon: `append` from the materializer, `read_batch`/`commit` from the shipper."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        segment_bytes: int,
        inmem_max: int,
        inmem_max_bytes: int,
        commit_interval_s: float = 0.2,
        retry_s: float = 1.0,
    ):
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = max(1, min(segment_bytes, max_bytes // 4))  # the budget can always drop one
        self.inmem_max = inmem_max
        self.inmem_max_bytes = inmem_max_bytes
        self.commit_interval_s = commit_interval_s
        self.retry_s = retry_s
        self._cond = threading.Condition()
        self._pending: list[bytes] = []  # encoded, not yet handed to the writer
        self._inmem = 0  # records in memory: pending plus the group being written
        self._inmem_bytes = 0
        self._appended_seq = 0
        self._durable_seq = 0
        self._flush_wanted = False
        self._stopping = False
        self._close_deadline = 0.0
        self._dropping = False
        self._segments: dict[int, Segment] = {}
        self._cursor = Position(0, 0, 0)
        self._active: int | None = None
        self._fh = None
        self._next_segment = 1
        self._recovered = False
        self._last_commit = 0.0
        self._last_sync_at: float | None = None
        self._syncs = 0
        self._degraded = False
        self._last_write_error: str | None = None
        self._dropped_inmem = 0
        self._dropped_disk = 0
        self._corrupt = 0
        self._thread = threading.Thread(target=self._run, name="cipx-spool", daemon=True)
        self._try_recover()

    # ---- materializer side -------------------------------------------------------------

    def append(self, records: list[dict[str, Any]]) -> int | None:
        """Queue one capture's records for the disk; never waits for it.

        Returns the ticket `wait_durable` takes (acknowledged once `durable_seq` reaches it), or
        None when the in-memory queue is full and the records were dropped (counted).
        """
        lines = [encode(record) for record in records]
        size = sum(map(len, lines))
        with self._cond:
            if not self._fits(len(lines), size) or self._stopping:
                if not self._dropping:
                    why = "spool closed" if self._stopping else "in-memory queue full"
                    log.warning("spool: dropping records: %s", why)
                self._dropping = True
                self._dropped_inmem += len(lines)
                return None
            self._dropping = False
            return self._push(lines, size)

    def _fits(self, count: int, size: int) -> bool:
        return self._inmem + count <= self.inmem_max and self._inmem_bytes + size <= self.inmem_max_bytes

    def _push(self, lines: list[bytes], size: int) -> int:
        """Queue encoded lines for the writer (the condition held); their ticket."""
        self._pending.extend(lines)
        self._inmem += len(lines)
        self._inmem_bytes += size
        self._appended_seq += len(lines)
        self._cond.notify_all()
        return self._appended_seq

    def offer(self, records: list[dict[str, Any]], timeout_s: float) -> int | None:
        """Like `append`, but wait up to `timeout_s` for room instead of dropping: None (nothing
        dropped, nothing counted) when there was none or the spool is closing. The materializer
        uses it: a record it cannot spool now is derived again from the capture log later."""
        lines = [encode(record) for record in records]
        size = sum(map(len, lines))
        with self._cond:
            def room() -> bool:
                return self._stopping or self._inmem == 0 or self._fits(len(lines), size)

            if not self._cond.wait_for(room, timeout_s) or self._stopping:
                return None
            return self._push(lines, size)

    @property
    def closing(self) -> bool:
        """`close` was called: nothing more is taken."""
        with self._cond:
            return self._stopping

    @property
    def degraded(self) -> bool:
        """The disk refuses writes now: records wait in memory, acknowledgements may be far off."""
        with self._cond:
            return self._degraded

    @property
    def durable_seq(self) -> int:
        """How many appended records (in ticket order) are acknowledged: written and fsynced."""
        with self._cond:
            return self._durable_seq

    def wait_durable(self, ticket: int, timeout_s: float) -> bool:
        """Wait until the records up to `ticket` are acknowledged; False at the deadline."""
        with self._cond:
            return self._cond.wait_for(lambda: self._durable_seq >= ticket, timeout_s)

    def flush(self, timeout_s: float) -> bool:
        """Commit what is queued now, without waiting for the group interval; wait for it."""
        with self._cond:
            ticket = self._appended_seq
            self._flush_wanted = True
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._durable_seq >= ticket, timeout_s)

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout_s: float) -> int:
        """Commit what is queued (retrying for up to `timeout_s`), then stop.

        Returns how many records are still only in memory: lost with this process.
        """
        with self._cond:
            self._stopping = True
            self._close_deadline = time.monotonic() + timeout_s
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout_s + 1.0)
        elif self._thread.ident is None:  # never started: commit once here
            self._commit_group()
        if not self._thread.is_alive():
            self._close_segment()
        with self._cond:
            return self._inmem

    # ---- shipper side ------------------------------------------------------------------

    def wait_ready(self, timeout_s: float, cancel: threading.Event) -> None:
        """Wait until acknowledged records wait behind the cursor, `cancel` is set, or `timeout_s`.

        Whoever sets `cancel` calls `wake` afterwards.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._unshipped_lines() > 0 or cancel.is_set(), timeout_s)

    def wake(self) -> None:
        """Make threads blocked in `wait_ready` look at their `cancel` event."""
        with self._cond:
            self._cond.notify_all()

    def read_batch(self, max_records: int, max_bytes: int) -> Batch | None:
        """The acknowledged records at the cursor, up to `max_records` and `max_bytes` (at least one).

        Reading does not move the cursor; `commit` does. None when nothing is waiting.
        """
        with self._cond:
            if not self._recovered:
                return None
            start = pos = self._cursor
            segments = [
                (n, seg.size, n != self._active) for n, seg in sorted(self._segments.items()) if n >= pos.segment
            ]
        records: list[tuple[str, dict[str, Any], int]] = []
        nbytes = corrupt = 0
        for i, (number, size, sealed) in enumerate(segments):
            if number != pos.segment:
                pos = Position(number, 0, 0)
            offset, line = pos.offset, pos.line
            try:
                with open(self._path(number), "rb") as fh:
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

    def is_current(self, batch: Batch) -> bool:
        """False once the records of `batch` were dropped by the disk budget (or committed)."""
        with self._cond:
            return self._cursor == batch.start

    def commit(self, batch: Batch) -> None:
        """Opik accepted `batch`: move the cursor past it (durably) and delete shipped segments."""
        with self._cond:
            if batch.end <= self._cursor:
                return
            self._cursor = batch.end
            self._corrupt += batch.corrupt
            done = [n for n in self._segments if n < batch.end.segment and n != self._active]
            for number in done:
                del self._segments[number]
        cursor = {"segment": batch.end.segment, "offset": batch.end.offset}
        try:
            write_atomic(self.directory / CURSOR, json.dumps(cursor).encode() + b"\n")
        except OSError as exc:
            self._write_failed("cannot save the spool cursor", exc)  # a crash now re-ships: harmless
        else:
            self._write_ok()
        for number in done:
            self._unlink(self._path(number))

    def quarantine(self, kind: str, body: dict[str, Any], status: int, reason: str) -> None:
        """Set aside a record Opik rejected, with its reason, in `quarantine.jsonl` (best effort)."""
        entry = {"at": utc_iso(time.time()), "kind": kind, "status": status, "reason": reason, "body": body}
        line = json.dumps(entry, separators=(",", ":")).encode() + b"\n"
        path = self.directory / QUARANTINE
        try:
            if path.exists() and path.stat().st_size + len(line) > QUARANTINE_MAX_BYTES:
                os.replace(path, path.with_name(QUARANTINE + ".1"))
            with open_private(path) as fh:
                fh.write(line)
        except OSError as exc:
            log.warning("spool: cannot write the quarantine file: %s", exc.strerror or exc)

    def take_requeued(self, wait_s: float = REQUEUE_WAIT_S) -> int:
        """Append the records of the requeue files (`request_requeue`), oldest first; how many.

        Waits (each step at most `wait_s`) for room in memory instead of dropping, and deletes a
        file once its records are durable; what did not make it stays in the file for next time.
        Runs on the shipper thread, the one thread that writes the quarantine.
        """
        try:
            paths = sorted(p for p in self.directory.iterdir()
                           if p.name.startswith(REQUEUE_PREFIX) and p.name.endswith(SUFFIX))
        except OSError:
            return 0
        taken = 0
        for path in paths:
            try:
                lines = [spool_line for line in path.read_bytes().splitlines()
                         if (spool_line := _requeue_line(line)) is not None]
            except OSError as exc:
                log.warning("spool: cannot read %s: %s", path.name, exc.strerror or exc)
                return taken
            done = self._append_durably(lines, wait_s)
            taken += done
            try:
                if done < len(lines):
                    write_atomic(path, b"".join(lines[done:]))  # spool lines read back as quarantine entries
                    return taken
                path.unlink()
            except OSError as exc:  # it will be appended again: same ids, Opik upserts
                log.warning("spool: cannot update %s: %s", path.name, exc.strerror or exc)
                return taken
        return taken

    def _append_durably(self, lines: list[bytes], wait_s: float) -> int:
        """Queue `lines` in chunks that fit, each once there is room; how many leading lines are durable."""
        done = 0
        while done < len(lines):
            chunk, size = [], 0
            for line in lines[done:]:
                if chunk and (len(chunk) >= max(1, min(GROUP_MAX, self.inmem_max // 2))
                              or size + len(line) > self.inmem_max_bytes // 2):
                    break
                chunk.append(line)
                size += len(line)
            with self._cond:
                if not self._cond.wait_for(lambda: self._stopping or self._fits(len(chunk), size), wait_s) \
                        or self._stopping:
                    return done
                ticket = self._push(chunk, size)
            if not self.wait_durable(ticket, wait_s):
                return done
            done += len(chunk)
        return done

    # ---- stats -------------------------------------------------------------------------

    def quarantine_counts(self) -> dict[str, int]:
        """Records in quarantine, and records handed back but not yet in the spool."""
        return quarantine_counts(self.directory)

    def counts(self) -> tuple[int, int]:
        """(records in memory waiting for the disk, acknowledged records not yet shipped)."""
        with self._cond:
            return self._inmem, self._unshipped_lines()

    def section(self) -> dict[str, Any]:
        """The `wal` section of the admin stats."""
        with self._cond:
            on_disk = sum(seg.size for n, seg in self._segments.items() if n >= self._cursor.segment)
            return {
                "hot_bytes": max(0, on_disk - self._cursor.offset) + self._inmem_bytes,
                "segments": len(self._segments),
                "last_sync_at": utc_iso(self._last_sync_at) if self._last_sync_at else None,
                "syncs": self._syncs,
                "degraded": self._degraded,
                "last_write_error": self._last_write_error,
                "dropped_events_inmem": self._dropped_inmem,
                "dropped_events_disk": self._dropped_disk,
                "corrupt_records": self._corrupt,
            }

    # ---- the writer thread -------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._stopping or self._degraded)
                if self._degraded:  # retry after a pause, or at once to flush / close
                    self._cond.wait_for(lambda: self._stopping or self._flush_wanted, self.retry_s)
                else:  # group commit: at most one per interval unless a flush, close or a big group
                    deadline = self._last_commit + self.commit_interval_s
                    self._cond.wait_for(
                        lambda: self._stopping or self._flush_wanted or len(self._pending) >= GROUP_MAX,
                        max(0.0, deadline - time.monotonic()),
                    )
                stopping, deadline = self._stopping, self._close_deadline
            ok = self._commit_group()
            if stopping and (ok or time.monotonic() >= deadline):
                return
            if stopping:
                time.sleep(min(self.retry_s, max(0.0, deadline - time.monotonic())))

    def _commit_group(self) -> bool:
        """Write and fsync everything pending as one group; False when the disk refused it."""
        if not self._recovered and not self._try_recover():
            return False
        with self._cond:
            group, self._pending = self._pending, []
            self._flush_wanted = False
        if not group:
            return True
        size = sum(map(len, group))
        try:
            self._write(group, size)
        except OSError as exc:
            with self._cond:
                self._pending[:0] = group
            self._write_failed("cannot write the spool", exc)
            return False
        now = time.time()
        with self._cond:
            self._segments[self._active].size += size
            self._segments[self._active].lines += len(group)
            self._inmem -= len(group)
            self._inmem_bytes -= size
            self._durable_seq += len(group)
            self._last_commit = time.monotonic()
            self._last_sync_at = now
            self._syncs += 1
            self._cond.notify_all()
        self._write_ok()
        self._enforce_budget()
        return True

    def _write(self, lines: list[bytes], size: int) -> None:
        """Append `lines` (`size` bytes) and fsync; joined `WRITE_RUN` bytes at a time, since one
        join of a whole group (up to `spool.inmem_max_mb`) would hold the GIL for milliseconds."""
        active = self._segments.get(self._active) if self._fh is not None else None
        if active is None or (active.size and active.size + size > self.segment_bytes):
            self._open_segment()
        good = self._segments[self._active].size
        try:
            for run in runs(lines, WRITE_RUN):
                view = memoryview(run)
                while view:
                    view = view[self._fh.write(view) :]
            os.fsync(self._fh.fileno())
        except OSError:
            try:  # cut the partial group off, so the retry starts on a line boundary
                os.ftruncate(self._fh.fileno(), good)
            except OSError:
                self._close_segment()  # cannot: seal it (its recorded size hides the tail), retry in a new one
            raise

    def _close_segment(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            with contextlib.suppress(OSError):
                fh.close()

    def _open_segment(self) -> None:
        self._close_segment()
        number = self._next_segment
        self._next_segment += 1
        path = self._path(number)
        fh = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND)
        try:
            fd = os.open(self.directory, os.O_RDONLY)  # make the new name itself durable
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            fh.close()
            self._unlink(path)  # no empty segment per failed retry
            raise
        self._fh = fh
        with self._cond:
            self._segments[number] = Segment(0, 0)
            self._active = number

    def _enforce_budget(self) -> None:
        """Drop the oldest segments (unshipped ones counted) while the spool is over its budget."""
        dropped: list[int] = []
        with self._cond:
            total = sum(seg.size for seg in self._segments.values())
            for number in sorted(self._segments):
                if total <= self.max_bytes or number == self._active:
                    break
                seg = self._segments.pop(number)
                total -= seg.size
                dropped.append(number)
                if number >= self._cursor.segment:
                    lost = seg.lines - (self._cursor.line if number == self._cursor.segment else 0)
                    self._dropped_disk += lost
                    self._cursor = Position(min(self._segments), 0, 0)
                    log.warning("spool: over its %d-byte budget: dropped %d unshipped record(s)", self.max_bytes, lost)
        for number in dropped:
            self._unlink(self._path(number))

    # ---- recovery and errors -----------------------------------------------------------

    def _try_recover(self) -> bool:
        try:
            self._recover()
        except OSError as exc:
            self._write_failed("cannot open the spool directory", exc)  # no path: it is shown in the admin stats
            return False
        self._write_ok()
        return True

    def _recover(self) -> None:
        """Rebuild the segment table and cursor from disk; cut torn tails off (counted)."""
        private_dir(self.directory)
        found = scan(self.directory)
        for path in found.shipped + found.empty:
            self._unlink(path)  # shipped (deletion was interrupted) or holding no complete line
        for path, size in found.torn:
            log.warning("spool: %s ends in a torn line; skipped", path.name)
            try:
                os.truncate(path, size)
            except OSError:
                pass  # the recorded size hides the tail anyway
        self._next_segment = max(self._next_segment, found.next_segment)
        with self._cond:
            self._segments = found.segments
            self._cursor = found.cursor
            self._corrupt += len(found.torn)
            self._recovered = True
            self._cond.notify_all()

    def _write_failed(self, what: str, exc: OSError) -> None:
        message = f"{what}: {exc.strerror or exc}"
        with self._cond:
            changed = message != self._last_write_error or not self._degraded
            self._degraded = True
            self._last_write_error = message
        if changed:
            log.warning("spool degraded: %s; records are kept in memory (bounded) and retried", message)

    def _write_ok(self) -> None:
        with self._cond:
            recovered = self._degraded
            self._degraded = False
        if recovered:
            log.info("spool: writes succeed again; no longer degraded")

    def _unshipped_lines(self) -> int:
        lines = sum(seg.lines for n, seg in self._segments.items() if n >= self._cursor.segment)
        return max(0, lines - self._cursor.line)

    def _path(self, number: int) -> Path:
        return self.directory / f"{number:012d}{SUFFIX}"

    def _unlink(self, path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("spool: cannot delete %s: %s", path.name, exc.strerror or exc)
