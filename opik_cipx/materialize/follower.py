"""The follower: materializes the capture log in order, spools the records, keeps a checkpoint.

One thread ("cipx-materializer") owns the materializer. The capture thread hands it each capture
it appended to the log (`handoff`, in memory, bounded); when handoffs were dropped, or at start,
it reads the captures from the log instead, so a capture in the log is materialized exactly in
log order whatever the materializer was doing when it arrived. A capture the log could not take
(disk full) is still materialized from memory, but nothing recovers it after a crash.

Records go to the spool with `Spool.offer`: when the spool has no room the follower waits
(the log holds what arrives meanwhile) instead of dropping them.

The checkpoint (`materializer/checkpoint.json`;
docs/ARCHITECTURE.md, "Materializer checkpoint") holds the log position materialized through and the materializer's per-session
state. It is written at most every `CHECKPOINT_INTERVAL_S`, and only once the spool has
acknowledged (fsynced) every record derived from the captures before that position. On start
the state is restored and every capture after the position is materialized again: ids are
derived, so records that had already reached the spool are upserted, never doubled. Retention
of the capture log runs here too, with the checkpointed position, so a capture is never aged out
before it is materialized.
"""

import gc
import json
import logging
import queue
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

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

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
CHECKPOINT_INTERVAL_S = 1.0
RETAIN_INTERVAL_S = 60.0  # age-based retention also runs while nothing new arrives
IDLE_POLL_S = 0.5  # how often an idle follower looks for captures whose handoff was dropped
HANDOFF_MAX = 16  # captures held in memory for the follower; beyond, it reads them from the log
HANDOFF_MAX_BYTES = 64 * 1024 * 1024
MAX_DEFER_S = 1.0  # the longest the follower waits for a quiet wire before a capture
PAUSE_MAX_S = 0.2  # the longest one pause between the steps of a capture waits for it
BACKLOG_MAX_S = 10.0  # once a capture waited this long, materializing stops waiting for the wire
GC_INTERVAL_S = 300.0  # a full garbage collection at most this often (when the wire is empty)
SPOOL_WAIT_S = 1.0
_STOP = object()

Listener = Callable[[Capture, Materialized], None]


