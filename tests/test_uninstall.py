"""`uninstall` says what it destroys and does only that: the question lists the ledger (the whole cost
history), `--keep-ledger` keeps it for the next install, `daemon stopped` is said once the daemon and its
supervisor are gone, and a status line that `statusline --install --force` replaced comes back.

The executable is the one built once for the run (`built_pyz`), installed as bare `./install.sh` or a
first `sync` would install it: these tests are about uninstall, not the build.
"""

import http.client
import json
import os
import select
import subprocess
import sys
from types import SimpleNamespace

import pytest

from opik_cipx.control.daemon_control import pid_alive
from opik_cipx.ledger import queries
from opik_cipx.ledger.db import open_reader
from opik_cipx.ledger.store import Ledger
from tests.claude_code_corpus import corpus_clock, materialized
from tests.conftest import load_fixture, wait_for
from tests.fake_anthropic import split_sse, sse_reply
from tests.lifecycle_helpers import SESSION_START, Machine, install_prebuilt
from tests.test_end_to_end import replay_scenario
from tests.test_install_hooks import write_settings

# Each scenario starts on a machine with nothing of ours on it: the first install or sync builds
# or installs the executable (tests.lifecycle_helpers, `no_executable`).
pytestmark = pytest.mark.no_executable

LEDGER = ("ledger.db", "ledger.db-wal", "ledger.db-shm")


def answered(m: Machine, *args: str, answer: str) -> subprocess.CompletedProcess:
    """`uninstall ARGS` on a terminal (a pty), its question answered with `answer`."""
    main, terminal = os.openpty()
    try:
        os.write(main, answer.encode() + b"\n")  # typed ahead: the terminal keeps it for the question
        return subprocess.run([sys.executable, "-m", "opik_cipx", "uninstall", *args], env=m.env(), stdin=terminal,
                              capture_output=True, text=True, timeout=60)
    finally:
        os.close(main)
        os.close(terminal)


def test_the_question_names_the_ledger_and_the_whole_cost_history_and_no_changes_nothing(machine):  # noqa: F811
    m = machine
    ledger = Ledger(m.home / "ledger.db", retention_days=400, clock=corpus_clock())
    for *_, result in materialized(m.home / "sessions"):
        ledger.write(result.call)
    ledger.close()
    conn = open_reader(m.home / "ledger.db")
    total, first = queries.report(conn, ()).total, queries.first_day(conn)
    conn.close()
    history = f"{total['calls']:,} calls, ${total['cost_usd']:,.2f}, since {first}"
    before = sorted(p.name for p in m.home.iterdir())

    asked = answered(m, answer="n")
    assert asked.returncode == 1 and "nothing changed" in asked.stderr
    assert asked.stdout.startswith("This stops opik-cipx and deletes, for good:\n"
                                   f"  - {m.home / 'ledger.db'}: the whole cost history ({history}) that `report`, "
                                   "the dashboard and the status line show; `--keep-ledger` keeps it\n"), asked.stdout
    assert "Uninstall opik-cipx? [y/N]" in asked.stdout
    assert sorted(p.name for p in m.home.iterdir()) == before

    keeping = answered(m, "--keep-ledger", answer="no")
    assert keeping.returncode == 1 and "deletes, for good:\n  - the rest of" in keeping.stdout
    assert f"It keeps {m.home / 'ledger.db'} ({history}), alone in {m.home}: the next install reads it again" \
        in keeping.stdout
    assert sorted(p.name for p in m.home.iterdir()) == before


def next_line(proc: subprocess.Popen, timeout_s: float = 60) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    assert ready, "uninstall said nothing more"
    return proc.stdout.readline()


