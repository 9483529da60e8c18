"""`opik-cipx status`: the rendering of the admin stats, exit codes, and that it is read-only."""

import json
import os
import signal
import time

from opik_cipx import __version__, cli
from opik_cipx.commands import status
from opik_cipx.commands.status import age, duration, render, size
from opik_cipx.config import load_settings
from opik_cipx.ship.destination import NOT_CONFIGURED
from opik_cipx.stats import COUNTER_NAMES, PROBLEM_COUNTERS, default_sections
from opik_cipx.telemetry import OPT_IN
from tests.conftest import wait_for
from tests.lifecycle_helpers import wait_gone

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
SETTINGS = load_settings({"CIPX_HOME": "/h/.opik-cipx", "HOME": "/h"})
CLAUDE_OK = "-> http://127.0.0.1:9909 (/h/.claude/settings.json)"
OPIK_OK = {"configured": True, "base_url": "https://www.comet.com/opik/api", "workspace": "acme",
           "last_ok_at": "2027-01-15T07:59:57Z", "last_error": None, "paused": False, "quarantined": 0}
TELEMETRY_OFF = {"enabled": False, "reason": OPT_IN, "sent": 0, "dropped": 0, "suppressed": 0, "last_error": None}


def stats_doc(**over) -> dict:
    doc = {
        "pid": 4242, "version": "9.9.9", "started_at": "2027-01-15T08:00:00.000Z", "uptime_s": 7384.2,
        "listeners": {"claude_code": "127.0.0.1:9909", "admin": "127.0.0.1:40001", "viewer": "127.0.0.1:40002"},
        "upstream": {"url": "https://api.anthropic.com", "proxy": None},
        "project": "cc-ada", **default_sections(), "counters": dict.fromkeys(COUNTER_NAMES, 0),
        "opik": OPIK_OK, "telemetry": TELEMETRY_OFF,
    }
    doc["wal"] = doc["wal"] | {"segments": 1, "hot_bytes": 2048, "last_sync_at": "2027-01-15T07:59:58Z"}
    doc["counters"].update(requests_captured=12, events_materialized=10, spans_shipped=8)
    doc.update(over)
    return doc


TODAY = "3 call(s), $0.4200 (`opik-cipx report` for more)"


def text_of(**over) -> str:
    return render(stats_doc(**over), SETTINGS, CLAUDE_OK, now=NOW, today=TODAY)


UP = """\
opik-cipx 9.9.9: running (pid 4242), healthy
  today        3 call(s), $0.4200 (`opik-cipx report` for more)
  claude code  -> http://127.0.0.1:9909 (/h/.claude/settings.json)
opik
  destination  https://www.comet.com/opik/api, workspace acme
  last shipped 3s ago
telemetry      off (opt-in: set CIPX_SENTRY_DSN to send error reports)"""

VERBOSE = """\
opik-cipx 9.9.9: running (pid 4242), healthy
  today        3 call(s), $0.4200 (`opik-cipx report` for more)
  claude code  -> http://127.0.0.1:9909 (/h/.claude/settings.json)
  claude_code  127.0.0.1:9909
  admin        127.0.0.1:40001
  viewer       127.0.0.1:40002
  uptime       2h 03m (since 2027-01-15T08:00:00.000Z)
  upstream     https://api.anthropic.com
  project      cc-ada
queue
  in-memory    0
  ready        0
  inflight     0
  wal hot      2.0 KiB in 1 segment(s)
  last commit  2s ago
counters
  requests_captured                  12
  events_materialized                10
  spans_shipped                       8
  materializer_errors_total           0
  raw_captures_dropped                0
  requests_dropped_queue_full         0
  captures_dropped_budget             0
  spans_dropped_term                  0
  unknown_endpoints                   0
  panics_recovered                    0
  ledger_write_errors                 0
  ledger_calls_dropped                0
  ledger_values_clamped               0
  calls_flagged                       0
  requests_refused                    0
  connections_refused                 0
  requests_timed_out                  0
  responses_truncated                 0
  connections_not_owner               0
materializer
  ready_raw           0  finished calls in memory, not yet in the capture log
  lag_events          0  captures in the log, not yet materialized
  inflight_raw        0  being materialized
opik
  destination  https://www.comet.com/opik/api, workspace acme
  last shipped 3s ago
telemetry      off (opt-in: set CIPX_SENTRY_DSN to send error reports)"""


