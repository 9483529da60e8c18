"""What keeps the daemon running: a systemd user unit, a launchd agent, or a detached supervisor.

- `systemd` (Linux with a user manager): `~/.config/systemd/user/opik-cipx.service`,
  `Restart=on-failure` 100 ms after a death (at most 5 starts in 120 s), enabled for
  `default.target` so it starts at login.
- `launchd` (macOS): `~/Library/LaunchAgents/com.comet.opik-cipx.plist`, `RunAtLoad`, and
  `KeepAlive` restarting it whenever it did not exit cleanly, at most once a second
  (`ThrottleInterval`; launchd's default, 10 s, would leave Claude Code without its proxy that long).
- `detached` (containers, CI, WSL, no user manager): `sync` spawns `opik-cipx supervise` in its own
  session (control/detached.py), which holds Claude Code's port and runs the daemon as its child,
  starting it again at once when it dies; `sync` waits for the `state.json` handshake.

A clean exit (SIGTERM from `stop`, or `CIPX_DISABLED`) is never restarted by either manager.
`CIPX_SUPERVISOR=systemd|launchd|detached` forces a mode (tests force `detached`); the
default, `auto`, picks from the platform without running a subprocess, so `sync` stays fast.

The unit and plist text come from pure functions (`systemd_unit`, `launchd_plist`). They carry
only the location of the state root and config file: a supervised daemon does not inherit the
environment of the shell that ran `sync`, so its other settings come from `config.toml`.
"""

import os
import subprocess
import sys
from pathlib import Path

from opik_cipx.config import Settings
from opik_cipx.control.children import MAX_DEATHS, WINDOW_S
from opik_cipx.control.daemon_control import read_supervisor, start_detached
from opik_cipx.control.executable import Executable
from opik_cipx.control.userfiles import replace_file

MODES = ("systemd", "launchd", "detached")
SUPERVISING = ("starting", "adopting", "running", "restarting")  # detached supervisor states that mean "at work"
SYSTEMD_UNIT = "opik-cipx.service"
LAUNCHD_LABEL = "com.comet.opik-cipx"
COMMAND_TIMEOUT_S = 20.0


class SupervisorError(Exception):
    """The OS supervisor refused an operation; the message is one line fit for the user."""


def detect_mode(env: dict[str, str]) -> str:
    """`CIPX_SUPERVISOR` when it names a mode, else what this machine offers."""
    forced = env.get("CIPX_SUPERVISOR", "").strip().lower()
    if forced in MODES:
        return forced
    if forced not in ("", "auto"):
        raise SupervisorError(f"CIPX_SUPERVISOR={forced!r} is not one of auto, {', '.join(MODES)}")
    if sys.platform == "darwin" and _on_path("launchctl"):
        return "launchd"
    if sys.platform.startswith("linux") and _systemd_user_manager(env):
        return "systemd"
    return "detached"


def _on_path(program: str) -> bool:
    import shutil  # (and bz2 and lzma, which it loads) only where a program is looked up

    return shutil.which(program) is not None


def _systemd_user_manager(env: dict[str, str]) -> bool:
    """A booted systemd with this user's manager reachable (what `systemctl --user` needs)."""
    if not os.path.isdir("/run/systemd/system") or not _on_path("systemctl"):
        return False
    runtime = env.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return os.path.exists(os.path.join(runtime, "systemd", "private"))


def daemon_environment(settings: Settings, exe: Executable) -> dict[str, str]:
    """What the supervised daemon needs in its environment to find its state and config."""
    env = {"CIPX_HOME": str(settings.home.resolve())}
    if settings.config_path != settings.home / "config.toml":
        env["CIPX_CONFIG"] = str(settings.config_path.resolve())
    env.update(exe.proxy_env())
    return env