def test_daemon_stopped_is_said_once_the_daemon_and_its_supervisor_are_gone(machine_with_upstream,  # noqa: F811
                                                                              upstream, built_pyz):
    m = machine_with_upstream
    m.put_executable(built_pyz)
    assert m.cli("sync").returncode == 0
    daemon = wait_for(lambda: (state := m.state()) and state["pid"], what="state.json")
    supervisor = m.supervisor()["pid"]
    _, response = load_fixture("tools", "001")
    held = sse_reply(split_sse(response["body"]), hold_after=2)
    upstream.script(held)
    conn = http.client.HTTPConnection("127.0.0.1", m.port, timeout=60)
    conn.request("POST", "/v1/messages", body=b"{}")
    stream = conn.getresponse()
    first = stream.read1(65536)  # in flight: the daemon drains it before it can exit
    uninstall = subprocess.Popen([sys.executable, "-m", "opik_cipx", "uninstall", "--yes"], env=m.env(),
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert next_line(uninstall) == (f"opik-cipx: stopping the daemon (pid {daemon}) and its supervisor (pid "
                                        f"{supervisor}): calls in flight get up to 30s to finish\n")
        assert pid_alive(daemon) and pid_alive(supervisor)  # draining our call
        held.gate.set()
        assert first + stream.read() == response["body"].encode()  # finished whole
        assert next_line(uninstall) == "opik-cipx: daemon stopped\n"
        assert not pid_alive(daemon) and not pid_alive(supervisor)
        out, err = uninstall.communicate(timeout=60)
    finally:
        uninstall.kill()
    assert uninstall.returncode == 0, err
    assert "opik-cipx: uninstalled." in out and not m.home.exists()


def test_a_hook_that_runs_sync_while_uninstall_stops_the_daemon_does_nothing(machine_with_upstream,  # noqa: F811
                                                                                upstream, built_pyz):
    """Claude Code runs `sync` at every prompt: one that comes while `uninstall` waits for the daemon to
    drain must not start it again (before: it replaced the draining daemon and uninstall stopped with
    `... still runs`)."""
    m = machine_with_upstream
    m.put_executable(built_pyz)
    assert m.cli("sync").returncode == 0
    daemon = wait_for(lambda: (state := m.state()) and state["pid"], what="state.json")
    supervisor = m.supervisor()["pid"]
    _, response = load_fixture("tools", "001")
    held = sse_reply(split_sse(response["body"]), hold_after=2)
    upstream.script(held)
    conn = http.client.HTTPConnection("127.0.0.1", m.port, timeout=60)
    conn.request("POST", "/v1/messages", body=b"{}")
    stream = conn.getresponse()
    first = stream.read1(65536)  # in flight: uninstall's stop waits for it
    uninstall = subprocess.Popen([sys.executable, "-m", "opik_cipx", "uninstall", "--yes"], env=m.env(),
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert next_line(uninstall).startswith("opik-cipx: stopping the daemon")
        wait_for(lambda: (m.supervisor() or {}).get("state") == "stopping", what="the supervisor to be stopping")
        hook = m.cli("sync", input=SESSION_START.read_text())  # a prompt submitted meanwhile
        assert (hook.returncode, hook.stdout, hook.stderr) == (0, "", "")
        assert pid_alive(daemon) and pid_alive(supervisor)  # still draining our call, untouched
        held.gate.set()
        assert first + stream.read() == response["body"].encode()
        out, err = uninstall.communicate(timeout=60)
    finally:
        uninstall.kill()
    assert uninstall.returncode == 0, err
    assert "opik-cipx: uninstalled." in out and not m.home.exists()
    assert not pid_alive(daemon) and not pid_alive(supervisor) and m.base_url() is None


def test_keep_ledger_keeps_the_cost_history_and_the_next_install_reports_it(machine_with_upstream,  # noqa: F811
                                                                              upstream, built_pyz):
    m = machine_with_upstream
    assert install_prebuilt(m, built_pyz).returncode == 0
    calls = replay_scenario(SimpleNamespace(port=m.port), upstream, "tools")

    def report() -> dict:
        result = m.command("report", "--by", "model", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    before = wait_for(lambda: (doc := report())["total"]["calls"] == calls and doc, what="the calls in the ledger")
    gone = m.cli("uninstall", "--yes", "--keep-ledger")
    assert gone.returncode == 0, gone.stderr
    assert f"deleted everything in {m.home} but ledger.db" in gone.stdout
    kept = sorted(p.name for p in m.home.iterdir())
    assert "ledger.db" in kept and set(kept) <= set(LEDGER), kept
    assert m.base_url() is None and not (m.claude_dir / "hooks").exists()

    (m.home / "ports.json").write_text(json.dumps({"claude_code": m.port}))  # this test's port, not 9909
    assert install_prebuilt(m, built_pyz).returncode == 0  # the next install
    assert report() == before
    assert m.stats()["counters"]["ledger_write_errors"] == 0


def test_a_status_line_replaced_with_force_comes_back_byte_for_byte(machine_with_upstream, built_pyz):  # noqa: F811
    m = machine_with_upstream
    theirs = {"type": "command", "command": "bash ~/.claude/statusline.sh", "padding": 0}
    original = write_settings(m, {"model": "opus", "statusLine": theirs, "env": {"FOO": "1"}})
    assert install_prebuilt(m, built_pyz).returncode == 0  # our hooks and ANTHROPIC_BASE_URL go in too
    assert m.command("statusline", "--install").returncode == 1  # theirs is not replaced without --force
    forced = m.command("statusline", "--install", "--force")
    assert forced.returncode == 0, forced.stderr
    assert f"yours is kept in {m.home / 'statusline-backup.json'}; `opik-cipx uninstall` puts it back" in forced.stdout
    assert m.settings()["statusLine"]["command"] == f"{m.home / 'bin' / 'opik-cipx'} statusline"
    assert m.command("statusline", "--install", "--force").returncode == 0  # ours again: the backup stays theirs

    gone = m.cli("uninstall", "--yes")
    assert gone.returncode == 0, gone.stderr
    assert f"put back your statusLine in {m.settings_path}" in gone.stdout
    assert m.settings_path.read_bytes() == original
