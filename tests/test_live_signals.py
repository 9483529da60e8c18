"""Live signals with the real daemon: rate-limit headers from the wire in `status --json`,
`status` and the spans; cache breaks through the proxy in the ledger and `report`; the status
line while the daemon runs and after it stopped."""

import http.client
import json

import pytest

from tests.claude_code_corpus import FIXTURES, request, requests, response
from tests.conftest import DaemonProcess, run_command, wait_for
from tests.fake_anthropic import fixture_reply

RATE_LIMITS = FIXTURES.parent / "rate-limits"
CACHE_BREAKS = FIXTURES.parent / "cache-breaks"
ALL_WINDOWS = {"5h", "7d", "7d_mythos", "7d_oi", "7d_opus", "fallback", "overage",
               "requests", "tokens", "input-tokens", "output-tokens"}


def send(daemon: DaemonProcess, upstream, root, scenario: str) -> int:
    """Every request of a derived scenario through the daemon, answered as recorded there."""
    numbers = [n for n, _ in requests(scenario, root)]
    upstream.script(*(fixture_reply(response(scenario, n, root)) for n in numbers))
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    for number in numbers:
        req = request(scenario, number, root)
        headers = {k: v for k, v in req["headers"].items() if k.lower() not in ("host", "content-length", "connection")}
        conn.request(req["method"], req["path"], body=req["body"].encode(), headers=headers)
        resp = conn.getresponse()
        assert resp.read() == response(scenario, number, root)["body"].encode()
    return len(numbers)


def spooled_spans(home) -> list[dict]:
    out = {}
    for segment in sorted((home / "spool").glob("*.jsonl")):
        for line in segment.read_text().splitlines():
            body = json.loads(line)["body"]
            if body.get("type") == "llm":
                out[body["id"]] = body
    return list(out.values())


def test_every_rate_limit_window_reaches_status_json_status_and_the_spans(home, upstream, opik_down):
    daemon = DaemonProcess(home, upstream.url, **opik_down)  # the spans wait in the spool
    try:
        calls = send(daemon, upstream, RATE_LIMITS, "oauth") + send(daemon, upstream, RATE_LIMITS, "api_key")
        wait_for(lambda: daemon.counter("events_materialized") == calls, timeout_s=20, what="calls materialized")
        result = run_command(home, "status", "--json")
        assert result.returncode == 0, result.stderr
        limits = json.loads(result.stdout)["rate_limits"]
        assert set(limits["windows"]) == ALL_WINDOWS  # 7d_mythos: a name no release knows
        assert limits["status"] == "allowed_warning" and limits["representative_claim"] == "five_hour"
        assert limits["windows"]["7d"]["surpassed_threshold"] == 0.75
        assert limits["windows"]["requests"] == {**limits["windows"]["requests"], "limit": 4000, "remaining": 3999}
        assert "REDACTED" not in result.stdout and "Bearer" not in result.stdout
        text = run_command(home, "status").stdout.splitlines()
        at = next(i for i, line in enumerate(text) if line.startswith("limits "))
        assert text[at].startswith("limits         status allowed_warning, binding five_hour, seen ")
        shown = {line.split()[0]: line for line in text[at + 1:at + 1 + len(ALL_WINDOWS)]}
        assert set(shown) == ALL_WINDOWS
        assert shown["7d"].startswith("  7d           81% used, ") and shown["7d"].endswith(
            "  ! past the 75% warning threshold")
        assert shown["7d_mythos"].startswith("  7d_mythos    40% used, ")
        wait_for(lambda: len(spooled_spans(home)) == calls, what="spans in the spool")
        windows = [set(s["metadata"]["cc"]["rate_limits"]["windows"]) for s in spooled_spans(home)]
        assert set().union(*windows) == ALL_WINDOWS
    finally:
        assert daemon.stop() == 0


def test_cache_breaks_through_the_proxy_and_the_status_line_up_and_down(home, upstream, opik_down):
    daemon = DaemonProcess(home, upstream.url, **opik_down)  # the spans wait in the spool
    try:
        calls = send(daemon, upstream, CACHE_BREAKS, "tool_changed") + send(daemon, upstream, CACHE_BREAKS,
                                                                             "mcp_disconnected")
        wait_for(lambda: daemon.counter("events_materialized") == calls, timeout_s=20, what="calls materialized")
        doc = json.loads(run_command(home, "report", "--by", "cache_break", "--json").stdout)
        causes = {row["cache_break"]: row for row in doc["rows"]}
        assert set(causes) == {"none", "tools_changed"} and causes["tools_changed"]["cache_breaks"] == 2
        wait_for(lambda: len(spooled_spans(home)) == calls, what="spans in the spool")
        spans = spooled_spans(home)
        breaks = [s["metadata"]["cc"]["cache"]["break"] for s in spans if s["metadata"]["cc"]["cache"]["break"]]
        assert sorted(b["item"] for b in breaks) == ["MCP server notes disconnected", "tool Bash changed"]
        assert causes["tools_changed"]["cache_break_usd"] == pytest.approx(sum(b["extra_cost_usd"] for b in breaks))
        sessions = {}
        for span in spans:
            session = span["metadata"]["cc"]["session"]["id"]
            sessions[session] = sessions.get(session, 0.0) + span["total_estimated_cost"]
        lines = {s: status_line(home, s) for s in sessions}
        for session, cost in sessions.items():
            assert lines[session].startswith(f"${cost:.4f} · today $"), lines[session]
    finally:
        assert daemon.stop() == 0
    assert {s: status_line(home, s) for s in sessions} == lines  # the daemon down: the same line


def status_line(home, session: str) -> str:
    result = run_command(home, "statusline", input=json.dumps({"session_id": session}), NO_COLOR="1")
    assert result.returncode == 0 and result.stderr == ""
    return result.stdout.rstrip("\n")