def _systemd_quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def systemd_unit(argv: list[str], env: dict[str, str], stop_timeout_s: float) -> str:
    """The text of `opik-cipx.service`.

    Exit status 2 is a configuration error (`proxy` with a bad config file); restarting would
    only fail again, so it is not retried.
    """
    lines = [
        "# Managed by opik-cipx (`opik-cipx sync` writes it, `opik-cipx uninstall` removes it).",
        "[Unit]",
        "Description=opik-cipx cost-intelligence proxy for Claude Code",
        f"StartLimitIntervalSec={WINDOW_S:.0f}",  # gives up where the detached supervisor does
        f"StartLimitBurst={MAX_DEATHS}",
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=" + " ".join(_systemd_quote(arg) for arg in argv),
        *(f"Environment={_systemd_quote(f'{key}={value}')}" for key, value in sorted(env.items())),
        "WorkingDirectory=/",
        "UMask=0077",
        "Restart=on-failure",
        "RestartSec=100ms",
        "RestartPreventExitStatus=2",
        f"TimeoutStopSec={int(stop_timeout_s)}",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines)


def launchd_plist(argv: list[str], env: dict[str, str], stop_timeout_s: float, stderr_path: Path) -> bytes:
    """The XML of `com.comet.opik-cipx.plist` (keys sorted, so the same input gives the same bytes)."""
    import plistlib  # (and the XML parser) on macOS only

    return plistlib.dumps(
        {
            "Label": LAUNCHD_LABEL,
            "ProgramArguments": list(argv),
            "EnvironmentVariables": dict(env),
            "WorkingDirectory": "/",
            "RunAtLoad": True,
            "KeepAlive": {"SuccessfulExit": False},
            "ThrottleInterval": 1,
            "ExitTimeOut": int(stop_timeout_s),
            "ProcessType": "Background",
            "StandardOutPath": os.devnull,
            "StandardErrorPath": str(stderr_path),
        }
    )


def systemd_unit_path(env: dict[str, str]) -> Path:
    config = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME") or str(Path.home()), ".config")
    return Path(config) / "systemd" / "user" / SYSTEMD_UNIT


def launchd_plist_path(env: dict[str, str]) -> Path:
    return Path(env.get("HOME") or str(Path.home())) / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"


def _run(argv: list[str], check: bool = True) -> bool:
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        if check:
            raise SupervisorError(f"`{' '.join(argv)}` failed: {exc}") from None
        return False
    if check and done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise SupervisorError(f"`{' '.join(argv)}` exited {done.returncode}: {detail[-1] if detail else 'no output'}")
    return done.returncode == 0


