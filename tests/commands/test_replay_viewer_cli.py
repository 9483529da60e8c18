"""`opik-cipx replay` and `opik-cipx viewer` in the test's process (`run_command`) against a real daemon's state."""

import http.client
import json
import re
import time
import urllib.parse

from opik_cipx.store.captures import CaptureStore
from tests.claude_code_corpus import exchange, exchanges
from tests.conftest import DaemonProcess, run_command
from tests.opik_schema import problems


def store_scenario(home, scenario: str) -> int:
    store = CaptureStore(home / "captures", segment_bytes=200_000)
    captured = exchanges(scenario)
    for _, capture in captured:
        store.append(capture)
    store.close()
    return len(captured)


def test_replay_rederives_the_same_records_read_only(home, tmp_path):
    store_scenario(home, "subagent")
    before = sorted(p.relative_to(home) for p in home.rglob("*"))
    first = run_command(home, "replay", "--records")
    assert first.returncode == 0, first.stderr
    records = [json.loads(line) for line in first.stdout.splitlines()]
    assert records and all(problems(r) == [] for r in records)
    assert {r["body"]["metadata"]["cc"]["call"]["kind"] for r in records if r["body"].get("type") == "llm"} == {
        "main", "subagent"}
    assert f"  written   {len(records)} Opik record(s) to stdout" in first.stderr.splitlines()  # the summary
    out = tmp_path / "replayed.jsonl"
    second = run_command(home, "replay", "--out", str(out))
    assert second.returncode == 0 and second.stderr == ""
    assert out.read_text() == first.stdout  # same captures => same ids and content
    assert out.stat().st_mode & 0o777 == 0o600  # it holds prompts and responses
    assert second.stdout.splitlines()[-1] == f"  written   {len(records)} Opik record(s) to {out}"
    assert sorted(p.relative_to(home) for p in home.rglob("*")) == before  # nothing written under CIPX_HOME


def test_replay_prints_a_summary_by_default_and_no_prompt(home):
    """Captures read, calls by kind, their cost, sessions, errors, and what was written where:
    a few lines, where it used to print every record with its whole prompt and tool schemas."""
    captures = store_scenario(home, "subagent") + store_scenario(home, "error")
    records = [json.loads(line)["body"] for line in run_command(home, "replay", "--records").stdout.splitlines()]
    cost = sum(r.get("total_estimated_cost") or 0.0 for r in records if r.get("type") == "llm")
    result = run_command(home, "replay")
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"replayed {captures} capture(s) from {home / 'captures'}, calls from ")
    assert lines[1:] == [
        "  calls     10: 7 main, 3 subagent",
        f"  cost      ${cost:,.4f}",
        "  sessions  2",
        "  errors    3 overloaded_error",
        "  written   nothing (read-only): `--records` prints the Opik records, `--out FILE` writes them, "
        "`--ledger` writes the calls into ledger.db",
    ]
    assert "survey" not in result.stdout and "input_schema" not in result.stdout  # the prompt, the tool schemas