class Follower:
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
    ):
        """`on_materialized(capture, result)` runs after each capture (viewer, ledger);
        `wire_idle(timeout_s)` blocks until the wire is quiet — no exchange started lately — (True)
        or the timeout; `wire_empty()` says no exchange is in flight at all. Given them, the follower
        also keeps the cyclic garbage collector off the wire (see `pause`)."""
        self.materializer = materializer
        self.store = store
        self.spool = spool
        self.counters = counters
        self.checkpoint_path = checkpoint_path
        self.on_materialized = on_materialized
        self.wire_idle = wire_idle
        self.wire_empty = wire_empty
        self._collected_at = time.monotonic()  # the last full garbage collection
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._queued = self._queued_bytes = 0
        self._position = store.start_end
        self._saved: LogPosition | None = None  # position of the checkpoint on disk
        self._ticket = 0  # spool ticket of the last records spooled
        self._pending: tuple[LogPosition, bytes, int] | None = None  # a snapshot waiting for the spool
        self._snapped_at = self._retained_at = float("-inf")
        self._logged = 0  # captures in the log for the follower: the backlog at start + appended since
        self._consumed = 0  # of those, materialized (or given up on)
        self._waiting: deque[float] = deque()  # when each capture of the lag reached the log (monotonic)
        self._lost = 0  # of those, deleted by the disk budget before they were materialized
        self._inflight = 0
        self._stop_at: LogPosition | None = None
        self._deadline = float("inf")
        self._thread = threading.Thread(target=self._run, name="cipx-materializer", daemon=True)

    # ---- lifecycle (daemon's main thread) ------------------------------------------------

    def start(self) -> None:
        """Restore the checkpoint (or decide where to start without one), then follow the log."""
        self._restore()
        self._thread.start()

    def stop(self, timeout_s: float) -> bool:
        """Materialize everything in the log now, checkpoint it, stop; False at the deadline (the
        rest is materialized at the next start)."""
        self._deadline = time.monotonic() + timeout_s
        self._stop_at = self.store.end
        self._queue.put(_STOP)
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    # ---- the capture thread --------------------------------------------------------------

    def handoff(self, capture: Capture, appended: Appended | None) -> None:
        """A capture the capture thread appended to the log (`appended`), or could not (None)."""
        size = capture_bytes(capture)
        with self._lock:
            if appended is not None:
                self._logged += 1
                self._waiting.append(time.monotonic())
            full = self._queued >= HANDOFF_MAX or self._queued_bytes + size > HANDOFF_MAX_BYTES
            if not full:
                self._queued += 1
                self._queued_bytes += size
        if full:
            if appended is None:  # neither on disk nor in memory any more
                self.counters.incr("requests_dropped_queue_full")
            return  # in the log: read from there
        self._queue.put((capture, appended, size))

    # ---- stats -----------------------------------------------------------------------------

    @property
    def lag(self) -> int:
        """Captures durable in the log and not yet materialized."""
        with self._lock:
            return max(0, self._logged - self._consumed - self._lost)

    @property
    def backlogged(self) -> bool:
        """A capture has waited so long that materializing stops yielding to the wire."""
        with self._lock:
            return bool(self._waiting) and time.monotonic() - self._waiting[0] >= BACKLOG_MAX_S

    def pause(self) -> None:
        """Between the steps of a capture (the materializer calls it too): wait, bounded, for a
        quiet wire; not while stopping or backlogged.

        Then freeze what exists (`gc.freeze`, cheap): a request read keeps tens of thousands of
        objects for the next one, and the collector, run by whichever thread allocates, would
        walk them in passes of milliseconds (tens, for a full one) while the wire waits. Cycles
        frozen meanwhile are collected when the wire is empty (`_collect_garbage`).
        """
        if self.wire_idle is None:
            return
        if self._stop_at is None and not self.backlogged:
            self.wire_idle(PAUSE_MAX_S)
        gc.freeze()

    def section(self) -> dict[str, int]:
        """`lag_events` and `inflight_raw` of the `materializer` stats."""
        return {"lag_events": self.lag, "inflight_raw": self._inflight}

    # ---- the follower thread ---------------------------------------------------------------

    def _run(self) -> None:
        self._guarded(self._start_up)
        while True:
            try:
                item = self._queue.get(timeout=IDLE_POLL_S)
            except queue.Empty:
                item = None
            if item is _STOP:
                break
            self._guarded(self._step, item)
        self._guarded(self._catch_up, self._stop_at)
        self._guarded(self._final_checkpoint)

    def _guarded(self, step: Callable[..., None], *args: Any) -> None:
        try:
            step(*args)
        except Exception:  # a bug here must not stop materialization for good
            self.counters.incr("panics_recovered")
            log.exception("materializer: unexpected error; going on")

    def _start_up(self) -> None:
        backlog = count_log(self.store.directory, self._position, self.store.start_end)
        with self._lock:
            self._logged += backlog
            self._waiting.extend([time.monotonic()] * backlog)
        if backlog:
            log.info("capture log: materializing %d capture(s) stored before this start", backlog)
        self._catch_up(self.store.start_end)

    def _step(self, item: tuple | None) -> None:
        if item is None:
            if self._queue.empty():
                self._catch_up(self.store.end)  # handoffs dropped at the tail
                self._collect_garbage()
        else:
            self._take(*item)
        self._checkpoint()

    def _collect_garbage(self) -> None:
        """A full collection of everything frozen, at most every `GC_INTERVAL_S`, and only while
        no exchange is in flight (it holds the GIL for tens of milliseconds)."""
        if self.wire_empty is None or time.monotonic() - self._collected_at < GC_INTERVAL_S or not self.wire_empty():
            return
        self._collected_at = time.monotonic()
        gc.unfreeze()
        gc.collect()
        gc.freeze()

    def _take(self, capture: Capture, appended: Appended | None, size: int) -> None:
        with self._lock:
            self._queued -= 1
            self._queued_bytes -= size
        if appended is None:
            self._materialize(capture)  # not in the log: from memory, no position
            return
        if appended.start > self._position:
            self._catch_up(appended.start)  # handoffs were dropped: read those from the log
        if appended.end > self._position and self._position >= appended.start:
            if self._materialize(capture):
                self._advance(appended.end)

    def _catch_up(self, until: LogPosition) -> None:
        """Materialize the log from the position up to `until`."""
        if self._position >= until:
            return
        try:
            for entry in read_log(self.store.directory, self._position, until):
                if time.monotonic() > self._deadline or not self._materialize(entry.capture):
                    return
                self._advance(entry.end)
                self._checkpoint()  # a long catch-up is checkpointed as it goes
        except OSError as exc:
            log.warning("capture log: cannot read it: %s; trying again later", exc.strerror or exc)
            return
        if time.monotonic() <= self._deadline:
            self._position = max(self._position, until)  # torn or deleted captures are passed over

    def _advance(self, end: LogPosition) -> None:
        self._position = end
        with self._lock:
            self._consumed += 1
            if self._waiting:
                self._waiting.popleft()

    def _materialize(self, capture: Capture) -> bool:
        """Materialize and spool one capture; False when its records could not be spooled before
        the stop deadline (then the position stays before it)."""
        if self.wire_idle is not None and self._stop_at is None and not self.backlogged:
            self.wire_idle(MAX_DEFER_S)
        self._inflight = 1
        try:
            try:
                result = self.materializer.materialize(capture)
            except Exception:
                self.counters.incr("materializer_errors_total")
                log.exception("materializer: cannot materialize capture %s", capture.id)
                result = Materialized([])
            self.pause()
            if result.records and not self._spool(result.records):
                return False
            try:
                self.on_materialized(capture, result)
            except Exception:
                log.exception("materializer: listener failed on capture %s", capture.id)
            self.counters.incr("events_materialized")  # after the ledger has it too
            return True
        finally:
            self._inflight = 0

    def _spool(self, records: list[dict]) -> bool:
        """Spool the records, waiting while the spool has no room; False when it is closing or
        the stop deadline passed first."""
        while True:
            ticket = self.spool.offer(records, SPOOL_WAIT_S)
            if ticket is not None:
                self._ticket = ticket
                return True
            if self.spool.closing or time.monotonic() > self._deadline:
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
            "written_at": utc_iso(time.time()),
            "position": {"segment": self._position.segment, "offset": self._position.offset},
            "state": self.materializer.snapshot(),
        }
        return json.dumps(doc, separators=(",", ":")).encode() + b"\n"

    def _checkpoint(self) -> None:
        """Snapshot at most every interval; write it once the spool acknowledged its records."""
        now = time.monotonic()
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
        wait_s = 0.0 if self.spool.degraded else max(0.0, self._deadline - time.monotonic())
        if self.spool.wait_durable(self._ticket, wait_s):
            self._write_pending()

    def _write_pending(self) -> None:
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
        self._retained_at = time.monotonic()
        if self._saved is None:
            return
        lost = self.store.retain(self._saved)
        if lost:
            with self._lock:
                self._lost += lost
                for _ in range(min(lost, len(self._waiting))):
                    self._waiting.popleft()
            self.counters.incr("captures_dropped_budget", lost)
