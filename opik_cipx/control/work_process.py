"""The work process as the wire process runs it: started, fed, asked, and started again when it dies.

(docs/ARCHITECTURE.md, "Processes and threads"; docs/LIFECYCLE.md, "When the work process dies".)
The wire process runs everything off the wire (materializing, the ledger, the spool, shipping,
the viewer) in a child process: its own interpreter, its own GIL, a lower CPU priority. One
thread of the wire ("cipx-work") starts it, reads what it says over the link, and when it ends
without being asked to, starts it again: at once, then after 0.25, 0.5 and 1 s while it keeps
dying (`control/children.restart_delay`), and every `GAVE_UP_DELAY_S` once it died 5 times
within 120 s: the wire never gives up on it, and never waits for it. What the wire writes to
the capture log meanwhile waits there; the next work process materializes it.

The child is the wire's own command line run again (so a launcher that plants a bug for a test
plants it there too) with the link's end and its working slot inherited (`link.WORK_FD_ENV`,
`link.WORKING_FD_ENV`), in a session of its own: a Ctrl-C in the terminal of a `proxy` run by
hand reaches the wire only, which stops the work in its order. A capture the work process was
materializing when it died twice in a row (its working slot says which) is passed over by the
next one (`skip`, counted as a materializer error), so one poisonous capture cannot keep the
work down.

Where the capture log ends is told at most every `NOTE_INTERVAL_S` (`note`, `flush_note`, on the
capture thread): after each capture, a message woke both processes' threads, which on two cores
cost the calls in flight more than the work itself did. The follower takes what a note announces
in one run.
"""

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.control.children import LISTEN_FD_ENV, describe_exit, restart_delay
from opik_cipx.link import PROTOCOL_MISMATCH, WORK_FD_ENV, WORKING_FD_ENV, Link, WorkingSlot
from opik_cipx.stats import utc_iso
from opik_cipx.store.captures import LogPosition, LogTail

log = logging.getLogger(__name__)

GAVE_UP_DELAY_S = 30.0  # between starts once the work process died 5 times within 120 s
PUMP_S = 1.0  # the link thread's longest wait (it also writes out what the link queued)
NOTE_INTERVAL_S = 0.02  # the most often the work process is told where the capture log ends
DEATHS_KEPT = 5
STATS_KEPT = 16  # answers to stats requests kept at most (one asked and timed out is dropped once 16 newer were asked)
Handler = Callable[..., None]


