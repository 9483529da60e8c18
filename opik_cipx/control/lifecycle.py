"""Bring the daemon up, restart it, tear the install down: what `sync`, `restart` and `uninstall` share.

Fail open. The worst thing opik-cipx can do is leave Claude Code pointed at a proxy that is
not there, so `ANTHROPIC_BASE_URL` is only written once `/admin/health` has answered, and
whenever the daemon cannot be brought up healthy within the bound (bad config file, port
taken, crash at startup) our entry is removed again and Claude Code talks to Anthropic
directly until the next successful `sync`.

The fast path (installed executable current, daemon healthy on it, supervisor unit unchanged,
Claude Code pointed at it) is one read of `state.json`, one `stat`, one read of the unit file,
one loopback request and one read of Claude Code's settings (and, run from a source tree, a
digest of it: control/install.py): no subprocess, no lock.
Anything else runs under `sync.lock`, bring-up and the settings write in one hold, so of two
Claude Code sessions starting together one starts the daemon and points Claude Code at it (and
says so), and the other, having waited, finds both done. Every other change `sync` makes that
another sync may be making too (the link on PATH, our hooks) is `serialised` the same way.

`uninstall` wins over the hooks: it holds `$CIPX_HOME` itself (an exclusive `flock` on the
directory, so that nobody creates a lock file in a directory being deleted) from before it stops
the daemon until the home is gone, and every `sync` holds a share of it for its whole run: one
that finds it held does nothing (`unless_uninstalling`), and the syncs under way are waited for
(`uninstalling`). docs/LIFECYCLE.md, "`uninstall` wins over the hooks".
"""

