"""The work process: everything the daemon does off the wire.

(docs/ARCHITECTURE.md, "Processes and threads".)

The wire process starts it (control/work_process.py) as its own command line run again, with the
link's end inherited (`link.WORK_FD_ENV`), and sends it a hello: the settings the wire started
with (a config file edited since does not change a running daemon), the Opik destination, the
viewer's listening socket and token, where the capture log ends. It then follows the log the
wire appends to: the follower materializes each capture, the ledger gets its call, the spool
its records, the shipper sends them to Opik; the viewer (the dashboard) answers on the socket
the wire holds, so its port stays the same across restarts of this process and a browser's
request waits in the backlog meanwhile.

It runs at a lower CPU priority (`WORK_NICE`): in a process of its own it holds no lock the wire
waits for, so the scheduler can put the wire's threads first. One work process per home at a
time: `work.lock`, taken before anything is opened (a predecessor whose wire was killed ends
when it sees its link close; the next one waits for it here).

It stops when the wire says so (`stop`: the log ends there; materialize it, checkpoint, commit
the spool, stop the shipper, exit 0) or on SIGTERM, SIGINT or SIGQUIT (the same, with the log's
end as last told); a link that closes (the wire is gone) ends it at once, as a `kill -9` would:
the next work process picks up from the checkpoint.
"""

from __future__ import annotations  # the ledger's and the call record's types are for the type checker alone

import fcntl
import logging
import os
import socket
import sqlite3
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opik_cipx import telemetry
from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.config import Settings
from opik_cipx.home import open_private, write_holder
from opik_cipx.ledger.schema import SchemaError
from opik_cipx.ledger.store import Ledger, Previous
from opik_cipx.link import PROTOCOL, PROTOCOL_MISMATCH, WORK_FD_ENV, WORKING_FD_ENV, Link, WorkingSlot
from opik_cipx.logs import DaemonLog
from opik_cipx.materialize.follower import Follower
from opik_cipx.materialize.git_probe import GitProbe
from opik_cipx.materialize.on_demand import MaterializerOnDemand
from opik_cipx.ship.destination import Destination
from opik_cipx.ship.shipper import Shipper
from opik_cipx.signals import catch_signals
from opik_cipx.stats import Counters, default_sections
from opik_cipx.store.capture_keeper import LogKeeper
from opik_cipx.store.captures import LogPosition, LogTail
from opik_cipx.store.spool import Spool
from opik_cipx.views.access import ViewerAccess
from opik_cipx.views.sign_in import SignInLinks
from opik_cipx.views.viewer import DashboardOnDemand, ViewerHandler
from opik_cipx.wire.capture import Capture
from opik_cipx.wire.connections import Limits
from opik_cipx.wire.loopback import LoopbackServer
from opik_cipx.worker import Stage, stop_stages

if TYPE_CHECKING:
    from opik_cipx.ledger.entry import Entry
    from opik_cipx.materialize.call import Materialized
    from opik_cipx.materialize.materializer import Materializer

log = logging.getLogger(__name__)
WORK_LOCK = "work.lock"
WORK_NICE = 10  # the work process's CPU priority below the wire's (os.nice)
WORKER_STOP_S = 5.0  # the least each worker gets to finish at shutdown (the follower: `drain_timeout_s` if longer)
TELEMETRY_FLUSH_S = 2.0
SHUTDOWN_POLL_S = 0.1
SEED_RETRY_S = 30.0  # how often a work process that could not read the ledger for the budget tries again


class StartupError(Exception):
    """The work cannot start; the message is one line fit for the user."""


