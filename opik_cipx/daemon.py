"""The long-lived daemon behind `opik-cipx proxy`: listeners, workers, `state.json`, shutdown.

Start order: the home's daemon lock first (a second daemon on the same home exits 1 before it
writes anything), paths of the wrong type in the home moved aside (`home.set_aside_wrong_types`),
then the gateway port (a taken 9909 fails before anything is written), the
admin port, the workers (the follower restores its checkpoint first), and finally `state.json`,
the handshake `sync` and `status` wait for. A disk that refuses writes (full, read-only) does not
stop the start: the wire comes up, the small state files (`ports.json`, `state.json`,
`viewer.token`) wait in memory (`StateFiles`) and are written as soon as the disk takes them,
and the `home` stats section says so.

The workers are declared in two lists, in the order a capture flows through them
(docs/ARCHITECTURE.md, "Threads"): the wire's (the capture thread) and the work's (the
follower, the spool's writer, the shipper); issue 26 moves the work to a process of its own.
They start from the last to the first (a consumer is up before what feeds it) and stop from the
first to the last, each within a bounded time. A resource is closed only once every worker that
uses it has finished: the ledger after the follower, the capture log after the capture thread;
a worker that did not finish in time keeps its resources until the process exits.

Stop order on SIGTERM/SIGINT/SIGQUIT (and SIGHUP when the daemon has a terminal; SIGHUP without
one, SIGUSR1 and SIGUSR2 are ignored: `catch_signals`): stop accepting, let in-flight exchanges finish (bounded), write
the tee queue to the capture log, stop the work — materialize the log and checkpoint (what is
left is materialized at the next start), commit the spool's queued records (what cannot be
written is counted in `spans_dropped_term`), stop the shipper (unshipped records stay in the
spool) —, let a call on an open keep-alive connection finish, stop the capture thread (that
call goes to the capture log), close the listeners, the upstream pool and the files, remove
`state.json`.
"""

import gc
import logging
import os
import signal
import sqlite3
import ssl
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opik_cipx import __version__, telemetry
from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.config import Settings, settings_fingerprint
from opik_cipx.control.budget_allow import AllowanceFile
from opik_cipx.control.daemon_control import home_id
from opik_cipx.control.detached import inherited_listener
from opik_cipx.control.executable import current as current_executable
from opik_cipx.control.ports import claude_code_port, open_picked_listeners, record_ports
from opik_cipx.home import HomeLocked, StateFiles, layout_notes, lock_home, private_dir, set_aside_wrong_types
from opik_cipx.ledger.budget_feed import read_seed, spends
from opik_cipx.ledger.entry import Entry
from opik_cipx.ledger.schema import SchemaError
from opik_cipx.ledger.store import Ledger, Previous
from opik_cipx.logs import DaemonLog
from opik_cipx.materialize.call import Materialized
from opik_cipx.materialize.follower import Follower
from opik_cipx.materialize.git_probe import GitProbe
from opik_cipx.materialize.materializer import Materializer, materializer_config
from opik_cipx.materialize.pricing import load_price_table
from opik_cipx.ship.destination import cost_intelligence, opik_config_path, resolve_destination
from opik_cipx.ship.shipper import Shipper
from opik_cipx.stats import Counters, build_stats, utc_iso
from opik_cipx.store.captures import Appended, CaptureStore
from opik_cipx.store.spool import Spool
from opik_cipx.urls import strip_credentials
from opik_cipx.views.access import ViewerAccess, new_token, read_token, token_path
from opik_cipx.views.admin import AdminHandler
from opik_cipx.views.dashboard import Dashboard
from opik_cipx.views.sign_in import SignInLinks
from opik_cipx.views.viewer import ViewerHandler
from opik_cipx.wire.budget import Guard
from opik_cipx.wire.capture import Capture
from opik_cipx.wire.connections import Limits, raise_fd_limit
from opik_cipx.wire.gateway import Gateway, GatewayHandler
from opik_cipx.wire.loopback import ListenError, LoopbackServer
from opik_cipx.wire.tee import Pipeline
from opik_cipx.wire.upstream import UpstreamPool
from opik_cipx.worker import Worker

