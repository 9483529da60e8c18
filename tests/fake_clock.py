"""A clock a test sets and moves: its date is the test's choice, and time passes only when the
test says (`advance`), never while a thread waits on a real timer."""

import math
import threading

from opik_cipx.clock import Clock

DAY_NS = 86400 * 10**9
POLL_S = 0.005  # how often a fake wait looks at the fake time (real seconds)


class FakeClock(Clock):
    """Wall time starts at `wall_ns`, monotonic time at 1000 s; both move only by `advance`.

    A wait (`wait`, `wait_for`) returns as soon as its event or condition says so (real time),
    or once `advance` has moved the clock past its deadline. `waiting(name)` tells a test how
    long the thread of that name still means to wait, so it can advance exactly that far;
    `sleep` advances the clock itself (one thread only)."""

    def __init__(self, wall_ns: int):
        self._wall_ns = wall_ns
        self._mono_ns = 1000 * 10**9
        self._lock = threading.Lock()
        self._deadlines: dict[str, float] = {}  # thread name -> monotonic ns deadline of its wait

    def time(self) -> float:
        return self.time_ns() / 1e9

    def time_ns(self) -> int:
        with self._lock:
            return self._wall_ns

    def monotonic(self) -> float:
        with self._lock:
            return self._mono_ns / 1e9

    def advance(self, seconds: float) -> None:
        with self._lock:
            step = math.ceil(seconds * 1e9)  # never less than asked: a wait of what is left ends
            self._wall_ns += step
            self._mono_ns += step

    def waiting(self, thread_name: str) -> float | None:
        """Seconds left of the wait the thread `thread_name` is in (inf: no timeout); None when it
        is not waiting on this clock."""
        with self._lock:
            deadline = self._deadlines.get(thread_name)
            return None if deadline is None else max(0, deadline - self._mono_ns) / 1e9

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        return self._wait(event.is_set, lambda: event.wait(POLL_S), timeout)

    def wait_for(self, cond: threading.Condition, predicate, timeout: float | None) -> bool:
        return self._wait(predicate, lambda: cond.wait(POLL_S), timeout)

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def _wait(self, done, pause, timeout: float | None) -> bool:
        name = threading.current_thread().name
        with self._lock:
            deadline = math.inf if timeout is None else self._mono_ns + math.ceil(timeout * 1e9)
            self._deadlines[name] = deadline
        try:
            while not (result := done()):
                with self._lock:
                    if self._mono_ns >= deadline:
                        return result
                pause()  # real and short: wakes at once on a notify or a set event
            return result
        finally:
            with self._lock:
                self._deadlines.pop(name, None)


def wall_ns_after(ns_values, days: float = 1.0) -> int:
    """A wall time `days` after the latest of `ns_values` (a corpus's capture times)."""
    return max(ns_values) + int(days * DAY_NS)