class Work:
    """Everything the work process runs; the follower, the spool's writer and the shipper stop in
    that order, each within its time (docs/ARCHITECTURE.md, "Processes and threads")."""

    def __init__(self, settings: Settings, destination: Destination, link: Link, counters: Counters,
                 reporter: telemetry.Reporter, clock: Clock = SYSTEM, working: WorkingSlot | None = None):
        self.settings, self.destination, self.link = settings, destination, link
        self.working = working  # where the wire looks for the capture this process died on
        self.counters, self.reporter, self.clock = counters, reporter, clock
        mib = 1024 * 1024
        # Repositories read off the wire, for the materializer; in a process of its own, a git
        # reading waits for no quiet wire (starting git holds only this process's interpreter lock).
        self.git_probe = GitProbe(counters, clock)
        self._env = dict(os.environ)
        # Built at the first capture (docs/ARCHITECTURE.md, "Imports at start"); with `[prices]`
        # overrides now, so one that cannot be applied stops the start.
        self.materializer = MaterializerOnDemand(self._build_materializer)
        if settings.prices:
            try:
                self.materializer.built()
            except ValueError as exc:
                raise StartupError(str(exc)) from None
        self.budget = settings.budget.enabled  # the wire's guard counts what this process records
        self._seed_at = float("-inf")
        self.ledger = Ledger(settings.ledger_path, settings.ledger_retention_days, counters, clock=clock,
                             keep_text=settings.capture_content, on_written=self._spent if self.budget else None)
        self.spool = Spool(settings.spool_dir, max_bytes=int(settings.spool_max_mb * mib),
                           segment_bytes=int(settings.spool_segment_mb * mib), inmem_max=settings.spool_inmem_max,
                           inmem_max_bytes=int(settings.spool_inmem_max_mb * mib),
                           commit_interval_s=settings.spool_commit_interval_s, counters=counters,
                           clock=clock, keep=destination.configured)  # no Opik: nothing kept for it
        self.shipper = Shipper(self.spool, destination, counters, timeout_s=settings.opik_timeout_s,
                               retry_max_s=settings.opik_retry_max_s, auth_probe_s=settings.opik_auth_probe_s,
                               clock=clock)
        keeper = LogKeeper(settings.captures_dir, max_bytes=settings.captures_max_mb * mib,
                           max_age_s=settings.captures_max_age_days * 86400, keep=settings.captures_enabled,
                           clock=clock)
        self.follower = Follower(self.materializer, keeper, self.spool, counters, settings.checkpoint_path,
                                 self._materialized, on_idle=self._idle, on_working=self._working,
                                 clock=clock)
        self.git_probe.on_answer = self.follower.wake  # its answer's trace versions go out from the follower
        self.stages = [
            Stage(self.follower, max(settings.drain_timeout_s, WORKER_STOP_S), self.ledger.close,
                  "the rest of the capture log is materialized at the next start"),
            Stage(self.git_probe, WORKER_STOP_S, None, "a git reading is still running"),
            Stage(self.spool.writer, WORKER_STOP_S, None, "records it could not write to the spool are lost"),
            Stage(self.shipper, WORKER_STOP_S, None,
                  "a request to Opik is still in flight; its records stay in the spool"),
        ]
        self.viewer: LoopbackServer | None = None
        self._viewer_thread: threading.Thread | None = None

    def _build_materializer(self) -> Materializer:
        from opik_cipx.materialize.materializer import build_materializer  # see `self.materializer`

        return build_materializer(self.settings, self._env, self.destination.project, git=self.git_probe)

    def serve_viewer(self, fd: int, token: str) -> None:
        """The dashboard on the listening socket the wire holds (`fd`, inherited)."""
        settings = self.settings
        pages = DashboardOnDemand(settings.ledger_path, settings.captures_dir, clock=self.clock,
                                  budget=settings.budget, prices=settings.prices)
        access = ViewerAccess(token, SignInLinks(settings.home, self.clock))
        handler = type("Handler", (ViewerHandler,), {"pages": pages, "access": access})
        limits = Limits(settings.client_header_timeout_s, settings.client_body_timeout_s,
                        settings.client_idle_timeout_s, settings.client_max_connections,
                        max_buffered_bytes=int(settings.client_buffer_max_mb * 1024 * 1024))
        listener = socket.socket(fileno=fd)
        self.viewer = LoopbackServer("viewer", settings.listen_host, 0, handler, limits, self.counters,
                                     listener=listener)
        self._viewer_thread = threading.Thread(target=self.viewer.serve_forever, args=(SHUTDOWN_POLL_S,),
                                               name="cipx-viewer", daemon=True)
        self._viewer_thread.start()

    def start(self, tail: LogTail, own_from: int, skip: list[LogPosition]) -> None:
        self._seed_budget()  # before the follower writes anything to the ledger
        for stage in reversed(self.stages[1:]):  # a consumer before what feeds it
            stage.worker.start()
        self.follower.start_at(tail, own_from, set(skip))

    def _idle(self) -> None:
        """(The follower's thread, nothing to materialize.) The ledger's retries; the budget's seed
        when the ledger could not be read for it before."""
        self.ledger.retry_due()
        self._seed_budget()

    def _seed_budget(self) -> None:
        """The wire's budget guard gets what the ledger holds, read under the ledger's lock, so the
        spends written after it follow it on the link in order (docs/BUDGETS.md); while the ledger
        cannot be read, the wire is told and this is tried again every `SEED_RETRY_S`."""
        if not self.budget or self.clock.monotonic() - self._seed_at < SEED_RETRY_S:
            return
        from opik_cipx.ledger.budget_feed import read_seed  # with a spend cap only: it loads the wire's guard

        self._seed_at = self.clock.monotonic()
        now = self.clock.time_ns()
        try:
            self.ledger.read(lambda conn: self.link.send("budget_seed", read_seed(conn, now)))
        except (sqlite3.Error, SchemaError, OSError) as exc:
            reason = f"cannot read {self.settings.ledger_path.name}: {exc}"
            self.link.send("budget_unread", reason)
            log.warning("budget: %s; trying again in %.0fs", reason, SEED_RETRY_S)
            return
        self._seed_at = float("inf")

    def _spent(self, entry: Entry, previous: Previous | None) -> None:
        """A call the ledger wrote (under its lock, on the follower's thread): to the wire's guard."""
        from opik_cipx.ledger.budget_feed import spends  # loaded by the seed, before the first write

        self.link.send("spent", spends(entry, previous))

    def _working(self, position: LogPosition | None) -> None:
        if self.working is not None:
            self.working.set(position)

    def _materialized(self, run: list[tuple[Capture, Materialized]]) -> None:
        """After each run of captures is materialized (on the follower's thread): their calls into the
        ledger in one transaction, upserts by capture id, so a capture materialized again after a crash
        counts once; then the wire's guard learns they are recorded. A call whose usage held a field
        that is no token count is flagged (`calls_flagged`, logged)."""
        for capture, result in run:
            call = result.call
            if call is not None and call.usage is not None and call.usage.malformed:
                self.counters.incr("calls_flagged")
                log.warning("capture %s: usage field(s) %s from upstream are no token count; the call is "
                            "recorded with them as read", capture.id, ", ".join(call.usage.malformed))
        self.ledger.write_calls(result.call for _, result in run)
        if self.budget:
            for capture, _ in run:
                self.link.send("settled", capture.id)

    def stats(self) -> dict[str, Any]:
        """What the wire's admin stats take from this process: sections, counters and refusals."""
        sections = default_sections()
        for name, provide in (("materializer", self.follower.section), ("opik", self.shipper.section),
                              ("queue", self.shipper.queue_section), ("wal", self.spool.section),
                              ("unknown_models", self.materializer.unknown_models_section),
                              ("rate_limits", self.materializer.rate_limits_section),
                              ("telemetry", self.reporter.section)):
            sections[name].update(provide())
        return {"pid": os.getpid(), "sections": sections, "counters": self.counters.snapshot(),
                "refusals": self.counters.refusals()}

    def shutdown(self) -> None:
        """Stop the viewer, then the work in its order, each within its time."""
        if self.viewer is not None:
            self.viewer.shutdown()
            self.viewer.server_close()
        stop_stages(self.stages, log)
        unwritten = self.spool.close(0)  # its writer has stopped: what it could not write is lost
        if unwritten:
            self.counters.incr("spans_dropped_term", unwritten)
            log.warning("shutdown: %d record(s) could not be written to the spool and are lost", unwritten)