log = logging.getLogger(__name__)
SHUTDOWN_POLL_S = 0.1  # how often an idle listener checks for shutdown
# A wire thread that wakes (bytes arrived) waits for the GIL until the running thread yields
# it; CPython's default forces that only every 5 ms. With the materializer busy, that wait
# lands on the wire. 100 us keeps it below the wire's own overhead (bench/bench_wire.py).
GIL_SWITCH_INTERVAL_S = 0.0001
WIRE_QUIET_S = 0.05  # off-wire work waits until no exchange started for this long (streams are long)
SEED_RETRY_S = 30.0  # how often a guard that could not read the ledger at start tries again
TELEMETRY_FLUSH_S = 2.0  # how long a stopping daemon lets queued error reports go out
# Signals that end a process by default but mean nothing to the daemon: ignored, logged
# (SIGHUP too when the daemon has no terminal). SIGPIPE Python ignores already.
IGNORED_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
WORKER_STOP_S = 5.0  # the least each worker gets to finish at shutdown (the follower: `drain_timeout_s` if longer)


class StartupError(Exception):
    """The daemon cannot start; the message is one line fit for the user."""


def build_materializer(
    settings: Settings, env: dict[str, str], pause: Callable[[], None] | None = None, git: GitProbe | None = None
) -> Materializer:
    """The materializer the daemon runs (`replay` builds the same one, so the ids match).

    Raises StartupError when a `[prices]` override cannot be applied to the packaged table.
    """
    try:
        prices = load_price_table(settings.prices)
    except ValueError as exc:
        raise StartupError(f"bad setting in config file {settings.config_path}: {exc}") from None
    project = resolve_destination(settings, opik_config_path(env)).project
    return Materializer(materializer_config(settings, env, project), prices, pause=pause, git=git)