def sign_in(url: str) -> tuple[int, str, str | None]:
    """Open a sign-in URL as a browser without a cookie would: (status, body, the cookie it set)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}")
        resp = conn.getresponse()
        return resp.status, resp.read().decode(), (resp.getheader("Set-Cookie") or "").partition(";")[0] or None
    finally:
        conn.close()


def test_replay_since_filters_and_bad_input_is_a_clear_error(home):
    store_scenario(home, "simple")
    # simple/001 was recorded at 2026-11-24T01:53:20Z
    since = run_command(home, "replay", "--records", "--since", "2026-11-24T01:53Z")
    assert since.stdout.count("\n") == 2  # trace, span
    assert run_command(home, "replay", "--records", "--since", "2026-11-24T01:54:00Z").stdout == ""
    # A relative window counts back from the moment it is read; the capture's date is fixed, so
    # the window is sized from both: the test holds on any date, a shifted wall clock included.
    minutes = (time.time_ns() - exchange("simple", "001").started_at_ns) // (60 * 10**9)
    assert run_command(home, "replay", "--records", "--since", f"{minutes + 2}m").stdout.count("\n") == 2
    assert run_command(home, "replay", "--records", "--since", f"{minutes - 2}m").stdout == ""
    summary = run_command(home, "replay", "--since", f"{minutes - 2}m").stdout.splitlines()
    assert "  calls     0" in summary
    bad = run_command(home, "replay", "--since", "yesterday-ish")
    assert bad.returncode == 2 and "cannot read --since" in bad.stderr and "Traceback" not in bad.stderr
    empty = run_command(home.parent / "elsewhere", "replay")
    assert empty.returncode == 0 and "nothing to replay" in empty.stderr


def test_viewer_prints_a_one_time_sign_in_url_and_says_when_the_daemon_is_down(home, upstream):
    """Each run prints a new link; a link works once (the cookie it set keeps working, across a
    restart too); a second use is refused with a page that says to run `opik-cipx viewer`."""
    daemon = DaemonProcess(home, upstream.url)
    try:
        port = daemon.state["ports"]["viewer"]
        first, second = run_command(home, "viewer"), run_command(home, "viewer")
        assert first.returncode == second.returncode == 0
        link = first.stdout.strip()
        assert re.fullmatch(rf"http://127\.0\.0\.1:{port}/\?signin=[A-Za-z0-9_-]{{32}}", link)
        assert second.stdout.strip() != link  # a new link every time
        assert (home / "viewer.token").read_text().strip() not in first.stdout  # the token is no link
        status, _, cookie = sign_in(link)
        assert status == 200 and cookie
        status, body, again = sign_in(link)
        assert (status, again) == (403, None)
        assert "this sign-in link was used already" in body and "Run `opik-cipx viewer` for a new one" in body
    finally:
        assert daemon.stop() == 0
    daemon = DaemonProcess(home, upstream.url)
    try:
        assert daemon.state["ports"]["viewer"] == port
        assert sign_in(second.stdout.strip())[0] == 200  # a link not used yet survives the restart, once
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/calls", headers={"Cookie": cookie})
        assert conn.getresponse().status == 200  # the first browser is still signed in
        conn.close()
        (home / "viewer.token").unlink()
        missing = run_command(home, "viewer")
        assert missing.returncode == 1 and "no viewer token in" in missing.stderr
        assert "opik-cipx status" in missing.stderr
    finally:
        assert daemon.stop() == 0
    down = run_command(home, "viewer")
    assert down.returncode == 1 and "not running" in down.stderr and "opik-cipx sync" in down.stderr


def test_replay_ledger_rebuilds_the_ledger_and_never_counts_a_call_twice(home):
    import sqlite3

    calls = store_scenario(home, "subagent") + store_scenario(home, "error")
    # The ledger keeps `retention_days` back from the clock of the moment, and these captures'
    # dates are fixed: keep them whatever today's date is.
    (home / "config.toml").write_text("[ledger]\nretention_days = 100000\n")
    printed = run_command(home, "replay", "--records")
    costs = [json.loads(line)["body"].get("total_estimated_cost") or 0.0 for line in printed.stdout.splitlines()]
    for _ in range(2):
        result = run_command(home, "replay", "--ledger")
        assert result.returncode == 0, result.stderr
        assert result.stderr == "" and f"  written   {calls - 2} call(s) into {home / 'ledger.db'}" in result.stdout
        conn = sqlite3.connect(home / "ledger.db")
        count, cost = conn.execute("SELECT count(*), total(cost_usd) FROM calls").fetchone()
        conn.close()
        assert count == calls - 2  # the two preconnects are no calls
        assert abs(cost - sum(costs)) < 1e-12
    both = run_command(home, "replay", "--ledger", "--out", str(home.parent / "x.jsonl"))
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_replay_ledger_records_an_absurd_usage_value_clamped_and_goes_on(home):
    """Issue 22.2: `replay --ledger` crashed on a call whose usage held `10**30` output tokens."""
    import dataclasses
    import re
    import sqlite3

    store = CaptureStore(home / "captures", segment_bytes=200_000)
    captured = exchanges("simple") + exchanges("tools")
    absurd = captured[1][1]
    body = re.sub(rb'"output_tokens": *\d+', b'"output_tokens": 1' + b"0" * 30, absurd.response_body)
    captured[1] = (captured[1][0], dataclasses.replace(absurd, response_parts=[body]))
    for _, capture in captured:
        store.append(capture)
    store.close()
    (home / "config.toml").write_text("[ledger]\nretention_days = 100000\n")  # the captures' dates are fixed
    result = run_command(home, "replay", "--ledger")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "clamped" in result.stderr
    conn = sqlite3.connect(home / "ledger.db")
    rows = dict(conn.execute("SELECT capture_id, output_tokens FROM calls").fetchall())
    conn.close()
    assert len(rows) == len(captured) - 2  # every call, the absurd one included; the preconnects are no calls
    assert rows[absurd.id] == 2**63 - 1
