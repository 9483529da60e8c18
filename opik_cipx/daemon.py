"""The long-lived daemon behind `opik-cipx proxy`: the wire process (listeners, the capture log's
appends, the admin listener, `state.json`), which runs the work process and shuts both down.

The daemon is two processes (docs/ARCHITECTURE.md, "Processes and threads"). This one, the wire,
holds every connection of Claude Code and nothing else that could hold them up: the listeners and
their handler threads, the upstream pool, the tee and the capture thread, which appends each
finished exchange to the capture log as it is (no compression, no parsing), the admin listener.
Everything else (materializing, the ledger, the spool, shipping, the dashboard) runs in the work
process (work.py), which this one starts, tells where the log ends after each capture, asks for
its stats, and starts again when it dies (control/work_process.py); its viewer listener is bound
here and handed over, so its port never changes.

Start order: the home's daemon lock first (a second daemon on the same home exits 1 before it
writes anything), paths of the wrong type in the home moved aside (`home.set_aside_wrong_types`),
the price table checked (a bad `[prices]` line stops the start), then the gateway port (a taken
9909 fails before anything is written), the admin and viewer ports, the capture thread, the work
process, and finally `state.json`, the handshake `sync` and `status` wait for. A disk that
refuses writes (full, read-only) does not stop the start: the wire comes up, the small state
files (`ports.json`, `state.json`, `viewer.token`) wait in memory (`StateFiles`) and are written
as soon as the disk takes them, and the `home` stats section says so.

Stop order on SIGTERM/SIGINT/SIGQUIT (and SIGHUP when the daemon has a terminal; SIGHUP without
one, SIGUSR1 and SIGUSR2 are ignored: `signals.catch_signals`): stop accepting, let in-flight exchanges
finish (bounded), write the tee queue to the capture log, stop the work process (it materializes
the log up to where it ends, checkpoints, commits the spool and stops the shipper; what is left is
materialized at the next start), let a call on an open keep-alive connection finish, stop the
capture thread (that call goes to the capture log), close the listeners, the upstream pool and
the files, remove `state.json`.
"""

import gc
import logging
import os
import sqlite3
import ssl
import sys
import threading
from pathlib import Path
from typing import Any

from opik_cipx import __version__, telemetry
from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.config import Settings, settings_fingerprint
from opik_cipx.control.budget_allow import AllowanceFile
from opik_cipx.control.children import inherited_listener
from opik_cipx.control.daemon_control import home_id
from opik_cipx.control.executable import current as current_executable
from opik_cipx.control.ports import claude_code_port, open_picked_listeners, record_ports
from opik_cipx.control.work_process import Handler, WorkProcess, work_argv
from opik_cipx.home import HomeLocked, StateFiles, layout_notes, lock_home, private_dir, set_aside_wrong_types
from opik_cipx.ledger.budget_feed import read_seed
from opik_cipx.ledger.db import open_reader
from opik_cipx.ledger.schema import SchemaError
from opik_cipx.link import PROTOCOL
from opik_cipx.logs import DaemonLog
from opik_cipx.ship.destination import cost_intelligence, opik_config_path, resolve_destination
from opik_cipx.signals import catch_signals, has_terminal
from opik_cipx.stats import Counters, ProcessTotals, build_stats, utc_iso
from opik_cipx.store.captures import CaptureStore, LogPosition
from opik_cipx.urls import strip_credentials
from opik_cipx.views.access import new_token, read_token, token_path
from opik_cipx.views.admin import AdminHandler
from opik_cipx.wire.budget import Guard, Seed, Spend
from opik_cipx.wire.capture import Capture
from opik_cipx.wire.connections import Limits, raise_fd_limit
from opik_cipx.wire.gateway import Gateway, GatewayHandler
from opik_cipx.wire.loopback import ListenError, LoopbackHandler, LoopbackServer
from opik_cipx.wire.tee import Pipeline
from opik_cipx.wire.upstream import UpstreamPool
from opik_cipx.worker import Stage, stop_stages

log = logging.getLogger(__name__)
SHUTDOWN_POLL_S = 0.1  # how often an idle listener checks for shutdown
# A wire thread that wakes (bytes arrived) waits for the GIL until the running thread yields
# it; CPython's default forces that only every 5 ms. 100 us keeps a wire thread's wait for
# another one (or for the capture thread) below the wire's own overhead (bench/bench_wire.py).
GIL_SWITCH_INTERVAL_S = 0.0001
TELEMETRY_FLUSH_S = 2.0  # how long a stopping daemon lets queued error reports go out
WORKER_STOP_S = 5.0  # the least each worker gets to finish at shutdown
STATS_WAIT_S = 1.0  # how long `/admin/stats` waits for the work process's part (else its last one)


