"""The follower: materializes the capture log in order, spools the records, keeps a checkpoint.

It runs in the work process (docs/ARCHITECTURE.md, "Processes and threads"): one worker thread
("cipx-materializer", see `worker.Worker`) owns the materializer and reads every capture back
from the log the wire appends to. The wire tells it, through the link, where the log ends after
its captures (`note`, at most every 20 ms); the follower then reads every complete record after
its position, so a note that never arrives only delays it to its next look (`IDLE_POLL_S`). A
record that is not whole yet is waited for while the wire may still write its segment; in a
sealed segment it is a torn tail (a crash mid-write), passed over with the rest of that segment.

Records go to the spool with `Spool.offer`: when the spool has no room the follower waits
(the log holds what arrives meanwhile) instead of dropping them.

Captures are materialized in runs (`BATCH_MAX` captures, or what `BATCH_MAX_S` allows, whichever
is less; a catch-up that finds fewer makes a shorter run): the listener (the ledger) takes each
run at once, in one transaction, and `events_materialized` counts it after the listener. Per
capture, a transaction cost the work process about a quarter of its time on small calls.

The checkpoint (`materializer/checkpoint.json`;
docs/ARCHITECTURE.md, "Materializer checkpoint") holds the log position materialized through and
the materializer's per-session state. It is written at most every `CHECKPOINT_INTERVAL_S`, and only once the spool has
acknowledged (fsynced) every record derived from the captures before that position. On start
the state is restored and every capture after the position is materialized again: ids are
derived, so records that had already reached the spool are upserted, never doubled. Retention
and compaction of the capture log (`store/capture_keeper.py`) run here too, with the
checkpointed position, so a capture is never aged out before it is materialized.

`stop` records where the log ends (the last tail the wire told) and the deadline under the
worker's lock, in one step with the stop flag; the thread materializes the log up to that
position, checkpoints, and ends.
"""

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.home import read_json, write_atomic
from opik_cipx.stats import Counters, utc_iso
from opik_cipx.store.capture_keeper import LogKeeper
from opik_cipx.store.captures import LogPosition, LogTail, count_log, list_segments, read_segment_entries
from opik_cipx.store.spool import Spool
from opik_cipx.wire.capture import Capture
from opik_cipx.worker import Worker

if TYPE_CHECKING:
    from opik_cipx.materialize.call import Materialized
    from opik_cipx.materialize.materializer import Materializer
    from opik_cipx.materialize.on_demand import MaterializerOnDemand

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
CHECKPOINT_INTERVAL_S = 1.0
BATCH_MAX = 64  # captures handed to the listener at once, at most
BATCH_MAX_S = 0.1  # a run ends once it has taken this long, so the first of it is not held back
RETAIN_INTERVAL_S = 60.0  # age-based retention also runs while nothing new arrives
IDLE_POLL_S = 0.5  # how often an idle follower looks at the log for captures no note announced
SPOOL_WAIT_S = 1.0

Listener = Callable[[list[tuple[Capture, "Materialized"]]], None]
Working = Callable[[LogPosition | None], None]