class Daemon:
    """Owns every listener and worker thread of one running proxy."""

    def __init__(self, settings: Settings, port: int | None = None, home_lock_error: str | None = None,
                 reporter: telemetry.Reporter | None = None, log: DaemonLog | None = None,
                 counters: Counters | None = None, clock: Clock = SYSTEM):
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
        # A bad price override stops the start before anything listens; the listeners are bound
        # before the work writes anything (the spool's directory, the checkpoint).
        # repositories read off the wire, for the materializer
        self.git_probe = GitProbe(self.counters, clock, wire_idle=self._wire_quiet)
        self.materializer = build_materializer(settings, env, pause=self._yield_to_wire, git=self.git_probe)
        # The spend caps' guard, when a cap is set: on the wire, fed from the ledger (docs/BUDGETS.md).
        self.guard = Guard(settings.budget, str(settings.config_path), clock) if settings.budget.enabled else None
        self.allowances = AllowanceFile(settings.home)
        self._seed_at = float("-inf")
        self._build_wire(port)
        self._build_work()
        # The workers, each list in the order a capture flows through it (see the module docstring).
        self.wire_stages = [Stage(self.pipeline, WORKER_STOP_S, self.store.close,
                                  "captures still waiting for the capture log are lost")]
        self.work_stages = [
            Stage(self.follower, max(settings.drain_timeout_s, WORKER_STOP_S), self.ledger.close,
                  "the rest of the capture log is materialized at the next start"),
            Stage(self.git_probe, WORKER_STOP_S, None, "a git reading is still running"),
            Stage(self.spool.writer, WORKER_STOP_S, None, "records it could not write to the spool are lost"),
            Stage(self.shipper, WORKER_STOP_S, None,
                  "a request to Opik is still in flight; its records stay in the spool"),
        ]

    def _build_work(self) -> None:
        """What runs off the wire around the materializer: the capture log, the follower, the
        ledger, the spool and the shipper."""
        settings, mib = self.settings, 1024 * 1024
        # The capture log exists whatever captures.enabled says; off, it keeps a capture only
        # until it is materialized.
        self.store = CaptureStore(settings.captures_dir, max_bytes=settings.captures_max_mb * mib,
                                  max_age_s=settings.captures_max_age_days * 86400,
                                  segment_bytes=settings.captures_segment_mb * mib, keep=settings.captures_enabled,
                                  clock=self.clock)
        self.ledger = Ledger(settings.ledger_path, settings.ledger_retention_days, self.counters, clock=self.clock,
                             keep_text=settings.capture_content, on_written=self._spent if self.guard else None)
        self.spool = Spool(settings.spool_dir, max_bytes=int(settings.spool_max_mb * mib),
                           segment_bytes=int(settings.spool_segment_mb * mib), inmem_max=settings.spool_inmem_max,
                           inmem_max_bytes=int(settings.spool_inmem_max_mb * mib),
                           commit_interval_s=settings.spool_commit_interval_s, counters=self.counters,
                           clock=self.clock, keep=self.destination.configured)  # no Opik: nothing kept for it
        self.shipper = Shipper(self.spool, self.destination, self.counters, timeout_s=settings.opik_timeout_s,
                               retry_max_s=settings.opik_retry_max_s, auth_probe_s=settings.opik_auth_probe_s,
                               clock=self.clock)
        self.follower = Follower(self.materializer, self.store, self.spool, self.counters, settings.checkpoint_path,
                                 self._materialized, wire_idle=self._wire_quiet,
                                 wire_empty=lambda: self.gateway.inflight == 0, on_idle=self.ledger.retry_due,
                                 clock=self.clock)
        self.git_probe.on_answer = self.follower.wake  # its answer's trace versions go out from the follower

    def _build_wire(self, port: int | None) -> None:
        """The upstream pool, the capture thread, the gateway and the three listeners."""
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
            pages = Dashboard(settings.ledger_path, settings.captures_dir, clock=self.clock, budget=settings.budget,
                              prices=settings.prices)
            access = ViewerAccess(token, SignInLinks(settings.home, self.clock))
            viewer_handler = type("Handler", (ViewerHandler,), {"pages": pages, "access": access})
            handlers = {"admin": admin_handler, "viewer": viewer_handler}
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

    def _yield_to_wire(self) -> None:
        """Between slices of off-wire work: wait, bounded, for the wire to be quiet."""
        self.follower.pause()

    def _wire_quiet(self, timeout_s: float) -> bool:
        if self.guard is not None and self.guard.waiting:
            return True  # a request waits for the cost of calls that ended: record them at once
        return self.gateway.wait_quiet(WIRE_QUIET_S, timeout_s)

    def _teed(self, capture: Capture) -> None:
        """The gateway's tee with a guard: it learns that a billable call ended, unpriced yet."""
        assert self.guard is not None  # the gateway tees here only with one
        self.guard.finished(capture.id, capture.method, capture.path, capture.blocked is not None)
        self.pipeline.offer(capture)

    def _spent(self, entry: Entry, previous: Previous | None) -> None:
        """A call the ledger wrote (on the follower's thread): into the guard's totals."""
        assert self.guard is not None  # the ledger calls this only with one
        self.guard.add(spends(entry, previous))

    def _seed_guard(self) -> None:
        """The guard's totals from the ledger, before anything is materialized; while the ledger
        cannot be read, the guard lets every call through (counted) and this is tried again."""
        if self.guard is None or self.clock.monotonic() - self._seed_at < SEED_RETRY_S:
            return
        self._seed_at = self.clock.monotonic()
        now = self.clock.time_ns()
        try:
            seed = self.ledger.read(lambda conn: read_seed(conn, now))
        except (sqlite3.Error, SchemaError, OSError) as exc:
            reason = f"cannot read {self.settings.ledger_path.name}: {exc}"
            self.guard.cannot_seed(reason)
            log.warning("budget: %s; the caps are not enforced until it can be read", reason)
            return
        self.guard.seed(seed)
        self._seed_at = float("inf")

    def _persist(self, capture: Capture) -> None:
        """The capture thread's stage: append to the capture log, hand over to the follower."""
        appended: Appended | None = None
        try:
            appended = self.store.append(capture)
        except OSError as exc:
            self.counters.incr("raw_captures_dropped")
            log.warning("capture log: cannot write capture %s: %s", capture.id, exc.strerror or exc)
        self.follower.handoff(capture, appended)

    def _materialized(self, capture: Capture, result: Materialized) -> None:
        """After each capture is materialized (on the follower's thread): the call into the ledger,
        an upsert by capture id, so a capture materialized again after a crash counts once. A call
        whose usage held a field that is no token count is flagged (`calls_flagged`, logged)."""
        call = result.call
        if call is not None and call.usage is not None and call.usage.malformed:
            self.counters.incr("calls_flagged")
            log.warning("capture %s: usage field(s) %s from upstream are no token count; the call is recorded "
                        "with them as read", capture.id, ", ".join(call.usage.malformed))
        self.ledger.write(call)
        if self.guard is not None:
            self.guard.settle(capture.id)

    def start(self) -> None:
        self._seed_guard()  # before the follower writes anything to the ledger
        self._allow()
        for stage in reversed(self.wire_stages + self.work_stages):  # a consumer before what feeds it
            stage.worker.start()
        # state.json before the listeners answer: a command that finds the admin port answering
        # (through ports.json) can then rely on finding state.json too, unless the disk refused it.
        # It alone (0600) carries the settings' keyed digests and their key (never /admin/state).
        handshake = {**self.state(), **settings_fingerprint(self.settings)}
        if not self.files.write_json(self.settings.state_path, handshake):
            log.warning("cannot write state files (%s); the proxy runs and keeps them in memory until the disk "
                        "takes them", self.files.section()["last_error"])
        for server in (self.gateway_server, self.admin_server, self.viewer_server):
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
        take in the budget's allowances (and the ledger's spend, if the guard could not read it)."""
        for path in self.files.retry():
            log.info("wrote %s: the disk takes writes again", path.name)
        if self.log is not None:
            self.log.retry()
        self._allow()
        self._seed_guard()

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
        providers = {
            "materializer": lambda: {**self.pipeline.section(), **self.follower.section()},
            "opik": self.shipper.section,
            "queue": self.shipper.queue_section,
            "wal": self.spool.section,
            "unknown_models": self.materializer.unknown_models.section,
            "rate_limits": self.materializer.rate_limits.section,
            "home": self.home_section,
            "telemetry": self.reporter.section,
        }
        if self.guard is not None:
            providers["budget"] = self.guard.section
        return build_stats(base, self.counters, providers)

    def shutdown(self) -> None:
        """Stop accepting, drain in-flight exchanges and the tee queue, stop the workers (see the
        module docstring), release what no running worker uses any more."""
        drain = self.settings.drain_timeout_s
        drain_deadline = self.clock.monotonic() + drain
        self.gateway.draining = True
        self.gateway_server.stop_accepting()  # open connections may still bring a call (answered, then closed)
        if not self.gateway.wait_idle(drain):
            log.warning("shutdown: %d exchange(s) still in flight after %.0fs; stopping anyway",
                        self.gateway.inflight, drain)
        if not self.pipeline.drain(timeout_s=max(drain, WORKER_STOP_S)):
            log.warning("shutdown: captures still waiting for the capture log")
        _stop(self.work_stages)
        unwritten = self.spool.close(0)  # its writer has stopped: what it could not write is lost
        if unwritten:
            self.counters.incr("spans_dropped_term", unwritten)
            log.warning("shutdown: %d record(s) could not be written to the spool and are lost", unwritten)
        # An open keep-alive connection can still bring one last call in while the rest shuts
        # down; let it finish too (it goes to the capture log, materialized at the next start).
        if not self.gateway.wait_idle(max(1.0, drain_deadline - self.clock.monotonic())):
            log.warning("shutdown: a call that arrived during shutdown is cut off")
        _stop(self.wire_stages)
        for server in (self.gateway_server, self.admin_server, self.viewer_server):
            server.shutdown()
            server.server_close()
        self.pool.close()
        try:
            self.files.discard(self.settings.state_path)
        except OSError as exc:
            log.warning("cannot remove state.json: %s", exc.strerror or exc)
        log.info("opik-cipx stopped")


@dataclass(frozen=True)
class Stage:
    """A worker as the daemon starts and stops it."""

    worker: Worker
    stop_s: float  # how long it gets to finish at shutdown
    release: Callable[[], None] | None  # closes what the worker alone used; runs only once it finished
    unfinished: str  # what is left behind when it does not finish in time


def _stop(stages: list[Stage]) -> None:
    """Stop the stages first to last, each within its time; release what a finished one used."""
    for stage in stages:
        if not stage.worker.stop(stage.stop_s):
            log.warning("shutdown: %s did not finish in %.0fs; %s", stage.worker.name, stage.stop_s, stage.unfinished)
            continue
        log.info("shutdown: %s stopped", stage.worker.name)
        if stage.release is not None:
            stage.release()


def _home_error(home: Path) -> str | None:
    """Create `$CIPX_HOME` (0700) if needed; why it cannot be, or None. The wire runs either way."""
    try:
        private_dir(home)
    except OSError as exc:
        return f"cannot prepare CIPX_HOME ({exc.strerror or type(exc).__name__})"
    return None


def run_proxy(settings: Settings, port: int | None = None) -> int:
    """Run the daemon in the foreground until a signal stops it (`catch_signals`); the exit code.

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
        daemon = Daemon(settings, port, home_lock_error, reporter, daemon_log, counters)
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    stop = threading.Event()
    catch_signals(stop, has_terminal())
    # What exists now (modules, settings, the price table) lives as long as the daemon: the cyclic
    # collector skips it from here on, so a full collection, which holds the GIL, stays short.
    gc.freeze()
    daemon.start()
    while not daemon.clock.wait(stop, 1.0):
        daemon.tick()
    daemon.shutdown()
    return 0


