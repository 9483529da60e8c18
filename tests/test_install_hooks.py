"""install.sh gives Claude Code the hooks the plugin gives a plugin user: added once beside the
user's own, run as Claude Code runs them (`/bin/sh -c`, the hook's JSON on stdin), deferring to
the plugin when it is enabled, and gone, the user's settings exactly as before, after `uninstall`.

Each install is what bare `./install.sh` does (install, then `sync`), with the executable built once
for the run (`install_prebuilt`), or `./install.sh PYZ` alone where no daemon is needed: these tests
are about the hooks, not the build.
"""

import json
import os
import subprocess
import sys
import zipfile

import pytest

from opik_cipx.control.claude_settings import MANAGED_MARKER, PLUGIN_ID
from tests.conftest import REPO
from tests.lifecycle_helpers import SESSION_START, Machine, install_prebuilt, install_sh

# Each scenario starts on a machine with nothing of ours on it: the first install or sync builds
# or installs the executable (tests.lifecycle_helpers, `no_executable`).
pytestmark = pytest.mark.no_executable

LAUNCHER = REPO / "scripts" / "opik-cipx-hook-launcher"
USER_GROUPS = {
    "SessionStart": [{"matcher": "startup", "hooks": [{"type": "command", "command": "~/.claude/hooks/log-event.sh"}]}],
    "UserPromptSubmit": [{"hooks": [{"type": "command", "command": "echo prompt >> ~/prompts.log", "timeout": 5}]}],
    "PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "~/.claude/hooks/check-bash.sh"}]}],
}
USER_SETTINGS = {"model": "opus", "hooks": USER_GROUPS, "permissions": {"allow": ["Bash(git status)"]}}


def claude_code_runs(m: Machine, command: str, hook: dict, **extra: str):
    """A hook command as Claude Code runs it: `/bin/sh -c`, the hook's JSON on stdin, Claude Code's
    environment (not the test's PYTHONPATH, nor the variables that point a test at its own home).
    Its PATH finds this interpreter as `python3` first (a version manager's shim, as on the
    development VM, would cost the suite a shell and the manager at each of the launcher's runs)."""
    python_dir = m.user_home.parent / "python3-on-path"
    if not python_dir.exists():
        python_dir.mkdir()
        (python_dir / "python3").symlink_to(os.path.realpath(sys.executable))
    env = {"PATH": f"{python_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(m.user_home), **m.extra, **extra}
    return subprocess.run(["/bin/sh", "-c", command], input=json.dumps(hook), env=env, capture_output=True,
                          text=True, timeout=60)


def ours(groups: list) -> list[dict]:
    return [h for g in groups for h in g["hooks"] if "opik-cipx-hook-launcher" in h["command"]]


def write_settings(m: Machine, doc: dict) -> bytes:
    m.claude_dir.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(doc, indent=2) + "\n").encode()
    m.settings_path.write_bytes(data)
    return data


def test_install_sh_adds_the_hooks_once_they_run_sync_and_uninstall_restores_the_users_settings_exactly(
        machine_with_upstream, built_pyz):
    m = machine_with_upstream
    original = write_settings(m, USER_SETTINGS)
    hooks_dir = m.claude_dir / "hooks"
    hooks_dir.mkdir()
    (hooks_dir / "log-event.sh").write_text("#!/bin/sh\ncat > /dev/null\n")
    result = install_prebuilt(m, built_pyz)
    assert result.returncode == 0, result.stderr
    launcher = hooks_dir / "opik-cipx-hook-launcher"
    assert f"added Claude Code hooks to {m.settings_path}" in result.stdout

    for again in (lambda: install_prebuilt(m, built_pyz), lambda: m.cli("sync"),
                  lambda: m.cli("sync", input=SESSION_START.read_text())):
        assert again().returncode == 0  # still once
    doc = m.settings()
    assert [k for k in doc] == ["model", "hooks", "permissions", "env"]
    assert list(doc["hooks"]) == ["SessionStart", "UserPromptSubmit", "PreToolUse"]
    for event in ("SessionStart", "UserPromptSubmit"):
        assert doc["hooks"][event][:-1] == USER_GROUPS[event]  # the user's first, unchanged
        assert doc["hooks"][event][-1] == {"hooks": [{"type": "command", "command": f"{launcher} {event}",
                                                      "timeout": 60}]}
    assert doc["hooks"]["PreToolUse"] == USER_GROUPS["PreToolUse"]
    assert launcher.read_bytes() == LAUNCHER.read_bytes() and os.access(launcher, os.X_OK)
    assert MANAGED_MARKER in launcher.read_text().splitlines()[1]

    hook = json.loads(SESSION_START.read_text())
    hook["session_id"] = "0a0b0c0d-hooks-from-settings"
    for event in ("SessionStart", "UserPromptSubmit"):
        [handler] = ours(doc["hooks"][event])
        ran = claude_code_runs(m, handler["command"], {**hook, "hook_event_name": event})
        assert ran.returncode == 0 and ran.stdout == "", ran.stderr  # a normal session start: silence
    session = json.loads((m.home / "sessions" / f"{hook['session_id']}.json").read_text())
    assert session["hook_event_name"] == "SessionStart"  # sync ran, and read the hook's stdin

    gone = m.cli("uninstall", "--yes")
    assert gone.returncode == 0, gone.stderr
    assert f"removed our Claude Code hooks from {m.settings_path}" in gone.stdout
    assert m.settings_path.read_bytes() == original
    assert sorted(p.name for p in hooks_dir.iterdir()) == ["log-event.sh"]


