"""The follower: materializes the capture log in order, spools the records, keeps a checkpoint.

One worker thread ("cipx-materializer", see `worker.Worker`) owns the materializer. The capture
thread hands it each capture it appended to the log (`handoff`, in memory, bounded); when
handoffs were dropped, or at start, it reads the captures from the log instead, so a capture in
the log is materialized exactly in log order whatever the materializer was doing when it
arrived. A capture the log could not take (disk full) is still materialized from memory, but
nothing recovers it after a crash.

Records go to the spool with `Spool.offer`: when the spool has no room the follower waits
(the log holds what arrives meanwhile) instead of dropping them.

The checkpoint (`materializer/checkpoint.json`;
docs/ARCHITECTURE.md, "Materializer checkpoint") holds the log position materialized through and
the materializer's per-session state. It is written at most every `CHECKPOINT_INTERVAL_S`, and only once the spool has
acknowledged (fsynced) every record derived from the captures before that position. On start
the state is restored and every capture after the position is materialized again: ids are
derived, so records that had already reached the spool are upserted, never doubled. Retention
of the capture log runs here too, with the checkpointed position, so a capture is never aged out
before it is materialized.

`stop` records where the log ends and the deadline under the worker's lock, in one step with the
stop flag; the thread stops waiting for the wire at once (its waits are cut in short slices that
look at the flag), materializes the log up to that position, checkpoints, and ends.
"""

import gc
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.home import read_json, write_atomic
from opik_cipx.materialize.call import Materialized
from opik_cipx.materialize.materializer import Materializer
from opik_cipx.stats import Counters, utc_iso
from opik_cipx.store.captures import (
    Appended,
    CaptureStore,
    LogPosition,
    count_log,
    list_segments,
    read_log,
    segment_number,
)
from opik_cipx.store.spool import Spool
from opik_cipx.wire.capture import Capture
from opik_cipx.wire.tee import capture_bytes
from opik_cipx.worker import Worker

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
CHECKPOINT_INTERVAL_S = 1.0
RETAIN_INTERVAL_S = 60.0  # age-based retention also runs while nothing new arrives
IDLE_POLL_S = 0.5  # how often an idle follower looks for captures whose handoff was dropped
HANDOFF_MAX = 16  # captures held in memory for the follower; beyond, it reads them from the log
HANDOFF_MAX_BYTES = 64 * 1024 * 1024
MAX_DEFER_S = 1.0  # the longest the follower waits for a quiet wire before a capture
PAUSE_MAX_S = 0.2  # the longest one pause between the steps of a capture waits for it
WIRE_SLICE_S = 0.05  # a wait for the wire is cut in slices this long, so a stop reaches it
FREEZE_AFTER_S = 0.001  # a pause that waited this long for the wire freezes what exists
BACKLOG_MAX_S = 10.0  # once the follower was behind this long, materializing stops waiting for the wire
GC_INTERVAL_S = 300.0  # a full garbage collection at most this often (when the wire is empty)
SPOOL_WAIT_S = 1.0

Listener = Callable[[Capture, Materialized], None]


