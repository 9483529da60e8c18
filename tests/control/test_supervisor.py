"""Supervisor units as files (systemd, launchd), mode detection, and removal — nothing installed for real."""

import json
import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from opik_cipx.config import load_settings
from opik_cipx.control.executable import Executable
from opik_cipx.control.supervisor import (
    LAUNCHD_LABEL,
    Supervisor,
    SupervisorError,
    daemon_environment,
    detect_mode,
    launchd_plist,
    launchd_plist_path,
    systemd_unit,
    systemd_unit_path,
)

PYZ_ARGV = [sys.executable, "/home/ada/.opik-cipx/bin/opik-cipx", "proxy"]


def unit_values(text: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


def test_systemd_unit_restarts_on_failure_and_quotes_everything():
    text = systemd_unit([sys.executable, "/opt/my tools/opik-cipx", "proxy"],
                        {"CIPX_HOME": "/home/ada/.opik-cipx", "PYTHONPATH": "/src/100%$x"}, 40)
    values = unit_values(text)
    assert text.startswith("# Managed by opik-cipx")
    assert values["ExecStart"] == [f'"{sys.executable}" "/opt/my tools/opik-cipx" "proxy"']
    assert values["Environment"] == ['"CIPX_HOME=/home/ada/.opik-cipx"', '"PYTHONPATH=/src/100%%$$x"']
    assert values["Restart"] == ["on-failure"]
    assert values["RestartSec"] == ["100ms"]  # back within a second (systemd's default; we had 2 s)
    assert (values["StartLimitBurst"], values["StartLimitIntervalSec"]) == (["5"], ["120"])  # as detached gives up
    assert values["RestartPreventExitStatus"] == ["2"]  # a bad config file is not retried forever
    assert values["TimeoutStopSec"] == ["40"]
    assert values["WantedBy"] == ["default.target"]
    assert "[Unit]" in text and "[Service]" in text and "[Install]" in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    unit = tmp_path / "opik-cipx.service"
    unit.write_text(systemd_unit([sys.executable, str(Path(__file__)), "proxy"], {"CIPX_HOME": str(tmp_path / "h")},
                                 40))
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(runtime)}
    result = subprocess.run(["systemd-analyze", "verify", "--user", str(unit)], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # unknown keys or bad values are only warnings


def test_launchd_plist_keeps_alive_unless_clean_exit(tmp_path):
    data = launchd_plist(PYZ_ARGV, {"CIPX_HOME": "/home/ada/.opik-cipx"}, 40, tmp_path / "daemon.stderr")
    assert data == launchd_plist(PYZ_ARGV, {"CIPX_HOME": "/home/ada/.opik-cipx"}, 40, tmp_path / "daemon.stderr")
    plist = plistlib.loads(data)
    assert plist["Label"] == LAUNCHD_LABEL
    assert plist["ProgramArguments"] == PYZ_ARGV
    assert plist["EnvironmentVariables"] == {"CIPX_HOME": "/home/ada/.opik-cipx"}
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    # launchd's default, 10 s, would leave Claude Code without its proxy that long
    assert plist["ThrottleInterval"] == 1
    assert plist["ExitTimeOut"] == 40
    assert plist["StandardErrorPath"] == str(tmp_path / "daemon.stderr")
    assert data.startswith(b"<?xml") and b"<!DOCTYPE plist" in data
    if shutil.which("plutil"):
        path = tmp_path / "agent.plist"
        path.write_bytes(data)
        assert subprocess.run(["plutil", "-lint", str(path)], capture_output=True).returncode == 0


def test_unit_paths():
    assert systemd_unit_path({"HOME": "/h"}).as_posix() == "/h/.config/systemd/user/opik-cipx.service"
    assert systemd_unit_path({"HOME": "/h", "XDG_CONFIG_HOME": "/x"}).as_posix() == "/x/systemd/user/opik-cipx.service"
    assert launchd_plist_path({"HOME": "/h"}).as_posix() == f"/h/Library/LaunchAgents/{LAUNCHD_LABEL}.plist"


def test_forced_mode_and_auto_detection():
    for mode in ("systemd", "launchd", "detached"):
        assert detect_mode({"CIPX_SUPERVISOR": mode.upper()}) == mode
    # No user manager reachable (this sandbox, CI, containers): detached.
    expected = "launchd" if sys.platform == "darwin" else "detached"
    assert detect_mode({"CIPX_SUPERVISOR": "auto", "XDG_RUNTIME_DIR": "/nonexistent"}) == expected
    with pytest.raises(SupervisorError, match="CIPX_SUPERVISOR"):
        detect_mode({"CIPX_SUPERVISOR": "upstart"})


def test_daemon_environment_and_argv_for_zipapp_and_source(tmp_path):
    settings = load_settings({"CIPX_HOME": str(tmp_path / "h")})
    zipapp = Executable(tmp_path / "opik-cipx", True)
    assert zipapp.proxy_argv() == [sys.executable, str(tmp_path / "opik-cipx"), "proxy"]
    assert daemon_environment(settings, zipapp) == {"CIPX_HOME": str((tmp_path / "h").resolve())}
    source = Executable(tmp_path / "src" / "opik_cipx", False)
    assert source.proxy_argv() == [sys.executable, "-m", "opik_cipx", "proxy"]
    assert source.identity is None
    custom = load_settings({"CIPX_HOME": str(tmp_path / "h"), "CIPX_CONFIG": str(tmp_path / "c.toml")})
    assert daemon_environment(custom, source) == {
        "CIPX_HOME": str((tmp_path / "h").resolve()), "CIPX_CONFIG": str((tmp_path / "c.toml").resolve()),
        "PYTHONPATH": str(tmp_path / "src")}


def test_needs_install_compares_the_rendered_file(tmp_path):
    env = {"HOME": str(tmp_path)}
    settings = load_settings({"CIPX_HOME": str(tmp_path / "h")})
    sup = Supervisor("systemd", settings, env)
    exe = Executable(tmp_path / "opik-cipx", True)
    assert sup.needs_install(exe)
    path = systemd_unit_path(env)
    path.parent.mkdir(parents=True)
    path.write_bytes(sup.render(exe))
    assert not sup.needs_install(exe)
    assert sup.needs_install(Executable(tmp_path / "elsewhere", True))
    assert not Supervisor("detached", settings, env).needs_install(exe)


def test_remove_deletes_leftover_units_without_calling_the_os_manager(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a) or pytest.fail("no subprocess expected"))
    env = {"HOME": str(tmp_path)}
    settings = load_settings({"CIPX_HOME": str(tmp_path / "h")})
    for path in (systemd_unit_path(env), launchd_plist_path(env)):
        path.parent.mkdir(parents=True)
        path.write_text("x")
    unrelated = systemd_unit_path(env).parent / "other.service"
    unrelated.write_text("y")
    removed = Supervisor("detached", settings, env).remove()
    assert sorted(removed) == sorted([systemd_unit_path(env), launchd_plist_path(env)])
    assert unrelated.exists() and calls == []
    assert Supervisor("detached", settings, env).remove() == []


def test_what_status_says_supervises_the_daemon(tmp_path):
    env = {"HOME": str(tmp_path)}
    settings = load_settings({"CIPX_HOME": str(tmp_path / "h")})
    assert Supervisor("systemd", settings, env).describe(True).startswith(
        "systemd (opik-cipx.service): a daemon that dies is started again 0.1 s later")
    assert Supervisor("launchd", settings, env).describe(True).startswith(f"launchd ({LAUNCHD_LABEL}): ")
    detached = Supervisor("detached", settings, env)
    assert detached.describe(False) == ""  # nothing runs, nothing failed
    assert detached.describe(True).startswith("! none: the daemon's supervisor is gone")
    (tmp_path / "h").mkdir()
    gone = 2**22 + 1  # above any pid this machine hands out
    (tmp_path / "h" / "supervisor.json").write_text(json.dumps(
        {"pid": gone, "state": "gave up", "reason": "port 9909 on 127.0.0.1 (claude_code) is already in use"}))
    assert detached.describe(False) == ("! the last supervisor could not run: port 9909 on 127.0.0.1 (claude_code) is "
                                        "already in use; run `opik-cipx sync`")
    assert not detached.supervising()
