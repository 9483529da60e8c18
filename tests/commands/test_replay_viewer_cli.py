"""`opik-cipx replay` and `opik-cipx viewer` as real subprocesses against a real daemon's state."""

import json
import time

from opik_cipx.store.captures import CaptureStore
from tests.claude_code_corpus import exchange, exchanges
from tests.conftest import run_cli
from tests.opik_schema import problems


def store_scenario(home, scenario: str) -> int:
    store = CaptureStore(home / "captures", max_bytes=10**9, max_age_s=10**9, segment_bytes=200_000)
    captured = exchanges(scenario)
    for _, capture in captured:
        store.append(capture)
    store.close()
    return len(captured)


def test_replay_rederives_the_same_records_read_only(home, tmp_path):
    store_scenario(home, "subagent")
    before = sorted(p.relative_to(home) for p in home.rglob("*"))
    first = run_cli(home, "replay")
    assert first.returncode == 0, first.stderr
    records = [json.loads(line) for line in first.stdout.splitlines()]
    assert records and all(problems(r) == [] for r in records)
    assert {r["body"]["metadata"]["cc"]["call"]["kind"] for r in records if r["body"].get("type") == "llm"} == {
        "main", "subagent"}
    out = tmp_path / "replayed.jsonl"
    second = run_cli(home, "replay", "--out", str(out))
    assert second.returncode == 0 and second.stdout == ""
    assert out.read_text() == first.stdout  # same captures => same ids and content
    assert out.stat().st_mode & 0o777 == 0o600  # it holds prompts and responses
    assert f"-> {out}" in second.stderr
    assert sorted(p.relative_to(home) for p in home.rglob("*")) == before  # nothing written under CIPX_HOME


def test_replay_since_filters_and_bad_input_is_a_clear_error(home):
    store_scenario(home, "simple")
    # simple/001 was recorded at 2026-11-24T01:53:20Z
    assert run_cli(home, "replay", "--since", "2026-11-24T01:53Z").stdout.count("\n") == 2  # trace + llm span
    assert run_cli(home, "replay", "--since", "2026-11-24T01:54:00Z").stdout == ""
    # A relative window counts back from the moment it is read; the capture's date is fixed, so
    # the window is sized from both: the test holds on any date, a shifted wall clock included.
    minutes = (time.time_ns() - exchange("simple", "001").started_at_ns) // (60 * 10**9)
    assert run_cli(home, "replay", "--since", f"{minutes + 2}m").stdout.count("\n") == 2
    assert run_cli(home, "replay", "--since", f"{minutes - 2}m").stdout == ""
    bad = run_cli(home, "replay", "--since", "yesterday-ish")
    assert bad.returncode == 2 and "cannot read --since" in bad.stderr and "Traceback" not in bad.stderr
    empty = run_cli(home.parent / "elsewhere", "replay")
    assert empty.returncode == 0 and "nothing to replay" in empty.stderr


def test_viewer_prints_the_sign_in_url_and_says_when_the_daemon_is_down(daemon):
    result = run_cli(daemon.home, "viewer")
    assert result.returncode == 0
    token = (daemon.home / "viewer.token").read_text().strip()
    assert result.stdout.strip() == f"http://127.0.0.1:{daemon.state['ports']['viewer']}/?token={token}"
    (daemon.home / "viewer.token").unlink()
    missing = run_cli(daemon.home, "viewer")
    assert missing.returncode == 1 and "no viewer token in" in missing.stderr and "opik-cipx status" in missing.stderr
    daemon.stop()
    down = run_cli(daemon.home, "viewer")
    assert down.returncode == 1 and "not running" in down.stderr and "opik-cipx sync" in down.stderr


def test_replay_ledger_rebuilds_the_ledger_and_never_counts_a_call_twice(home):
    import sqlite3

    calls = store_scenario(home, "subagent") + store_scenario(home, "error")
    # The ledger keeps `retention_days` back from the clock of the moment, and these captures'
    # dates are fixed: keep them whatever today's date is.
    (home / "config.toml").write_text("[ledger]\nretention_days = 100000\n")
    printed = run_cli(home, "replay")
    costs = [json.loads(line)["body"].get("total_estimated_cost") or 0.0 for line in printed.stdout.splitlines()]
    for _ in range(2):
        result = run_cli(home, "replay", "--ledger")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "" and f"-> {home / 'ledger.db'}" in result.stderr
        conn = sqlite3.connect(home / "ledger.db")
        count, cost = conn.execute("SELECT count(*), total(cost_usd) FROM calls").fetchone()
        conn.close()
        assert count == calls - 2  # the two preconnects are no calls
        assert abs(cost - sum(costs)) < 1e-12
    both = run_cli(home, "replay", "--ledger", "--out", str(home.parent / "x.jsonl"))
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_replay_ledger_records_an_absurd_usage_value_clamped_and_goes_on(home):
    """Issue 22.2: `replay --ledger` crashed on a call whose usage held `10**30` output tokens."""
    import dataclasses
    import re
    import sqlite3

    store = CaptureStore(home / "captures", max_bytes=10**9, max_age_s=10**9, segment_bytes=200_000)
    captured = exchanges("simple") + exchanges("tools")
    absurd = captured[1][1]
    body = re.sub(rb'"output_tokens": *\d+', b'"output_tokens": 1' + b"0" * 30, absurd.response_body)
    captured[1] = (captured[1][0], dataclasses.replace(absurd, response_parts=[body]))
    for _, capture in captured:
        store.append(capture)
    store.close()
    (home / "config.toml").write_text("[ledger]\nretention_days = 100000\n")  # the captures' dates are fixed
    result = run_cli(home, "replay", "--ledger")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "clamped" in result.stderr
    conn = sqlite3.connect(home / "ledger.db")
    rows = dict(conn.execute("SELECT capture_id, output_tokens FROM calls").fetchall())
    conn.close()
    assert len(rows) == len(captured) - 2  # every call, the absurd one included; the preconnects are no calls
    assert rows[absurd.id] == 2**63 - 1
