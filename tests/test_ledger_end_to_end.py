"""The ledger with the real daemon: the recorded corpus through the proxy, `report` against the
spans the daemon spooled, a restart, and `kill -9` in the middle of the ledger writes."""

import json
import sqlite3

from opik_cipx.ledger.db import open_reader
from tests.claude_code_corpus import SCENARIOS, write_session_files
from tests.conftest import DaemonProcess, run_command, wait_for
from tests.test_end_to_end import replay_scenario

REPORTS = (("--by", "model"), ("--by", "session"), ("--by", "day,bucket"))


def spooled_call_costs(home) -> dict[str, float]:
    """span id -> total_estimated_cost of every llm span in the spool (the newest version)."""
    costs = {}
    for segment in sorted((home / "spool").glob("*.jsonl")):
        for line in segment.read_text().splitlines():
            body = json.loads(line)["body"]
            if body.get("type") in ("llm", "general"):  # a Messages call; count_tokens is general
                costs[body["id"]] = body.get("total_estimated_cost") or 0.0
    return costs


def reports(home) -> dict[tuple, dict]:
    out = {}
    for args in REPORTS:
        result = run_command(home, "report", *args, "--json")
        assert result.returncode == 0, result.stderr
        out[args] = json.loads(result.stdout)
    return out


def send_corpus(daemon: DaemonProcess, upstream) -> int:
    return sum(replay_scenario(daemon, upstream, scenario) for scenario in SCENARIOS)


def test_report_totals_equal_the_spans_and_survive_a_restart(home, upstream, opik_down):
    write_session_files(home / "sessions")
    daemon = DaemonProcess(home, upstream.url, **opik_down)  # the spans wait in the spool
    try:
        calls = send_corpus(daemon, upstream)
        wait_for(lambda: daemon.counter("events_materialized") == calls, timeout_s=30, what="every call materialized")
        wait_for(lambda: daemon.stats()["queue"]["in_memory"] == 0, what="records in the spool")
        spans = spooled_call_costs(home)
        assert len(spans) == calls == 71
        before = reports(home)  # while the daemon runs and holds the ledger open
        for args, doc in before.items():
            assert abs(doc["total"]["cost_usd"] - sum(spans.values())) < 1e-9, args
            assert abs(sum(row["cost_usd"] for row in doc["rows"]) - sum(spans.values())) < 1e-9, args
            assert doc["total"]["calls"] == calls
        assert {row["session"] for row in before[("--by", "session")]["rows"]} == {
            json.loads(p.read_text())["session_id"] for p in (home / "sessions").glob("*.json")}
        assert all(row["session_label"] and row["session_project"] and row["session_started_at"]
                   for row in before[("--by", "session")]["rows"])  # each session as people know it
        assert daemon.counter("ledger_write_errors") == 0
    finally:
        assert daemon.stop() == 0
    assert reports(home) == before  # daemon down
    daemon = DaemonProcess(home, upstream.url, **opik_down)
    try:
        assert reports(home) == before  # restarted: the ledger is not emptied
    finally:
        assert daemon.stop() == 0


def test_without_content_capture_sessions_are_known_by_project_and_start_only(home, upstream):
    write_session_files(home / "sessions")
    daemon = DaemonProcess(home, upstream.url, CIPX_CAPTURE_CONTENT="false")
    try:
        calls = replay_scenario(daemon, upstream, "subagent")
        wait_for(lambda: daemon.counter("events_materialized") == calls, timeout_s=30, what="every call materialized")
    finally:
        assert daemon.stop() == 0
    (row,) = json.loads(run_command(home, "report", "--by", "session", "--json").stdout)["rows"]
    assert row["session_label"] is None and row["session_project"] == "/home/dev/code/inventory-sync"
    assert row["session_started_at"]
    assert b"survey" not in b"".join(p.read_bytes() for p in home.glob("ledger.db*"))  # the prompt is nowhere in it


