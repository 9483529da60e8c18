"""The git probe: a worker ("cipx-git") that reads the repository of a turn off the wire.

See ARCHITECTURE.md, *Workspace and repository*, and docs/OPIK.md, "Repository state". The
materializer asks (`ask(turn_id, cwd)`, never blocking: a bounded queue, one entry per turn
waiting) after each call of a turn it materialized live; the worker reads the directory with
`repository.read_state` (git with a deadline), the turn's first reading as its start and every
later one as its end, and what the commits between the two heads changed (`read_changes`). The
materializer takes what is known (`turn(turn_id)`) without waiting, and the turns answered since
it last looked (`answered()`), to emit their trace once more; `on_answer` wakes its thread.

The probe runs in the work process, so starting git costs the wire nothing. Only a directory
owned by the daemon's user is read: one named by a request may be anyone's, and
a repository's config can make git run programs (git refuses another user's repository too). A
directory that gave nothing (not there, not the user's, not a repository) is not read again for
`NOTHING_TTL_S`, and a turn read only there is not known (`turn` is None): its trace gets no
later version. Bounded: `MAX_TURNS` turns and directories remembered, `QUEUE_MAX` waiting; a stop
drops what waits.
"""

import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.materialize.repository import GIT_TIMEOUT_S, RepoChanges, RepoState, read_changes, read_state
from opik_cipx.stats import Counters
from opik_cipx.worker import Worker

if TYPE_CHECKING:
    from opik_cipx.materialize.call import TurnRepository

log = logging.getLogger(__name__)

MAX_TURNS = 64
QUEUE_MAX = 16
NOTHING_TTL_S = 60.0  # a directory git could say nothing about is read again only this much later


@dataclass
class _Turn:
    """What git said of one turn's repository."""

    start: RepoState | None = None
    end: RepoState | None = None
    changes: RepoChanges | None = None


class GitProbe(Worker):
    def __init__(self, counters: Counters, clock: Clock = SYSTEM, timeout_s: float = GIT_TIMEOUT_S,
                 owner_uid: int | None = None):
        """`owner_uid`: whose directories are read (the daemon's user by default)."""
        super().__init__("git", counters, log, clock)
        self.timeout_s = timeout_s
        self.owner_uid = os.getuid() if owner_uid is None else owner_uid
        self.on_answer: Callable[[], None] = lambda: None
        self._lock = threading.Lock()  # the tables below, shared with the materializer's thread
        self._turns: OrderedDict[str, _Turn] = OrderedDict()
        self._waiting: dict[str, str] = {}  # turn id -> the directory to read, queued once
        self._answered: dict[str, None] = {}  # turn ids answered since `answered()` was last called
        self._nothing: OrderedDict[str, float] = OrderedDict()  # directory -> when git said nothing of it

    # ---- the materializer's side ---------------------------------------------------------

    def ask(self, turn_id: str, cwd: str) -> None:
        """Read `cwd` for the turn soon; a turn already waiting is read once."""
        with self._lock:
            if turn_id in self._waiting:
                self._waiting[turn_id] = cwd
                return
            self._waiting[turn_id] = cwd
        if not self.put(turn_id, limit=QUEUE_MAX):
            with self._lock:
                self._waiting.pop(turn_id, None)

    def turn(self, turn_id: str) -> "TurnRepository | None":
        """What git said of the turn so far; None before its first reading answered."""
        with self._lock:
            found = self._turns.get(turn_id)
            if found is None or found.start is None or found.start == (found.end or found.start) == RepoState():
                return None
            start, end, changes = found.start, found.end or found.start, found.changes
        if changes is None and start.head_sha is not None and start.head_sha == end.head_sha:
            changes = RepoChanges(commits=0, files_added=0, files_deleted=0, lines_added=0, lines_deleted=0)
        changes = changes or RepoChanges()
        from opik_cipx.materialize.call import TurnRepository  # the materializer asks: it is loaded

        return TurnRepository(
            remote=end.remote or start.remote, branch=end.branch, head_sha=start.head_sha,
            head_sha_end=end.head_sha, dirty=end.dirty, commits=changes.commits, files_added=changes.files_added,
            files_deleted=changes.files_deleted, lines_added=changes.lines_added, lines_deleted=changes.lines_deleted)

    def answered(self) -> list[str]:
        """The turns git answered for since the last call, oldest first."""
        with self._lock:
            out, self._answered = list(self._answered), {}
        return out

    # ---- the worker's thread -------------------------------------------------------------

    def step(self, item: str | None) -> None:
        if item is None:
            return
        with self._lock:
            cwd = self._waiting.pop(item, None)
            known = self._turns.get(item)
            start = known.start if known else None
        if cwd is None or self.stopping:
            return
        state = self._read(cwd)
        changes = None
        if start is not None and start.head_sha and state.head_sha and start.head_sha != state.head_sha:
            changes = read_changes(cwd, start.head_sha, state.head_sha, self.timeout_s)
        with self._lock:
            entry = self._turns.pop(item, None) or _Turn()
            if entry.start is None:
                entry.start = state
            else:
                entry.end, entry.changes = state, changes
            self._turns[item] = entry
            while len(self._turns) > MAX_TURNS:
                self._turns.popitem(last=False)
            self._answered[item] = None
        self.on_answer()

    def _read(self, cwd: str) -> RepoState:
        """The directory's state; nothing when it is no repository of the user's (remembered a while)."""
        now = self.clock.monotonic()
        if now - self._nothing.get(cwd, -math.inf) < NOTHING_TTL_S:
            return RepoState()
        state = read_state(cwd, self.timeout_s) if self._readable(cwd) else RepoState()
        self._nothing.pop(cwd, None)
        if state == RepoState():
            self._nothing[cwd] = now
            while len(self._nothing) > MAX_TURNS:
                self._nothing.popitem(last=False)
        return state

    def _readable(self, cwd: str) -> bool:
        """An absolute path to a directory the daemon's user owns."""
        if not os.path.isabs(cwd):
            return False
        try:
            return os.stat(cwd).st_uid == self.owner_uid
        except (OSError, ValueError):
            return False
