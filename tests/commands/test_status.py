"""`opik-cipx status`: the rendering of the admin stats, exit codes, and that it is read-only."""

import json
import os
import signal

from opik_cipx.commands.status import age, duration, render, size
from opik_cipx.stats import COUNTER_NAMES, PROBLEM_COUNTERS, default_sections
from tests.conftest import wait_for
from tests.lifecycle_helpers import machine, wait_gone  # noqa: F401 - fixture

NOW = 1_800_000_000.0


def stats_doc(**over) -> dict:
    doc = {
        "pid": 4242, "version": "9.9.9", "started_at": "2027-01-15T08:00:00.000Z", "uptime_s": 7384.2,
        "listeners": {"claude_code": "127.0.0.1:9909", "admin": "127.0.0.1:40001", "viewer": "127.0.0.1:40002"},
        "project": "cc-ada", **default_sections(), "counters": dict.fromkeys(COUNTER_NAMES, 0),
    }
    doc["counters"].update(requests_captured=12, events_materialized=10, spans_shipped=8)
    doc.update(over)
    return doc


def test_header_listeners_queue_counters_and_sections():
    text = render(stats_doc(), "-> http://127.0.0.1:9909 (settings.json)", "/h/logs/cipx.log", now=NOW)
    lines = text.splitlines()
    assert lines[0] == "opik-cipx 9.9.9: running (pid 4242)"
    assert "  claude_code  127.0.0.1:9909" in lines and "  viewer       127.0.0.1:40002" in lines
    assert "  uptime       2h 03m (since 2027-01-15T08:00:00.000Z)" in lines
    assert "  project      cc-ada" in lines
    assert "  claude code  -> http://127.0.0.1:9909 (settings.json)" in lines
    for header in ("queue", "counters", "materializer", "opik"):
        assert header in lines
    for label in ("in-memory", "ready", "inflight", "wal hot", "last sync", "lag_events", "inflight_raw", "ready_raw"):
        assert any(line.strip().startswith(label) for line in lines), label
    assert "  last sync    never" in lines
    assert any(line.split()[:2] == ["requests_captured", "12"] for line in lines)
    assert "!" not in text  # healthy: nothing flagged
    assert "  Opik is not configured: spans stay in the local spool." in lines  # an old daemon without a hint
    assert lines[-1] == "telemetry      off (no CIPX_SENTRY_DSN)"


def test_not_configured_shows_the_daemons_own_hint():
    from opik_cipx.ship.destination import NOT_CONFIGURED

    opik = {"configured": False, "base_url": None, "last_error": NOT_CONFIGURED, "last_ok_at": None}
    text = render(stats_doc(opik=opik), "", "", now=NOW)
    assert f"  {NOT_CONFIGURED}" in text.splitlines()
    assert "config.toml" in text and "opik configure" in text


def test_problem_counters_are_flagged_with_a_hint():
    counters = dict.fromkeys(COUNTER_NAMES, 0)
    counters.update(unknown_endpoints=3, panics_recovered=1, requests_captured=5)
    text = render(stats_doc(counters=counters), log_path="/h/logs/cipx.log", now=NOW)
    flagged = {line.split()[0] for line in text.splitlines() if "  ! " in line and line.startswith("  ") and
               line.split()[0] in COUNTER_NAMES}
    assert flagged == {"unknown_endpoints", "panics_recovered"}
    assert "wire-format change" in text
    assert text.splitlines()[-1] == "! 2 problem counter(s) nonzero: unknown_endpoints, panics_recovered — see /h/logs/cipx.log"
    for name in PROBLEM_COUNTERS:
        counters = dict.fromkeys(COUNTER_NAMES, 0) | {name: 1}
        assert f"nonzero: {name}" in render(stats_doc(counters=counters), now=NOW)


def test_wal_trouble_opik_state_and_telemetry():
    wal = default_sections()["wal"] | {"hot_bytes": 300 * 1024 * 1024, "segments": 7, "degraded": True,
                                       "last_write_error": "ENOSPC", "last_sync_at": "2027-01-15T07:59:00Z",
                                       "dropped_events_disk": 4}
    opik = {"configured": True, "base_url": "https://www.comet.com/opik/api", "last_error": "HTTP 401",
            "last_ok_at": None}
    text = render(stats_doc(wal=wal, opik=opik, telemetry={"enabled": True, "reason": "on (CIPX_SENTRY_DSN set)"}),
                  now=NOW)
    assert "  wal hot      300.0 MiB in 7 segment(s)" in text
    assert "wal degraded: True" in text and "last error: ENOSPC" in text
    assert "dropped events: 0 in memory, 4 on disk" in text
    assert "https://www.comet.com/opik/api" in text and "last error: HTTP 401" in text and "not configured" not in text
    assert "telemetry      on (CIPX_SENTRY_DSN set)" in text


def test_a_daemon_running_without_the_home_lock_says_so():
    assert "home lock" not in render(stats_doc(home_lock={"held": True, "error": None}), now=NOW)
    text = render(stats_doc(home_lock={"held": False, "error": "cannot create daemon.lock: No space left on device"}),
                  now=NOW)
    assert ("  ! home lock not held (cannot create daemon.lock: No space left on device): a second `opik-cipx proxy` "
            "on this home would not be refused; free disk space, then `opik-cipx restart`") in text.splitlines()