class Follower(Worker):
    def __init__(
        self,
        materializer: Materializer,
        store: CaptureStore,
        spool: Spool,
        counters: Counters,
        checkpoint_path: Path,
        on_materialized: Listener,
        wire_idle: Callable[[float], bool] | None = None,
        wire_empty: Callable[[], bool] | None = None,
        on_idle: Callable[[], None] | None = None,
        clock: Clock = SYSTEM,
    ):
        """`on_materialized(capture, result)` runs after each capture (the ledger);
        `wire_idle(timeout_s)` blocks until the wire is quiet — no exchange started lately — (True)
        or the timeout; `wire_empty()` says no exchange is in flight at all. Given them, the follower
        also keeps the cyclic garbage collector off the wire (see `pause`). `on_idle()` runs on
        the follower's thread whenever it has nothing to do (the ledger's retries)."""
        super().__init__("materializer", counters, log, clock, idle_s=IDLE_POLL_S)
        self.materializer = materializer
        self.store = store
        self.spool = spool
        self.checkpoint_path = checkpoint_path
        self.on_materialized = on_materialized
        self.wire_idle = wire_idle
        self.wire_empty = wire_empty
        self.on_idle = on_idle
        self._collected_at = clock.monotonic()  # the last full garbage collection
        self._lock = threading.Lock()  # the counts below, shared with the capture thread and the stats
        self._queued = self._queued_bytes = 0
        self._logged = 0  # captures in the log for the follower: the backlog at start + appended since
        self._consumed = 0  # of those, materialized (or given up on)
        self._lost = 0  # of those, deleted by the disk budget before they were materialized
        self._behind_since: float | None = None  # since when the lag has been above zero (monotonic)
        self._inflight = 0
        self._stop_at: LogPosition | None = None  # where the log ended when the stop was asked for
        self._position = store.start_end
        self._saved: LogPosition | None = None  # position of the checkpoint on disk
        self._ticket = 0  # spool ticket of the last records spooled
        self._pending: tuple[LogPosition, bytes, int] | None = None  # a snapshot waiting for the spool
        self._snapped_at = self._retained_at = float("-inf")

    # ---- lifecycle (daemon's main thread) ------------------------------------------------

    def start(self) -> None:
        """Restore the checkpoint (or decide where to start without one), then follow the log."""
        self._restore()
        super().start()

    def on_stop(self) -> None:
        """Materialize everything in the log now (up to where it ends at this moment), checkpoint
        it, stop; the stop's deadline bounds it (the rest is materialized at the next start)."""
        self._stop_at = self.store.end

    # ---- the capture thread --------------------------------------------------------------

    def handoff(self, capture: Capture, appended: Appended | None) -> None:
        """A capture the capture thread appended to the log (`appended`), or could not (None)."""
        size = capture_bytes(capture)
        with self._lock:
            if appended is not None:
                self._logged += 1
                if self._behind_since is None:
                    self._behind_since = self.clock.monotonic()
            full = self._queued >= HANDOFF_MAX or self._queued_bytes + size > HANDOFF_MAX_BYTES
            if not full:
                self._queued += 1
                self._queued_bytes += size
        if full:
            if appended is None:  # neither on disk nor in memory any more
                self.counters.incr("requests_dropped_queue_full")
            return  # in the log: read from there
        self.put((capture, appended, size))

    # ---- stats -----------------------------------------------------------------------------

    @property
    def lag(self) -> int:
        """Captures durable in the log and not yet materialized."""
        with self._lock:
            return self._lag()

    def _lag(self) -> int:
        return max(0, self._logged - self._consumed - self._lost)

    @property
    def backlogged(self) -> bool:
        """The follower has been behind the log so long that materializing stops yielding to the
        wire (until it has caught up)."""
        with self._lock:
            since = self._behind_since
        return since is not None and self.clock.monotonic() - since >= BACKLOG_MAX_S

    def section(self) -> dict[str, int]:
        """`lag_events` and `inflight_raw` of the `materializer` stats."""
        return {"lag_events": self.lag, "inflight_raw": self._inflight}

    # ---- yielding to the wire --------------------------------------------------------------

    def pause(self) -> None:
        """Between the steps of a capture (the materializer calls it too): wait, bounded, for a
        quiet wire; not while stopping or backlogged.

        A pause that did wait freezes what exists (`gc.freeze`, cheap), as the follower does after
        each capture: a request read keeps tens of thousands of objects for the next one, and the
        collector, run by whichever thread allocates, would walk them in passes of milliseconds
        (tens, for a full one) while the wire waits. Cycles frozen meanwhile are collected when
        the wire is empty (`_collect_garbage`).
        """
        if self.wire_idle is None:
            return
        started = self.clock.monotonic()
        self._wait_for_wire(PAUSE_MAX_S)
        if self.clock.monotonic() - started >= FREEZE_AFTER_S:
            gc.freeze()

    def _wait_for_wire(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for a quiet wire, in slices, so that a stop ends the wait."""
        if self.wire_idle is None:
            return
        deadline = self.clock.monotonic() + timeout_s
        while not self.stopping and not self.backlogged:
            left = deadline - self.clock.monotonic()
            if left <= 0 or self.wire_idle(min(left, WIRE_SLICE_S)):
                return

    # ---- the follower thread ---------------------------------------------------------------

    def begin(self) -> None:
        backlog = count_log(self.store.directory, self._position, self.store.start_end)
        with self._lock:
            self._logged += backlog
            if backlog and self._behind_since is None:
                self._behind_since = self.clock.monotonic()
        if backlog:
            log.info("capture log: materializing %d capture(s) stored before this start", backlog)
        self._catch_up(self.store.start_end)

    def step(self, item: tuple | None) -> None:
        if item is not None:
            self._take(*item)
        elif not self.stopping:
            self._catch_up(self.store.end)  # handoffs dropped at the tail
            self._collect_garbage()
            if self.on_idle is not None:
                self.guarded(self.on_idle, what="the idle step")
        late = self.guarded(self.materializer.late_records, what="the trace versions git answered for", failed=[])
        if late:
            self._spool(late)
        self._checkpoint()

    def finish(self) -> None:
        self.guarded(self._catch_up, self._stop_at)
        self.guarded(self._final_checkpoint)

    def _collect_garbage(self) -> None:
        """A full collection of everything frozen, at most every `GC_INTERVAL_S`, and only while
        no exchange is in flight (it holds the GIL for tens of milliseconds)."""
        now = self.clock.monotonic()
        if self.wire_empty is None or now - self._collected_at < GC_INTERVAL_S or not self.wire_empty():
            return
        self._collected_at = now
        gc.unfreeze()
        gc.collect()
        gc.freeze()

    def _take(self, capture: Capture, appended: Appended | None, size: int) -> None:
        with self._lock:
            self._queued -= 1
            self._queued_bytes -= size
        if appended is None:
            self._process(capture)  # not in the log: from memory, no position
            return
        if appended.start > self._position:
            self._catch_up(appended.start)  # handoffs were dropped: read those from the log
        if appended.end > self._position and self._position >= appended.start:
            if self._process(capture):
                self._advance(appended.end)

    def _catch_up(self, until: LogPosition | None) -> None:
        """Materialize the log from the position up to `until`."""
        if until is None or self._position >= until:
            return
        try:
            for entry in read_log(self.store.directory, self._position, until):
                if self._past_deadline() or not self._process(entry.capture):
                    return
                assert entry.end is not None  # read from a log position: no segment from before the log
                self._advance(entry.end)
                self._checkpoint()  # a long catch-up is checkpointed as it goes
        except OSError as exc:
            log.warning("capture log: cannot read it: %s; trying again later", exc.strerror or exc)
            return
        if not self._past_deadline():
            self._position = max(self._position, until)  # torn or deleted captures are passed over

    def _past_deadline(self) -> bool:
        return self.clock.monotonic() > self.deadline

    def _advance(self, end: LogPosition) -> None:
        self._position = end
        with self._lock:
            self._consumed += 1
            if self._lag() == 0:
                self._behind_since = None

    def _process(self, capture: Capture) -> bool:
        """Materialize and spool one capture; False when its records could not be spooled before
        the stop deadline (then the position stays before it)."""
        self._wait_for_wire(MAX_DEFER_S)
        self._inflight = 1
        try:
            result = self.guarded(self._materialize, capture, counter="materializer_errors_total",
                                  what=f"materializing capture {capture.id}", failed=Materialized([]))
            self.pause()
            if result.records and not self._spool(result.records):
                return False
            self.guarded(self.on_materialized, capture, result, what=f"the listener on capture {capture.id}")
            self.counters.incr("events_materialized")  # after the ledger has it too
            if self.wire_idle is not None:
                gc.freeze()  # what this capture left behind, out of the collector's reach (see `pause`)
            return True
        finally:
            self._inflight = 0

    def _materialize(self, capture: Capture) -> Materialized:
        return self.materializer.materialize(capture)

    def _spool(self, records: list[dict]) -> bool:
        """Spool the records, waiting while the spool has no room; False when it is closing or
        the stop deadline passed first."""
        while True:
            ticket = self.spool.offer(records, SPOOL_WAIT_S)
            if ticket is not None:
                self._ticket = ticket
                return True
            if self.spool.closing or self._past_deadline():
                return False

    # ---- checkpoint ------------------------------------------------------------------------

    def _restore(self) -> None:
        path = self.checkpoint_path
        doc = read_json(path)
        numbered = any(segment_number(p) is not None for p, _, _ in list_segments(self.store.directory))
        position = None
        if isinstance(doc, dict) and doc.get("version") == CHECKPOINT_VERSION:
            try:
                position = LogPosition(int(doc["position"]["segment"]), int(doc["position"]["offset"]))
                self.materializer.restore(doc["state"])
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("materializer checkpoint %s is unreadable (%s)", path, exc)
                position = None
        if position is not None and position > self.store.start_end:
            log.warning("capture log: it is behind the materializer checkpoint (deleted by hand?); "
                        "following it from its end")
            position = self.store.start_end
        if position is not None:
            self._position = self._saved = position
        elif path.exists() or numbered:
            # Lost or unreadable: derive everything the log still holds again (Opik upserts).
            log.warning("materializer checkpoint %s is missing or unreadable: materializing the whole "
                        "capture log again", path)
            self._position = LogPosition(0, 0)
        else:
            self._position = self.store.start_end  # first start (older captures: materialized by then)
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
        lost = self.store.retain(self._saved)
        if lost:
            with self._lock:
                self._lost += lost
                if self._lag() == 0:
                    self._behind_since = None
            self.counters.incr("captures_dropped_budget", lost)
