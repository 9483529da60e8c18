"""Bring the daemon up, restart it, tear the install down: what `sync`, `restart` and `uninstall` share.

Fail open. The worst thing opik-cipx can do is leave Claude Code pointed at a proxy that is
not there, so `ANTHROPIC_BASE_URL` is only written once `/admin/health` has answered, and
whenever the daemon cannot be brought up healthy within the bound (bad config file, port
taken, crash at startup) our entry is removed again and Claude Code talks to Anthropic
directly until the next successful `sync`.

The fast path (installed executable current, daemon healthy on it, supervisor unit unchanged)
is one read of `state.json`, one `stat`, one read of the unit file and one loopback request (and,
run from a source tree, a digest of it: control/install.py): no subprocess.
The slow path runs under `sync.lock`, so two Claude Code sessions starting together do not
both start a daemon.
"""

import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.config import Settings
from opik_cipx.control import claude_settings, executable, install
from opik_cipx.control.daemon_control import (
    CLAUDE_CODE_PORT,
    admin_port,
    find_processes,
    is_healthy,
    listener_port,
    read_state,
    read_supervisor,
    running_supervisor,
    startup_error,
    stop_daemon,
    wait_healthy,
)
from opik_cipx.control.supervisor import Supervisor, SupervisorError, detect_mode
from opik_cipx.home import open_private, private_dir, set_aside_wrong_types

START_TIMEOUT_S = 10.0  # how long a starting daemon gets to answer /admin/health
SYNC_STOP_TIMEOUT_S = 10.0  # how long `sync` lets a daemon it replaces drain
LOCK_TIMEOUT_S = 30.0
LOCK_POLL_S = 0.05


@dataclass
class Outcome:
    """What a bring-up did. `action`: running, started, restarted or failed."""

    action: str
    state: dict[str, Any] | None = None
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    change: claude_settings.Change | None = None  # what `up_and_point` did to settings.json

    @property
    def ok(self) -> bool:
        return self.action != "failed"


def _stale_reason(state: dict[str, Any], exe: executable.Executable) -> str | None:
    if state.get("executable") != str(exe.path) or state.get("executable_id") != exe.identity:
        return f"the executable changed ({exe.path})"
    return None


class _Lock:
    """An exclusive `flock` on `$CIPX_HOME/sync.lock`, waited for with a deadline (polled: a `flock`
    cannot be waited for with a timeout). Paths of the wrong type in the home (this lock file a
    directory, `logs` a file) are moved aside first."""

    def __init__(self, settings: Settings, timeout_s: float = LOCK_TIMEOUT_S, clock: Clock = SYSTEM):
        set_aside_wrong_types(private_dir(settings.home), clock)  # the daemon reports them (`status`)
        self.path = settings.home / "sync.lock"
        self.timeout_s = timeout_s
        self.clock = clock

    def __enter__(self) -> "_Lock":
        self.fh = open_private(self.path, os.O_WRONLY | os.O_CREAT)
        deadline = self.clock.monotonic() + self.timeout_s
        while True:
            try:
                fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if self.clock.monotonic() > deadline:
                    self.fh.close()
                    raise TimeoutError(
                        f"another opik-cipx sync/restart held {self.path} for {self.timeout_s:.0f}s") from None
                self.clock.sleep(LOCK_POLL_S)

    def __exit__(self, *exc: object) -> None:
        self.fh.close()


def bring_up(settings: Settings, env: dict[str, str], restart: bool = False,
             stop_timeout_s: float | None = SYNC_STOP_TIMEOUT_S) -> Outcome:
    """Make sure a healthy daemon runs the installed executable (made the running code first:
    control/install.py) under the right supervisor.

    `restart` forces a stop and start even when everything is current. `stop_timeout_s`
    bounds how long a replaced daemon may drain (None: its full `drain_timeout_s`).
    """
    try:
        supervisor = Supervisor(detect_mode(env), settings, env)
    except SupervisorError as exc:
        return Outcome("failed", reason=str(exc))
    exe, stale = install.target(settings, env)
    notes = []
    if stale:  # under the lock, so concurrent syncs write it once and the daemon sees one executable
        try:
            with _Lock(settings):
                exe, installed = install.install(settings, env)
        except (TimeoutError, OSError) as exc:
            return Outcome("failed", reason=str(exc))
        notes += [installed] if installed else []
    if not restart:
        state = read_state(settings)
        if state and is_healthy(admin_port(settings, state)) and not _stale_reason(state, exe) \
                and not supervisor.needs_install(exe) and supervisor.supervising():
            return Outcome("running", state, notes=notes)
    try:
        with _Lock(settings):
            outcome = _bring_up_locked(settings, supervisor, exe, restart, stop_timeout_s)
    except (TimeoutError, SupervisorError, OSError) as exc:
        outcome = Outcome("failed", reason=str(exc))
    outcome.notes[:0] = notes
    return outcome


