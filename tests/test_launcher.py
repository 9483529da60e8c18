"""The Claude Code plugin: the hook launcher (real /bin/sh runs) and its manifest files."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from opik_cipx import __version__
from opik_cipx.control.claude_settings import MANAGED_MARKER
from tests.conftest import REPO
from tests.lifecycle_helpers import SESSION_START, wait_gone

# Each scenario starts on a machine with nothing of ours on it: the first install or sync builds
# or installs the executable (tests.lifecycle_helpers, `no_executable`).
pytestmark = pytest.mark.no_executable

LAUNCHER = REPO / "scripts" / "opik-cipx-hook-launcher"
no_system_copy = pytest.mark.skipif(Path("/usr/local/bin/opik-cipx").exists(),
                                    reason="an opik-cipx in /usr/local/bin would be found")


def plugin_tree(tmp_path: Path) -> Path:
    """A copy of the plugin's launcher with nothing else in its tree."""
    root = tmp_path / "plugin"
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(LAUNCHER, root / "scripts" / LAUNCHER.name)
    return root


def tool_dir(tmp_path: Path, python: str | None = sys.executable) -> Path:
    """A PATH with the few tools the launcher uses, and `python3` when given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("dirname",):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    if python:
        (bin_dir / "python3").symlink_to(os.path.realpath(python))
    return bin_dir


def launch(root: Path, env: dict[str, str], stdin: str = "", event: str = "SessionStart"):
    return subprocess.run(["/bin/sh", str(root / "scripts" / LAUNCHER.name), event], input=stdin, env=env,
                          capture_output=True, text=True, timeout=60)


@no_system_copy
def test_no_executable_is_a_hint_and_exit_0(tmp_path):
    root = plugin_tree(tmp_path)
    env = {"PATH": str(tool_dir(tmp_path)), "HOME": str(tmp_path / "home")}
    result = launch(root, env, SESSION_START.read_text())
    assert result.returncode == 0
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "executable not found" in result.stderr
    assert "/plugin install opik-cipx@opik-enterprise" in result.stderr


def test_no_recent_python_is_a_hint_and_exit_0(tmp_path):
    root = plugin_tree(tmp_path)
    bin_dir = tool_dir(tmp_path, python=None)
    old = bin_dir / "python3"
    old.write_text("#!/bin/sh\nexit 1\n")  # answers the version check like Python 3.9 would
    old.chmod(0o755)
    result = launch(root, {"PATH": str(bin_dir), "HOME": str(tmp_path)})
    assert result.returncode == 0 and result.stdout == ""
    assert "no Python 3.11 or newer" in result.stderr


@no_system_copy
def test_a_python_without_sqlite3_is_passed_over_for_the_next_one(tmp_path):
    root = plugin_tree(tmp_path)
    bin_dir = tool_dir(tmp_path, python=None)
    blocker = tmp_path / "no-sqlite"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['_sqlite3'] = None\n")
    built_without = bin_dir / "python3"  # first on the list, as a Python built without SQLite's headers
    built_without.write_text(f"#!/bin/sh\nPYTHONPATH={blocker} exec {os.path.realpath(sys.executable)} \"$@\"\n")
    built_without.chmod(0o755)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path / "home")}
    result = launch(root, env)
    assert result.returncode == 0 and "no Python 3.11 or newer with its sqlite3 module" in result.stderr
    (bin_dir / "python3.14").symlink_to(os.path.realpath(sys.executable))  # a complete one further down the list
    result = launch(root, env)
    assert result.returncode == 0 and "executable not found" in result.stderr  # a Python was found: it went on


@no_system_copy
def test_path_executable_gets_sync_and_the_hook_stdin_whatever_the_event(tmp_path):
    root = plugin_tree(tmp_path)
    bin_dir = tool_dir(tmp_path)
    record = tmp_path / "record"
    fake = bin_dir / "opik-cipx"
    fake.write_text(f'#!/bin/sh\necho "$@" > {record}\n{shutil.which("cat")} >> {record}\necho noise\nexit 3\n')
    fake.chmod(0o755)
    result = launch(root, {"PATH": str(bin_dir), "HOME": str(tmp_path)}, '{"session_id": "s"}',
                    event="UserPromptSubmit")
    assert result.returncode == 0  # even though the executable failed
    assert result.stdout == ""  # never model context
    assert record.read_text() == 'sync\n{"session_id": "s"}'


@no_system_copy
def test_the_plugins_own_source_comes_before_an_executable_on_path(tmp_path):
    root = plugin_tree(tmp_path)
    (root / "opik_cipx").symlink_to(REPO / "opik_cipx")
    bin_dir = tool_dir(tmp_path)
    record = tmp_path / "record"
    fake = bin_dir / "opik-cipx"
    fake.write_text(f"#!/bin/sh\necho ran > {record}\n")
    fake.chmod(0o755)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "CIPX_HOME": str(tmp_path / "h"), "CIPX_DISABLED": "1"}
    result = launch(root, env, SESSION_START.read_text())
    assert result.returncode == 0 and result.stdout == ""
    assert "disabled (CIPX_DISABLED)" in result.stderr and not record.exists()


def plugin_source_tree(tmp_path: Path, name: str, version: str | None = None) -> Path:
    """A plugin tree as Claude Code installs it from this repository: the launcher and the source."""
    root = plugin_tree(tmp_path / name)
    shutil.copytree(REPO / "opik_cipx", root / "opik_cipx", ignore=shutil.ignore_patterns("__pycache__"))
    if version:
        init = root / "opik_cipx" / "__init__.py"
        init.write_text(init.read_text().replace(f'__version__ = "{__version__}"', f'__version__ = "{version}"'))
    return root


def test_a_plugin_only_install_runs_a_real_executable_and_picks_up_a_plugin_update(tmp_path, machine):
    root = plugin_source_tree(tmp_path, "plugin-1")
    env = machine.env(PATH=str(tool_dir(tmp_path)), CLAUDE_PLUGIN_ROOT=str(root), SHELL="/bin/sh")
    env.pop("PYTHONPATH")
    hook = SESSION_START.read_text()
    first = launch(root, env, hook)
    machine.remember_daemon()
    installed = machine.home / "bin" / "opik-cipx"
    link = machine.user_home / ".local" / "bin" / "opik-cipx"
    assert first.returncode == 0, first.stderr
    message = json.loads(first.stdout)["systemMessage"]  # the only thing on stdout, for the user
    assert "from your next Claude Code session" in message and f"linked {link} -> {installed}" in message
    assert f"installed {installed} (from {(root / 'opik_cipx').resolve()})" in first.stderr
    state = machine.state()
    assert state["executable"] == str(installed) and state["version"] == __version__
    assert installed.read_bytes().startswith(f"#!{os.path.realpath(sys.executable)}\n".encode())
    assert os.readlink(link) == str(installed)

    again = launch(root, env, hook)
    assert again.returncode == 0 and again.stdout == "" and machine.state() == state

    update = plugin_source_tree(tmp_path, "plugin-2", version="9.1.0")  # Claude Code unpacks a new version
    updated = launch(update, {**env, "CLAUDE_PLUGIN_ROOT": str(update)}, hook)
    machine.remember_daemon()
    assert updated.returncode == 0 and updated.stdout == "", updated.stderr
    assert "executable changed" in updated.stderr
    assert machine.state()["version"] == "9.1.0" and machine.state()["executable"] == str(installed)
    wait_gone(state["pid"])


def test_pyz_in_the_plugin_tree_brings_opik_cipx_up(tmp_path, machine, built_pyz):
    root = plugin_tree(tmp_path)
    (root / "bin").mkdir()
    shutil.copy2(built_pyz, root / "bin" / "opik-cipx")  # a plugin release carries the built executable
    env = machine.env(PATH=str(tool_dir(tmp_path)), CLAUDE_PLUGIN_ROOT=str(root))
    env.pop("PYTHONPATH")
    hook = SESSION_START.read_text()
    result = launch(root, env, hook)
    machine.remember_daemon()
    assert result.returncode == 0, result.stderr
    assert "from your next Claude Code session" in json.loads(result.stdout)["systemMessage"]
    state = machine.state()
    installed = machine.home / "bin" / "opik-cipx"  # a copy: the plugin's directory may go at its next update
    assert state and state["executable"] == str(installed)
    assert installed.read_bytes().endswith((root / "bin" / "opik-cipx").read_bytes().split(b"\n", 1)[1])
    assert machine.base_url() == f"http://127.0.0.1:{machine.port}"
    assert launch(root, env, hook).stdout == ""  # an ordinary session start
    assert (machine.home / "sessions" / f"{json.loads(hook)['session_id']}.json").exists()
    assert launch(root, {**env, "CIPX_DISABLED": "1"}, hook).returncode == 0
    wait_gone(state["pid"])
    assert machine.base_url() is None


def test_plugin_manifests():
    plugin = json.loads((REPO / ".claude-plugin" / "plugin.json").read_text())
    assert plugin["name"] == "opik-cipx" and plugin["version"] == __version__ and plugin["description"]
    market = json.loads((REPO / ".claude-plugin" / "marketplace.json").read_text())
    assert market["name"] == "opik-enterprise" and market["owner"]["name"]
    [entry] = market["plugins"]
    assert entry["name"] == "opik-cipx" and entry["source"] == "./" and entry["version"] == __version__
    hooks = json.loads((REPO / "hooks" / "hooks.json").read_text())["hooks"]
    assert set(hooks) == {"SessionStart", "UserPromptSubmit"}
    for groups in hooks.values():
        [group] = groups
        [hook] = group["hooks"]
        assert hook["type"] == "command"
        assert hook["command"].startswith('"${CLAUDE_PLUGIN_ROOT}/scripts/opik-cipx-hook-launcher"')
        assert 10 <= hook["timeout"] <= 120
    assert os.access(LAUNCHER, os.X_OK)
    assert MANAGED_MARKER in LAUNCHER.read_text().splitlines()[1]
    assert subprocess.run(["sh", "-n", str(LAUNCHER)]).returncode == 0


def test_skill_front_matter():
    text = (REPO / "skills" / "opik-cipx" / "SKILL.md").read_text()
    head, _, body = text.removeprefix("---\n").partition("\n---\n")
    fields = dict(line.split(": ", 1) for line in head.splitlines())
    assert fields["name"] == "opik-cipx" and len(fields["description"]) > 80
    for must in ("opik-cipx status", "opik-cipx sync", "opik-cipx restart", "opik-cipx logs", "CIPX_DISABLED",
                 "state.json", "sessions/", "uninstall", "purge"):
        assert must in body, must