def test_the_work_process_its_pid_restarts_and_lag_its_last_death_and_a_down_one_flagged():
    running = {"pid": 4343, "state": "running", "started_at": "2027-01-15T07:58:00.000Z", "restarts": 0,
               "deaths": [], "next_start_in_s": None, "stale": False}
    assert text_of(work=running) == UP  # a healthy work process says nothing unless asked
    verbose = render(stats_doc(work=running, materializer={"lag_events": 3}), SETTINGS, CLAUDE_OK, now=NOW,
                     today=TODAY, verbose=True)
    assert ("  work         pid 4343, running since 2027-01-15T07:58:00.000Z, 0 restart(s), 3 capture(s) "
            "behind") in verbose
    died = {**running, "restarts": 1, "deaths": [{"at": "2027-01-15T07:59:50.000Z", "pid": 4300,
                                                    "how": "killed by SIGKILL", "ran_s": 12.0, "working": None}]}
    text = text_of(work=died)
    assert ("  work died    1 time(s), last 10s ago (killed by SIGKILL); the wire started it again and nothing "
            "was lost (`opik-cipx logs` says why)") in text and "healthy" in text.splitlines()[0]
    down = text_of(work={**died, "pid": None, "state": "restarting", "next_start_in_s": 0.5})
    assert down.splitlines()[0].endswith("1 problem(s): each `!` line says what fixes it")
    assert "  ! work process restarting (next start in 0.5s): calls still go through" in down


def test_up_leads_with_health_and_todays_cost_and_verbose_shows_everything():
    assert text_of() == UP
    assert "!" not in UP
    assert render(stats_doc(), SETTINGS, CLAUDE_OK, now=NOW, today=TODAY, verbose=True) == VERBOSE


def test_internals_show_without_verbose_only_when_they_matter():
    lagging = text_of(materializer={"ready_raw": 2, "lag_events": 746, "inflight_raw": 1})
    assert lagging == replaced(UP, "opik\n", "materializer   catching up: 746 capture(s) in the log, not yet "
                                             "materialized (lag_events)\nopik\n")
    assert "ready_raw" not in lagging and "queue" not in lagging  # the queue: --verbose