class Follower(Worker):
    def __init__(
        self,
        materializer: "Materializer | MaterializerOnDemand",
        keeper: LogKeeper,
        spool: Spool,
        counters: Counters,
        checkpoint_path: Path,
        on_materialized: Listener,
        on_idle: Callable[[], None] | None = None,
        on_working: Working | None = None,
        clock: Clock = SYSTEM,
    ):
        """`on_materialized(run)` runs after each run of captures, with each capture and its result (the
        ledger), before they count as materialized and before a checkpoint covers them; `on_idle()` on the
        follower's thread whenever it has nothing to do (the ledger's retries); `on_working(position)`
        before each capture with where it starts in the log, and with None once it is done (the wire
        learns which capture a death of the work process interrupted)."""
        super().__init__("materializer", counters, log, clock, idle_s=IDLE_POLL_S)
        self.materializer = materializer
        self.keeper = keeper
        self.directory = keeper.directory
        self.spool = spool
        self.checkpoint_path = checkpoint_path
        self.on_materialized = on_materialized
        self.on_idle = on_idle
        self.on_working = on_working
        self._lock = threading.Lock()  # the counts and the tail below, shared with the link and the stats
        self._tail = LogTail(LogPosition(0, 0), 0, 0)  # where the wire said the log ends
        self._logged = 0  # captures in the log for the follower: the backlog at start + appended since
        self._consumed = 0  # of those, materialized (or given up on)
        self._lost = 0  # of those, deleted by the disk budget before they were materialized
        self._inflight = 0
        self._stop_at: LogPosition | None = None  # where the log ended when the stop was asked for
        self._position = LogPosition(0, 0)
        self._saved: LogPosition | None = None  # position of the checkpoint on disk
        self._ticket = 0  # spool ticket of the last records spooled
        self._pending: tuple[LogPosition, bytes, int] | None = None  # a snapshot waiting for the spool
        self._snapped_at = self._retained_at = float("-inf")
        self._skip: set[LogPosition] = set()
        self._run: list[tuple[Capture, Materialized]] = []  # materialized, not yet given to the listener
        self._run_since = 0.0

    # ---- lifecycle (the work process's main thread) ----------------------------------------

    def start_at(self, tail: LogTail, own_from: int, skip: set[LogPosition] | None = None) -> None:
        """Restore the checkpoint (or decide where to start without one), then follow the log, which
        ends at `tail` as the wire last said; segments from `own_from` on are the running wire's. A
        capture starting at a position in `skip` is passed over (counted in
        `materializer_errors_total`): the work process died twice on it."""
        self._tail = tail
        self._skip = set(skip or ())
        self._restore(own_from)
        super().start()

    def on_stop(self) -> None:
        """Materialize everything in the log now (up to where the wire last said it ends), checkpoint
        it, stop; the stop's deadline bounds it (the rest is materialized at the next start)."""
        with self._lock:
            self._stop_at = self._tail.end

    # ---- the link ----------------------------------------------------------------------------

    def note(self, tail: LogTail) -> None:
        """The wire appended to the log (or sealed a segment): it ends at `tail` now."""
        with self._lock:
            if tail.seq > self._tail.seq:
                self._logged += tail.seq - self._tail.seq
            if tail.end > self._tail.end or tail.sealed_below > self._tail.sealed_below or tail.seq > self._tail.seq:
                self._tail = LogTail(max(tail.end, self._tail.end), max(tail.seq, self._tail.seq),
                                     max(tail.sealed_below, self._tail.sealed_below))
        self.wake()

    # ---- stats -----------------------------------------------------------------------------

    @property
    def lag(self) -> int:
        """Captures durable in the log and not yet materialized."""
        with self._lock:
            return self._lag()

    def _lag(self) -> int:
        return max(0, self._logged - self._consumed - self._lost)

    def section(self) -> dict[str, Any]:
        """`lag_events` and `inflight_raw` of the `materializer` stats, and where the follower is."""
        return {"lag_events": self.lag, "inflight_raw": self._inflight}

    # ---- the follower thread ---------------------------------------------------------------

    def begin(self) -> None:
        backlog = count_log(self.directory, self._position, None)
        with self._lock:
            self._logged += backlog
        if backlog:
            log.info("capture log: materializing %d capture(s) stored before this start", backlog)
        self._catch_up(None)

    def step(self, item: Any) -> None:
        if not self.stopping:
            self._catch_up(None)
            if self.on_idle is not None:
                self.guarded(self.on_idle, what="the idle step")
        late = self.guarded(self.materializer.late_records, what="the trace versions git answered for", failed=[])
        if late:
            self._spool(late)
        self._checkpoint()

    def finish(self) -> None:
        self.guarded(self._catch_up, self._stop_at)
        self.guarded(self._final_checkpoint)

    def _sealed_below(self) -> int:
        with self._lock:
            return self._tail.sealed_below

    def _catch_up(self, until: LogPosition | None) -> None:
        """Materialize every complete capture of the log from the position on (up to `until`)."""
        try:
            self._follow(until)
        finally:
            self._end_run()
        with self._lock:
            if self._position >= self._tail.end and until is None:
                self._logged = self._consumed + self._lost  # caught up: whatever was counted, nothing waits

    def _follow(self, until: LogPosition | None) -> None:
        try:
            for path, _, number in list_segments(self.directory):
                if number is None or number < self._position.segment:
                    continue
                if until is not None and number > until.segment:
                    break
                if number > self._position.segment:
                    self._position = LogPosition(number, 0)
                limit = until.offset if until is not None and number == until.segment else None
                for entry in read_segment_entries(path, number, self._position.offset, limit):
                    if self._past_deadline() or not self._take(entry.capture, entry.start, entry.end):
                        return
                if until is not None and number == until.segment:
                    break
                if number >= self._sealed_below():
                    break  # the wire may still write it: what is not whole yet will be
                self._position = LogPosition(number + 1, 0)  # sealed: a torn tail is passed over
        except OSError as exc:
            log.warning("capture log: cannot read it: %s; trying again later", exc.strerror or exc)

    def _take(self, capture: Capture, start: LogPosition | None, end: LogPosition | None) -> bool:
        assert start is not None and end is not None  # read from a numbered segment
        if start in self._skip:
            self.counters.incr("materializer_errors_total")
            log.error("capture %s at %s:%d was being materialized when the work process died twice: passed over",
                      capture.id, start.segment, start.offset)
        else:
            if self.on_working is not None:
                self.on_working(start)
            processed = self._process(capture)
            if self.on_working is not None:
                self.on_working(None)
            if not processed:
                return False
        self._advance(end)
        if len(self._run) >= BATCH_MAX or (self._run and self.clock.monotonic() - self._run_since >= BATCH_MAX_S):
            self._end_run()
        return True

    def _past_deadline(self) -> bool:
        return self.clock.monotonic() > self.deadline

    def _advance(self, end: LogPosition) -> None:
        self._position = end
        with self._lock:
            self._consumed += 1

    def _process(self, capture: Capture) -> bool:
        """Materialize and spool one capture, into the run; False when its records could not be
        spooled before the stop deadline (then the position stays before it)."""
        from opik_cipx.materialize.call import Materialized  # loaded with the materializer, at the first capture

        self._inflight = 1
        try:
            result = self.guarded(self._materialize, capture, counter="materializer_errors_total",
                                  what=f"materializing capture {capture.id}", failed=Materialized([]))
            if result.records and not self._spool(result.records):
                return False
            if not self._run:
                self._run_since = self.clock.monotonic()
            self._run.append((capture, result))
            return True
        finally:
            self._inflight = 0

    def _end_run(self) -> None:
        """The run to the listener, then counted (after the ledger has it too), then checkpointed."""
        run, self._run = self._run, []
        if run:
            self.guarded(self.on_materialized, run, what=f"the listener on {len(run)} capture(s) from {run[0][0].id}")
            self.counters.incr("events_materialized", len(run))
        self._checkpoint()  # a long catch-up is checkpointed as it goes

    def _materialize(self, capture: Capture) -> "Materialized":
        return self.materializer.materialize(capture)

    def _spool(self, records: list[dict]) -> bool:
        """Spool the records, waiting while the spool has no room (the run so far goes to the listener
        first: a wait ends it); False when it is closing or the stop deadline passed first."""
        ticket = self.spool.offer(records, 0)
        while ticket is None:
            self._end_run()
            if self.spool.closing or self._past_deadline():
                return False
            ticket = self.spool.offer(records, SPOOL_WAIT_S)
        self._ticket = ticket
        return True

    # ---- checkpoint ------------------------------------------------------------------------

    def _restore(self, own_from: int) -> None:
        path = self.checkpoint_path
        doc = read_json(path)
        position = None
        if isinstance(doc, dict) and doc.get("version") == CHECKPOINT_VERSION:
            try:
                position = LogPosition(int(doc["position"]["segment"]), int(doc["position"]["offset"]))
                self.materializer.restore(doc["state"])
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("materializer checkpoint %s is unreadable (%s)", path, exc)
                position = None
        if position is not None and position > self._tail.end:
            log.warning("capture log: it is behind the materializer checkpoint (deleted by hand?); "
                        "following it from its end")
            position = self._tail.end
        if position is not None:
            self._position = self._saved = position
        else:
            # No checkpoint: derive everything the log holds (Opik and the ledger upsert). At a
            # first start that is what the wire logged before this process came up.
            numbered = [n for _, _, n in list_segments(self.directory) if n is not None]
            if path.exists() or any(n < own_from for n in numbered):
                log.warning("materializer checkpoint %s is missing or unreadable: materializing the whole "
                            "capture log again", path)
            self._position = LogPosition(0, 0)
        self._pending = (self._position, self._encode(), self._ticket)
        self._write_pending()

    def _encode(self) -> bytes:
        doc: dict[str, Any] = {
            "version": CHECKPOINT_VERSION,
            "written_at": utc_iso(self.clock.time()),
            "position": {"segment": self._position.segment, "offset": self._position.offset},
            "state": self.materializer.snapshot(),
        }
        return json.dumps(doc, separators=(",", ":")).encode() + b"\n"

    def _checkpoint(self) -> None:
        """Snapshot at most every interval; write it once the spool acknowledged its records."""
        now = self.clock.monotonic()
        if self._pending is None and self._position != self._saved and now - self._snapped_at >= CHECKPOINT_INTERVAL_S:
            self._pending = (self._position, self._encode(), self._ticket)
            self._snapped_at = now
        if self._pending is not None and self.spool.durable_seq >= self._pending[2]:
            self._write_pending()
        if now - self._retained_at >= RETAIN_INTERVAL_S:
            self._retain()

    def _final_checkpoint(self) -> None:
        if self._position == self._saved:
            return
        self._pending = (self._position, self._encode(), self._ticket)
        # A spool whose disk refuses writes acknowledges nothing soon: stop without the checkpoint
        # (the next start materializes these captures again, under the same ids).
        wait_s = 0.0 if self.spool.degraded else max(0.0, self.deadline - self.clock.monotonic())
        if self.spool.wait_durable(self._ticket, wait_s):
            self._write_pending()

    def _write_pending(self) -> None:
        assert self._pending is not None  # called with a snapshot waiting
        position, data, _ = self._pending
        self._pending = None
        try:
            write_atomic(self.checkpoint_path, data)
        except OSError as exc:
            log.warning("materializer checkpoint: cannot write %s: %s", self.checkpoint_path, exc.strerror or exc)
            return
        self._saved = position
        self._retain()

    def _retain(self) -> None:
        self._retained_at = self.clock.monotonic()
        if self._saved is None:
            return
        sealed_below = self._sealed_below()
        lost = self.keeper.retain(self._saved, sealed_below)
        if lost:
            with self._lock:
                self._lost += lost
            self.counters.incr("captures_dropped_budget", lost)
        if not self.stopping:
            self.keeper.compact(self._saved, sealed_below)