def has_terminal() -> bool:
    """This process has a controlling terminal: a `proxy` run by hand (a supervised one has none)."""
    try:
        os.close(os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY))
    except OSError:
        return False
    return True


def catch_signals(stop: threading.Event, terminal: bool) -> None:
    """SIGTERM, SIGINT and SIGQUIT set `stop` (drain, then exit 0); so does SIGHUP when the daemon
    has a terminal (it closed). Without one SIGHUP is ignored, as SIGUSR1 and SIGUSR2 always are:
    each logged (docs/LIFECYCLE.md, "Signals").

    A Python handler runs on the main thread wherever it is, and one that set `stop` there could
    deadlock on the lock the main thread holds inside it; so the signal numbers go through a pipe
    (`signal.set_wakeup_fd`) to a thread that acts on them."""
    draining = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT} | ({signal.SIGHUP} if terminal else set())
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    for signum in (*draining, *IGNORED_SIGNALS):
        signal.signal(signum, lambda *_: None)
    signal.set_wakeup_fd(write_fd)

    def relay() -> None:
        while True:
            for number in os.read(read_fd, 64):
                name = signal.Signals(number).name
                if number in draining:
                    log.info("%s received: draining", name)
                    stop.set()
                elif number == signal.SIGHUP:
                    log.info("SIGHUP ignored: this daemon has no terminal to lose (`opik-cipx restart` reloads "
                             "the settings)")
                else:
                    log.info("%s ignored: it means nothing to opik-cipx", name)

    threading.Thread(target=relay, name="cipx-signals", daemon=True).start()