class StartupError(Exception):
    """The daemon cannot start; the message is one line fit for the user."""


def check_prices(settings: Settings) -> None:
    """A `[prices]` override that cannot be applied stops the start (StartupError), before anything
    listens: the work process, which prices every call, would refuse it. Without one there is
    nothing of the user's to check (the tests check the packaged table), and the wire does not
    load the pricing at all."""
    if not settings.prices:
        return
    from opik_cipx.materialize.pricing import load_price_table  # a work-side module: only with overrides

    try:
        load_price_table(settings.prices)
    except ValueError as exc:
        raise StartupError(f"bad setting in config file {settings.config_path}: {exc}") from None


class Daemon:
    """Owns every listener and thread of the wire process, and the work process."""

    def __init__(self, settings: Settings, port: int | None = None, home_lock_error: str | None = None,
                 reporter: telemetry.Reporter | None = None, log: DaemonLog | None = None,
                 counters: Counters | None = None, clock: Clock = SYSTEM, work: list[str] | None = None):
        """`work`: the work process's command line (`control/work_process.work_argv`); None runs the
        wire alone (tests of the wire in process)."""
        self.settings = settings
        self.clock = clock
        self.home_lock_error = home_lock_error  # why this daemon runs without the home's lock
        self.counters = counters or Counters()
        self.reporter = reporter or telemetry.Reporter(settings, self.counters, clock)  # not started: reports nothing
        self.log = log
        self.files = StateFiles(settings.home)
        self.home_error = _home_error(settings.home)
        self.started_at = clock.time()
        env = dict(os.environ)
        self.destination = resolve_destination(settings, opik_config_path(env))
        check_prices(settings)
        # The spend caps' guard, when a cap is set: on the wire, fed by the work process (docs/BUDGETS.md).
        self.guard = Guard(settings.budget, str(settings.config_path), clock) if settings.budget.enabled else None
        self.allowances = AllowanceFile(settings.home)
        self._build_wire(port)
        # The capture log exists whatever captures.enabled says; off, a capture is kept only until
        # it is materialized.
        self.store = CaptureStore(settings.captures_dir, segment_bytes=settings.captures_segment_mb * 1024 * 1024,
                                  keep=settings.captures_enabled, clock=clock)
        self.stages = [Stage(self.pipeline, WORKER_STOP_S, self.store.close,
                             "captures still waiting for the capture log are lost")]
        self.totals = ProcessTotals()  # what the work processes counted, across their restarts
        handlers: dict[str, Handler] = {"spent": self._spent, "settled": self._settled, "budget_seed": self._seeded,
                    "budget_unread": self._unseeded} if self.guard is not None else {}
        self.work = WorkProcess(work, env, self._hello, pass_fds=(self.viewer_server.socket.fileno(),),
                                handlers=handlers, clock=clock) if work else None
        if self.work is not None:
            self.pipeline.after = self.work.flush_note  # a note held back goes when due

    def _build_wire(self, port: int | None) -> None:
        """The upstream pool, the capture thread, the gateway and the three listeners (the viewer's is
        bound here and served by the work process)."""
        settings, mib = self.settings, 1024 * 1024
        try:
            self.pool = UpstreamPool(settings.upstream_url, settings.upstream_proxy, settings.ca_bundle,
                                     settings.upstream_connect_timeout_s, settings.upstream_timeout_s)
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(f"cannot load the CA bundle {settings.ca_bundle!r}: {exc}") from None
        self.pipeline = Pipeline([("capture", self._persist)], self.counters, settings.tee_queue_max,
                                 max_bytes=int(settings.tee_queue_max_mb * mib), clock=self.clock)
        self.gateway = Gateway(self.pool, self._teed if self.guard else self.pipeline.offer, self.counters,
                               response_keep_bytes=int(settings.capture_response_max_mb * mib))
        self.gateway.budget = self.guard
        token = read_token(settings.home)
        if token is None:
            token = new_token()
            self.files.write(token_path(settings.home), token.encode() + b"\n")
        self.viewer_token = token
        host = settings.listen_host
        limits = Limits(settings.client_header_timeout_s, settings.client_body_timeout_s,
                        settings.client_idle_timeout_s, settings.client_max_connections,
                        max_buffered_bytes=int(settings.client_buffer_max_mb * mib))
        try:
            handler = type("Handler", (GatewayHandler,), {"gateway": self.gateway})
            self.gateway_server = LoopbackServer(
                "claude_code", host, claude_code_port(settings.ports_path) if port is None else port, handler,
                limits, self.counters, listener=inherited_listener() if port is None else None,
            )
            admin_handler = type("Handler", (AdminHandler,),
                                 {"stats": staticmethod(self.stats), "state": staticmethod(self.state)})
            handlers = {"admin": admin_handler, "viewer": LoopbackHandler}  # the viewer: served by the work
            picked = open_picked_listeners(settings.ports_path, lambda name, port: LoopbackServer(
                name, host, port, handlers[name], limits, self.counters))
            self.admin_server, self.viewer_server = picked["admin"], picked["viewer"]
            self.ports = record_ports(settings.ports_path, {name: server.port for name, server in picked.items()},
                                      self.files.write_json)
            self.ports["claude_code"] = self.gateway_server.port
        except ListenError as exc:
            self.pool.close()
            if hasattr(self, "gateway_server"):
                self.gateway_server.server_close()
            raise StartupError(str(exc)) from None
        self._threads: list[threading.Thread] = []
        self._upstream = {"url": settings.upstream_url,  # a proxy's credentials never reach the stats
                          "proxy": strip_credentials(settings.upstream_proxy) or None}

    def _hello(self, skip: list[LogPosition]) -> tuple:
        """The first message of each work process: the settings this daemon started with, the
        destination, the viewer's socket and token, where the log ends, what to pass over."""
        s = self.settings
        config = {"home": s.home, "config_path": s.config_path, "values": s.values, "warnings": s.warnings,
                  "unusable": s.unusable}
        viewer = (self.viewer_server.socket.fileno(), self.viewer_token)
        return ("hello", PROTOCOL, config, self.destination, viewer, self.store.tail(), self.store.start_end.segment,
                skip)

    # ---- the budget guard: decided here, fed by the work process (docs/BUDGETS.md) ---------

    def _teed(self, capture: Capture) -> None:
        """The gateway's tee with a guard: it learns that a billable call ended, unpriced yet."""
        assert self.guard is not None  # the gateway tees here only with one
        self.guard.finished(capture.id, capture.method, capture.path, capture.blocked is not None)
        if not self.pipeline.offer(capture):  # dropped: never recorded, so nothing may wait for it
            self.guard.settle(capture.id)

    def _seed_guard(self) -> None:
        """The guard's totals from the ledger as it is, read once before the listeners answer, so
        the first request after a start is decided too; the work process sends its own reading
        when it starts (`_seeded`), which replaces this one. A ledger that is not there yet holds
        nothing; one that cannot be read (or of another schema) leaves the guard undecided until the
        work's reading."""
        assert self.guard is not None
        path = self.settings.ledger_path
        try:
            conn = open_reader(path)
            try:
                seed = read_seed(conn, self.clock.time_ns()) if conn is not None else Seed()
            finally:
                if conn is not None:
                    conn.close()
        except (sqlite3.Error, SchemaError) as exc:
            self.guard.cannot_seed(f"cannot read {path.name}: {exc}")
            return
        self.guard.seed(seed)

    def _seeded(self, seed: Seed) -> None:
        """(The link's thread.) The work process read the ledger before writing to it: its totals
        replace the guard's (what an earlier work process reported is in them)."""
        assert self.guard is not None
        self.guard.seed(seed)

    def _unseeded(self, reason: str) -> None:
        """(The link's thread.) The work process cannot read the ledger; a guard that has totals
        keeps deciding from them (the ledger's next readable state replaces them)."""
        assert self.guard is not None
        deciding = self.guard.section()["deciding"]
        if not deciding:
            self.guard.cannot_seed(reason)
        log.warning("budget: %s; %s", reason, "the caps are decided from the totals read before" if deciding
                    else "the caps are not enforced until it can be read")

    def _spent(self, spends: list[Spend]) -> None:
        """(The link's thread.) Calls the work process wrote to the ledger: into the guard's totals."""
        assert self.guard is not None
        self.guard.add(spends)

    def _settled(self, capture_id: str) -> None:
        """(The link's thread.) The work process is done with this capture, recorded or not."""
        assert self.guard is not None
        self.guard.settle(capture_id)

    def _persist(self, capture: Capture) -> None:
        """The capture thread's stage: append to the capture log, tell the work process where it ends."""
        try:
            appended = self.store.append(capture)
        except OSError as exc:
            self.counters.incr("raw_captures_dropped")
            log.warning("capture log: cannot write capture %s: %s", capture.id, exc.strerror or exc)
            if self.guard is not None:  # never recorded: nothing may wait for it
                self.guard.settle(capture.id)
            return
        if self.work is not None:
            self.work.note(appended.tail)

    def start(self) -> None:
        if self.guard is not None:
            self._seed_guard()
            self._allow()
        for stage in reversed(self.stages):  # a consumer before what feeds it
            stage.worker.start()
        if self.work is not None:
            self.work.start()
        # state.json before the listeners answer: a command that finds the admin port answering
        # (through ports.json) can then rely on finding state.json too, unless the disk refused it.
        # It alone (0600) carries the settings' keyed digests and their key (never /admin/state).
        handshake = {**self.state(), **settings_fingerprint(self.settings)}
        if not self.files.write_json(self.settings.state_path, handshake):
            log.warning("cannot write state files (%s); the proxy runs and keeps them in memory until the disk "
                        "takes them", self.files.section()["last_error"])
        for server in (self.gateway_server, self.admin_server):
            thread = threading.Thread(
                target=server.serve_forever, args=(SHUTDOWN_POLL_S,), name=f"cipx-{server.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        log.info(
            "opik-cipx %s listening: claude_code 127.0.0.1:%d, admin 127.0.0.1:%d, viewer 127.0.0.1:%d, upstream %s",
            __version__, self.ports["claude_code"], self.ports["admin"], self.ports["viewer"],
            self.settings.upstream_url,
        )
        dest = self.destination
        if dest.configured:
            log.info("opik: %s, workspace %s, project %s, %s endpoints", dest.display_url, dest.workspace,
                     dest.project, dest.endpoints.replace("_", "-"))
            unseen = cost_intelligence(dest)
            log.info("opik: Cost Intelligence %s", f"does not see it: {'; '.join(unseen)}" if unseen else "sees it")
            if dest.cleartext:
                log.warning("opik: %s", dest.cleartext)
        else:
            log.info("opik: not configured; no record is kept for it")

    def tick(self) -> None:
        """Once a second on the main thread: write what the disk refused before, reattach the log file,
        take in the budget's allowances."""
        for path in self.files.retry():
            log.info("wrote %s: the disk takes writes again", path.name)
        if self.log is not None:
            self.log.retry()
        self._allow()

    def _allow(self) -> None:
        """What `opik-cipx budget allow` wrote, into the guard once it changed."""
        if self.guard is None:
            return
        allowed = self.allowances.poll()
        if allowed is not None:
            self.guard.allow(allowed.sessions, allowed.until_ns, allowed.serial)

    def home_section(self) -> dict[str, Any]:
        """The `home` stats section: what is kept in memory because the disk refused it, and why."""
        files = self.files.section()
        problems = []
        if self.home_error:
            problems.append(self.home_error)
        if files["unsaved"]:
            problems.append(
                f"{', '.join(files['unsaved'])} kept in memory, retried every second: {files['last_error']}")
        log_problem = self.log.problem if self.log is not None else None
        if log_problem:
            problems.append(log_problem)
        return {"degraded": bool(problems), "unsaved": files["unsaved"], "problems": problems,
                "layout": layout_notes(self.settings.home)}

    def state(self) -> dict[str, Any]:
        """The `state.json` handshake as served at `/admin/state` (the file adds the settings' keyed
        digests, `config.settings_fingerprint`); `executable*` let `sync` spot a replaced binary,
        `home` tells a command that asks the admin port that this daemon is its own."""
        exe = current_executable()
        return {
            "pid": os.getpid(),
            "started_at": utc_iso(self.started_at),
            "ports": self.ports,
            "version": __version__,
            "executable": str(exe.path),
            "executable_id": exe.identity,
            "home": home_id(self.settings.home),
        }

    def stats(self) -> dict[str, Any]:
        """The admin stats: this process's own, and the work process's sections and counters (asked
        now, at most `STATS_WAIT_S`; else the last it sent, marked `stale`)."""
        listeners = {name: f"127.0.0.1:{self.ports[name]}" for name in ("claude_code", "admin", "viewer")}
        base = {
            "pid": os.getpid(),
            "version": __version__,
            "started_at": utc_iso(self.started_at),
            "uptime_s": round(self.clock.time() - self.started_at, 3),
            "listeners": listeners,
            "upstream": self._upstream,
            "project": self.destination.project,
            "home_lock": {"held": self.home_lock_error is None, "error": self.home_lock_error},
        }
        providers = {"materializer": self.pipeline.section, "home": self.home_section,
                     "telemetry": self.reporter.section}
        if self.guard is not None:
            providers["budget"] = self.guard.section
        if self.work is not None:
            reply = self.work.stats(STATS_WAIT_S)
            if reply is not None:
                self.totals.report(reply)
            work = {**self.work.section(), "stale": bool(reply is None or reply.get("stale"))}
            providers["work"] = lambda: work
        return build_stats(base, self.counters, providers, self.totals)

    def shutdown(self) -> None:
        """Stop accepting, drain in-flight exchanges and the tee queue, stop the work process, the
        capture thread (see the module docstring), release what no running thread uses any more."""
        drain = self.settings.drain_timeout_s
        drain_deadline = self.clock.monotonic() + drain
        self.gateway.draining = True
        self.gateway_server.stop_accepting()  # open connections may still bring a call (answered, then closed)
        if not self.gateway.wait_idle(drain):
            log.warning("shutdown: %d exchange(s) still in flight after %.0fs; stopping anyway",
                        self.gateway.inflight, drain)
        if not self.pipeline.drain(timeout_s=max(drain, WORKER_STOP_S)):
            log.warning("shutdown: captures still waiting for the capture log")
        if self.work is not None and not self.work.stop(("stop", self.store.tail()),
                                                          max(drain, WORKER_STOP_S) + 3 * WORKER_STOP_S):
            log.warning("shutdown: the work process did not stop cleanly; the rest of the capture log is "
                        "materialized at the next start")
        # An open keep-alive connection can still bring one last call in while the rest shuts
        # down; let it finish too (it goes to the capture log, materialized at the next start).
        if not self.gateway.wait_idle(max(1.0, drain_deadline - self.clock.monotonic())):
            log.warning("shutdown: a call that arrived during shutdown is cut off")
        stop_stages(self.stages, log)
        for server in (self.gateway_server, self.admin_server):
            server.shutdown()
            server.server_close()
        self.viewer_server.server_close()
        self.gateway.close()
        self.pool.close()
        try:
            self.files.discard(self.settings.state_path)
        except OSError as exc:
            log.warning("cannot remove state.json: %s", exc.strerror or exc)
        log.info("opik-cipx stopped")


