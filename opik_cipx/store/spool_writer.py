"""The spool's in-memory queue and its group-commit writer thread ("cipx-spool", a `Worker`).

Encoded lines join a bounded queue (`append` drops what does not fit, `offer` waits for room);
each gets a ticket, its place in append order. The writer hands everything queued to the
spool's `commit` as one group — one write and one fsync — at most once per `interval_s` while
lines keep coming, at once for a flush or a group of `GROUP_MAX`. A group the disk refused goes
back to the front of the queue and is tried again every `retry_s`. `durable_seq` counts the
lines committed (in ticket order); `wait_durable` waits for a ticket. `stop` commits what is
queued, retrying until its deadline; what is still queued then is lost with the process.
"""

import logging
from collections.abc import Callable

from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.stats import Counters
from opik_cipx.worker import Worker

log = logging.getLogger(__name__)

GROUP_MAX = 1000  # records that trigger a commit before the interval is over

Commit = Callable[[list[bytes], int], bool]  # (lines, their bytes) -> written and fsynced


class GroupCommit(Worker):
    def __init__(self, commit: Commit, counters: Counters, inmem_max: int, inmem_max_bytes: int,
                 interval_s: float, retry_s: float, clock: Clock = SYSTEM):
        super().__init__("spool", counters, log, clock)
        self._commit = commit
        self.inmem_max = inmem_max
        self.inmem_max_bytes = inmem_max_bytes
        self.interval_s = interval_s
        self.retry_s = retry_s
        self._pending: list[bytes] = []  # encoded, not yet handed to the writer
        self._inmem = 0  # lines in memory: pending plus the group being written
        self._inmem_bytes = 0
        self._appended_seq = 0
        self._durable_seq = 0
        self._flush_wanted = False
        self._last_commit = float("-inf")
        self._failed_at: float | None = None  # the last commit failed then: retry after retry_s
        self._dropping = False
        self._dropped = 0

    # ---- the appending side -------------------------------------------------------------

    def append(self, lines: list[bytes]) -> int | None:
        """Queue `lines` without waiting: their ticket, or None when they were dropped (counted)."""
        size = sum(map(len, lines))
        with self._cond:
            if not self._fits(len(lines), size) or self._stopping:
                if not self._dropping:
                    log.warning("spool: dropping records: %s",
                                "spool closed" if self._stopping else "in-memory queue full")
                self._dropping = True
                self._dropped += len(lines)
                return None
            self._dropping = False
            return self._push(lines, size)

    def offer(self, lines: list[bytes], timeout_s: float) -> int | None:
        """Like `append`, but wait up to `timeout_s` for room instead of dropping: None (nothing
        dropped, nothing counted) when there was none or the spool is closing. Lines beyond the
        whole bound are taken once the queue is empty."""
        size = sum(map(len, lines))
        with self._cond:
            def room() -> bool:
                return self._stopping or self._inmem == 0 or self._fits(len(lines), size)

            if not self.clock.wait_for(self._cond, room, timeout_s) or self._stopping:
                return None
            return self._push(lines, size)

    def _fits(self, count: int, size: int) -> bool:
        return self._inmem + count <= self.inmem_max and self._inmem_bytes + size <= self.inmem_max_bytes

    def _push(self, lines: list[bytes], size: int) -> int:
        """Queue encoded lines (the condition held); their ticket. Wakes the writer only when the
        group starts or is full: it knows when the rest is due."""
        self._pending.extend(lines)
        self._inmem += len(lines)
        self._inmem_bytes += size
        self._appended_seq += len(lines)
        if len(self._pending) == len(lines) or len(self._pending) >= GROUP_MAX:
            self.wake()
        return self._appended_seq

    def skip(self, count: int) -> int:
        """`count` lines taken and let go on purpose (a spool that keeps nothing): their ticket,
        acknowledged at once. Only for a writer that is given nothing to write."""
        with self._cond:
            assert not self._inmem, "skipping past lines that wait for the disk"
            self._appended_seq += count
            self._durable_seq = self._appended_seq
            self._cond.notify_all()
            return self._appended_seq

    def wait_durable(self, ticket: int, timeout_s: float) -> bool:
        """Wait until the lines up to `ticket` are committed; False at the deadline."""
        with self._cond:
            return self.clock.wait_for(self._cond, lambda: self._durable_seq >= ticket, timeout_s)

    def flush(self, timeout_s: float) -> bool:
        """Commit what is queued now, without waiting for the group interval; wait for it."""
        with self._cond:
            ticket = self._appended_seq
            self._flush_wanted = True
            self.wake()
            return self.clock.wait_for(self._cond, lambda: self._durable_seq >= ticket, timeout_s)

    @property
    def durable_seq(self) -> int:
        with self._cond:
            return self._durable_seq

    def in_memory(self) -> tuple[int, int, int]:
        """(lines, bytes) in memory waiting for the disk, and lines dropped so far."""
        with self._cond:
            return self._inmem, self._inmem_bytes, self._dropped

    def close(self, timeout_s: float) -> int:
        """Commit what is queued (retrying for up to `timeout_s`), then stop; how many lines are
        still only in memory. A writer never started commits once here, on the caller's thread."""
        if self.stop(timeout_s) and not self.started:
            self._commit_pending()
        return self.in_memory()[0]

    def failed(self) -> None:
        """The spool could not be used (at start): have the writer try again every `retry_s`."""
        with self._cond:
            self._failed_at = self.clock.monotonic()
            self.wake()

    # ---- the writer thread --------------------------------------------------------------

    def step(self, _: None) -> float | None:
        with self._cond:
            if not self._pending and self._failed_at is None:
                return None
            now = self.clock.monotonic()
            due = self._last_commit + self.interval_s if self._failed_at is None else self._failed_at + self.retry_s
            if now < due and not self._flush_wanted and len(self._pending) < GROUP_MAX:
                return due - now
        self._commit_pending()
        return 0.0

    def finish(self) -> None:
        """Commit what is queued, retrying every `retry_s` until the stop deadline."""
        while not self._commit_pending() and self.clock.monotonic() < self.deadline:
            with self._cond:
                self.clock.wait_for(self._cond, lambda: False,
                                    min(self.retry_s, self.deadline - self.clock.monotonic()))

    def _commit_pending(self) -> bool:
        """Commit everything queued as one group; False when the disk refused it (kept queued)."""
        with self._cond:
            group, self._pending = self._pending, []
            self._flush_wanted = False
        size = sum(map(len, group))
        if not self._commit(group, size):
            with self._cond:
                self._pending[:0] = group
                self._failed_at = self.clock.monotonic()
            return False
        with self._cond:
            self._inmem -= len(group)
            self._inmem_bytes -= size
            self._durable_seq += len(group)
            self._last_commit = self.clock.monotonic()
            self._failed_at = None
            self._cond.notify_all()
        return True
