"""`opik-cipx sync`: session files from hook stdin, bring-up, idempotence, fail-open, teardown."""

import hashlib
import json
import os
import select
import socket
import subprocess
import sys
import threading

import pytest

from opik_cipx.commands.sync import NEXT_SESSION, NEXT_SESSION_HOOK
from opik_cipx.control.daemon_control import admin_get
from opik_cipx.materialize.sessions import git_info, read_hook_stdin, record_session, utc_now_iso
from opik_cipx.urls import strip_credentials
from tests.conftest import FIXTURES
from tests.fake_clock import FakeClock
from tests.lifecycle_helpers import SESSION_START, wait_gone

IDENTITY = {"emailAddress": "ada@example.com", "accountUuid": "u-1", "displayName": "Ada",
            "organizationUuid": "o-1", "organizationName": "Acme"}
RECORD_KEYS = {"session_id", "cwd", "transcript_path", "source", "hook_event_name", "git", "identity", "written_at"}


def git(cwd, *args):
    subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@e"})


# --- sessions/<id>.json -------------------------------------------------------------------


def test_session_record_from_every_recorded_session_start(tmp_path):
    claude_json = tmp_path / ".claude.json"
    claude_json.write_text(json.dumps({"oauthAccount": IDENTITY, "other": 1}))
    hooks = sorted(FIXTURES.glob("*/hook_SessionStart_*.json"))
    assert hooks
    for hook_path in hooks:
        hook = json.loads(hook_path.read_text())
        path = record_session(tmp_path / "sessions", hook, claude_json)
        record = json.loads(path.read_text())
        assert path.name == f"{hook['session_id']}.json"
        assert set(record) == RECORD_KEYS
        assert record["source"] == hook["source"] and record["hook_event_name"] == "SessionStart"
        assert record["cwd"] == hook["cwd"] and record["transcript_path"] == hook["transcript_path"]
        assert record["git"] == {"remote": None, "branch": None, "commit": None}  # /home/dev/... is not here
        assert record["identity"] == {"user_email": "ada@example.com", "user_uuid": "u-1", "display_name": "Ada",
                                      "org_uuid": "o-1", "org_name": "Acme", "billing_type": None}
        assert record["written_at"].endswith("Z") and "T" in record["written_at"]
    assert oct((tmp_path / "sessions").stat().st_mode & 0o777) == oct(0o700)
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)


def test_git_metadata_of_the_session_cwd(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "feature/x")
    assert git_info(str(repo)) == {"remote": None, "branch": "feature/x", "commit": None}  # no commit yet
    git(repo, "commit", "-q", "--allow-empty", "-m", "one")
    git(repo, "remote", "add", "upstream", "git@github.com:acme/fork.git")
    git(repo, "remote", "add", "origin", "https://ada:ghp_secret@github.com/acme/api.git")
    info = git_info(str(repo / "."))
    assert info["branch"] == "feature/x" and len(info["commit"]) == 40
    assert info["remote"] == "https://github.com/acme/api.git"  # origin wins; the token is stripped
    git(repo, "checkout", "-q", "--detach")
    assert git_info(str(repo))["branch"] is None
    assert git_info(str(tmp_path)) == {"remote": None, "branch": None, "commit": None}
    assert git_info(str(tmp_path / "missing")) == {"remote": None, "branch": None, "commit": None}
    assert git_info(None) == {"remote": None, "branch": None, "commit": None}
    assert strip_credentials("git@github.com:acme/api.git") == "git@github.com:acme/api.git"
    assert strip_credentials("ssh://git@host:22/x.git") == "ssh://host:22/x.git"


def test_session_ids_that_could_escape_the_directory_are_refused(tmp_path):
    for bad in ("../../etc/passwd", "/abs", ".hidden", "", "a/b", "a\\b", None, 123, "x" * 200, "ok\n"):
        with pytest.raises(ValueError):
            record_session(tmp_path / "sessions", {"session_id": bad}, tmp_path / "none.json")
    assert not (tmp_path / "sessions").exists()


def test_prompt_submit_only_fills_a_missing_file_and_never_keeps_the_prompt(tmp_path):
    sessions = tmp_path / "sessions"
    prompt = {"session_id": "s-1", "hook_event_name": "UserPromptSubmit", "prompt": "my secret plan", "cwd": "/x"}
    path = record_session(sessions, prompt, tmp_path / "none.json")
    record = json.loads(path.read_text())
    assert record["source"] is None and record["hook_event_name"] == "UserPromptSubmit"
    assert "secret" not in path.read_text()
    start = {"session_id": "s-1", "hook_event_name": "SessionStart", "source": "resume", "cwd": "/x"}
    assert record_session(sessions, start, tmp_path / "none.json") == path
    assert json.loads(path.read_text())["source"] == "resume"
    assert record_session(sessions, prompt, tmp_path / "none.json") is None  # kept as SessionStart wrote it
    assert json.loads(path.read_text())["source"] == "resume"