def replaced(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


def test_degraded_exact_wording():
    wal = stats_doc()["wal"] | {"degraded": True, "last_write_error": "OSError: [Errno 28] No space left on device",
                                "dropped_events_inmem": 3}
    problems = """\
  ! spool degraded: writing /h/.opik-cipx/spool fails (OSError: [Errno 28] No space left on device); records wait \
in memory and are written once it works: free disk space or fix that directory's permissions
  ! dropped records: 3 in memory, 0 on disk: get shipping to Opik going, or raise spool.inmem_max / spool.max_mb \
in /h/.opik-cipx/config.toml and run `opik-cipx restart`
"""
    expected = replaced(UP, "opik\n", f"spool\n{problems}opik\n")
    assert text_of(wal=wal) == expected.replace("healthy", "2 problem(s): each `!` line says what fixes it")
    verbose = render(stats_doc(wal=wal), SETTINGS, CLAUDE_OK, now=NOW, today=TODAY, verbose=True)
    assert replaced(VERBOSE, "  last commit  2s ago\n", f"  last commit  2s ago\n{problems}") == verbose.replace(
        "2 problem(s): each `!` line says what fixes it", "healthy")


def test_opik_unreachable_exact_wording():
    error = ("cannot reach Opik at https://www.comet.com/opik/api: URLError: [Errno 111] Connection refused; "
             "retrying in 4s")
    opik = OPIK_OK | {"last_error": error, "last_ok_at": "2027-01-15T07:00:00Z"}
    expected = replaced(UP, "  last shipped 3s ago\n", f"""\
  last shipped 1h 00m ago
  ! {error}
    shipping retries by itself; if it persists, check that Opik answers at opik.base_url \
(/h/.opik-cipx/config.toml); `opik-cipx logs` shows each attempt
""")
    assert text_of(opik=opik) == replaced(expected, "healthy", "1 problem(s): each `!` line says what fixes it")


def test_opik_refusing_the_key_names_the_settings_and_restart():
    opik = OPIK_OK | {"last_error": "Opik refused the credentials (HTTP 401) ...", "paused": True, "last_ok_at": None}
    lines = text_of(opik=opik).splitlines()
    at = lines.index("  last shipped never")
    assert lines[at + 1:at + 3] == [
        "  ! Opik refused the credentials (HTTP 401) ...",
        "    fix: opik.base_url / opik.api_key / opik.workspace in /h/.opik-cipx/config.toml (or OPIK_CIPX_* or "
        "~/.opik.config), then run `opik-cipx restart`"]


def test_opik_not_configured_exact_wording():
    opik = {"configured": False, "base_url": None, "workspace": "default", "last_error": NOT_CONFIGURED,
            "last_ok_at": None, "paused": False, "quarantined": 0}
    expected = replaced(UP, """\
  destination  https://www.comet.com/opik/api, workspace acme
  last shipped 3s ago
""", f"  {NOT_CONFIGURED}\n")
    assert text_of(opik=opik) == expected
    assert "config.toml" in NOT_CONFIGURED and "opik configure" in NOT_CONFIGURED and "restart" in NOT_CONFIGURED
    old_daemon = render(stats_doc(opik={"configured": False}), SETTINGS, now=NOW)  # a daemon without the hint
    assert f"opik\n  {NOT_CONFIGURED}\n" in old_daemon


def test_problem_counters_are_flagged_with_what_fixes_them():
    counters = dict.fromkeys(COUNTER_NAMES, 0)
    counters.update(unknown_endpoints=3, panics_recovered=1, requests_captured=5)
    text = text_of(counters=counters)
    flagged = {line.split()[0] for line in text.splitlines() if "  ! " in line and line.startswith("  ") and
               line.split()[0] in COUNTER_NAMES}
    assert flagged == {"unknown_endpoints", "panics_recovered"}
    assert "newer Claude Code: update opik-cipx (install.sh or the plugin)" in text
    assert text.splitlines()[-1] == ("! 2 problem counter(s) nonzero: unknown_endpoints, panics_recovered — see "
                                     "/h/.opik-cipx/logs/cipx.log")
    assert text.splitlines()[0].endswith("2 problem(s): each `!` line says what fixes it")
    shown = [line.split()[0] for line in text.splitlines() if line.split()[0] in COUNTER_NAMES]
    assert shown == ["unknown_endpoints", "panics_recovered"]  # not the zeros, nor the counts of work done
    verbose = render(stats_doc(counters=counters), SETTINGS, CLAUDE_OK, now=NOW, today=TODAY, verbose=True)
    assert [line.split()[0] for line in verbose.splitlines() if line.split()[0] in COUNTER_NAMES] == list(COUNTER_NAMES)
    for name in PROBLEM_COUNTERS:
        line = next(line for line in text_of(counters=dict.fromkeys(COUNTER_NAMES, 0) | {name: 1}).splitlines()
                    if line.split()[:1] == [name])
        hint = line.split("  ! ", 1)[1]
        assert "`opik-cipx " in hint or "/h/.opik-cipx/" in hint or "install.sh" in hint, hint  # a command or a file
    assert "raise tee_queue_max in /h/.opik-cipx/config.toml" in text_of(
        counters=dict.fromkeys(COUNTER_NAMES, 0) | {"requests_dropped_queue_full": 2})
    assert "permissions of /h/.opik-cipx/captures" in text_of(
        counters=dict.fromkeys(COUNTER_NAMES, 0) | {"raw_captures_dropped": 2})


def test_upstream_through_a_proxy_and_telemetry_on_with_a_failing_dsn():
    telemetry = {"enabled": True, "reason": "on (CIPX_SENTRY_DSN: error reports go to o1.ingest.sentry.io; "
                 "CIPX_SENTRY=off stops them)", "sent": 2, "dropped": 1, "suppressed": 0,
                 "last_error": "Sentry answered HTTP 403"}
    lines = render(stats_doc(upstream={"url": "https://api.anthropic.com", "proxy": "http://proxy.corp:3128"},
                             telemetry=telemetry), SETTINGS, CLAUDE_OK, now=NOW, today=TODAY, verbose=True).splitlines()
    assert "  upstream     https://api.anthropic.com via http://proxy.corp:3128" in lines
    assert lines[-2:] == [
        "telemetry      on (CIPX_SENTRY_DSN: error reports go to o1.ingest.sentry.io; CIPX_SENTRY=off stops them): "
        "2 sent, 1 dropped",
        "  ! last report failed: Sentry answered HTTP 403; check telemetry.sentry_dsn in /h/.opik-cipx/config.toml "
        "(or CIPX_SENTRY_DSN)"]


def test_a_daemon_running_without_the_home_lock_says_so():
    assert "home lock" not in render(stats_doc(home_lock={"held": True, "error": None}), SETTINGS, now=NOW)
    text = render(stats_doc(home_lock={"held": False, "error": "cannot create daemon.lock: No space left on device"}),
                  SETTINGS, now=NOW)
    assert ("  ! home lock not held (cannot create daemon.lock: No space left on device): a second `opik-cipx proxy` "
            "on this home would not be refused; free disk space or fix /h/.opik-cipx, then `opik-cipx restart`"
            ) in text.splitlines()


def test_quarantined_records_are_counted_with_the_command_that_retries_them():
    opik = default_sections()["opik"] | {"configured": True, "base_url": "http://o/api", "quarantined": 3,
                                         "retry_pending": 2}
    lines = render(stats_doc(opik=opik), SETTINGS, now=NOW).splitlines()
    assert ("  ! quarantine: 3 record(s) Opik refused wait in spool/quarantine.jsonl (with Opik's reason); "
            "fix the cause, then run `opik-cipx ship --retry-quarantine`") in lines
    assert "  retry pending: 2 record(s) handed back, not yet in the queue" in lines


def test_render_survives_a_partial_document():
    text = render({"pid": 1}, SETTINGS, now=NOW, verbose=True)
    assert text.startswith("opik-cipx ?: running (pid 1), healthy") and "  upstream     ?" in text
    assert text.splitlines()[-1] == "telemetry      off"


def test_today_comes_from_the_ledger_with_the_daemon_up_or_down(tmp_path):
    from opik_cipx.commands.status import today_line
    from opik_cipx.ledger.entry import ledger_entry
    from opik_cipx.ledger.store import Ledger
    from opik_cipx.materialize.materializer import Materializer
    from opik_cipx.materialize.pricing import load_price_table
    from tests.claude_code_corpus import exchanges
    from tests.materialize.test_materializer import config

    settings = load_settings({"CIPX_HOME": str(tmp_path / "home"), "HOME": str(tmp_path)})
    assert today_line(settings) == "no calls recorded yet"
    m = Materializer(config(tmp_path), load_price_table())
    entries = []
    for _, capture in exchanges("tools"):
        capture.started_at_ns = capture.ended_at_ns = time.time_ns()  # today
        entry = ledger_entry(call) if (call := m.materialize(capture).call) else None
        if entry:
            entries.append(entry)
    ledger = Ledger(settings.ledger_path, retention_days=400)
    ledger.write_entries(entries)
    ledger.close()
    cost = sum(e.call["cost_usd"] or 0 for e in entries)
    assert today_line(settings) == f"{len(entries)} call(s), ${cost:,.4f} (`opik-cipx report` for more)"
    assert today_line(settings, now_ns=time.time_ns() + 2 * 86400 * 10**9).startswith("0 call(s), $0.0000")
    settings.ledger_path.write_bytes(b"not a database" * 100)
    assert today_line(settings).startswith(f"! cannot read {settings.ledger_path} (")


def test_formatting_helpers():
    assert [duration(s) for s in (0, 59, 61, 3600, 90061)] == ["0s", "59s", "1m 01s", "1h 00m", "1d 1h"]
    assert size(0) == "0 B" and size(2048) == "2.0 KiB" and size(5 * 1024 ** 3) == "5.0 GiB"
    assert age(None, NOW) == "never"
    assert age("2027-01-14T08:00:00Z", NOW) == "1d 0h ago"


def test_not_running_exact_wording_exit_0_and_writes_nothing(machine):
    before = sorted(p.name for p in machine.home.rglob("*"))
    result = machine.command("status")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == (
        "opik-cipx: not running — run `opik-cipx sync` to start it\n"
        "  today        no calls recorded yet\n"
        f"  claude code  not pointed at opik-cipx (no ANTHROPIC_BASE_URL in {machine.settings_path}); "
        "run `opik-cipx sync`\n")
    assert json.loads(machine.command("status", "--json").stdout) == {"running": False}
    assert sorted(p.name for p in machine.home.rglob("*")) == before
    assert not machine.claude_dir.exists()


def test_up_then_wedged_then_killed_exact_wording_against_real_processes(machine):
    assert machine.cli("sync").returncode == 0
    state = machine.state()
    pid, admin = state["pid"], state["ports"]["admin"]
    result = machine.command("status")
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines == [f"opik-cipx {__version__}: running (pid {pid}), healthy",
                     "  today        no calls recorded yet",
                     f"  claude code  -> http://127.0.0.1:{machine.port} ({machine.settings_path})",
                     "opik", f"  {NOT_CONFIGURED}", f"telemetry      {OPT_IN}"]
    lines = machine.command("status", "--verbose").stdout.splitlines()
    assert lines[3:6] == [f"  claude_code  127.0.0.1:{machine.port}", f"  admin        127.0.0.1:{admin}",
                          f"  viewer       127.0.0.1:{state['ports']['viewer']}"]
    assert lines[7:9] == ["  upstream     https://api.anthropic.com", "  project      claude-code"]
    assert "counters" in lines and "materializer" in lines
    raw = json.loads(machine.command("status", "--json").stdout)
    assert raw["pid"] == pid and set(raw["counters"]) == set(COUNTER_NAMES)

    os.kill(pid, signal.SIGSTOP)  # alive but not answering
    try:
        wedged = machine.command("status")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert wedged.returncode == 1 and wedged.stdout == ""
    assert wedged.stderr == (
        f"opik-cipx: state.json names pid {pid}, but its admin listener (127.0.0.1:{admin}) does not answer: "
        "the daemon is wedged. Run `opik-cipx restart` (or `opik-cipx sync`); `opik-cipx logs` shows what "
        "happened.\n")

    supervisor = machine.supervisor()["pid"]  # first: it would start the daemon again at once
    os.kill(supervisor, signal.SIGKILL)
    wait_gone(supervisor)
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    state_before = (machine.home / "state.json").read_bytes()
    dead = machine.command("status")
    assert dead.returncode == 1
    assert dead.stderr == (
        f"opik-cipx: state.json names pid {pid}, but its admin listener (127.0.0.1:{admin}) does not answer: "
        f"process {pid} is gone (it crashed or was killed). Run `opik-cipx restart` (or `opik-cipx sync`); "
        "`opik-cipx logs` shows what happened.\n")
    assert json.loads(machine.command("status", "--json").stdout) == {"running": False, "wedged": True, "pid": pid}
    assert (machine.home / "state.json").read_bytes() == state_before  # read-only, even when wedged

    repaired = machine.cli("sync")
    assert repaired.returncode == 0, repaired.stderr
    new_pid = machine.state()["pid"]
    assert new_pid != pid
    wait_for(lambda: machine.command("status").returncode == 0, timeout_s=10, what="status after repair")


def test_a_bad_key_is_named_in_one_line_and_status_still_reads_the_rest_of_the_config_file(tmp_path, monkeypatch,
                                                                                             capsys):
    home = tmp_path / "state"
    home.mkdir()
    config = tmp_path / "cipx.toml"
    config.write_text('tee_queue_max = "many"\ndrain_timeout_s = -1\n[opik]\nbase_url = "http://127.0.0.1:5173/api"\n'
                      'workspace = "acme"\n')
    for key in [key for key in os.environ if key.startswith(("CIPX_", "OPIK_", "CLAUDE_"))]:
        monkeypatch.delenv(key)
    for key, value in {"HOME": str(tmp_path), "CIPX_HOME": str(home), "CIPX_CONFIG": str(config),
                       "CIPX_SUPERVISOR": "detached"}.items():
        monkeypatch.setenv(key, value)
    shown = []
    real_run = status.run
    monkeypatch.setattr(status, "run", lambda args, settings: shown.append(settings) or real_run(args, settings))

    assert cli.main(["status"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("opik-cipx: not running")
    lines = err.splitlines()
    assert len(lines) == 2, err  # one line per bad key, each naming it
    for line, key in zip(lines, ("drain_timeout_s", "tee_queue_max"), strict=True):
        assert line.startswith(f"opik-cipx: warning: bad setting in config file {config}, key '{key}': "), err
    settings, = shown
    assert (settings.home, settings.config_path) == (home, config)
    assert (settings.opik_base_url, settings.opik_workspace) == ("http://127.0.0.1:5173/api", "acme")
    assert (settings.tee_queue_max, settings.drain_timeout_s) == (128, 30.0)  # the bad ones at their defaults


def test_an_unusable_claude_settings_file_is_named_with_its_fix(machine):
    machine.claude_dir.mkdir()
    machine.settings_path.write_text("{not json")
    result = machine.command("status")
    assert result.returncode == 0
    line = result.stdout.splitlines()[2]
    assert line.startswith(f"  claude code  ! cannot tell: {machine.settings_path} is unusable (it is not valid JSON")
    assert line.endswith("; fix that file, then run `opik-cipx sync`")


def test_status_reports_claude_code_bypassing_the_proxy(machine):
    assert machine.cli("sync").returncode == 0
    machine.settings_path.write_text(json.dumps({"env": {"ANTHROPIC_BASE_URL": "https://elsewhere.example"}}))
    result = machine.command("status")
    assert (f"  claude code  ! bypasses opik-cipx: {machine.settings_path} sets ANTHROPIC_BASE_URL="
            f"https://elsewhere.example; remove that entry (or set it to http://127.0.0.1:{machine.port}), then run "
            "`opik-cipx sync`") in result.stdout.splitlines()


def test_unknown_models_are_listed_with_how_they_were_priced_and_the_fix():
    section = {"calls": 4, "ids": [
        {"id": "claude-opus-6", "calls": 3, "priced_as": "claude-opus-5-5", "reason": None, "first_seen_at": "x"},
        {"id": "gpt-4o", "calls": 1, "priced_as": None, "first_seen_at": "x",
         "reason": 'not a Claude model id: add [prices."gpt-4o"] with all five rates to config.toml'}]}
    lines = text_of(unknown_models=section).splitlines()
    start = lines.index("unknown models (4 call(s) not in the price table; `opik-cipx prices` shows it)")
    assert lines[start + 1] == ('  ! claude-opus-6: 3 call(s) priced as claude-opus-5-5 (estimated); '
                                'add [prices."claude-opus-6"] to config.toml for its exact price')
    assert lines[start + 2] == ('  ! gpt-4o: 1 call(s) with no cost: not a Claude model id: '
                                'add [prices."gpt-4o"] with all five rates to config.toml')
    assert lines[start + 3] == "opik"
    assert not any(line.startswith("unknown models") for line in text_of().splitlines())


def test_rate_limits_exact_wording_with_warnings():
    section = {
        "observed_at": "2027-01-15T07:59:58.000Z", "status": "allowed_warning", "representative_claim": "five_hour",
        "resets_at": NOW + 7980,
        "windows": {
            "5h": {"source": "unified", "utilization": 0.14, "resets_at": NOW + 7980, "status": "allowed"},
            "7d": {"source": "unified", "utilization": 0.81, "resets_at": NOW + 273600, "status": "allowed_warning",
                   "surpassed_threshold": 0.75},
            "7d_mythos": {"source": "unified", "utilization": 1.02, "resets_at": NOW + 432000, "status": "rejected"},
            "overage": {"source": "unified", "status": "rejected", "other": {"disabled-reason": "org_level_disabled"}},
            "requests": {"source": "classic", "limit": 4000, "remaining": 3999, "utilization": 0.00025,
                         "resets_at": NOW - 120},
        },
    }
    expected = replaced(UP, "  claude code  -> http://127.0.0.1:9909 (/h/.claude/settings.json)\n", """\
  claude code  -> http://127.0.0.1:9909 (/h/.claude/settings.json)
limits         status allowed_warning, binding five_hour, seen 2s ago (docs/RATE_LIMITS.md)
  5h           14% used, resets in 2h 13m
  7d           81% used, resets in 3d 4h  ! past the 75% warning threshold
  7d_mythos    102% used, resets in 5d 0h  ! status rejected
  overage      rejected, disabled-reason: org_level_disabled
  requests     0% used (3,999 of 4,000 left), reset 2m 00s ago
""")
    assert text_of(rate_limits=section) == expected
    assert "limits" not in UP  # no window seen yet: no section


AI_SPEND = "__ai_spend_acme__"


def test_status_says_whether_cost_intelligence_sees_what_is_shipped_and_why_not():
    seen = OPIK_OK | {"workspace": AI_SPEND, "endpoints": "device_token",
                      "cost_intelligence": {"project": "claude-code", "why_not": []}}
    text = text_of(opik=seen)
    assert ("  cost intel.  sees it: project claude-code, workspace __ai_spend_acme__, device-token endpoints "
            "(traces one by one)\n") in text
    assert "healthy" in text.splitlines()[0]
    why = ["the workspace 'acme' is not an AI Spend workspace (named __ai_spend_<...>__)"]
    elsewhere = OPIK_OK | {"endpoints": "batch", "cost_intelligence": {"project": "claude-code", "why_not": why}}
    text = text_of(opik=elsewhere)  # an Opik of one's own: said, not a problem
    assert ("  cost intel.  does not see it (project claude-code, workspace acme, batch endpoints): the workspace "
            "'acme' is not an AI Spend workspace (named __ai_spend_<...>__)\n") in text
    assert "healthy" in text.splitlines()[0]
    why = ["the project '{username}-cc' is templated, one per user: Cost Intelligence reads only the project "
           "'claude-code'"]
    meant = OPIK_OK | {"workspace": AI_SPEND, "endpoints": "device_token",
                       "cost_intelligence": {"project": "{username}-cc", "why_not": why}}
    lines = text_of(opik=meant).splitlines()  # an AI Spend workspace, a device token: it is meant to be seen
    at = next(i for i, line in enumerate(lines) if "Cost Intelligence does not see" in line)
    assert lines[at] == ("  ! Cost Intelligence does not see what is shipped (project {username}-cc, workspace "
                         "__ai_spend_acme__, device-token endpoints (traces one by one)): " + why[0])
    assert lines[at + 1] == ('    fix: opik.project = "claude-code" and opik.workspace = the AI Spend workspace in '
                             "/h/.opik-cipx/config.toml (or OPIK_CIPX_PROJECT / OPIK_CIPX_WORKSPACE), then run "
                             "`opik-cipx restart`")
    assert lines[0].endswith("1 problem(s): each `!` line says what fixes it")
    assert "cost intel." not in text_of()  # a daemon that does not say


def test_status_flags_an_opik_reached_in_clear():
    cleartext = ("the Opik base URL http://opik.corp/api is plain http:// to a host that is not this machine: every "
                 "record (prompts included) and the API key cross the network unencrypted; use https://")
    lines = text_of(opik=OPIK_OK | {"cleartext": cleartext}).splitlines()
    assert f"  ! {cleartext}" in lines
    assert lines[0].endswith("1 problem(s): each `!` line says what fixes it")
