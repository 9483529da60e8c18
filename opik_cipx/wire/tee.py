"""The tee: a bounded queue from the wire to the capture thread, and the thread that drains it.

`offer` never blocks: a capture that would take the queue beyond its count or its byte budget
is dropped and counted (`requests_dropped_queue_full`). The capture thread hands each capture
to the stages in order, at once — it never defers to the wire: its job is to make a finished
exchange durable within milliseconds (the daemon's stage compresses and appends it to the
capture log, and zlib releases the GIL). A stage that raises is logged and counted, and the
next capture goes on. Stages are plain callables, so work plugs in here without touching the
gateway.
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


def capture_bytes(capture: Capture) -> int:
    """The body bytes a capture holds in memory."""
    return len(capture.request_body) + sum(map(len, capture.response_parts))


class Pipeline:
    def __init__(self, stages: list[tuple[str, Stage]], counters: Counters, maxsize: int, max_bytes: int):
        """At most `maxsize` captures and `max_bytes` of bodies wait; one capture larger than the
        whole budget is still taken when nothing else waits."""
        self.stages = stages
        self.counters = counters
        self.max_bytes = max_bytes
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._cond = threading.Condition()
        self._bytes = 0  # bodies offered and not yet through the stages
        self._waiting = 0  # captures offered and not yet through the stages
        self._thread = threading.Thread(target=self._run, name="cipx-capture", daemon=True)

    def offer(self, capture: Capture) -> None:
        """Hand a finished exchange to the stages, or drop and count it when the queue is full."""
        size = capture_bytes(capture)
        with self._cond:
            if self._waiting and self._bytes + size > self.max_bytes:
                self.counters.incr("requests_dropped_queue_full")
                return
            try:
                self._queue.put_nowait((capture, size))
            except queue.Full:
                self.counters.incr("requests_dropped_queue_full")
                return
            self._bytes += size
            self._waiting += 1
        self.counters.incr("requests_captured")

    def start(self) -> None:
        self._thread.start()

    def drain(self, timeout_s: float) -> bool:
        """Wait until every capture offered so far went through the stages; False at the deadline."""
        with self._cond:
            return self._cond.wait_for(lambda: self._waiting == 0, timeout_s)

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
        """`ready_raw` of the `materializer` stats: finished exchanges not yet through the stages
        (for the daemon: not yet in the capture log, so a `kill -9` now would lose them)."""
        with self._cond:
            return {"ready_raw": self._waiting}

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            capture, size = item
            for name, stage in self.stages:
                try:
                    stage(capture)
                except Exception:
                    self.counters.incr("materializer_errors_total")
                    log.exception("pipeline: stage %s failed on capture %s", name, capture.id)
            with self._cond:
                self._bytes -= size
                self._waiting -= 1
                self._cond.notify_all()
