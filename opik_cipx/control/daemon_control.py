"""Talking to the daemon from short-lived commands: `state.json`, the admin listener, pids.

The daemon writes `state.json` once it is listening and removes it on a clean exit, so a
`state.json` whose admin port does not answer means a daemon that crashed, was killed or is
wedged. A daemon whose disk refused `state.json` (full, read-only) serves the same document at
`GET /admin/state` on the admin port recorded in `ports.json`; `read_state` asks it there.
Everything here is bounded: every wait has a deadline, every request a timeout.
"""

import fcntl
import json
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeGuard

from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.config import Settings, load_settings
from opik_cipx.home import LOCK_FILE, open_private, private_dir, read_json

HEALTH_TIMEOUT_S = 1.0
POLL_S = 0.02
KILL_WAIT_S = 5.0  # how long a process SIGKILLed gets to be gone
CLAUDE_CODE_PORT = 9909  # ports.CLAUDE_CODE_PORT, without importing the listener code
SUPERVISOR_FILE = "supervisor.json"  # the detached supervisor's record (control/detached.py)
SUPERVISOR_LOCK = "supervisor.lock"  # held by the detached supervisor for its lifetime, as daemon.lock by the daemon
SUPERVISOR_LOG_MAX = 1024 * 1024


def paths_only_settings(env: dict[str, str]) -> Settings:
    """Settings for lifecycle commands when the config is unusable: paths from `env`, defaults."""
    keep: dict[str, str] = {key: env[key] for key in ("HOME", "CIPX_HOME") if key in env}
    return load_settings({**keep, "CIPX_CONFIG": os.devnull})


def read_state(settings: Settings) -> dict[str, Any] | None:
    """`state.json` when it names a pid; else what a daemon of this home that could not write it
    answers at `/admin/state`; else None."""
    state = read_json(settings.state_path)
    if _names_pid(state):
        return state
    state = _admin_json(_port(read_json(settings.ports_path), "admin"), "/admin/state")
    if _names_pid(state) and state.get("home") == home_id(settings.home):
        return state
    return None


def home_id(home: Path) -> str:
    """How `state.json` names the home a daemon serves (its absolute path)."""
    return os.path.abspath(home)


def _names_pid(state: object) -> TypeGuard[dict[str, Any]]:
    return isinstance(state, dict) and isinstance(state.get("pid"), int) and state["pid"] > 0


def _port(ports: object, name: str) -> int | None:
    port = ports.get(name) if isinstance(ports, dict) else None
    return port if isinstance(port, int) and 0 < port < 65536 else None


def listener_port(settings: Settings, state: dict[str, Any] | None, name: str) -> int | None:
    """The port of listener `name` from `state.json`, else from `ports.json`.

    Reads `ports.json` itself rather than through ports.py, which pulls in the listener code:
    `sync` runs on every session start and this keeps its start-up short.
    """
    return _port((state or {}).get("ports"), name) or _port(read_json(settings.ports_path), name)


def admin_port(settings: Settings, state: dict[str, Any] | None) -> int | None:
    return listener_port(settings, state, "admin")


def admin_get(port: int, path: str, timeout_s: float = HEALTH_TIMEOUT_S,
              clock: Clock = SYSTEM) -> tuple[int, bytes] | None:
    """(status, body) of `GET path` on the admin listener, or None if it does not answer within `timeout_s`.

    A raw socket instead of http.client: `sync` runs on every session start and this keeps
    its import time down.
    """
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
    deadline = clock.monotonic() + timeout_s
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall(request)
            chunks = []
            while clock.monotonic() < deadline:
                sock.settimeout(max(deadline - clock.monotonic(), 0.001))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
            else:
                return None
    except OSError:
        return None
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None
    return int(parts[1]), body


def is_healthy(port: int | None, timeout_s: float = HEALTH_TIMEOUT_S) -> bool:
    """True when `/admin/health` on `port` answers 200."""
    if port is None:
        return False
    answer = admin_get(port, "/admin/health", timeout_s)
    return answer is not None and answer[0] == 200


def fetch_stats(port: int | None, timeout_s: float = 2.0) -> dict[str, Any] | None:
    """The `/admin/stats` document (docs/ARCHITECTURE.md, "Admin stats"), or None when the daemon does not answer."""
    return _admin_json(port, "/admin/stats", timeout_s)


def _admin_json(port: int | None, path: str, timeout_s: float = HEALTH_TIMEOUT_S) -> dict[str, Any] | None:
    """The JSON object the admin listener answers 200 at `path`; None for any other answer or none."""
    answer = admin_get(port, path, timeout_s) if port else None
    if answer is None or answer[0] != 200:
        return None
    try:
        doc = json.loads(answer[1])
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie waiting to be reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True  # no /proc (macOS): signal 0 is all there is
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"