def test_hook_stdin_reading_is_bounded():
    master, slave = os.openpty()
    try:
        assert read_hook_stdin(slave) is None  # a terminal: someone typed `opik-cipx sync`
    finally:
        os.close(master)
        os.close(slave)
    r, w = os.pipe()
    os.write(w, b'{"session_id": "x"}')
    os.close(w)
    assert read_hook_stdin(r) == b'{"session_id": "x"}'
    os.close(r)
    r, w = os.pipe()  # a pipe nobody writes to or closes
    result = []
    reader = threading.Thread(target=lambda: result.append(read_hook_stdin(r, timeout_s=0.2)), daemon=True)
    reader.start()
    reader.join(30)  # a deadline for a read that never gives up, not a speed target
    assert result == [None]
    os.close(r)
    os.close(w)
    with open(os.devnull, "rb") as null:
        assert read_hook_stdin(null.fileno()) is None


def test_written_at_is_read_from_the_clock():
    assert utc_now_iso(FakeClock(1_800_000_000_123_456_789)) == "2027-01-15T08:00:00.123Z"


# --- sync as a process ----------------------------------------------------------------------
# A machine's first `sync` from this tree builds the executable it runs the daemon from; the tests
# below whose point is not that build start with it in place (the `machine` fixtures do it). The build
# on a first sync is proven where it is the point (`no_executable`): the first session's hook, and
# three syncs at once.


@pytest.mark.no_executable
def test_hook_sync_brings_the_daemon_up_and_tells_the_user_once_that_the_next_session_is_proxied(machine):
    hook = SESSION_START.read_text()
    result = machine.cli("sync", input=hook, SHELL="/bin/bash")
    assert result.returncode == 0, result.stderr
    # stdout is one JSON object whose systemMessage Claude Code shows to the user, never to the model
    local_bin = machine.user_home / ".local" / "bin"
    assert json.loads(result.stdout) == {"systemMessage": (
        f"opik-cipx: {NEXT_SESSION_HOOK}\n"
        f"linked {local_bin}/opik-cipx -> {machine.home}/bin/opik-cipx; {local_bin} is not on your PATH: add the "
        'line `export PATH="$HOME/.local/bin:$PATH"` to ~/.profile, then open a new terminal')}
    assert result.stdout.count("\n") == 1
    again = machine.cli("sync", input=hook)
    assert again.returncode == 0 and again.stdout == "" and again.stderr == ""  # a normal session start: silence
    state = machine.state()
    assert state and state["ports"]["claude_code"] == machine.port
    assert machine.stats()["pid"] == state["pid"]
    assert machine.base_url() == f"http://127.0.0.1:{machine.port}"
    session = json.loads((machine.home / "sessions" / f"{json.loads(hook)['session_id']}.json").read_text())
    assert session["source"] == "startup"


def test_second_sync_is_a_noop(machine):
    machine.settings_path.parent.mkdir(parents=True)
    machine.settings_path.write_text(json.dumps({"model": "opus", "env": {"A": "1"}}, indent=2) + "\n")
    first = machine.cli("sync")
    assert first.returncode == 0 and "started" in first.stdout, first.stderr
    assert f"opik-cipx: {NEXT_SESSION}" in first.stdout.splitlines()
    state_before = (machine.home / "state.json").read_bytes()
    settings_before = machine.settings_path.stat().st_mtime_ns
    second = machine.cli("sync")
    assert second.returncode == 0 and "running" in second.stdout, second.stderr
    assert (machine.home / "state.json").read_bytes() == state_before
    assert machine.settings_path.stat().st_mtime_ns == settings_before
    assert machine.settings() == {"model": "opus", "env": {"A": "1", "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{machine.port}"}}


@pytest.mark.no_executable  # the three race to build it too
def test_concurrent_syncs_start_one_daemon(machine):
    procs = [subprocess.Popen([sys.executable, "-m", "opik_cipx", "sync"], env=machine.env(), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=60) for p in procs]
    machine.remember_daemon()
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert sum("started" in out for out, _ in outputs) == 1, outputs
    assert sum("running" in out for out, _ in outputs) == 2, outputs


