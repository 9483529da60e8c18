"""The supervisor of detached mode: `opik-cipx supervise` runs the daemon as its child and starts it
again when it dies (docs/LIFECYCLE.md, "Supervision").

Without systemd or launchd (containers, CI, WSL) `sync` starts this small process in its own
session. It:
- **holds Claude Code's port**: it binds the listening socket before the first daemon starts and
  hands it to every daemon it starts (`CIPX_LISTEN_FD`, `control/children.inherited_listener`). A
  request that arrives while a daemon restarts waits in the socket's backlog and is answered by
  the next daemon: never refused, never retried by Claude Code;
- **restarts a daemon that died** (a crash, `kill -9`, the OOM killer) at once, then, while it
  keeps dying, after `control/children.restart_delay`; it gives up at the 5th death within
  120 s, and at once on exit status 2 (a configuration error, or an executable that is gone). A
  clean exit (status 0: SIGTERM from someone else, the `disabled` switch) is not restarted, as
  systemd's `Restart=on-failure` does not restart one;
- **once it gave up**, removes our `ANTHROPIC_BASE_URL` from Claude Code's settings (new sessions
  talk to Anthropic directly) and answers every request on the port with an error Claude Code
  shows at once (control/down_answer.py), until `sync`, `restart` or `uninstall` stops it;
- **stops** on SIGTERM (what `stop_daemon` sends): stops listening, passes SIGTERM on to the
  daemon, waits for its drain (`drain_timeout_s` + 5 s, then SIGKILL) and exits 0;
- **is never doubled**: it holds `supervisor.lock` (flock) for as long as it lives, and a second
  one exits 1 at once; nor does it double the daemon: started beside a daemon it did not start
  (its predecessor was killed, or a version before this one started it), it waits until that
  daemon releases the home lock, then starts its own.

It imports everything it will ever need before it starts anything: the executable it runs from
may be replaced or deleted while it lives. What it does goes to its stderr (`logs/supervisor.log`,
which `sync` opens for it) and its state to `supervisor.json`, which `status` and `sync` read.
"""

import errno
import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
from typing import Any, BinaryIO

from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.config import LOOPBACK_HOST, Settings
from opik_cipx.control import claude_settings, down_answer
from opik_cipx.control.children import LISTEN_FD_ENV, WINDOW_S, describe_exit, restart_delay
from opik_cipx.control.daemon_control import (
    CLAUDE_CODE_PORT,
    SUPERVISOR_FILE,
    SUPERVISOR_LOCK,
    listener_port,
    startup_error,
)
from opik_cipx.home import LOCK_FILE, open_private, private_dir, read_json, write_holder, write_json
from opik_cipx.stats import utc_iso

CONFIG_ERROR = 2  # `proxy` with a config file that does not load; Python with a missing script
STOP_GRACE_S = 5.0  # on top of drain_timeout_s, before a stopping daemon is killed
WATCH_BACKSTOP_S = 5.0  # the supervisor wakes on SIGCHLD; this only bounds a wait that somehow missed it
DEATHS_KEPT = 5