class WorkProcess:
    """The wire's side of the work process (see the module docstring).

    `hello(skip)` builds the first message each new work process gets (its settings, where the log
    ends, the positions to pass over); `handlers` answer the kinds of message it sends beyond
    those this class handles itself (`ready`, `stats`)."""

    def __init__(self, argv: list[str], env: dict[str, str], hello: Callable[[list[LogPosition]], tuple],
                 pass_fds: tuple[int, ...] = (), handlers: dict[str, Handler] | None = None, clock: Clock = SYSTEM):
        self.argv = argv
        self.env = {key: value for key, value in env.items()
                    if key not in (LISTEN_FD_ENV, WORK_FD_ENV, WORKING_FD_ENV)}
        self.hello = hello
        self.pass_fds = pass_fds
        self.handlers = dict(handlers or {})
        self.clock = clock
        self._lock = threading.Condition()
        self._link: Link | None = None
        self._proc: subprocess.Popen | None = None
        self._stopping = False
        self._stopped = threading.Event()  # the thread is done (stopped, or could not start one)
        self._wake = threading.Event()
        self._deaths: list[float] = []
        self._working: WorkingSlot | None = None  # the running work process's (`link.WorkingSlot`)
        self._skip: list[LogPosition] = []
        self._replies: dict[int, dict[str, Any]] = {}
        self._asked = 0
        self._last: dict[str, Any] | None = None  # the latest stats reply, kept for when none comes in time
        self._held: LogTail | None = None  # a note not sent yet (the capture thread's)
        self._noted_at = float("-inf")
        self.record: dict[str, Any] = {"pid": None, "state": "starting", "started_at": None, "restarts": 0,
                                       "deaths": [], "next_start_in_s": None}
        self._thread = threading.Thread(target=self._run, name="cipx-work", daemon=True)

    # ---- the wire's side -------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def send(self, *message: Any) -> bool:
        """A message to the running work process, never waiting; False when there is none or the
        link's queue is full (the log and the next note carry what a note would)."""
        with self._lock:
            link = self._link
        return link is not None and link.send(*message)

    def note(self, tail: LogTail) -> None:
        """(The capture thread.) The capture log ends at `tail` now: told to the work process at once
        if no note went in the last `NOTE_INTERVAL_S`, else when `flush_note` finds it due. A note
        the link cannot take is not retried: the next one, or the follower's own look, carries it."""
        self._held = tail
        self.flush_note()

    def flush_note(self) -> float | None:
        """(The capture thread, after each capture and when the wait it returned is over.) Send the
        held note if it is due; the seconds until it is, or None when none is held."""
        if self._held is None:
            return None
        now = self.clock.monotonic()
        wait = self._noted_at + NOTE_INTERVAL_S - now
        if wait > 0:
            return wait
        self.send("log", self._held)
        self._held, self._noted_at = None, now
        return None

    def stats(self, timeout_s: float) -> dict[str, Any] | None:
        """The work process's stats (`sections`, `counters`, `refusals`), asked for now and waited for
        at most `timeout_s`; else the last it sent (with `stale_s`), or None."""
        with self._lock:
            self._asked += 1
            ask = self._asked
        if self.send("stats", ask):
            with self._lock:
                self._lock.wait_for(lambda: ask in self._replies, timeout_s)
                reply = self._replies.pop(ask, None)
                if reply is not None:
                    return reply
        with self._lock:
            return dict(self._last, stale=True) if self._last is not None else None

    def section(self) -> dict[str, Any]:
        """The `work` stats section: the process, its restarts and its last deaths."""
        with self._lock:
            return {**self.record, "deaths": list(self.record["deaths"])}

    def stop(self, message: tuple, timeout_s: float) -> bool:
        """Ask the work process to finish (`message`, e.g. where the log ends) and wait for it, at most
        `timeout_s`, then SIGKILL it; True when it ended by itself in time."""
        with self._lock:
            self._stopping = True
            proc, link = self._proc, self._link
            self.record["state"] = "stopping"
        self._wake.set()
        if proc is None or link is None or proc.poll() is not None:
            self._stopped.wait(timeout_s)
            return proc is None or proc.returncode == 0
        link.send(*message)
        # The thread reaps it once its link closes (at its exit) and then says it stopped: an event to
        # wait on, where `proc.wait(timeout)` polls with sleeps. A thread that ended without reaping
        # it (an error) leaves it running: killed below like a late one.
        self._stopped.wait(timeout_s)
        if proc.poll() is not None:
            return proc.returncode == 0
        log.warning("work process pid %d did not finish within %.0fs: killed", proc.pid, timeout_s)
        proc.kill()
        proc.wait()
        self._stopped.wait(PUMP_S * 2)
        return False

    @property
    def pid(self) -> int | None:
        with self._lock:
            return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    # ---- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping:
                started = self._spawn()
                if started is None:
                    delay: float | None = GAVE_UP_DELAY_S
                else:
                    proc, link = started
                    began = self.clock.monotonic()
                    self._serve(link)
                    returncode = proc.wait()
                    link.close()
                    if self._stopping:
                        break
                    delay = self._died(proc.pid, returncode, self.clock.monotonic() - began)
                with self._lock:
                    self.record.update(state="restarting", pid=None, next_start_in_s=delay)
                self._wake.clear()
                self.clock.wait(self._wake, delay if delay is not None else GAVE_UP_DELAY_S)
        finally:
            with self._lock:
                self.record.update(state="stopped", pid=None, next_start_in_s=None)
                self._link, self._proc = None, None
                if self._working is not None:
                    self._working.close()
                    self._working = None
            self._stopped.set()

    def _spawn(self) -> tuple[subprocess.Popen, Link] | None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            working, working_fd = WorkingSlot.create()
        except OSError as exc:
            log.error("cannot make the work process's working slot: %s; trying again in %.0fs",
                      exc.strerror or exc, GAVE_UP_DELAY_S)
            ours.close()
            theirs.close()
            return None
        env = {**self.env, WORK_FD_ENV: str(theirs.fileno()), WORKING_FD_ENV: str(working_fd)}
        try:
            proc = subprocess.Popen(self.argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    pass_fds=(theirs.fileno(), working_fd, *self.pass_fds), start_new_session=True)
        except OSError as exc:
            log.error("cannot start the work process (%s): %s; trying again in %.0fs", self.argv[0],
                      exc.strerror or exc, GAVE_UP_DELAY_S)
            ours.close()
            working.close()
            return None
        finally:
            theirs.close()
            os.close(working_fd)
        link = Link(ours, blocking=False)
        with self._lock:
            self._proc, self._link = proc, link
            if self._working is not None:
                self._working.close()
            self._working = working
            self._replies.clear()
            self.record.update(pid=proc.pid, state="starting", started_at=utc_iso(self.clock.time()),
                               next_start_in_s=None)
            skip = list(self._skip)
        link.send(*self.hello(skip))
        log.info("work process started (pid %d)", proc.pid)
        return proc, link

    def _serve(self, link: Link) -> None:
        """Read what the work process says until it is gone."""
        while True:
            try:
                messages = link.pump(PUMP_S)
            except ValueError as exc:
                log.error("link: %s; stopping the work process", exc)
                self._kill()
                return
            if messages is None:
                return
            for message in messages:
                self._dispatch(message)

    def _dispatch(self, message: tuple) -> None:
        kind, args = message[0], message[1:]
        if kind == "ready":
            with self._lock:
                self.record["state"] = "running"
        elif kind == "stats":
            ask, reply = args
            with self._lock:
                self._last = reply
                self._replies[ask] = reply
                for late in [key for key in self._replies if key <= self._asked - STATS_KEPT]:
                    del self._replies[late]  # an answer no one waits for any more
                self._lock.notify_all()
        elif kind in self.handlers:
            try:
                self.handlers[kind](*args)
            except Exception:
                log.exception("link: the handler of %r failed", kind)
        else:
            log.warning("link: unknown message %r from the work process", kind)

    def _kill(self) -> None:
        with self._lock:
            proc = self._proc
        if proc is not None:
            try:
                proc.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _died(self, pid: int, returncode: int, ran_s: float) -> float | None:
        """After the work process ended by itself: record it; seconds until the next start."""
        now = self.clock.monotonic()
        self._deaths = [at for at in self._deaths if now - at < 120.0] + [now]
        how = describe_exit(returncode)
        with self._lock:
            at = self._working.get() if self._working is not None else None
            working = LogPosition(*at) if at is not None else None
            deaths = self.record["deaths"]
            previous = deaths[-1].get("working") if deaths else None
            death = {"at": utc_iso(self.clock.time()), "pid": pid, "how": how, "ran_s": round(ran_s, 1),
                     "working": list(working) if working is not None else None}
            self.record["deaths"] = (deaths + [death])[-DEATHS_KEPT:]
            self.record["restarts"] += 1
            if working is not None and previous == list(working) and working not in self._skip:
                self._skip.append(working)
                log.error("work process died twice on the capture at %d:%d: the next one passes over it",
                          *working)
        if returncode == PROTOCOL_MISMATCH:
            log.error("work process pid %d %s: the executable on disk is another version of opik-cipx; "
                      "`opik-cipx restart` runs it whole", pid, how)
            return GAVE_UP_DELAY_S
        delay = restart_delay(self._deaths, now)
        log.warning("work process pid %d %s after %.1fs; %s", pid, how, ran_s,
                    "starting it again" + (f" in {delay:g}s" if delay else "") if delay is not None
                    else f"it died {len(self._deaths)} times within 120s: trying again every {GAVE_UP_DELAY_S:.0f}s")
        return delay


def work_argv() -> list[str]:
    """The command line of this process, run again: the work process's (see the module docstring)."""
    return [sys.executable, *sys.orig_argv[1:]]