def _home_error(home: Path) -> str | None:
    """Create `$CIPX_HOME` (0700) if needed; why it cannot be, or None. The wire runs either way."""
    try:
        private_dir(home)
    except OSError as exc:
        return f"cannot prepare CIPX_HOME ({exc.strerror or type(exc).__name__})"
    return None


def run_proxy(settings: Settings, port: int | None = None) -> int:
    """Run the daemon in the foreground until a signal stops it (`signals.catch_signals`); the exit code.

    An unexpected exception (a crash) is logged with its traceback, reported when telemetry is
    on, and exits 1.
    """
    os.umask(0o077)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    raise_fd_limit()
    _home_error(settings.home)  # the lock file goes in it; a home that cannot be made is reported by the daemon
    try:
        home_lock = lock_home(settings.home)
    except HomeLocked as exc:
        holder = f"pid {exc.pid}" if exc.pid else "another process"
        print(f"opik-cipx: a daemon ({holder}) already runs on {settings.home}; nothing was started. "
              "Run `opik-cipx status` to see it, or `opik-cipx restart` to replace it.", file=sys.stderr)
        return 1
    set_aside = set_aside_wrong_types(settings.home)  # under the lock; `logs` a file included
    daemon_log = DaemonLog(
        settings.logs_dir, settings.logs_max_mb * 1024 * 1024, settings.logs_backups, debug=settings.opik_debug
    )
    if daemon_log.problem:
        log.warning("%s", daemon_log.problem)
    for line in set_aside:
        log.warning("CIPX_HOME: %s", line)
    for warning in settings.warnings:
        log.warning("%s", warning)
    if home_lock.error:
        log.warning("running without the home lock (%s): a second daemon on %s would not be refused",
                    home_lock.error, settings.home)
    counters = Counters()  # the reporter's own failures count where the daemon's do
    reporter = telemetry.start(settings, counters)
    try:
        return _serve(settings, port, reporter, home_lock.error, daemon_log, counters)
    except Exception:
        log.exception("opik-cipx crashed")
        return 1
    finally:
        reporter.stop(TELEMETRY_FLUSH_S)
        home_lock.release()


def _serve(settings: Settings, port: int | None, reporter: telemetry.Reporter, home_lock_error: str | None,
           daemon_log: DaemonLog, counters: Counters) -> int:
    try:
        daemon = Daemon(settings, port, home_lock_error, reporter, daemon_log, counters, work=work_argv())
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    stop = threading.Event()
    catch_signals(stop, has_terminal(), log)
    # What exists now (modules, settings, the price table) lives as long as the daemon: the cyclic
    # collector skips it from here on, so a full collection, which holds the GIL, stays short.
    gc.freeze()
    daemon.start()
    while not daemon.clock.wait(stop, 1.0):
        daemon.tick()
    daemon.shutdown()
    return 0