def hold_work_lock(home: Path) -> int | None:
    """Take `work.lock` (waiting while a predecessor still holds it); its descriptor, or None when the
    file cannot be made (a full or read-only disk: the work runs all the same)."""
    try:
        fh = open_private(home / WORK_LOCK, os.O_RDWR | os.O_CREAT)
    except OSError as exc:
        log.warning("running without %s: %s", WORK_LOCK, exc.strerror or exc)
        return None
    fd = os.dup(fh.fileno())
    fh.close()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.info("waiting for the previous work process to end")
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        return fd  # a file system without flock
    write_holder(fd)
    return fd


def run_work(env: dict[str, str] | None = None) -> int:
    """The work process's main: its exit status (0 once stopped as asked)."""
    environ = os.environ if env is None else env
    fd = environ.pop(WORK_FD_ENV, "")
    if not fd.isdigit():
        print("opik-cipx: the work process is started by the daemon (`opik-cipx proxy`), not by hand",
              file=sys.stderr)
        return 2
    link = Link(socket.socket(fileno=int(fd)), blocking=True)
    working = _working_slot(environ.pop(WORKING_FD_ENV, ""))
    hello = link.recv()
    if hello is None or hello[0] != "hello":
        return 1
    if hello[1] != PROTOCOL:
        print(f"opik-cipx: the work process speaks link protocol {PROTOCOL}, the daemon {hello[1]}: restart the "
              "daemon (`opik-cipx restart`)", file=sys.stderr)
        return PROTOCOL_MISMATCH
    _, _, config, destination, viewer, tail, own_from, skip = hello
    settings = Settings(**config)
    os.umask(0o077)
    DaemonLog(settings.logs_dir, settings.logs_max_mb * 1024 * 1024, settings.logs_backups,
              debug=settings.opik_debug, rotate=False)
    try:
        os.nice(WORK_NICE)
    except OSError:
        pass
    lock = hold_work_lock(settings.home)
    counters = Counters()
    reporter = telemetry.start(settings, counters)
    try:
        return _serve(settings, destination, link, counters, reporter, viewer, (tail, own_from, skip), working)
    except Exception:
        log.exception("opik-cipx work process crashed")
        return 1
    finally:
        reporter.stop(TELEMETRY_FLUSH_S)
        if lock is not None:
            os.close(lock)


