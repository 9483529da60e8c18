"""Issue 12, item 9: a broken `$CIPX_HOME` is one line naming it and the problem, never a traceback.

`CIPX_HOME` pointing at a file, at a read-only file system, at a directory this user cannot read.
`uninstall` finds out before it touches anything: the user's settings keep pointing at the
daemon, which keeps running.

Issue 22, item 6: a path inside the home of the wrong type (`captures` a file, `ledger.db` a
directory, ...). Commands name it in one line (`purge` changes nothing); a starting daemon moves
it aside, says so in `status`, and serves every call.
"""

import http.client
import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from opik_cipx.store.captures import list_segments
from tests.conftest import REPO, DaemonProcess, cli_env, run_cli, run_command, wait_for
from tests.lifecycle_helpers import SESSION_START

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
    # The dispatcher stops each before it runs, in this process; `sync` handles it itself (next test).
    result = (run_cli if command == ["sync"] else run_command)(home, *command)
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
        status = machine.command("status")
        assert status.returncode == 0 and f"running (pid {pid})" in status.stdout  # ...which still runs


def test_uninstall_checks_it_can_delete_everything_before_it_starts(tmp_path, monkeypatch):
    from opik_cipx.commands import uninstall

    home = tmp_path / "home"
    (home / "spool").mkdir(parents=True)
    assert uninstall.cannot_delete(home) is None
    real_access = os.access
    monkeypatch.setattr(uninstall.os, "access",
                        lambda path, mode: Path(path).name != "spool" and real_access(path, mode))
    assert uninstall.cannot_delete(home) == (
        f"cannot delete {home / 'spool'}: not writable by this user; fix its owner or permissions")


def test_cipx_home_this_user_cannot_read(other_user):
    parent = Path(tempfile.mkdtemp(prefix="cipx-other-"))
    try:
        parent.chmod(0o755)
        home = parent / "home"
        home.mkdir(mode=0o700)  # root's, private
        env = {k: v for k, v in cli_env(home).items() if k in ("CIPX_HOME", "PYTHONPATH")}
        env["HOME"] = str(parent)
        commands = [["status"], ["purge", "--yes"], ["uninstall", "--yes"]]
        # Each command in a process of its own, started by one of that user's.
        code = (f"import json, os, subprocess, sys; os.environ.update({env!r}); "
                "runs = [subprocess.run([sys.executable, '-m', 'opik_cipx', *command], capture_output=True, "
                f"text=True, cwd='/') for command in {commands!r}]; "
                "print(json.dumps([[r.returncode, r.stderr] for r in runs]))")
        result = other_user(code)
        assert result.returncode == 0, result.stderr
        for command, (returncode, stderr) in zip(commands, json.loads(result.stdout), strict=True):
            assert returncode == 1, (command, returncode, stderr)
            assert stderr.strip().splitlines() == [f"opik-cipx: CIPX_HOME {home} cannot be read by this user; "
                                                   f"fix its owner or permissions (chmod 700 {home})"], stderr
    finally:
        subprocess.run(["rm", "-rf", str(parent)], check=True)
        assert REPO.exists()


# name -> what it should be (True: a directory); each is made the other type
WRONG_TYPE = {"captures": True, "spool": True, "ledger.db": False, "logs": True, "sessions": True, "materializer": True}


def make_wrong_type(home: Path, name: str) -> str:
    """Make `home/name` the wrong type, holding something; the words commands use for it."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / name
    if WRONG_TYPE[name]:
        path.write_text(f"not the {name} directory\n")
        return "is a file, not a directory"
    path.mkdir()
    (path / "kept").write_text(f"inside the {name} directory\n")
    return "is a directory, not a file"


def still_there(home: Path, name: str, path: Path | None = None) -> bool:
    path = path or home / name
    if WRONG_TYPE[name]:
        return path.read_text() == f"not the {name} directory\n"
    return (path / "kept").read_text() == f"inside the {name} directory\n"


@pytest.mark.parametrize("name", WRONG_TYPE)
def test_commands_name_a_path_of_the_wrong_type_in_one_line(machine, name):
    home = machine.home
    words = make_wrong_type(home, name)
    status = machine.command("status")
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
    assert f"  ! {name} {words}; a starting daemon moves it aside: run `opik-cipx restart`" in status.stdout

    report = machine.command("report")
    assert "Traceback" not in report.stderr and len(report.stderr.strip().splitlines()) <= 1, report.stderr
    if name == "ledger.db":
        assert report.returncode == 1 and f"cannot read {home / name}" in report.stderr
    if name == "captures":
        replay = machine.command("replay")
        assert replay.returncode == 1 and replay.stderr.splitlines() == [
            f"opik-cipx: {home / name} {words}, so there is nothing to replay: move it away"]

    purge = machine.cli("purge", "--yes")
    assert purge.returncode == 1 and purge.stdout == ""
    assert purge.stderr.splitlines() == [
        f"opik-cipx: {home / name} {words}; nothing was purged. `opik-cipx restart` moves it aside (or move it "
        "away yourself), then run `opik-cipx purge` again"]
    assert still_there(home, name)  # nothing changed
    assert machine.state() is None


def test_a_starting_daemon_sets_wrong_type_paths_aside_and_serves_every_call(home, upstream):
    for name in WRONG_TYPE:
        make_wrong_type(home, name)
    daemon = DaemonProcess(home, upstream.url)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
        conn.request("POST", "/v1/messages", body=b'{"model":"claude-opus-4-8","max_tokens":5,"messages":[]}',
                     headers={"Content-Type": "application/json"})
        assert conn.getresponse().status == 200  # the wire is up
        wait_for(lambda: daemon.counter("events_materialized") == 1, what="the call materialized")
        layout = daemon.stats()["home"]["layout"]
        for name, directory in WRONG_TYPE.items():
            assert not (home / name).exists() or (home / name).is_dir() == directory, name  # sessions: sync's
            moved = sorted(home.glob(f"{name}.not-a-{'directory' if directory else 'file'}-*"))
            assert len(moved) == 1 and still_there(home, name, moved[0]), name
            assert (f"{moved[0].name}: {name} was not a {'directory' if directory else 'file'} when a daemon "
                    "started, so it was set aside; look at it, then delete it") in layout
        assert not [line for line in layout if str(home) in line]  # the admin port names no absolute path
        assert list_segments(home / "captures") and (home / "logs" / "cipx.log").is_file()
        status = run_command(home, "status")
        assert status.returncode == 0 and all(f"  ! {line}" in status.stdout for line in layout)
        report = run_command(home, "report", "--json")
        assert report.returncode == 0 and json.loads(report.stdout)["total"]["calls"] == 1
    finally:
        assert daemon.stop() == 0
    assert "Traceback" not in daemon.stderr()


def test_sync_starts_the_daemon_when_logs_is_a_file_and_sync_lock_a_directory(machine_with_upstream):
    home = machine_with_upstream.home
    make_wrong_type(home, "logs")
    (home / "sync.lock").mkdir()
    result = machine_with_upstream.cli("sync")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert (home / "logs" / "daemon.stderr").is_file() and (home / "sync.lock").is_file()
    layout = machine_with_upstream.stats()["home"]["layout"]
    assert [line.partition(".not-a-")[0] for line in layout] == ["logs", "sync.lock"]
