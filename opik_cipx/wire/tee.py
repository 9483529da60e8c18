"""The tee: a bounded queue from the wire to the off-wire stages, and the worker that drains it.

`offer` never blocks: a full queue drops the capture and counts it. The worker hands each
capture to the stages in order; a stage that raises is logged and counted, and the next
capture goes on. Stages are plain callables, so work plugs in here without touching the
gateway.

The worker yields to the wire: before each capture it waits (at most `MAX_DEFER_S`) until no
exchange is in flight, so its CPU work (and the GIL it holds) lands in the gaps between calls
instead of delaying bytes. Once half the queue is waiting it stops deferring, so a sustained
burst cannot grow the backlog into drops.
"""

import logging
import queue
import threading
import time
from typing import Callable

from opik_cipx.stats import Counters
from opik_cipx.wire.capture import Capture

log = logging.getLogger(__name__)

Stage = Callable[[Capture], None]
_STOP = object()
MAX_DEFER_S = 1.0


class Pipeline:
    def __init__(
        self,
        stages: list[tuple[str, Stage]],
        counters: Counters,
        maxsize: int,
        wire_idle: Callable[[float], bool] | None = None,
    ):
        """`wire_idle(timeout_s)` blocks until no exchange is in flight (True) or the timeout."""
        self.stages = stages
        self.counters = counters
        self.wire_idle = wire_idle
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._defer_below = max(1, maxsize // 2)
        self._thread = threading.Thread(target=self._run, name="cipx-materializer", daemon=True)
        self._inflight = 0

    def offer(self, capture: Capture) -> None:
        """Hand a finished exchange to the stages, or drop and count it if the queue is full."""
        try:
            self._queue.put_nowait(capture)
        except queue.Full:
            self.counters.incr("requests_dropped_queue_full")
            return
        self.counters.incr("requests_captured")

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float) -> bool:
        """Process what is queued, then stop; False if the worker did not finish in time."""
        deadline = time.monotonic() + timeout_s
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            return False
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()

    @property
    def backlogged(self) -> bool:
        """Half the queue or more is waiting: off-wire work stops deferring to the wire."""
        return self._queue.qsize() >= self._defer_below

    def section(self) -> dict[str, int]:
        """The `materializer` section of the admin stats."""
        return {"lag_events": self._queue.qsize(), "inflight_raw": self._inflight}

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self.wire_idle is not None and not self.backlogged:
                self.wire_idle(MAX_DEFER_S)
            self._inflight = 1
            for name, stage in self.stages:
                try:
                    stage(item)
                except Exception:
                    self.counters.incr("materializer_errors_total")
                    log.exception("pipeline: stage %s failed on capture %s", name, item.id)
            self._inflight = 0