def test_quarantined_records_are_counted_with_the_command_that_retries_them():
    opik = default_sections()["opik"] | {"configured": True, "base_url": "http://o/api", "quarantined": 3,
                                         "retry_pending": 2}
    lines = render(stats_doc(opik=opik), now=NOW).splitlines()
    assert ("  ! quarantine: 3 record(s) Opik refused wait in spool/quarantine.jsonl (with Opik's reason); "
            "fix the cause, then run `opik-cipx ship --retry-quarantine`") in lines
    assert "  retry pending: 2 record(s) handed back, not yet in the queue" in lines


def test_render_survives_a_partial_document():
    text = render({"pid": 1}, now=NOW)
    assert text.startswith("opik-cipx ?: running (pid 1)")


def test_formatting_helpers():
    assert [duration(s) for s in (0, 59, 61, 3600, 90061)] == ["0s", "59s", "1m 01s", "1h 00m", "1d 1h"]
    assert size(0) == "0 B" and size(2048) == "2.0 KiB" and size(5 * 1024 ** 3) == "5.0 GiB"
    assert age(None, NOW) == "never"
    assert age("2027-01-14T08:00:00Z", NOW) == "1d 0h ago"  # NOW is 2027-01-15T08:00:00Z


def test_not_running_is_exit_0_and_writes_nothing(machine):
    before = sorted(p.name for p in machine.home.rglob("*"))
    result = machine.cli("status")
    assert result.returncode == 0
    assert "not running" in result.stdout and "opik-cipx sync" in result.stdout
    assert json.loads(machine.cli("status", "--json").stdout) == {"running": False}
    assert sorted(p.name for p in machine.home.rglob("*")) == before
    assert not machine.claude_dir.exists()


def test_running_status_and_json_then_kill_9_is_wedged_exit_1(machine):
    assert machine.cli("sync").returncode == 0
    pid = machine.state()["pid"]
    result = machine.cli("status")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("opik-cipx ") and f"running (pid {pid})" in result.stdout
    assert f"claude_code  127.0.0.1:{machine.port}" in result.stdout
    raw = json.loads(machine.cli("status", "--json").stdout)
    assert raw["pid"] == pid and set(raw["counters"]) == set(COUNTER_NAMES)

    os.kill(pid, signal.SIGSTOP)  # alive but not answering
    try:
        wedged = machine.cli("status")
        assert wedged.returncode == 1
        assert f"pid {pid}" in wedged.stderr and "wedged" in wedged.stderr and "opik-cipx restart" in wedged.stderr
    finally:
        os.kill(pid, signal.SIGCONT)

    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    state_before = (machine.home / "state.json").read_bytes()
    dead = machine.cli("status")
    assert dead.returncode == 1
    assert f"pid {pid}" in dead.stderr and "crashed or was killed" in dead.stderr and "opik-cipx sync" in dead.stderr
    assert json.loads(machine.cli("status", "--json").stdout) == {"running": False, "wedged": True, "pid": pid}
    assert (machine.home / "state.json").read_bytes() == state_before  # read-only, even when wedged

    repaired = machine.cli("sync")
    assert repaired.returncode == 0, repaired.stderr
    new_pid = machine.state()["pid"]
    assert new_pid != pid
    wait_for(lambda: machine.cli("status").returncode == 0, timeout_s=10, what="status after repair")


def test_status_reports_claude_code_bypassing_the_proxy(machine):
    assert machine.cli("sync").returncode == 0
    machine.settings_path.write_text(json.dumps({"env": {"ANTHROPIC_BASE_URL": "https://elsewhere.example"}}))
    result = machine.cli("status")
    assert "bypasses opik-cipx" in result.stdout and "elsewhere.example" in result.stdout


def test_unknown_models_are_listed_with_how_they_were_priced_and_the_fix():
    section = {"calls": 4, "ids": [
        {"id": "claude-opus-6", "calls": 3, "priced_as": "claude-opus-5-5", "reason": None, "first_seen_at": "x"},
        {"id": "gpt-4o", "calls": 1, "priced_as": None, "first_seen_at": "x",
         "reason": 'not a Claude model id: add [prices."gpt-4o"] with all five rates to config.toml'}]}
    lines = render(stats_doc(unknown_models=section), now=NOW).splitlines()
    start = lines.index("unknown models (4 call(s) not in the price table; `opik-cipx prices` shows it)")
    assert lines[start + 1] == ('  ! claude-opus-6: 3 call(s) priced as claude-opus-5-5 (estimated); '
                                'add [prices."claude-opus-6"] to config.toml for its exact price')
    assert lines[start + 2] == ('  ! gpt-4o: 1 call(s) with no cost: not a Claude model id: '
                                'add [prices."gpt-4o"] with all five rates to config.toml')
    assert lines[start + 3] == "opik"
    assert not any(line.startswith("unknown models") for line in render(stats_doc(), now=NOW).splitlines())
