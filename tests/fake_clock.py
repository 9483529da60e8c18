"""A clock a test sets and moves: its date is the test's choice, and time passes only when the
test says (`advance`), never while a thread waits on a real timer."""

import threading

from opik_cipx.clock import Clock

DAY_NS = 86400 * 10**9


class FakeClock(Clock):
    """Wall time starts at `wall_ns`, monotonic time at 1000 s; both move only by `advance`.

    `wait(event, timeout)` returns as soon as `event` is set (real time), or once `advance` has
    moved the clock past its deadline; `sleep` advances the clock itself (one thread only)."""

    def __init__(self, wall_ns: int):
        self._wall_ns = wall_ns
        self._mono_ns = 1000 * 10**9
        self._moved = threading.Condition()

    def time(self) -> float:
        return self.time_ns() / 1e9

    def time_ns(self) -> int:
        with self._moved:
            return self._wall_ns

    def monotonic(self) -> float:
        with self._moved:
            return self._mono_ns / 1e9

    def advance(self, seconds: float) -> None:
        with self._moved:
            step = int(seconds * 1e9)
            self._wall_ns += step
            self._mono_ns += step
            self._moved.notify_all()

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        deadline = None if timeout is None else self.monotonic() + timeout
        while not event.is_set():
            if deadline is not None and self.monotonic() >= deadline:
                return False
            with self._moved:
                self._moved.wait(0.005)  # also wakes on `advance`; the event is polled
        return True

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)


def wall_ns_after(ns_values, days: float = 1.0) -> int:
    """A wall time `days` after the latest of `ns_values` (a corpus's capture times)."""
    return max(ns_values) + int(days * DAY_NS)