def _command_line(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        pass
    try:
        out = subprocess.run(["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True, timeout=2)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def is_our_process(pid: int, command: str) -> bool:
    """True when `pid` is alive and its command line is an opik-cipx `command` (`proxy`, `supervise`).

    A `state.json` left behind by a killed daemon can name a pid the OS has since given to
    an unrelated process; that one must never be signalled.
    """
    if not pid_alive(pid):
        return False
    cmdline = _command_line(pid)
    return cmdline is not None and "opik" in cmdline and f" {command}" in cmdline


def is_our_daemon(pid: int) -> bool:
    return is_our_process(pid, "proxy")


def read_supervisor(settings: Settings) -> dict[str, Any] | None:
    """The detached supervisor's record (`supervisor.json`) with `alive`: whether its process runs; None without one.

    `state` is `starting`, `adopting` (waiting for a daemon it did not start), `running`,
    `restarting`, `stopping` or `gave up` (then `reason` says why); `deaths` the last few exits.
    A supervisor that exits cleanly removes the file; one that could not start leaves it, dead, with its reason.
    """
    record = read_json(settings.home / SUPERVISOR_FILE)
    if not _names_pid(record):
        return None
    return {**record, "alive": is_our_process(record["pid"], "supervise")}


def running_supervisor(settings: Settings) -> int | None:
    """The pid of this home's detached supervisor while it runs."""
    record = read_supervisor(settings)
    return record["pid"] if record and record["alive"] else None


def wait_healthy(settings: Settings, timeout_s: float, proc: subprocess.Popen | None = None,
                 failed: Callable[[], bool] | None = None, clock: Clock = SYSTEM) -> dict[str, Any] | None:
    """Wait until `state.json` names a pid whose admin listener answers; the state, or None.

    Gives up early when `proc` (a process this one started) has exited, or when `failed()` says so.
    Polled every `POLL_S`: nothing tells another process that a daemon came up.
    """
    deadline = clock.monotonic() + timeout_s
    while True:
        state = read_state(settings)
        if state and is_healthy(admin_port(settings, state), timeout_s=0.5):
            return state
        if proc is not None and proc.poll() is not None:
            return None
        if failed is not None and failed():
            return None
        if clock.monotonic() > deadline:
            return None
        clock.sleep(POLL_S)


def start_detached(settings: Settings, argv: list[str], extra_env: dict[str, str]) -> subprocess.Popen:
    """Spawn `argv` (the detached supervisor) in its own session, away from this process and its terminal.

    Its stderr goes to `logs/supervisor.log` (appended to; emptied first past 1 MiB; /dev/null when
    the disk refuses it), stdout to /dev/null. It inherits this environment, and so does the daemon
    it starts. The caller holds `sync.lock`, taken once paths of the wrong type in the home (`logs`
    a file, say) were moved aside (control/lifecycle.py).
    """
    env = dict(os.environ)
    for key, value in extra_env.items():
        env[key] = value + (os.pathsep + env[key] if key == "PYTHONPATH" and env.get(key) else "")
    env["CIPX_HOME"] = str(settings.home)
    path = settings.logs_dir / "supervisor.log"
    try:
        rewind = path.stat().st_size > SUPERVISOR_LOG_MAX
    except OSError:
        rewind = False
    try:
        private_dir(settings.logs_dir)
        stderr: BinaryIO = open_private(path, os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if rewind else os.O_APPEND))
    except OSError:  # a full or read-only disk: supervise all the same, unheard
        stderr = open(os.devnull, "wb")
    with stderr:
        return subprocess.Popen(
            argv,
            env=env,
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
            close_fds=True,
        )


def startup_error(settings: Settings) -> str | None:
    """The last line a detached daemon wrote to stderr before it died, if any."""
    try:
        lines = (settings.logs_dir / "daemon.stderr").read_text(errors="replace").strip().splitlines()
    except OSError:
        return None
    return lines[-1] if lines else None


def lock_holder(path: Path) -> int | None:
    """Who holds the `flock` on `path` (`daemon.lock`, `supervisor.lock`): the pid its holder wrote
    into it, 0 when it wrote none; None when nobody holds it, or there is no such file.

    The kernel drops a `flock` when its holder ends, `kill -9` included, so a held lock is the one
    sign of a live daemon (or supervisor) that no file left behind can fake. Looking takes the lock
    for a moment: a daemon starting in that moment finds the home taken and exits 1.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raw = os.pread(fd, 32, 0).strip()
        return int(raw) if raw.isdigit() else 0
    except OSError:
        return None  # a filesystem without flock: nobody could hold it either
    finally:
        os.close(fd)  # releases the lock if this process took it
    return None


@dataclass(frozen=True)
class Processes:
    """What runs for a home: its detached supervisor (None without one) and the daemon pids found
    (`state.json`, the supervisor's record, the holder of `daemon.lock`). `adopting`: the supervisor
    watches a daemon it did not start, so it does not pass a stop on to it."""

    supervisor: int | None
    daemons: frozenset[int]
    adopting: bool = False

    def __bool__(self) -> bool:
        return self.supervisor is not None or bool(self.daemons)

    @property
    def pids(self) -> set[int]:
        """Every pid found: the daemons and the supervisor."""
        return set(self.daemons) | ({self.supervisor} if self.supervisor is not None else set())

    def describe(self) -> str:
        """`the daemon (pid N) and its supervisor (pid M)`, as a stop announces it."""
        daemon = f"the daemon (pid {', '.join(map(str, sorted(self.daemons)))})" if self.daemons else "the daemon"
        return daemon + (f" and its supervisor (pid {self.supervisor})" if self.supervisor is not None else "")


def find_processes(settings: Settings) -> Processes:
    """The supervisor and daemon(s) of this home that run now. Only a process whose command line is an
    opik-cipx `supervise` / `proxy` is named: a pid left in a file may belong to another program by now."""
    record = read_supervisor(settings)
    supervisor = record["pid"] if record and record["alive"] else None
    holder = lock_holder(settings.home / SUPERVISOR_LOCK)
    if supervisor is None and holder and is_our_process(holder, "supervise"):
        supervisor, record = holder, None  # its record is not written yet, or not writable
    state = read_state(settings)
    found = [state["pid"] if state else None, lock_holder(settings.home / LOCK_FILE)]
    if supervisor is not None and record:
        found.append(record.get("daemon_pid"))  # only while it runs: a dead one's record may be stale
    daemons = frozenset(pid for pid in found if isinstance(pid, int) and pid > 0 and pid != os.getpid()
                        and is_our_daemon(pid))
    return Processes(supervisor, daemons, adopting=record is not None and record.get("state") == "adopting")


def _still_running(settings: Settings, pids: set[int]) -> set[int]:
    """Which of `pids` still run, and the holder of the home's daemon or supervisor lock (0: one that did
    not say its pid), whoever it is: those locks are held until the last process of either ends."""
    left = {pid for pid in pids if pid_alive(pid)}
    for name in (LOCK_FILE, SUPERVISOR_LOCK):
        holder = lock_holder(settings.home / name)
        if holder is not None:
            left.add(holder if holder and pid_alive(holder) else 0)
    return left


def _wait_gone(settings: Settings, pids: set[int], timeout_s: float, clock: Clock) -> set[int]:
    """Wait until nothing of `_still_running` is left, at most `timeout_s`; what is left (empty: all gone).
    Polled: nothing tells a process that another one, not its child, has ended."""
    deadline = clock.monotonic() + timeout_s
    while (left := _still_running(settings, pids)) and clock.monotonic() < deadline:
        clock.sleep(POLL_S)
    return left


def stop_daemon(settings: Settings, timeout_s: float | None = None, clock: Clock = SYSTEM) -> str:
    """Stop this home's daemon and the detached supervisor that runs it: SIGTERM, wait (bounded), then
    SIGKILL; return only once they are gone, or say they are not.

    With a supervisor, only the supervisor is sent SIGTERM: it passes it on to its daemon and
    does not restart it (a daemon stopped behind its back would count as one that stopped by
    itself). The daemon drains in-flight calls for up to `drain_timeout_s` after SIGTERM, so the
    default wait is that plus a margin. A clean exit is not restarted by systemd (`Restart=on-failure`)
    or launchd (`SuccessfulExit=false`) either. Gone means: every pid found (`find_processes`) has
    ended and nothing holds `daemon.lock` or `supervisor.lock`, so "stopped" is never said of a daemon
    that still drains, even one whose `state.json` is missing. A stale `state.json` (dead pid, or a pid
    that is not an opik-cipx daemon) is removed without signalling anything.
    Returns "not running", "stopped", "killed" (it had to be SIGKILLed) or "still running (pid N)".
    """
    running = find_processes(settings)
    if not running:
        _remove_stale_state(settings)
        return "not running"
    wait_s = settings.drain_timeout_s + 5 if timeout_s is None else timeout_s
    pids = running.pids
    for pid in {running.supervisor} if running.supervisor is not None and not running.adopting else pids:
        _signal(pid, signal.SIGTERM)
    left = _wait_gone(settings, pids, wait_s, clock)
    if not left:
        _remove_stale_state(settings)
        return "stopped"
    # the supervisor first: it would start the daemon again
    for pid in sorted(left - {0}, key=lambda pid: pid != running.supervisor):
        if pid in pids or is_our_daemon(pid) or is_our_process(pid, "supervise"):
            _signal(pid, signal.SIGKILL)
    left = _wait_gone(settings, pids, KILL_WAIT_S, clock)
    if left:
        return f"still running (pid {', '.join(str(pid) for pid in sorted(left) if pid) or 'unknown'})"
    _remove_stale_state(settings)
    return "killed"


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _remove_stale_state(settings: Settings) -> None:
    """Remove `state.json` unless it names a running daemon (one started since may already have replaced
    the stopped one's)."""
    state = read_json(settings.state_path)
    pid = state.get("pid") if isinstance(state, dict) else None
    if isinstance(pid, int) and pid > 0 and pid != os.getpid() and is_our_daemon(pid):
        return
    try:
        settings.state_path.unlink()
    except OSError:
        pass  # gone already, or not a file (a directory, say): the next daemon to start moves it aside