def _bring_up_locked(settings: Settings, supervisor: Supervisor, exe: executable.Executable,
                     restart: bool, stop_timeout_s: float | None) -> Outcome:
    state = read_state(settings)
    healthy = state is not None and is_healthy(admin_port(settings, state))
    notes = []
    if state is not None and healthy and not restart:
        stale = _stale_reason(state, exe)
        if stale:
            notes.append(f"restarting the daemon: {stale}")
        elif supervisor.needs_install(exe):
            notes.append(f"restarting the daemon: the {supervisor.mode} unit changed")
        elif not supervisor.supervising() and running_supervisor(settings) is None:
            supervisor.start(exe)  # its supervisor was killed: a new one takes the running daemon over
            note = f"started a supervisor for the running daemon (pid {state['pid']}), whose supervisor was gone"
            return Outcome("running", state, notes=[note])
        elif not supervisor.supervising():
            notes.append("restarting the daemon: its supervisor is not supervising it")
        else:
            return Outcome("running", state)  # another sync brought it up while we waited
    elif state is not None and not healthy:
        notes.append(f"replacing daemon pid {state['pid']}: its admin listener does not answer")
    stop_daemon(settings, stop_timeout_s)  # and a supervisor that gave up
    if supervisor.needs_install(exe):
        supervisor.install(exe)
    proc = supervisor.start(exe)
    new_state = wait_healthy(settings, START_TIMEOUT_S, proc, failed=lambda: _supervisor_failed(settings, proc))
    if new_state is None:
        return Outcome("failed", reason=_start_failure(settings, supervisor, proc), notes=notes)
    return Outcome("restarted" if healthy else "started", new_state, notes=notes)


def _supervisor_failed(settings: Settings, proc: subprocess.Popen | None) -> bool:
    """True once the detached supervisor `proc` reports that its daemon ended before it answered health:
    `sync` says so at once, while the supervisor goes on trying (and answers on the port if it gives up)."""
    record = read_supervisor(settings) if proc is not None else None
    return bool(record and proc is not None and record["pid"] == proc.pid
                and (record.get("deaths") or record.get("state") == "gave up"))


def _start_failure(settings: Settings, supervisor: Supervisor, proc: subprocess.Popen | None) -> str:
    detail = startup_error(settings)
    record = read_supervisor(settings) if proc is not None else None
    if record and proc is not None and record["pid"] == proc.pid and record.get("deaths"):
        why, detail = f"the daemon {record['deaths'][-1]['how']}", record["deaths"][-1].get("detail") or detail
    elif record and proc is not None and record["pid"] == proc.pid and record.get("reason"):
        return record["reason"]
    elif proc is not None and proc.poll() is not None:
        why = f"its supervisor exited with status {proc.returncode}"
    elif proc is not None:
        why = f"the daemon did not answer /admin/health within {START_TIMEOUT_S:.0f}s"
    else:
        why = f"the {supervisor.mode} service did not answer /admin/health within {START_TIMEOUT_S:.0f}s"
    return f"{why}: {detail}" if detail else f"{why}; see {settings.logs_dir / 'cipx.log'}"


def our_url(settings: Settings, state: dict[str, Any] | None = None) -> str:
    """The URL `sync` writes: the running daemon's Claude Code port, else the configured one."""
    return claude_settings.proxy_url(listener_port(settings, state, "claude_code") or CLAUDE_CODE_PORT)