def _working_slot(fd: str) -> WorkingSlot | None:
    """The working slot the wire made for this process (`link.WorkingSlot`); None without one."""
    if not fd.isdigit():
        return None
    try:
        return WorkingSlot(int(fd))
    except OSError as exc:
        print(f"opik-cipx: the work process cannot map its working slot ({exc.strerror or exc}); a capture it "
              "dies on will not be passed over", file=sys.stderr)
        return None
    finally:
        os.close(int(fd))


def _serve(settings: Settings, destination: Destination, link: Link, counters: Counters,
           reporter: telemetry.Reporter, viewer: tuple[int, str] | None, where: tuple,
           working: WorkingSlot | None) -> int:
    try:
        work = Work(settings, destination, link, counters, reporter, working=working)
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    stop = threading.Event()
    catch_signals(stop, False, log)
    if viewer is not None:
        work.serve_viewer(*viewer)
    work.start(*where)
    threading.Thread(target=_listen, args=(link, work, stop), name="cipx-link", daemon=True).start()
    link.send("ready", os.getpid())
    log.info("work process ready (pid %d)", os.getpid())
    while not work.clock.wait(stop, 1.0):
        pass
    work.shutdown()
    log.info("work process stopped")
    return 0


def _listen(link: Link, work: Work, stop: threading.Event) -> None:
    """What the wire says: where the log ends now, a stats request, stop. A link that closes means
    the wire is gone: the process ends at once (the next work process starts from the checkpoint)."""
    while True:
        try:
            message = link.recv()
        except ValueError as exc:  # a frame this end cannot read: the link is no use any more
            log.error("the link to the wire: %s", exc)
            message = None
        if message is None:
            if not stop.is_set():
                log.warning("the wire process is gone: the work process ends now")
                os._exit(0)
            return
        kind = message[0]
        if kind == "log":
            work.follower.note(message[1])
        elif kind == "stats":
            link.send("stats", message[1], work.stats())
        elif kind == "stop":
            work.follower.note(message[1])
            stop.set()
