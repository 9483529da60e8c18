"""Time at the edges: the one object through which opik-cipx reads the clocks and waits.

Everything that dates a record or waits for a deadline (shipper, spool, ledger retention,
follower, capture store, connection deadlines, telemetry) takes a `Clock` and never calls
`time` itself, so a test can run it on a clock of its own: a date chosen by the test, and time
that moves when the test says, not while it sleeps (`tests/fake_clock.py`).

`SYSTEM` is the machine's clocks. Converting a time that is already known (a local day from
epoch ns, a UTC stamp) is not a clock read and stays a plain function. The status line's fast
path reads the clock here too, so this module imports only `time` when it runs.
"""

from __future__ import annotations  # threading and Callable are for the type checker alone

import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    import threading
    from collections.abc import Callable


class Clock:
    """The machine's wall clock (epoch), its monotonic clock, and waits measured by the latter."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch."""
        return time.time()

    def time_ns(self) -> int:
        """Wall-clock nanoseconds since the epoch."""
        return time.time_ns()

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; only differences mean anything."""
        return time.monotonic()

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        """Wait until `event` is set (True) or `timeout` seconds have passed (False)."""
        return event.wait(timeout)

    def wait_for(self, cond: threading.Condition, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """With `cond` held: wait, releasing it meanwhile, until `predicate()` is true (True) or
        `timeout` seconds have passed (False); whoever changes what `predicate` reads notifies `cond`."""
        return cond.wait_for(predicate, timeout)

    def sleep(self, seconds: float) -> None:
        """Let `seconds` pass."""
        time.sleep(seconds)


SYSTEM = Clock()
