"""The write-ahead spool (`spool/`): records wait here, durable, until Opik has acknowledged them.

Spool records (docs/ARCHITECTURE.md, "Spool records") come from the materializer thread through
`append`, which never waits for the disk (or `offer`, which waits for room instead of dropping):
they are encoded (`spool_lines`) and join a bounded in-memory queue (overflow is dropped whole
and counted as `dropped_events_inmem`); the group-commit writer (`spool_writer`) writes them,
one write and one fsync for everything queued, at most one commit per `commit_interval_s` while
records keep coming. A record is *acknowledged* once its commit returned: only then does the
shipper see it (`subscribe` tells it), and `durable_seq` (the ticket `append` returned) says so
to whoever waits.

On disk (`spool_segments`): append-only JSON-lines segments `NNNNNNNNNNNN.jsonl` (a new one on
each start and on rotation by size) and `cursor.json`, the position up to which Opik accepted
everything. The shipper reads a batch at the cursor (`spool_reader`) and moves the cursor
(atomically) only after Opik took the whole batch, so a crash in between re-ships the same
records, same ids and same `last_updated_at`: Opik upserts, nothing is skipped. Segments behind
the cursor are deleted. Beyond the disk budget the oldest unshipped segments are dropped
(`dropped_events_disk`).

Records Opik refused for good wait in the quarantine (`quarantine`); `take_requeued`, on the
shipper thread, appends what `ship --retry-quarantine` handed back through the same queue and
deletes a requeue file only once all of its records are durable: a crash in between appends them
again, and Opik upserts the same ids.

A spool made with `keep=False` (the daemon's, when no Opik destination is configured) keeps no
record: `append` and `offer` acknowledge at once and write nothing (counted in `discarded`), so
no prompt text piles up for an Opik that will never get it. What a spool directory already holds
stays as it is, for when Opik is configured again (`opik-cipx purge` deletes it).

Recovery: a torn last line (crash mid-write) is cut off and counted; a corrupt line is skipped
and counted when read; everything after the cursor is shipped again. A disk error never
reaches the caller: the spool turns `degraded`, keeps records in memory (bounded), retries,
and recovers by itself once a write succeeds.
"""

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.home import private_dir
from opik_cipx.stats import Counters, utc_iso
from opik_cipx.store.quarantine import keep_rest, quarantine_counts, requeue_files, requeued_lines, set_aside
from opik_cipx.store.spool_lines import encode
from opik_cipx.store.spool_reader import Batch, read_batch
from opik_cipx.store.spool_segments import Position, Segment, SegmentFile, save_cursor, scan, segment_path, unlink
from opik_cipx.store.spool_writer import GROUP_MAX, GroupCommit

log = logging.getLogger(__name__)

REQUEUE_WAIT_S = 5.0  # how long one look at the requeue files may wait for room or for the disk


