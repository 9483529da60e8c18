"""The tee: a bounded queue from the wire to the capture thread, and the thread that drains it.

`offer` never blocks: a capture that would take the queue beyond its count or its byte budget
is dropped and counted (`requests_dropped_queue_full`). The capture thread (a `Worker`) hands
each capture to the stages in order, at once — it never defers to the wire: its job is to make
a finished exchange durable within milliseconds (the daemon's stage compresses and appends it to
the capture log, and zlib releases the GIL). A stage that raises is logged and counted by the
worker's guard, and the next stage and capture go on. Stages are plain callables, so work plugs
in here without touching the gateway; `after` (the daemon's note to the work process) runs on the
thread after each capture and when the wait it asked for is over.
"""

import logging
from collections.abc import Callable

from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.stats import Counters
from opik_cipx.wire.capture import Capture
from opik_cipx.worker import Worker

log = logging.getLogger(__name__)

Stage = Callable[[Capture], None]


def capture_bytes(capture: Capture) -> int:
    """The body bytes a capture holds in memory."""
    return len(capture.request_body) + sum(map(len, capture.response_parts))


class Pipeline(Worker):
    def __init__(self, stages: list[tuple[str, Stage]], counters: Counters, maxsize: int, max_bytes: int,
                 clock: Clock = SYSTEM, after: Callable[[], float | None] | None = None):
        """At most `maxsize` captures and `max_bytes` of bodies wait; one capture larger than the
        whole budget is still taken when nothing else waits. `after()` returns the seconds until it
        wants to run again (None: after the next capture)."""
        super().__init__("capture", counters, log, clock)
        self.stages = stages
        self.after = after
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self._bytes = 0  # bodies offered and not yet through the stages
        self._waiting = 0  # captures offered and not yet through the stages

    def offer(self, capture: Capture) -> bool:
        """Hand a finished exchange to the stages (True), or drop and count it when the queue is full."""
        size = capture_bytes(capture)
        with self._cond:
            full = self._waiting and self._bytes + size > self.max_bytes
            if full or not self.put((capture, size), limit=self.maxsize):
                self.counters.incr("requests_dropped_queue_full")
                return False
            self._bytes += size
            self._waiting += 1
        self.counters.incr("requests_captured")
        return True

    def drain(self, timeout_s: float) -> bool:
        """Wait until every capture offered so far went through the stages; False at the deadline."""
        with self._cond:
            return self.clock.wait_for(self._cond, lambda: self._waiting == 0, timeout_s)

    def section(self) -> dict[str, int]:
        """`ready_raw` of the `materializer` stats: finished exchanges not yet through the stages
        (for the daemon: not yet in the capture log, so a `kill -9` now would lose them)."""
        with self._cond:
            return {"ready_raw": self._waiting}

    def step(self, item: tuple[Capture, int] | None) -> float | None:
        if item is not None:
            capture, size = item
            for name, stage in self.stages:
                self.guarded(stage, capture, what=f"stage {name} on capture {capture.id}")
            with self._cond:
                self._bytes -= size
                self._waiting -= 1
                self._cond.notify_all()
        return None if self.after is None else self.after()
