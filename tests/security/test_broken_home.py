"""Issue 12, item 9: a broken `$CIPX_HOME` is one line naming it and the problem, never a traceback.

`CIPX_HOME` pointing at a file, at a read-only file system, at a directory this user cannot read.
`uninstall` finds out before it touches anything: the user's settings keep pointing at the
daemon, which keeps running.
"""

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env, run_cli
from tests.lifecycle_helpers import SESSION_START, machine  # noqa: F401 - fixture

COMMANDS = [["status"], ["logs", "--no-follow"], ["viewer"], ["replay"], ["restart"], ["purge", "--yes"],
            ["uninstall", "--yes"], ["proxy", "--port", "0"], ["sync"]]


def one_line_about(result: subprocess.CompletedProcess, home: Path, problem: str) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"opik-cipx: CIPX_HOME {home} {problem}"), lines[0]
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_cipx_home_is_a_file(tmp_path, command):
    home = tmp_path / "cipx-home"
    home.write_text("not a directory")
    result = run_cli(home, *command)
    assert result.returncode != 0
    one_line_about(result, home, "is not a directory; remove that file or point CIPX_HOME at a directory")
    assert home.read_text() == "not a directory"


def test_sync_as_a_hook_with_a_broken_home_fails_open_and_exits_0(tmp_path):
    home = tmp_path / "cipx-home"
    home.write_text("")
    result = run_cli(home, "sync", input=SESSION_START.read_text())
    assert result.returncode == 0 and result.stdout == ""  # a hook's stdout becomes model context
    assert "is not a directory" in result.stderr and "talks to Anthropic directly" in result.stderr
    assert "Traceback" not in result.stderr


def test_cipx_home_on_a_read_only_disk_uninstall_changes_nothing(machine, read_only_view):
    assert machine.cli("sync").returncode == 0
    pid = machine.state()["pid"]
    pointed = machine.settings_path.read_bytes()
    assert machine.base_url() == f"http://127.0.0.1:{machine.port}"
    with read_only_view(machine.home):
        for command in (["uninstall", "--yes"], ["purge", "--yes"], ["restart"]):
            result = machine.cli(*command)
            assert result.returncode == 1
            one_line_about(result, machine.home, "is on a read-only file system; remount it read-write")
        assert machine.settings_path.read_bytes() == pointed  # still pointed at the daemon...
        status = machine.cli("status")
        assert status.returncode == 0 and f"running (pid {pid})" in status.stdout  # ...which still runs


def test_uninstall_checks_it_can_delete_everything_before_it_starts(tmp_path, monkeypatch):
    from opik_cipx.commands import uninstall

    home = tmp_path / "home"
    (home / "spool").mkdir(parents=True)
    assert uninstall.cannot_delete(home) is None
    real_access = os.access
    monkeypatch.setattr(uninstall.os, "access", lambda path, mode: Path(path).name != "spool" and real_access(path, mode))
    assert uninstall.cannot_delete(home) == f"cannot delete {home / 'spool'}: not writable by this user; fix its owner or permissions"


def test_cipx_home_this_user_cannot_read(other_user):
    parent = Path(tempfile.mkdtemp(prefix="cipx-other-"))
    try:
        parent.chmod(0o755)
        home = parent / "home"
        home.mkdir(mode=0o700)  # root's, private
        env = {k: v for k, v in cli_env(home).items() if k in ("CIPX_HOME", "PYTHONPATH")}
        env["HOME"] = str(parent)
        for command in (["status"], ["purge", "--yes"], ["uninstall", "--yes"]):
            code = (f"import os, subprocess, sys; os.environ.update({env!r}); "
                    f"r = subprocess.run([sys.executable, '-m', 'opik_cipx', *{command!r}], capture_output=True, "
                    "text=True, cwd='/'); print(r.returncode); sys.stderr.write(r.stderr)")
            result = other_user(code)
            assert result.stdout.strip() == "1", (command, result.stdout, result.stderr)
            lines = result.stderr.strip().splitlines()
            assert lines == [f"opik-cipx: CIPX_HOME {home} cannot be read by this user; "
                             f"fix its owner or permissions (chmod 700 {home})"], result.stderr
    finally:
        subprocess.run(["rm", "-rf", str(parent)], check=True)
        assert REPO.exists()
