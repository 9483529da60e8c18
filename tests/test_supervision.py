"""Supervision of a detached daemon, as a user's machine runs it: `sync` starts the supervisor,
the daemon is `kill -9`ed, killed again and again, stopped behind its back, left without its
executable; the supervisor itself is killed. Real processes, a temporary HOME (tests/lifecycle_helpers.py),
the executable `sync` would build from this tree put in place first (the `machine` fixtures do it:
the build is not what these tests prove; rebuilding a deleted one is)."""

import http.client
import json
import os
import signal
import sqlite3
import sys

import pytest

from opik_cipx.commands.sync import DOWN_THIS_SESSION, OFF_THIS_SESSION
from opik_cipx.control.down_answer import ANSWER
from tests.claude_code_corpus import request, response
from tests.conftest import wait_for
from tests.fake_anthropic import FakeAnthropic, fixture_reply
from tests.lifecycle_helpers import SESSION_START, Machine, wait_gone

SCENARIO, NUMBER = "simple", "001"  # one recorded main-loop call


def call(port: int) -> tuple[int, dict[str, str], bytes]:
    """One recorded Claude Code call to `port`, as Claude Code sends it: (status, headers, body)."""
    req = request(SCENARIO, NUMBER)
    headers = {k: v for k, v in req["headers"].items() if k.lower() not in ("host", "content-length", "connection")}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(req["method"], req["path"], body=req["body"].encode(), headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def ledger_calls(m) -> int:
    path = m.home / "ledger.db"
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(DISTINCT capture_id) FROM calls").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        conn.close()


def spooled_llm_spans(m) -> set[str]:
    ids = set()
    for segment in sorted((m.home / "spool").glob("*.jsonl")):
        for line in segment.read_text().splitlines():
            body = json.loads(line)["body"]
            if body.get("type") == "llm":
                ids.add(body["id"])
    return ids


def daemon_pid(m) -> int | None:
    state = m.state()
    return state["pid"] if state else None


@pytest.fixture(scope="module")
def synced(tmp_path_factory, built_pyz):
    """A machine one `sync` brought up, for the tests of this module that only look at its
    supervisor and daemon (their processes, a second `supervise` refused): none kills, stops or
    signals them or changes a file, so each finds what that `sync` left, whichever of them run, in
    any order, on any worker. A test that kills, stops or breaks something syncs its own machine."""
    with FakeAnthropic(tls=True) as upstream:
        m = Machine(tmp_path_factory.mktemp("synced") / "user", upstream.url)
        m.put_executable(built_pyz)
        try:
            synced = m.cli("sync")
            assert synced.returncode == 0, synced.stderr
            yield m
        finally:
            m.kill_all()


def test_kill_9_is_answered_by_a_new_daemon_and_a_daemon_that_keeps_dying_is_given_up_on_with_nothing_lost(
        machine_with_upstream, upstream, opik_down):
    m = machine_with_upstream
    # An Opik that is down: the spans wait in the spool, where this test counts them.
    (m.home / "config.toml").write_text(f'[opik]\nbase_url = "{opik_down["OPIK_CIPX_BASE_URL"]}"\n')
    assert m.cli("sync").returncode == 0
    supervisor = m.supervisor()
    assert supervisor["state"] == "running" and supervisor["daemon_pid"] == daemon_pid(m)
    our_url = f"http://127.0.0.1:{m.port}"
    assert m.base_url() == our_url
    sent = 0
    for kill in range(1, 11):
        upstream.script(fixture_reply(response(SCENARIO, NUMBER)))
        status, _, body = call(m.port)
        assert status == 200 and body == response(SCENARIO, NUMBER)["body"].encode()
        sent += 1
        wait_for(lambda: ledger_calls(m) == sent and len(spooled_llm_spans(m)) == sent, timeout_s=30,  # noqa: B023 - waited on here
                 what=f"call {sent} acknowledged: in the ledger, its span written to the spool")
        pid = daemon_pid(m)
        m.remember_daemon()
        os.kill(pid, signal.SIGKILL)
        # At once, not a second later: the new daemon is not up yet, and the call waits for it in
        # the backlog of the port the supervisor holds (a refused call would raise here).
        upstream.script(fixture_reply(response(SCENARIO, NUMBER)))
        status, headers, body = call(m.port)
        if kill < 5:
            assert status == 200, body
            sent += 1
            record = m.supervisor()
            assert record["daemon_pid"] != pid and record["restarts"] == kill
            # It answers as soon as it listens, a moment before it writes state.json.
            wait_for(lambda: daemon_pid(m) == record["daemon_pid"], what="the new daemon's state.json")  # noqa: B023 - waited on here
            continue
        # The 5th death within 120 s: given up on, and said so to Claude Code and in `status`.
        assert (status, headers["x-should-retry"], json.loads(body)) == (
            503, "false", {"type": "error", "error": {"type": "api_error", "message": ANSWER}})
        break
    assert kill == 5
    record = m.supervisor()
    assert record["state"] == "gave up" and len(record["deaths"]) == 5
    assert record["reason"] == "the daemon died 5 times within 120s (the last killed by SIGKILL)"
    assert all(death["how"] == "killed by SIGKILL" and death["detail"] is None for death in record["deaths"])
    assert m.base_url() is None  # new Claude Code sessions go straight to Anthropic
    status = m.command("status")
    assert status.returncode == 1
    assert (f"supervisor   ! the supervisor (pid {record['pid']}) gave up at {record['gave_up_at']}: the daemon "
            "died 5 times within 120s (the last killed by SIGKILL)") in status.stderr

    # The next hook run of the session that went through it: tried once more, and back.
    hook = m.cli("sync", input=SESSION_START.read_text(), ANTHROPIC_BASE_URL=our_url)
    assert hook.returncode == 0 and "opik-cipx: set up" in json.loads(hook.stdout)["systemMessage"], hook.stderr
    wait_gone(record["pid"])
    assert m.base_url() == our_url and m.supervisor()["state"] == "running"
    # Every call answered, in the ledger and the spool, each once (ids derived from the capture).
    wait_for(lambda: ledger_calls(m) == sent and len(spooled_llm_spans(m)) == sent, timeout_s=30,
             what="every answered call in the ledger and the spool")
    assert sent == 9
    assert "  supervisor   detached supervisor (pid" in m.command("status", "--verbose").stdout


def test_a_daemon_that_cannot_start_again_is_given_up_on_at_once_and_the_next_hook_run_repairs_it(
        machine_with_upstream, upstream):
    m = machine_with_upstream
    assert m.cli("sync").returncode == 0
    executable = m.home / "bin" / "opik-cipx"
    executable.unlink()  # deleted, say, by a clean-up of the user's
    pid = daemon_pid(m)
    os.kill(pid, signal.SIGKILL)
    status, headers, body = call(m.port)  # waits for the restart, which fails: the answer is ours
    assert (status, headers["x-should-retry"], json.loads(body)["error"]["message"]) == (503, "false", ANSWER)
    record = m.supervisor()
    assert record["state"] == "gave up" and record["restarts"] == 1
    assert record["reason"].startswith("the daemon cannot start (exited with status 2")
    assert "opik-cipx" in record["deaths"][-1]["detail"]  # Python's "can't open file ..."
    assert m.base_url() is None
    conn = http.client.HTTPConnection("127.0.0.1", m.port, timeout=30)
    conn.request("HEAD", "/")  # Claude Code's first request of a session
    head = conn.getresponse()
    assert (head.status, head.getheader("x-should-retry"), head.read()) == (503, "false", b"")
    conn.close()

    hook = m.cli("sync", input=SESSION_START.read_text())
    assert hook.returncode == 0, hook.stderr
    assert executable.is_file() and m.base_url() == f"http://127.0.0.1:{m.port}"
    upstream.script(fixture_reply(response(SCENARIO, NUMBER)))
    assert call(m.port)[0] == 200


def test_a_killed_supervisor_leaves_the_daemon_serving_and_the_next_sync_takes_it_over(
        machine_with_upstream, upstream):
    m = machine_with_upstream
    assert m.cli("sync").returncode == 0
    first = m.supervisor()
    pid = daemon_pid(m)
    os.kill(first["pid"], signal.SIGKILL)
    wait_gone(first["pid"])
    upstream.script(fixture_reply(response(SCENARIO, NUMBER)))
    assert call(m.port)[0] == 200 and daemon_pid(m) == pid  # the daemon did not notice
    assert ("supervisor   ! none: the daemon's supervisor is gone, so nothing starts the daemon again if it dies"
            in m.command("status").stdout)

    synced = m.cli("sync", input=SESSION_START.read_text())
    assert synced.returncode == 0 and f"started a supervisor for the running daemon (pid {pid})" in synced.stderr
    second = wait_for(lambda: (r := m.supervisor()) and r["pid"] != first["pid"] and r["state"] == "adopting" and r,
                      what="the new supervisor watching the daemon")
    assert second["daemon_pid"] == pid and daemon_pid(m) == pid  # taken over, not restarted

    # A daemon taken over holds the port itself: calls made while it dies are refused or reset (and
    # retried by Claude Code) until the supervisor, which binds it then, has started the next one.
    os.kill(pid, signal.SIGKILL)
    third = wait_for(lambda: (r := m.supervisor()) and r["state"] == "running" and r["daemon_pid"] != pid and r,
                     what="the supervisor to start a daemon of its own")
    upstream.script(fixture_reply(response(SCENARIO, NUMBER)))
    assert call(m.port)[0] == 200 and third["pid"] == second["pid"]
    wait_for(lambda: daemon_pid(m) == third["daemon_pid"], what="the new daemon's state.json")


def test_a_daemon_stopped_behind_the_supervisors_back_stays_stopped_and_says_so(machine_with_upstream):
    m = machine_with_upstream
    assert m.cli("sync").returncode == 0
    pid = daemon_pid(m)
    os.kill(pid, signal.SIGTERM)  # a clean stop, as systemd's Restart=on-failure would not restart either
    record = wait_for(lambda: (r := m.supervisor()) and r["state"] == "gave up" and r, what="the supervisor to stop")
    assert record["reason"] == "the daemon stopped by itself (exited with status 0): not restarted"
    assert record["restarts"] == 0
    status, headers, _ = call(m.port)
    assert (status, headers["x-should-retry"]) == (503, "false")


def test_stop_and_the_kill_switch_stop_the_supervisor_and_tell_a_session_that_went_through_it(
        machine_with_upstream):
    m = machine_with_upstream
    assert m.cli("sync").returncode == 0
    record, pid = m.supervisor(), daemon_pid(m)
    our_url = f"http://127.0.0.1:{m.port}"
    off = m.cli("sync", input=SESSION_START.read_text(), CIPX_DISABLED="1", ANTHROPIC_BASE_URL=our_url)
    assert off.returncode == 0 and json.loads(off.stdout) == {"systemMessage": f"opik-cipx: {OFF_THIS_SESSION}"}
    wait_gone(record["pid"])
    wait_gone(pid)
    assert m.supervisor() is None and m.state() is None and m.base_url() is None
    assert "supervisor stopped" in (m.home / "logs" / "supervisor.log").read_text()
    unrelated = m.cli("sync", input=SESSION_START.read_text(), CIPX_DISABLED="1")  # a session that went direct
    assert unrelated.returncode == 0 and unrelated.stdout == ""


def test_a_session_that_goes_through_a_daemon_that_cannot_come_up_is_told_to_start_a_new_one(
        machine_with_upstream):
    m = machine_with_upstream
    assert m.cli("sync").returncode == 0
    broken = {"CIPX_CA_BUNDLE": str(m.home / "missing.pem")}  # every start now fails
    assert m.cli("restart", **broken).returncode == 1
    our_url = f"http://127.0.0.1:{m.port}"
    hook = m.cli("sync", input=SESSION_START.read_text(), ANTHROPIC_BASE_URL=our_url, **broken)
    assert hook.returncode == 0 and json.loads(hook.stdout) == {"systemMessage": f"opik-cipx: {DOWN_THIS_SESSION}"}
    assert "cannot load the CA bundle" in hook.stderr and m.base_url() is None
    record = wait_for(lambda: (r := m.supervisor()) and r["state"] == "gave up" and r, timeout_s=30,
                      what="the supervisor to give up")
    assert record["reason"] == "the daemon died 5 times within 120s (the last exited with status 1)"
    assert all("cannot load the CA bundle" in death["detail"] for death in record["deaths"])
    assert call(m.port)[0] == 503


def test_one_supervisor_per_home(synced):
    m = synced
    record = m.supervisor()
    second = m.cli("supervise")
    assert second.returncode == 1
    assert second.stderr == (f"opik-cipx: a supervisor (pid {record['pid']}) already runs on {m.home}; "
                             "nothing was started.\n")
    assert m.supervisor() == record


def test_the_supervisor_runs_in_a_session_of_its_own_with_its_daemon(synced):
    """Closing the terminal that ran `sync`, or ending the Claude Code that ran the hook, does not end it."""
    m = synced
    pid = m.supervisor()["pid"]
    assert os.getsid(pid) == pid and os.getpgid(pid) == pid
    assert os.getpgid(daemon_pid(m)) == pid  # its daemon goes with it when its group is killed
    assert sys.platform != "linux" or "supervise" in open(f"/proc/{pid}/cmdline").read()
