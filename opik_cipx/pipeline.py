"""The tee: a bounded queue from the wire to the off-wire stages, and the worker that drains it.

`offer` never blocks: a full queue drops the capture and counts it. The worker hands each
capture to the stages in order (persist the raw capture, then materialize); a stage that
raises is logged and counted, and the next capture goes on. Stages are plain callables, so
later work plugs in here without touching the gateway.
"""

import logging
import queue
import threading
import time
from typing import Callable

from opik_cipx.capture import Capture
from opik_cipx.stats import Counters

log = logging.getLogger(__name__)

Stage = Callable[[Capture], None]
_STOP = object()


class Pipeline:
    def __init__(self, stages: list[tuple[str, Stage]], counters: Counters, maxsize: int):
        self.stages = stages
        self.counters = counters
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
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

    def section(self) -> dict[str, int]:
        """The `materializer` section of the admin stats."""
        return {"lag_events": self._queue.qsize(), "inflight_raw": self._inflight}

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            self._inflight = 1
            for name, stage in self.stages:
                try:
                    stage(item)
                except Exception:
                    self.counters.incr("materializer_errors_total")
                    log.exception("pipeline: stage %s failed on capture %s", name, item.id)
            self._inflight = 0