def unshipped_records(directory: Path) -> int:
    """Acknowledged records in the spool at `directory` that Opik has not accepted yet."""
    try:
        return scan(directory).unshipped
    except FileNotFoundError:
        return 0


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
        counters: Counters | None = None,
        clock: Clock = SYSTEM,
        keep: bool = True,
    ):
        self.directory = directory
        self.keep = keep
        self.max_bytes = max_bytes
        self.segment_bytes = max(1, min(segment_bytes, max_bytes // 4))  # the budget can always drop one
        self.inmem_max = inmem_max
        self.inmem_max_bytes = inmem_max_bytes
        self.clock = clock
        self._writer = GroupCommit(self._write_group, counters or Counters(), inmem_max, inmem_max_bytes,
                                   commit_interval_s, retry_s, clock)
        self._lock = threading.Lock()  # everything below; the queue has the writer's own lock
        self._segments: dict[int, Segment] = {}
        self._cursor = Position(0, 0, 0)
        self._file: SegmentFile | None = None  # the segment being written (writer thread)
        self._active: int | None = None  # its number, for the shipper's side
        self._next_segment = 1
        self._recovered = False
        self._last_sync_at: float | None = None
        self._syncs = 0
        self._degraded = False
        self._last_write_error: str | None = None
        self._dropped_disk = 0
        self._corrupt = 0
        self._discarded = 0  # records not kept (`keep=False`)
        self._listeners: list[Callable[[], None]] = []
        if not self._try_recover():
            self._writer.failed()  # retried by the writer until the directory can be used

    # ---- materializer side -------------------------------------------------------------

    def append(self, records: list[dict[str, Any]]) -> int | None:
        """Queue one capture's records for the disk; never waits for it.

        Returns the ticket `wait_durable` takes (acknowledged once `durable_seq` reaches it), or
        None when the in-memory queue is full and the records were dropped (counted).
        """
        if not self.keep:
            return self._discard(records)
        return self._writer.append([encode(record) for record in records])

    def offer(self, records: list[dict[str, Any]], timeout_s: float) -> int | None:
        """Like `append`, but wait up to `timeout_s` for room instead of dropping: None (nothing
        dropped, nothing counted) when there was none or the spool is closing. The materializer
        uses it: a record it cannot spool now is derived again from the capture log later."""
        if not self.keep:
            return self._discard(records)
        return self._writer.offer([encode(record) for record in records], timeout_s)

    def _discard(self, records: list[dict[str, Any]]) -> int:
        with self._lock:
            self._discarded += len(records)
        return self._writer.skip(len(records))

    @property
    def closing(self) -> bool:
        """`close` was called: nothing more is taken."""
        return self._writer.stopping

    @property
    def degraded(self) -> bool:
        """The disk refuses writes now: records wait in memory, acknowledgements may be far off."""
        with self._lock:
            return self._degraded

    @property
    def durable_seq(self) -> int:
        """How many appended records (in ticket order) are acknowledged: written and fsynced."""
        return self._writer.durable_seq

    def wait_durable(self, ticket: int, timeout_s: float) -> bool:
        """Wait until the records up to `ticket` are acknowledged; False at the deadline."""
        return self._writer.wait_durable(ticket, timeout_s)

    def flush(self, timeout_s: float) -> bool:
        """Commit what is queued now, without waiting for the group interval; wait for it."""
        return self._writer.flush(timeout_s)

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener()` (on the writer thread; it must not block) after each commit."""
        self._listeners.append(listener)

    # ---- lifecycle ---------------------------------------------------------------------

    @property
    def writer(self) -> GroupCommit:
        """The group-commit worker; `close` stops it (and closes the file) if it is still running."""
        return self._writer

    def start(self) -> None:
        self._writer.start()

    def close(self, timeout_s: float) -> int:
        """Commit what is queued (retrying for up to `timeout_s`), then stop.

        Returns how many records are still only in memory: lost with this process.
        """
        unwritten = self._writer.close(timeout_s)
        if self._writer.finished and self._file is not None:
            self._file.close()
        return unwritten

    # ---- shipper side ------------------------------------------------------------------

    def read_batch(self, max_records: int, max_bytes: int) -> Batch | None:
        """The acknowledged records at the cursor, up to `max_records` and `max_bytes` (at least one).

        Reading does not move the cursor; `commit` does. None when nothing is waiting.
        """
        with self._lock:
            if not self._recovered:
                return None
            start = self._cursor
            segments = [(n, seg.size, n != self._active) for n, seg in sorted(self._segments.items())
                        if n >= start.segment]
        return read_batch(self.directory, segments, start, max_records, max_bytes)

    def is_current(self, batch: Batch) -> bool:
        """False once the records of `batch` were dropped by the disk budget (or committed)."""
        with self._lock:
            return self._cursor == batch.start

    def commit(self, batch: Batch) -> None:
        """Opik accepted `batch`: move the cursor past it (durably) and delete shipped segments."""
        with self._lock:
            if batch.end <= self._cursor:
                return
            self._cursor = batch.end
            self._corrupt += batch.corrupt
            done = [n for n in self._segments if n < batch.end.segment and n != self._active]
            for number in done:
                del self._segments[number]
        try:
            save_cursor(self.directory, batch.end)
        except OSError as exc:
            self._write_failed("cannot save the spool cursor", exc)  # a crash now re-ships: harmless
        else:
            self._write_ok()
        for number in done:
            unlink(segment_path(self.directory, number))

    def quarantine(self, kind: str, body: dict[str, Any], status: int, reason: str) -> None:
        """Set aside a record Opik rejected, with its reason, in `quarantine.jsonl` (best effort)."""
        set_aside(self.directory, kind, body, status, reason, utc_iso(self.clock.time()))

    def take_requeued(self, wait_s: float = REQUEUE_WAIT_S) -> int:
        """Append the records of the requeue files, oldest first; how many.

        Waits (each step at most `wait_s`) for room in memory instead of dropping, and deletes a
        file once its records are durable; what did not make it stays in the file for next time.
        Runs on the shipper thread, the one thread that writes the quarantine.
        """
        taken = 0
        for path in requeue_files(self.directory):
            try:
                lines = requeued_lines(path)
            except OSError as exc:
                log.warning("spool: cannot read %s: %s", path.name, exc.strerror or exc)
                return taken
            done = self._append_durably(lines, wait_s)
            taken += done
            try:
                keep_rest(path, done, lines)
            except OSError as exc:  # it will be appended again: same ids, Opik upserts
                log.warning("spool: cannot update %s: %s", path.name, exc.strerror or exc)
                return taken
            if done < len(lines):
                return taken
        return taken

    def _append_durably(self, lines: list[bytes], wait_s: float) -> int:
        """Offer `lines` in chunks of half the in-memory bound, each once there is room, and wait
        until it is durable; how many leading lines are."""
        most, most_bytes = max(1, min(GROUP_MAX, self.inmem_max // 2)), self.inmem_max_bytes // 2
        done = 0
        while done < len(lines):
            end, size = done + 1, len(lines[done])
            while end < len(lines) and end - done < most and size + len(lines[end]) <= most_bytes:
                size += len(lines[end])
                end += 1
            ticket = self._writer.offer(lines[done:end], wait_s)
            if ticket is None or not self._writer.wait_durable(ticket, wait_s):
                return done
            done = end
        return done

    # ---- stats -------------------------------------------------------------------------

    def quarantine_counts(self) -> dict[str, int]:
        """Records in quarantine, and records handed back but not yet in the spool."""
        return quarantine_counts(self.directory)

    def counts(self) -> tuple[int, int]:
        """(records in memory waiting for the disk, acknowledged records not yet shipped)."""
        in_memory = self._writer.in_memory()[0]
        with self._lock:
            return in_memory, self._unshipped_lines()

    def section(self) -> dict[str, Any]:
        """The `wal` section of the admin stats."""
        _, inmem_bytes, dropped_inmem = self._writer.in_memory()
        with self._lock:
            on_disk = sum(seg.size for n, seg in self._segments.items() if n >= self._cursor.segment)
            return {
                "hot_bytes": max(0, on_disk - self._cursor.offset) + inmem_bytes,
                "segments": len(self._segments),
                "last_sync_at": utc_iso(self._last_sync_at) if self._last_sync_at else None,
                "syncs": self._syncs,
                "degraded": self._degraded,
                "last_write_error": self._last_write_error,
                "dropped_events_inmem": dropped_inmem,
                "dropped_events_disk": self._dropped_disk,
                "corrupt_records": self._corrupt,
                "keep": self.keep,
                "discarded": self._discarded,
            }

    # ---- the writer thread: one group ----------------------------------------------------

    def _write_group(self, lines: list[bytes], size: int) -> bool:
        """Write and fsync `lines` as one group (the writer's `commit`); False when the disk
        refused it (the spool is then degraded)."""
        if not self._recovered and not self._try_recover():
            return False
        if not lines:
            return True
        try:
            segment = self._append(lines, size)
        except OSError as exc:
            self._write_failed("cannot write the spool", exc)
            return False
        now = self.clock.time()
        with self._lock:
            segment.size += size
            segment.lines += len(lines)
            self._last_sync_at = now
            self._syncs += 1
        self._write_ok()
        self._enforce_budget()
        for listener in self._listeners:
            listener()
        return True

    def _append(self, lines: list[bytes], size: int) -> Segment:
        """Write `lines` to the active segment (a new one when it is full or sealed); returns that segment."""
        with self._lock:
            number = self._active if self._file is not None and not self._file.sealed else None
            active = self._segments.get(number) if number is not None else None
        if active is None or (active.size and active.size + size > self.segment_bytes):
            active = self._open_segment()
        assert self._file is not None  # open, or just opened by `_open_segment`
        self._file.append(lines, active.size)
        return active

    def _open_segment(self) -> Segment:
        if self._file is not None:
            self._file.close()
        number = self._next_segment
        self._next_segment += 1
        self._file = SegmentFile(self.directory, number)
        with self._lock:
            segment = self._segments[number] = Segment(0, 0)
            self._active = number
        return segment

    def _enforce_budget(self) -> None:
        """Drop the oldest segments (unshipped ones counted) while the spool is over its budget."""
        dropped: list[int] = []
        with self._lock:
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
            unlink(segment_path(self.directory, number))

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
            unlink(path)  # shipped (deletion was interrupted) or holding no complete line
        for path, size in found.torn:
            log.warning("spool: %s ends in a torn line; skipped", path.name)
            try:
                os.truncate(path, size)
            except OSError:
                pass  # the recorded size hides the tail anyway
        self._next_segment = max(self._next_segment, found.next_segment)
        with self._lock:
            self._segments = found.segments
            self._cursor = found.cursor
            self._corrupt += len(found.torn)
            self._recovered = True

    def _write_failed(self, what: str, exc: OSError) -> None:
        message = f"{what}: {exc.strerror or exc}"
        with self._lock:
            changed = message != self._last_write_error or not self._degraded
            self._degraded = True
            self._last_write_error = message
        if changed:
            log.warning("spool degraded: %s; records are kept in memory (bounded) and retried", message)

    def _write_ok(self) -> None:
        with self._lock:
            recovered = self._degraded
            self._degraded = False
        if recovered:
            log.info("spool: writes succeed again; no longer degraded")

    def _unshipped_lines(self) -> int:
        lines = sum(seg.lines for n, seg in self._segments.items() if n >= self._cursor.segment)
        return max(0, lines - self._cursor.line)