def open_listener(port: int) -> socket.socket:
    """Claude Code's port, listening, as the daemon's own listener binds it (raises OSError)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK_HOST, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


class DetachedSupervisor:
    """One supervisor process: `run` returns its exit status."""

    def __init__(self, settings: Settings, argv: list[str], env: dict[str, str], clock: Clock = SYSTEM):
        self.settings = settings
        self.home = settings.home
        self.logs = settings.logs_dir
        self.port = listener_port(settings, None, "claude_code") or CLAUDE_CODE_PORT
        self.argv, self.env, self.clock = argv, env, clock
        self.drain_s = settings.drain_timeout_s
        self.claude_settings = claude_settings.settings_path(env)
        self.stop = threading.Event()  # SIGTERM / SIGINT
        self.wake = threading.Event()  # anything happened: a signal, a child's exit
        self.deaths: list[float] = []
        self.record: dict[str, Any] = {"pid": os.getpid(), "started_at": utc_iso(clock.time()), "port": self.port,
                                       "state": "starting", "daemon_pid": None, "restarts": 0, "deaths": [],
                                       "reason": None}

    def run(self) -> int:
        lock = self._lock()
        if lock is None:
            return 1
        self._catch_signals()
        self._log(f"supervisor started (pid {os.getpid()}), Claude Code's port {self.port}")
        self._adopt()
        if self.stop.is_set():
            return self._finish()
        try:
            listener = open_listener(self.port)
        except OSError as exc:
            reason = (f"port {self.port} on {LOOPBACK_HOST} (claude_code) is already in use by another process"
                      if exc.errno == errno.EADDRINUSE else f"cannot listen on {LOOPBACK_HOST}:{self.port}: "
                      f"{exc.strerror or exc}")
            self._give_up(reason, None)
            return 1
        with listener:
            self._supervise(listener)
        return self._finish()

    def _supervise(self, listener: socket.socket) -> None:
        while not self.stop.is_set():
            proc = self._start(listener)
            if proc is None:
                return
            ended = self._watch(proc, listener)
            if ended is None:
                return  # stopped
            delay, reason = self._after(proc.pid, *ended)
            if delay is None:
                self._give_up(reason, listener)
                return
            self.clock.wait(self.stop, delay)

    def _catch_signals(self) -> None:
        """SIGTERM/SIGINT/SIGQUIT set `stop`, SIGCHLD (a daemon ended) `wake`; SIGHUP, SIGUSR1
        and SIGUSR2 are ignored (a process of its own session has no terminal to lose).

        A Python signal handler runs in the main thread wherever it happens to be, so one that set
        an Event could deadlock on the lock the main thread holds inside that Event; instead the
        signal numbers go through a pipe (`signal.set_wakeup_fd`) to a thread that sets them."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        stopping = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)  # SIGHUP, SIGUSR1/2: ignored (LIFECYCLE.md)
        for signum in (*stopping, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD):
            signal.signal(signum, lambda *_: None)
        signal.set_wakeup_fd(write_fd)

        def relay() -> None:
            while True:
                for signum in os.read(read_fd, 64):
                    if signum in stopping:
                        self.stop.set()
                    self.wake.set()

        threading.Thread(target=relay, name="cipx-signals", daemon=True).start()

    def _lock(self) -> int | None:
        """Take `supervisor.lock` for this process's lifetime; None when another supervisor holds it.

        A lock file that cannot be created (full or read-only disk) is no reason not to supervise:
        the port, which only one process can listen on, still keeps a second supervisor out."""
        try:
            fd = os.open(self.home / SUPERVISOR_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            self._log(f"running without {SUPERVISOR_LOCK}: {exc.strerror or exc}")
            return -1
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).strip().decode(errors="replace")
            os.close(fd)
            print(f"opik-cipx: a supervisor (pid {holder or '?'}) already runs on {self.home}; nothing was started.",
                  file=sys.stderr)
            return None
        write_holder(fd)
        return fd

    def _adopt(self) -> None:
        """While a daemon this supervisor did not start holds the home lock, wait for it to exit."""
        try:
            fd = os.open(self.home / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            holder = os.pread(fd, 32, 0).strip().decode(errors="replace")
            self._update(state="adopting", daemon_pid=int(holder) if holder.isdigit() else None)
            self._log(f"daemon pid {holder or '?'} was started before this supervisor: taking over when it exits")
            free = threading.Event()

            def wait_for_lock() -> None:
                fcntl.flock(fd, fcntl.LOCK_EX)  # blocks until that daemon is gone
                free.set()
                self.wake.set()

            threading.Thread(target=wait_for_lock, name="cipx-adopt", daemon=True).start()
            while not (free.is_set() or self.stop.is_set()):
                self.clock.wait(self.wake, WATCH_BACKSTOP_S)
                self.wake.clear()
        finally:
            if not self.stop.is_set():
                os.close(fd)  # releases the lock for the daemon about to start

    def _start(self, listener: socket.socket) -> subprocess.Popen | None:
        """Start a daemon on `listener`; None when it cannot even be started (the interpreter is gone)."""
        env = {**self.env, LISTEN_FD_ENV: str(listener.fileno())}
        try:
            stderr: BinaryIO = open_private(private_dir(self.logs) / "daemon.stderr",
                                            os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        except OSError:  # a full or read-only disk: the daemon starts all the same (the wire comes first)
            stderr = open(os.devnull, "wb")
        try:
            with stderr:
                proc = subprocess.Popen(self.argv, env=env, cwd="/", stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=stderr, pass_fds=(listener.fileno(),))
        except OSError as exc:
            self._give_up(f"cannot start the daemon ({self.argv[0]}: {exc.strerror or exc})", listener)
            return None
        self._update(state="running", daemon_pid=proc.pid)
        self._log(f"started daemon pid {proc.pid}")
        return proc

    def _watch(self, proc: subprocess.Popen, listener: socket.socket) -> tuple[int, float] | None:
        """Wait for the daemon to end: (its return code, how long it ran), or None when told to stop."""
        started = self.clock.monotonic()
        while True:
            self.wake.clear()
            if proc.poll() is not None:
                return proc.returncode, self.clock.monotonic() - started
            if self.stop.is_set():
                self._stop_daemon(proc, listener)
                return None
            self.clock.wait(self.wake, WATCH_BACKSTOP_S)

    def _stop_daemon(self, proc: subprocess.Popen, listener: socket.socket) -> None:
        """Stop listening (new connections are refused, and Claude Code retries them on the next
        daemon), pass SIGTERM on, wait for the drain, then SIGKILL."""
        self._update(state="stopping")
        listener.close()
        self._log(f"stopping daemon pid {proc.pid}")
        for signum, wait_s in ((signal.SIGTERM, self.drain_s + STOP_GRACE_S), (signal.SIGKILL, STOP_GRACE_S)):
            try:
                proc.send_signal(signum)
            except ProcessLookupError:
                pass
            if self._wait_exit(proc, wait_s):
                return

    def _wait_exit(self, proc: subprocess.Popen, wait_s: float) -> bool:
        deadline = self.clock.monotonic() + wait_s
        while True:
            self.wake.clear()
            if proc.poll() is not None:
                return True
            left = deadline - self.clock.monotonic()
            if left <= 0:
                return False
            self.clock.wait(self.wake, min(left, WATCH_BACKSTOP_S))

    def _after(self, pid: int, returncode: int, ran_s: float) -> tuple[float | None, str]:
        """After daemon `pid` ended by itself: (seconds until the next start, "") or (None, why not)."""
        how = describe_exit(returncode)
        now = self.clock.monotonic()
        self.deaths = [at for at in self.deaths if now - at < WINDOW_S] + [now]
        # A daemon that never came up (its state.json never named it) left why on stderr; read it
        # before the next start empties the file. One that ran only logged there.
        state = read_json(self.settings.state_path)
        came_up = isinstance(state, dict) and state.get("pid") == pid
        detail = None if came_up else startup_error(self.settings)
        death = {"at": utc_iso(self.clock.time()), "pid": pid, "how": how, "ran_s": round(ran_s, 1), "detail": detail}
        self.record["deaths"] = (self.record["deaths"] + [death])[-DEATHS_KEPT:]
        self._log(f"daemon pid {pid} {how} after {ran_s:.1f}s" + (f": {detail}" if detail else ""))
        if returncode == 0:
            return None, f"the daemon stopped by itself ({how}): not restarted"
        if returncode == CONFIG_ERROR:
            return None, f"the daemon cannot start ({how}: a configuration error, or its executable is gone)"
        delay = restart_delay(self.deaths, now)
        if delay is None:
            return None, f"the daemon died {len(self.deaths)} times within {WINDOW_S:.0f}s (the last {how})"
        self.record["restarts"] += 1
        self._update(state="restarting", daemon_pid=None)
        self._log(f"restarting it {'now' if delay == 0 else f'in {delay:g}s'}")
        return delay, ""

    def _give_up(self, reason: str, listener: socket.socket | None) -> None:
        """Say why; once it held the port, also point Claude Code back at Anthropic and answer on the
        port until told to stop. (Without the port it never ran a daemon: the `sync` that started it
        is waiting, and says so itself.)"""
        self._update(state="gave up", daemon_pid=None, reason=reason, gave_up_at=utc_iso(self.clock.time()))
        self._log(f"gave up: {reason}")
        if listener is None:
            return
        try:
            change = claude_settings.stop_pointing_at_proxy(self.claude_settings,
                                                            claude_settings.proxy_url(self.port))
        except OSError as exc:
            self._log(f"cannot update {self.claude_settings}: {exc.strerror or exc}")
        else:
            if change.outcome == "removed":
                self._log(f"removed {claude_settings.KEY} from {change.path}: new Claude Code sessions talk to "
                          "Anthropic")
        self._log("answering requests on the port with an error that says so")
        down_answer.serve(listener, self.stop, clock=self.clock)

    def _log(self, line: str) -> None:
        """One timestamped line on stderr (`logs/supervisor.log`)."""
        print(f"{utc_iso(self.clock.time())} {line}", file=sys.stderr, flush=True)

    def _update(self, **fields: Any) -> None:
        self.record.update(fields)
        try:
            write_json(self.home / SUPERVISOR_FILE, self.record)
        except OSError:
            pass  # a full or read-only disk: `status` cannot say more, the supervision goes on

    def _finish(self) -> int:
        self._log("supervisor stopped")
        try:
            (self.home / SUPERVISOR_FILE).unlink()
        except OSError:
            pass
        return 0