class RacingSync:
    """`opik-cipx sync` by hand that says where it is (tests/race_points.py), optionally paused in `pause`."""

    def __init__(self, machine, pause: str | None = None):
        self.signals, signals_w = os.pipe()
        go_r, self.go_w = os.pipe()
        extra = {"RACE_SIGNALS": str(signals_w), "RACE_GO": str(go_r), **({"RACE_PAUSE": pause} if pause else {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.race_points", "sync"], env=machine.env(**extra),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, pass_fds=(signals_w, go_r))
        os.close(signals_w)
        os.close(go_r)
        self.machine = machine

    def signal(self, timeout_s: float = 60) -> str:
        """The next word it says: `paused`, `waits` or `done`."""
        word = b""
        while not word.endswith(b"\n"):
            ready, _, _ = select.select([self.signals], [], [], timeout_s)
            assert ready, "the sync said nothing"
            byte = os.read(self.signals, 1)
            assert byte, "the sync ended without a word"
            word += byte
        return word.decode().strip()

    def go(self) -> None:
        os.write(self.go_w, b"g")

    def finish(self) -> tuple[str, str]:
        try:
            out, err = self.proc.communicate(timeout=60)
        finally:
            self.machine.remember_daemon()
            os.close(self.signals)
            os.close(self.go_w)
        assert self.proc.returncode == 0, (out, err)
        return out, err


@pytest.mark.parametrize("pause", ["opik_cipx.control.claude_settings:_save", "opik_cipx.control.install:_remember"])
def test_concurrent_syncs_point_claude_code_and_link_opik_cipx_once(machine, pause):
    """Two sessions opening at once: one sync stopped just before it writes Claude Code's settings (or makes
    the link on PATH), the other run meanwhile. That one waits for it, so exactly one says that Claude
    Code now goes through opik-cipx, one made the link, and neither fails (before: both said it, or the
    second said `cannot link ... File exists`)."""
    first = RacingSync(machine, pause=pause)
    assert first.signal() == "paused"
    second = RacingSync(machine)
    assert second.signal() in ("waits", "done")  # it waits for the first, or it is already through
    first.go()
    outputs = [first.finish(), second.finish()]
    said = [line for out, _ in outputs for line in out.splitlines()]
    assert said.count(f"opik-cipx: {NEXT_SESSION}") == 1, outputs
    assert [line.startswith("opik-cipx: linked ") for line in said].count(True) == 1, outputs
    assert [err for _, err in outputs] == ["", ""], outputs
    assert machine.base_url() == f"http://127.0.0.1:{machine.port}"
    assert (machine.user_home / ".local" / "bin" / "opik-cipx").resolve() == (machine.home / "bin" / "opik-cipx")


def test_daemon_that_cannot_start_fails_open(machine):
    url = f"http://127.0.0.1:{machine.port}"
    machine.settings_path.parent.mkdir(parents=True)
    machine.settings_path.write_text(json.dumps({"env": {"ANTHROPIC_BASE_URL": url, "KEEP": "me"}}))
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the port is held for this test (ReservedPort)
        squatter.bind(("127.0.0.1", machine.port))
        squatter.listen()
        hook = machine.cli("sync", input=SESSION_START.read_text())
        assert hook.returncode == 0 and hook.stdout == ""
        assert "cannot bring the daemon up" in hook.stderr and "already in use" in hook.stderr
        assert "Removed ANTHROPIC_BASE_URL" in hook.stderr
        assert machine.settings() == {"env": {"KEEP": "me"}}
        by_hand = machine.cli("sync")
        assert by_hand.returncode == 1 and "Traceback" not in by_hand.stderr
    assert machine.base_url() is None and machine.state() is None


def test_bad_config_file_fails_open_and_a_healthy_daemon_keeps_running(machine):
    assert machine.cli("sync").returncode == 0
    pid = machine.state()["pid"]
    config = machine.home / "config.toml"
    config.write_text("tee_queue_max = = 3\n")
    kept = machine.cli("sync", input=SESSION_START.read_text())
    assert kept.returncode == 0 and str(config) in kept.stderr and "opik-cipx restart" in kept.stderr
    assert machine.state()["pid"] == pid and machine.base_url() is not None
    assert "warning" in machine.command("status").stderr  # status still reads the daemon

    assert machine.cli("sync", CIPX_DISABLED="1").returncode == 0  # the kill switch works despite the file
    wait_gone(pid)
    assert machine.state() is None
    down = machine.cli("sync", input=SESSION_START.read_text())
    assert down.returncode == 0 and "not running" in down.stderr and str(config) in down.stderr
    assert machine.base_url() is None
    assert machine.cli("sync").returncode == 1


def test_disabled_tears_down_and_leaves_claude_code_on_anthropic(machine):
    machine.settings_path.parent.mkdir(parents=True)
    machine.settings_path.write_text(json.dumps({"theme": "dark"}))
    assert machine.cli("sync").returncode == 0
    pid = machine.state()["pid"]
    result = machine.cli("sync", input=SESSION_START.read_text(), CIPX_DISABLED="yes")
    assert result.returncode == 0 and result.stdout == ""
    wait_gone(pid)
    assert machine.state() is None
    assert machine.settings() == {"theme": "dark"}
    assert machine.cli("sync", CIPX_DISABLED="1").returncode == 0  # idempotent
    (machine.home / "config.toml").write_text("disabled = true\n")
    assert machine.cli("sync").returncode == 0
    assert machine.state() is None and machine.base_url() is None


def test_foreign_base_url_is_reported_and_kept(machine):
    machine.settings_path.parent.mkdir(parents=True)
    machine.settings_path.write_text(json.dumps({"env": {"ANTHROPIC_BASE_URL": "https://gateway.corp.example"}}))
    result = machine.cli("sync", input=SESSION_START.read_text())
    assert result.returncode == 0 and "gateway.corp.example" in result.stderr and "left as is" in result.stderr
    assert machine.base_url() == "https://gateway.corp.example"
    assert machine.cli("sync", CIPX_DISABLED="1").returncode == 0
    assert machine.base_url() == "https://gateway.corp.example"


def test_stale_state_naming_an_unrelated_process_is_never_signalled(machine):
    bystander = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        (machine.home / "state.json").write_text(json.dumps({"pid": bystander.pid, "ports": {"admin": 1}}))
        assert machine.cli("sync").returncode == 0
        assert bystander.poll() is None
        assert machine.state()["pid"] != bystander.pid
    finally:
        bystander.kill()
        bystander.communicate()  # reaps it and closes its stdin


def test_garbage_hook_input_still_exits_zero(machine):
    result = machine.cli("sync", input="not json at all")
    assert result.returncode == 0 and "not a JSON object" in result.stderr
    assert machine.state() is not None
    result = machine.cli("sync", input=json.dumps({"session_id": "../x"}))
    assert result.returncode == 0 and "session_id" in result.stderr


def test_settings_this_environment_asks_for_that_the_daemon_does_not_use_are_named(machine):
    opik = {"OPIK_CIPX_BASE_URL": "http://127.0.0.1:9/api", "OPIK_CIPX_API_KEY": "sk-daemon"}  # nothing listens there
    assert machine.cli("sync", **opik).returncode == 0
    state = machine.state()
    assert set(state["settings"]) >= {"capture_content", "opik.api_key"} and state["settings_key"]
    assert "sk-daemon" not in json.dumps(state)
    served = b"".join(admin_get(state["ports"]["admin"], path)[1]
                      for path in ("/admin/state", "/admin/stats", "/admin/health"))  # open to every local user
    assert b'"settings' not in served and state["settings_key"].encode() not in served
    assert not [digest for digest in state["settings"].values() if digest.encode() in served]
    assert hashlib.sha256(b'"sk-daemon"').hexdigest()[:16].encode() not in served  # what it served before
    config = machine.home / "config.toml"
    hook = SESSION_START.read_text()
    drifted = machine.cli("sync", input=hook, CIPX_CAPTURE_CONTENT="false",
                          **{**opik, "OPIK_CIPX_API_KEY": "sk-secret"})
    assert drifted.returncode == 0 and "sk-secret" not in drifted.stdout + drifted.stderr
    assert json.loads(drifted.stdout) == {"systemMessage": (
        "opik-cipx: the running daemon does not use these settings of this environment: capture_content "
        "(CIPX_CAPTURE_CONTENT), opik.api_key (OPIK_CIPX_API_KEY). To apply them, put them in "
        f"{config} (a daemon run by systemd or launchd never sees your shell's environment), then run "
        "`opik-cipx restart`.")}
    prompt = machine.cli("sync", input=json.dumps({"session_id": "s-2", "hook_event_name": "UserPromptSubmit"}),
                         CIPX_CAPTURE_CONTENT="false", **opik)
    assert prompt.stdout == "" and "capture_content (CIPX_CAPTURE_CONTENT)" in prompt.stderr  # not on every prompt

    config.write_text("[logs]\nbackups = 5\n")  # the file changed since the daemon started
    by_hand = machine.cli("sync", **opik)
    assert by_hand.returncode == 0
    assert ("opik-cipx: the running daemon does not use these settings of this environment: logs.backups. "
            f"To apply them, put them in {config}") in by_hand.stdout
    assert machine.state()["pid"] == state["pid"]  # told, not restarted behind the user's back
    assert machine.cli("restart").returncode == 0
    assert machine.cli("sync", input=hook).stdout == ""  # applied