class Supervisor:
    """One mode's install / start / remove, for the daemon of `settings`."""

    def __init__(self, mode: str, settings: Settings, env: dict[str, str]):
        self.mode = mode
        self.settings = settings
        self.env = env

    @property
    def stop_timeout_s(self) -> float:
        return self.settings.drain_timeout_s + 10

    def unit_path(self) -> Path | None:
        if self.mode == "systemd":
            return systemd_unit_path(self.env)
        if self.mode == "launchd":
            return launchd_plist_path(self.env)
        return None

    def render(self, exe: Executable) -> bytes | None:
        """The unit file this mode wants for `exe` (None in detached mode)."""
        argv, env = exe.proxy_argv(), daemon_environment(self.settings, exe)
        if self.mode == "systemd":
            return systemd_unit(argv, env, self.stop_timeout_s).encode()
        if self.mode == "launchd":
            return launchd_plist(argv, env, self.stop_timeout_s, self.settings.logs_dir / "daemon.stderr")
        return None

    def needs_install(self, exe: Executable) -> bool:
        """True when the unit file is missing or differs from what `render` gives."""
        path, wanted = self.unit_path(), self.render(exe)
        if path is None or wanted is None:
            return False
        try:
            return path.read_bytes() != wanted
        except OSError:
            return True

    def install(self, exe: Executable) -> None:
        """Write the unit file and register it with the OS manager (the daemon is stopped)."""
        path, data = self.unit_path(), self.render(exe)
        if path is None or data is None:
            return
        if self.mode == "launchd":
            _run(["launchctl", "bootout", self._launchd_target()], check=False)
        replace_file(path, data)
        if self.mode == "systemd":
            _run(["systemctl", "--user", "daemon-reload"])
            _run(["systemctl", "--user", "enable", SYSTEMD_UNIT])
        elif self.mode == "launchd":
            _run(["launchctl", "bootstrap", f"gui/{os.getuid()}", str(path)])

    def start(self, exe: Executable) -> subprocess.Popen | None:
        """Start the daemon; the process handle in detached mode."""
        if self.mode == "systemd":
            _run(["systemctl", "--user", "start", SYSTEMD_UNIT])
            return None
        if self.mode == "launchd":
            if not _run(["launchctl", "kickstart", self._launchd_target()], check=False):
                _run(["launchctl", "bootstrap", f"gui/{os.getuid()}", str(self.unit_path())])
            return None
        return start_detached(self.settings, exe.command_argv("supervise"), exe.proxy_env())

    def supervising(self) -> bool:
        """Whether something starts the daemon again if it dies: the unit, or a detached supervisor at work."""
        if self.mode != "detached":
            return True
        record = read_supervisor(self.settings)
        return bool(record and record["alive"] and record.get("state") in SUPERVISING)

    def describe(self, daemon_running: bool) -> str:
        """For `status`: what supervises the daemon and what happens when it dies (`! ` first: a problem;
        "" when nothing runs and nothing failed)."""
        if self.mode == "systemd":
            return (f"systemd ({SYSTEMD_UNIT}): a daemon that dies is started again 0.1 s later (Claude Code retries "
                    f"the calls refused meanwhile); after {MAX_DEATHS} deaths within {WINDOW_S:.0f}s systemd gives up")
        if self.mode == "launchd":
            return (f"launchd ({LAUNCHD_LABEL}): a daemon that dies is started again within a second; Claude Code "
                    "retries the calls refused meanwhile")
        record = read_supervisor(self.settings)
        if record and record["alive"] and record.get("state") == "gave up":
            return (f"! the supervisor (pid {record['pid']}) gave up at {record.get('gave_up_at', '?')}: "
                    f"{record.get('reason')}. Claude Code sessions started before get an error naming opik-cipx, new "
                    "ones talk to Anthropic directly; fix the cause (`opik-cipx logs`), then run `opik-cipx sync`")
        if record and record["alive"] and record.get("state") == "adopting":
            return (f"detached supervisor (pid {record['pid']}): watches daemon pid {record.get('daemon_pid')}, "
                    "started before it, and starts a new one when it exits")
        if record and record["alive"]:
            deaths = record.get("deaths") or []
            last = (f"; restarted {record.get('restarts', 0)} time(s), last at {deaths[-1]['at']}: the daemon "
                    f"{deaths[-1]['how']}" if deaths else "")
            return (f"detached supervisor (pid {record['pid']}): a daemon that dies is started again at once (calls "
                    f"wait for it); after {MAX_DEATHS} deaths within {WINDOW_S:.0f}s it gives up{last}")
        if record and record.get("reason"):
            return f"! the last supervisor could not run: {record['reason']}; run `opik-cipx sync`"
        if daemon_running:
            return ("! none: the daemon's supervisor is gone, so nothing starts the daemon again if it dies; "
                    "`opik-cipx sync` starts one")
        return ""  # nothing runs, nothing to supervise

    def remove(self) -> list[Path]:
        """Deregister and delete our unit files (any mode's, when present); the paths removed.

        The OS manager is only asked to forget a unit in the mode this machine runs; elsewhere
        (a container with a leftover file) the file is just deleted.
        """
        removed = []
        for mode, path in (("systemd", systemd_unit_path(self.env)), ("launchd", launchd_plist_path(self.env))):
            if not path.exists():
                continue
            if mode == self.mode == "systemd":
                _run(["systemctl", "--user", "disable", "--now", SYSTEMD_UNIT], check=False)
            elif mode == self.mode == "launchd":
                _run(["launchctl", "bootout", self._launchd_target()], check=False)
            path.unlink(missing_ok=True)
            if mode == self.mode == "systemd":
                _run(["systemctl", "--user", "daemon-reload"], check=False)
            removed.append(path)
        return removed

    def _launchd_target(self) -> str:
        return f"gui/{os.getuid()}/{LAUNCHD_LABEL}"