def test_what_was_made_for_the_hooks_goes_with_them_and_what_the_user_had_stays(machine_with_upstream, built_pyz):
    m = machine_with_upstream
    original = write_settings(m, {"model": "opus", "hooks": {"SessionStart": []}})  # an empty list of theirs
    assert install_sh(m, str(built_pyz)).returncode == 0  # the hooks are install's: no daemon needed
    assert (m.claude_dir / "hooks" / "opik-cipx-hook-launcher").is_file()
    assert m.cli("uninstall", "--yes").returncode == 0
    assert sorted(p.name for p in m.claude_dir.iterdir()) == ["settings.json"]
    assert m.settings_path.read_bytes() == original


def test_with_the_plugin_enabled_its_hooks_do_the_work_and_ours_step_aside(machine_with_upstream, tmp_path,
                                                                          built_pyz):
    m = machine_with_upstream
    assert install_prebuilt(m, built_pyz).returncode == 0
    doc = m.settings()
    [handler] = ours(doc["hooks"]["SessionStart"])
    hook = {**json.loads(SESSION_START.read_text()), "session_id": "s-plugin", "cwd": str(tmp_path)}
    session = m.home / "sessions" / "s-plugin.json"

    m.settings_path.write_text(json.dumps({**doc, "enabledPlugins": {PLUGIN_ID: True}}, indent=2))  # /plugin install
    ran = claude_code_runs(m, handler["command"], hook)
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "", "") and not session.exists()  # the plugin's did it
    plugin_run = m.cli("sync", input=json.dumps(hook), CLAUDE_PLUGIN_ROOT=str(REPO))
    assert plugin_run.returncode == 0 and session.exists()
    again = install_prebuilt(m, built_pyz)
    assert again.returncode == 0 and f"the Claude Code plugin {PLUGIN_ID} is enabled" in again.stdout
    assert ours(m.settings()["hooks"]["SessionStart"]) == [handler]  # kept for when the plugin goes

    session.unlink()
    m.settings_path.write_text(json.dumps({**doc, "enabledPlugins": {PLUGIN_ID: False}}, indent=2))  # disabled
    project = tmp_path / "project"
    (project / ".claude").mkdir(parents=True)
    (project / ".claude" / "settings.json").write_text(json.dumps({"enabledPlugins": {PLUGIN_ID: True}}))
    elsewhere = claude_code_runs(m, handler["command"], hook)
    assert elsewhere.returncode == 0 and session.exists()  # not enabled for that session: ours did it
    session.unlink()
    in_project = claude_code_runs(m, handler["command"], {**hook, "cwd": str(project)}, CLAUDE_PROJECT_DIR=str(project))
    assert in_project.returncode == 0 and not session.exists()  # enabled in that project: the plugin's did


def test_install_with_the_plugin_enabled_adds_no_hooks(machine_with_upstream, built_pyz):
    m = machine_with_upstream
    original = write_settings(m, {"enabledPlugins": {PLUGIN_ID: True}})
    result = install_prebuilt(m, built_pyz)
    assert result.returncode == 0 and "added Claude Code hooks" not in result.stdout
    assert "hooks" not in m.settings() and not (m.claude_dir / "hooks").exists()
    assert m.cli("uninstall", "--yes").returncode == 0
    assert m.settings_path.read_bytes() == original


def test_the_executable_carries_the_launcher(built_pyz):
    with zipfile.ZipFile(built_pyz) as archive:  # as build_zipapp.py built it
        assert archive.read("scripts/opik-cipx-hook-launcher") == LAUNCHER.read_bytes()
    assert LAUNCHER.stat().st_mode & 0o111