import fcntl
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.config import Settings
from opik_cipx.control import claude_settings, executable, install
from opik_cipx.control.daemon_control import (
    admin_port,
    find_processes,
    is_healthy,
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
UNINSTALL_WAIT_S = 60.0  # how long `uninstall` waits for the syncs under way (a hook's timeout)


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
        if not _flock_within(self.fh.fileno(), fcntl.LOCK_EX, self.timeout_s, self.clock):
            self.fh.close()
            raise TimeoutError(f"another opik-cipx sync/restart held {self.path} for {self.timeout_s:.0f}s")
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()


def _flock_within(fd: int, operation: int, timeout_s: float, clock: Clock) -> bool:
    """Take the `flock` `operation` on `fd`, polled until `timeout_s` has passed on `clock` (a `flock`
    cannot be waited for with a timeout); whether it was taken."""
    deadline = clock.monotonic() + timeout_s
    while not _try_flock(fd, operation):
        if clock.monotonic() > deadline:
            return False
        clock.sleep(LOCK_POLL_S)
    return True


def _try_flock(fd: int, operation: int) -> bool:
    """Take the `flock` `operation` on `fd` if no other holder's conflicts with it; whether it was taken."""
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _open_home(settings: Settings) -> int | None:
    """A descriptor of the `$CIPX_HOME` directory itself, None when there is none."""
    try:
        return os.open(settings.home, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None


def _hold_home(fd: int, operation: int) -> bool:
    """Take the `flock` `operation` on the home's descriptor without waiting: False while another holder's
    conflicts; True also on a file system without `flock` (nothing can be held, so nothing is waited for)."""
    try:
        return _try_flock(fd, operation)
    except OSError:
        return True


@contextmanager
def unless_uninstalling(settings: Settings) -> Iterator[bool]:
    """For a `sync`: hold a share of `$CIPX_HOME` for as long as it runs (True), or, while `uninstalling`
    holds it, False at once: the sync then does nothing. Without a home, or on a file system without
    `flock`, True and nothing held."""
    fd = _open_home(settings)
    try:
        yield fd is None or _hold_home(fd, fcntl.LOCK_SH)
    finally:
        if fd is not None:
            os.close(fd)


@contextmanager
def uninstalling(settings: Settings, waiting: Callable[[], None], timeout_s: float = UNINSTALL_WAIT_S,
                 clock: Clock = SYSTEM) -> Iterator[None]:
    """For `uninstall`, from before it stops anything until it has deleted the home: hold `$CIPX_HOME`
    alone, so that every `sync` started meanwhile does nothing (`unless_uninstalling`). The syncs under
    way are waited for (`waiting()` is called first), at most `timeout_s`: then TimeoutError, nothing
    held. Without a home, or on a file system without `flock`, nothing is held (a hook's `sync` could
    then start the daemon again meanwhile, as it could before)."""
    fd = _open_home(settings)
    try:
        if fd is not None and not _hold_home(fd, fcntl.LOCK_EX):
            waiting()
            if not _flock_within(fd, fcntl.LOCK_EX, timeout_s, clock):
                raise TimeoutError(f"an opik-cipx sync has been running for more than {timeout_s:.0f}s")
        yield
    finally:
        if fd is not None:
            os.close(fd)


@contextmanager
def serialised(settings: Settings) -> Iterator[None]:
    """Hold `sync.lock` for a change another sync may be making at the same time, so that one makes it
    (and says so) and the others find it made. When the lock cannot be had (another holder past the
    deadline, a home that refuses the file) the change is made anyway: each is safe to make twice."""
    with ExitStack() as held:
        try:
            held.enter_context(_Lock(settings))
        except (TimeoutError, OSError):
            pass
        yield


def _current(settings: Settings, env: dict[str, str], supervisor: Supervisor,
             exe: executable.Executable) -> Outcome | None:
    """The fast path: the running daemon when it is healthy, current, supervised and Claude Code points
    at it, so that there is nothing to do; else None."""
    state = read_state(settings)
    if not (state and is_healthy(admin_port(settings, state)) and not _stale_reason(state, exe)
            and not supervisor.needs_install(exe) and supervisor.supervising()):
        return None
    path = claude_settings.settings_path(env)
    if claude_settings.read_entry(path)[0] != claude_settings.our_url(settings, state):
        return None
    return Outcome("running", state, change=claude_settings.Change("kept", path))


def up_and_point(settings: Settings, env: dict[str, str], restart: bool = False,
                 stop_timeout_s: float | None = SYNC_STOP_TIMEOUT_S) -> tuple[Outcome, list[str]]:
    """Make sure a healthy daemon runs the installed executable (made the running code first:
    control/install.py) under the right supervisor, then point Claude Code at it, or fail open;
    (outcome, problem lines).

    `restart` forces a stop and start even when everything is current. `stop_timeout_s`
    bounds how long a replaced daemon may drain (None: its full `drain_timeout_s`).
    """
    try:
        supervisor = Supervisor(detect_mode(env), settings, env)
    except SupervisorError as exc:
        return _point(settings, env, Outcome("failed", reason=str(exc)))
    exe, stale = install.target(settings, env)
    if not stale and not restart and (outcome := _current(settings, env, supervisor, exe)) is not None:
        return outcome, []
    notes = []
    with ExitStack() as held:
        try:
            held.enter_context(_Lock(settings))
            if stale:  # concurrent syncs write it once and the daemon sees one executable
                exe, installed = install.install(settings, env)
                notes += [installed] if installed else []
            outcome = _bring_up_locked(settings, supervisor, exe, restart, stop_timeout_s)
        except (TimeoutError, SupervisorError, OSError) as exc:
            outcome = Outcome("failed", reason=str(exc))
        outcome.notes[:0] = notes
        return _point(settings, env, outcome)  # still under the lock


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
    return claude_settings.stop_pointing_at_proxy(claude_settings.settings_path(env),
                                                  claude_settings.our_url(settings, state))


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


def _point(settings: Settings, env: dict[str, str], outcome: Outcome) -> tuple[Outcome, list[str]]:
    """Point Claude Code at the daemon `outcome` brought up, or fail open; (outcome, problem lines)."""
    if not outcome.ok:
        outcome.change = unpoint(settings, env)
        tail = (f" Removed {claude_settings.KEY} from {outcome.change.path}, so Claude Code talks to Anthropic "
                "directly." if outcome.change.outcome == "removed" else "")
        return outcome, [f"cannot bring the daemon up: {outcome.reason}.{tail} "
                         "See `opik-cipx logs`, then run `opik-cipx sync` again."]
    url = claude_settings.our_url(settings, outcome.state)
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
    url = claude_settings.our_url(settings, outcome.state)
    pointed = "points at it" if outcome.change and outcome.change.outcome in ("set", "kept") else "does NOT point at it"
    where = f" ({outcome.change.path})" if outcome.change else ""
    return (f"{outcome.action} (pid {outcome.state['pid']}, version {outcome.state.get('version')}, {url}); "
            f"Claude Code {pointed}{where}")