def test_kill_9_mid_write_then_rematerializing_counts_nothing_twice(home, upstream):
    write_session_files(home / "sessions")
    daemon = DaemonProcess(home, upstream.url)
    calls = send_corpus(daemon, upstream)
    wait_for(lambda: daemon.counter("events_materialized") >= calls // 2, timeout_s=30, what="half materialized")
    daemon.kill()  # kill -9 while the materializer is writing the ledger
    conn = sqlite3.connect(home / "ledger.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    written = conn.execute("SELECT count(*) FROM calls").fetchone()[0]
    conn.close()
    assert 0 < written <= calls
    daemon = DaemonProcess(home, upstream.url)
    try:
        # re-materialize every stored capture into the ledger the running daemon holds open
        for _ in range(2):
            rebuilt = run_command(home, "replay", "--ledger")
            assert rebuilt.returncode == 0, rebuilt.stderr
        printed = run_command(home, "replay", "--records")
        records = [json.loads(line)["body"] for line in printed.stdout.splitlines()]
        llm = {r["id"]: r.get("total_estimated_cost") or 0.0 for r in records if r.get("type") in ("llm", "general")}
        assert len(llm) >= written  # every call already in the ledger has its capture stored
        for args, doc in reports(home).items():
            assert doc["total"]["calls"] == len(llm), args
            assert abs(doc["total"]["cost_usd"] - sum(llm.values())) < 1e-9, args
        conn = open_reader(home / "ledger.db")
        assert conn.execute("SELECT count(DISTINCT capture_id) FROM calls").fetchone()[0] == len(llm)
        conn.close()
    finally:
        assert daemon.stop() == 0


HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
"""


def test_a_corrupt_or_locked_ledger_never_stops_the_calls_or_their_spans(home, upstream, opik_down):
    import subprocess
    import sys

    home.mkdir(parents=True)
    (home / "ledger.db").write_bytes(b"not a database " * 1000)
    daemon = DaemonProcess(home, upstream.url, **opik_down)  # the spans wait in the spool
    try:
        first = replay_scenario(daemon, upstream, "tools")
        wait_for(lambda: daemon.counter("events_materialized") == first, what="tools materialized")
        assert list(home.glob("ledger.db.corrupt-*"))  # moved aside, a new ledger started
        assert daemon.counter("ledger_write_errors") == 1
        holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(home / "ledger.db")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "locked"
            second = replay_scenario(daemon, upstream, "mcp")  # every byte still relayed (asserted inside)
            wait_for(lambda: daemon.counter("events_materialized") == first + second, what="mcp materialized")
            assert daemon.counter("ledger_write_errors") >= 2
            assert daemon.counter("materializer_errors_total") == 0
        finally:
            holder.stdin.close()
            holder.wait(10)

        def ledger_calls() -> int:
            return json.loads(run_command(home, "report", "--json").stdout)["total"]["calls"]

        wait_for(lambda: ledger_calls() == first + second, timeout_s=20, what="the waiting calls written, unprompted")
        third = replay_scenario(daemon, upstream, "simple")
        wait_for(lambda: ledger_calls() == first + second + third, what="the next call written")
        assert daemon.counter("ledger_calls_dropped") == 0
        assert "ledger:" in (home / "logs" / "cipx.log").read_text()
    finally:
        assert daemon.stop() == 0
    spans = spooled_call_costs(home)
    assert len(spans) == first + second + third


def test_an_absurd_usage_value_never_stops_the_ledger_and_sigterm_ends_cleanly(home, upstream):
    """Issue 22.2: after a call reporting `10**30` output tokens, every later call was missing from
    the ledger (with `ledger_write_errors` at 0 and `status` clean), and SIGTERM ended in a crash."""
    import re

    from tests.claude_code_corpus import request, requests, response
    from tests.fake_anthropic import fixture_reply

    numbers = [n for n, req in requests("simple") if req["path"].startswith("/v1/messages")]
    absurd = dict(response("simple", numbers[0]))
    absurd["body"] = re.sub(r'"output_tokens": *\d+', '"output_tokens": 1' + "0" * 30, absurd["body"])
    daemon = DaemonProcess(home, upstream.url)
    try:
        upstream.script(fixture_reply(absurd))
        conn = http_connection(daemon)
        req = request("simple", numbers[0])
        conn.request(req["method"], req["path"], body=req["body"].encode(), headers=forwarded(req))
        assert conn.getresponse().read() == absurd["body"].encode()  # the wire relays it as it came
        later = replay_scenario(daemon, upstream, "tools")
        wait_for(lambda: daemon.counter("events_materialized") == 1 + later, what="every call materialized")

        def ledger_calls() -> int:
            return json.loads(run_command(home, "report", "--json").stdout)["total"]["calls"]

        wait_for(lambda: ledger_calls() == 1 + later, what="every call in the ledger, the absurd one included")
        counters = daemon.stats()["counters"]
        assert counters["calls_flagged"] == 1 and counters["ledger_values_clamped"] == 1
        assert counters["ledger_calls_dropped"] == 0 and counters["materializer_errors_total"] == 0
        status = run_command(home, "status").stdout
        assert "calls_flagged" in status and "! calls whose usage" in status
    finally:
        assert daemon.stop() == 0  # drained, not "opik-cipx crashed"
    assert not (home / "state.json").exists()
    assert "crashed" not in (home / "logs" / "cipx.log").read_text()


def http_connection(daemon: DaemonProcess):
    import http.client

    return http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)


def forwarded(req: dict) -> dict:
    return {k: v for k, v in req["headers"].items() if k.lower() not in ("host", "content-length", "connection")}
