"""One worker model for the daemon's background threads (docs/ARCHITECTURE.md, "Processes and threads").

A `Worker` is a named daemon thread with a queue and a wake-up. It runs `step(item)` for each
item `put` on its queue, in order, and `step(None)` when woken (`wake`) or when the wait its
last step asked for is over; `step` returns the seconds it may sleep before it wants to run
again (None: its `idle_s`, which None makes "until an item or a wake-up").

One stop protocol: `stop(timeout_s)` sets the stop flag and the stop deadline under the worker's
lock, wakes the thread, and waits at most `timeout_s` for it to finish; it returns whether the
thread finished. The thread first takes every item already queued (nothing handed over is left
behind), then runs `finish` and ends. A wait inside a step goes through `rest`, which returns
early (True) once a stop is asked for.

One guard: a step that raises is logged with its traceback under the owner's logger and counted
(`panics_recovered`, or the counter the caller names), and the worker goes on; a bug never ends
a worker for the daemon's lifetime. Every wait goes through the worker's `Clock`, so a test moves
time instead of sleeping.
"""

import logging
import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.stats import Counters

_FAILED = object()


class Worker:
    """The base of every background thread; subclasses implement `step` (and maybe `begin`,
    `finish`, `on_stop`). `_cond` guards the worker's state; a subclass may keep its own under it."""

    def __init__(self, name: str, counters: Counters, log: logging.Logger, clock: Clock = SYSTEM,
                 idle_s: float | None = None):
        self.name = f"cipx-{name}"
        self.counters = counters
        self.log = log
        self.clock = clock
        self.idle_s = idle_s
        self.failure_wait_s = idle_s  # how long the thread waits after a step failed
        self._cond = threading.Condition()
        self._items: deque[Any] = deque()
        self._woken = False
        self._stopping = False
        self._deadline = math.inf
        self._finished = False
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)

    # ---- the owner's side ---------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def put(self, item: Any, limit: int | None = None) -> bool:
        """Queue `item` for `step`; False (not queued) when `limit` items already wait."""
        with self._cond:
            if limit is not None and len(self._items) >= limit:
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def wake(self) -> None:
        """Run `step(None)` soon, whatever the last step asked to wait."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def stop(self, timeout_s: float) -> bool:
        """Ask the thread to finish what is queued and stop; wait at most `timeout_s`. True when it
        finished (or never started)."""
        with self._cond:
            if not self._stopping:
                self._stopping = True
                self._deadline = self.clock.monotonic() + timeout_s
                self.on_stop()
            self._cond.notify_all()
            if self._thread.ident is None:
                return True
            return self.clock.wait_for(self._cond, lambda: self._finished, timeout_s)

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    @property
    def finished(self) -> bool:
        """The thread ran `finish` and ended (a worker that never started counts as finished)."""
        with self._cond:
            return self._finished or self._thread.ident is None

    # ---- the thread's side --------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        with self._cond:
            return self._stopping

    @property
    def deadline(self) -> float:
        """The monotonic time by which `stop` wants the thread done; inf until it is asked."""
        with self._cond:
            return self._deadline

    def rest(self, seconds: float) -> bool:
        """Let `seconds` pass unless a stop is asked for meanwhile; True when stopping."""
        with self._cond:
            return self.clock.wait_for(self._cond, lambda: self._stopping, max(0.0, seconds))

    def guarded(self, step: Callable[..., Any], *args: Any, counter: str = "panics_recovered",
                what: str | None = None, failed: Any = None) -> Any:
        """`step(*args)`; when it raises, log the traceback under the owner's logger, count
        `counter`, and return `failed`."""
        try:
            return step(*args)
        except Exception:
            self.counters.incr(counter)
            self.log.exception("%s: %s failed; going on", self.name, what or getattr(step, "__name__", "a step"))
            return failed

    # ---- to implement -------------------------------------------------------------------

    def on_stop(self) -> None:
        """Runs under the worker's lock when a stop is asked for (before the thread is woken)."""

    def begin(self) -> float | None:
        """Runs first on the thread; returns like `step` (by default: step at once)."""
        return 0.0

    def step(self, item: Any) -> float | None:
        raise NotImplementedError

    def finish(self) -> None:
        """Runs last on the thread, once stopping and every queued item was taken."""

    # ---- the loop -----------------------------------------------------------------------

    def _main(self) -> None:
        wait = self._run_guarded(self.begin)
        while True:
            with self._cond:
                self.clock.wait_for(self._cond, lambda: bool(self._items) or self._woken or self._stopping, wait)
                self._woken = False
                if self._items:
                    item = self._items.popleft()
                elif self._stopping:
                    break
                else:
                    item = None
            wait = self._run_guarded(self.step, item)
        self.guarded(self.finish)
        with self._cond:
            self._finished = True
            self._cond.notify_all()

    def _run_guarded(self, step: Callable[..., float | None], *args: Any) -> float | None:
        wait = self.guarded(step, *args, failed=_FAILED)
        if wait is _FAILED:
            return self.failure_wait_s
        return self.idle_s if wait is None else wait


@dataclass(frozen=True)
class Stage:
    """A worker as a process starts and stops it (docs/ARCHITECTURE.md, "Processes and threads")."""

    worker: Worker
    stop_s: float  # how long it gets to finish at shutdown
    release: Callable[[], None] | None  # closes what the worker alone used; runs only once it finished
    unfinished: str  # what is left behind when it does not finish in time


def stop_stages(stages: list[Stage], log: logging.Logger) -> None:
    """Stop the stages first to last, each within its time; release what a finished one used."""
    for stage in stages:
        if not stage.worker.stop(stage.stop_s):
            log.warning("shutdown: %s did not finish in %.0fs; %s", stage.worker.name, stage.stop_s, stage.unfinished)
            continue
        log.info("shutdown: %s stopped", stage.worker.name)
        if stage.release is not None:
            stage.release()