def describe(change: claude_settings.Change, url: str) -> str | None:
    """One line for the user about a settings change worth mentioning, else None."""
    where = change.path
    if change.outcome == "foreign":
        return (f"{where} sets {claude_settings.KEY}={change.detail}, so Claude Code does not go through "
                f"opik-cipx; left as is. To use opik-cipx, remove that entry (or set it to {url}) "
                "and run `opik-cipx sync`.")
    if change.outcome == "unusable":
        return unusable(change)
    return None


def unusable(change: claude_settings.Change) -> str:
    """The line for a settings file left as it was because it could not be read or written."""
    return f"{change.path} left untouched: {change.detail}. Fix the file, then run `opik-cipx sync`."


def unpoint(settings: Settings, env: dict[str, str], state: dict[str, Any] | None = None) -> claude_settings.Change:
    """Remove our `ANTHROPIC_BASE_URL` (only if it is ours)."""
    return claude_settings.stop_pointing_at_proxy(claude_settings.settings_path(env), our_url(settings, state))


def tear_down(settings: Settings, env: dict[str, str]) -> Iterator[str]:
    """Remove the supervisor unit, stop the daemon and clear our settings entry; yields the lines to
    report as it goes: `stopping ...` before the wait for a drain, `daemon stopped` once the daemon and
    its supervisor are gone (control/daemon_control.stop_daemon)."""
    state = read_state(settings)
    try:
        supervisor = Supervisor(detect_mode(env), settings, env)
    except SupervisorError:
        supervisor = Supervisor("detached", settings, env)
    for path in supervisor.remove():
        yield f"removed the supervisor unit {path}"
    running = find_processes(settings)
    if running:
        yield (f"stopping {running.describe()}: calls in flight get up to {settings.drain_timeout_s:g}s to "
               "finish")
    result = stop_daemon(settings)
    if result != "not running":
        yield f"daemon {result}"
    change = unpoint(settings, env, state)
    if change.outcome == "removed":
        yield f"removed {claude_settings.KEY} from {change.path}: Claude Code talks to Anthropic directly"
    elif change.outcome == "unusable":
        yield unusable(change)


def up_and_point(settings: Settings, env: dict[str, str], restart: bool = False,
                 stop_timeout_s: float | None = SYNC_STOP_TIMEOUT_S) -> tuple[Outcome, list[str]]:
    """`bring_up`, then point Claude Code at the daemon, or fail open; (outcome, problem lines)."""
    outcome = bring_up(settings, env, restart, stop_timeout_s)
    if not outcome.ok:
        outcome.change = unpoint(settings, env)
        tail = (f" Removed {claude_settings.KEY} from {outcome.change.path}, so Claude Code talks to Anthropic "
                "directly." if outcome.change.outcome == "removed" else "")
        return outcome, [f"cannot bring the daemon up: {outcome.reason}.{tail} "
                         "See `opik-cipx logs`, then run `opik-cipx sync` again."]
    url = our_url(settings, outcome.state)
    outcome.change = claude_settings.point_at_proxy(claude_settings.settings_path(env), url)
    line = describe(outcome.change, url)
    return outcome, [line] if line else []


def bring_up_and_report(settings: Settings, env: dict[str, str], restart: bool = False,
                        stop_timeout_s: float | None = SYNC_STOP_TIMEOUT_S) -> int:
    """`up_and_point` for a command run by hand: print notes, problems and a summary; exit code."""
    outcome, problems = up_and_point(settings, env, restart, stop_timeout_s)
    for line in outcome.notes:
        print(f"opik-cipx: {line}")
    for line in problems:
        print(f"opik-cipx: {line}", file=sys.stderr)
    if not outcome.ok:
        return 1
    print(f"opik-cipx: {summary(settings, outcome)}")
    return 0


def summary(settings: Settings, outcome: Outcome) -> str:
    """One line: what happened, the pid, the URL and whether Claude Code points at it."""
    assert outcome.state is not None  # an outcome that is not "failed" names its daemon
    url = our_url(settings, outcome.state)
    pointed = "points at it" if outcome.change and outcome.change.outcome in ("set", "kept") else "does NOT point at it"
    where = f" ({outcome.change.path})" if outcome.change else ""
    return (f"{outcome.action} (pid {outcome.state['pid']}, version {outcome.state.get('version')}, {url}); "
            f"Claude Code {pointed}{where}")
