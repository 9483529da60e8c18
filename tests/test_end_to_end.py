"""The whole chain with real processes: Claude Code-shaped calls -> daemon -> TLS fake Anthropic,
materialized off the wire, spooled, shipped to a fake Opik (or kept and shown in the viewer)."""

import http.client
import json

import pytest

from tests.claude_code_corpus import FIXTURES_5X, request, requests, response
from tests.conftest import DaemonProcess, run_command, wait_for
from tests.fake_anthropic import fixture_reply
from tests.fake_opik import API_KEY, WORKSPACE, FakeOpik


def replay_scenario(daemon: DaemonProcess, upstream, scenario: str) -> int:
    """Send every recorded request of a scenario through the daemon; the number of model calls."""
    numbers = [n for n, req in requests(scenario) if req["path"].startswith("/v1/messages")]
    upstream.script(*(fixture_reply(response(scenario, n)) for n in numbers))
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    for number in numbers:
        req = request(scenario, number)
        headers = {k: v for k, v in req["headers"].items() if k.lower() not in ("host", "content-length", "connection")}
        conn.request(req["method"], req["path"], body=req["body"].encode(), headers=headers)
        resp = conn.getresponse()
        assert resp.read() == response(scenario, number)["body"].encode()
    return len(numbers)


def test_calls_become_spans_in_opik_with_exact_cost(home, upstream):
    with FakeOpik() as opik:
        daemon = DaemonProcess(home, upstream.url, OPIK_CIPX_BASE_URL=opik.url, OPIK_CIPX_API_KEY=API_KEY,
                               OPIK_CIPX_WORKSPACE=WORKSPACE, OPIK_CIPX_PROJECT="cc-{nope}")
        try:
            calls = replay_scenario(daemon, upstream, "tools")
            stats = wait_for(lambda: (s := daemon.stats())["counters"]["events_materialized"] == calls and s,
                             what="every call materialized")
            assert stats["counters"]["materializer_errors_total"] == 0

            def spans():
                with opik.lock:
                    return [v[-1] for v in opik.received.values() if "type" in v[-1]]

            wait_for(lambda: len(spans()) == 12, timeout_s=20, what="6 llm + 6 tool spans at the fake Opik")
            assert opik.violations == []
            llm = sorted((s for s in spans() if s["type"] == "llm"), key=lambda s: s["start_time"])
            assert [s["metadata"]["cc"]["call"]["kind"] for s in llm] == ["main"] * 6
            assert all(s["total_estimated_cost"] > 0 and s["project_name"] == "cc-{nope}" for s in llm)
            assert len({s["trace_id"] for s in spans()}) == 1
            with opik.lock:
                traces = [v[-1] for v in opik.received.values() if "thread_id" in v[-1]]
            assert len(traces) == 1 and traces[0]["metadata"]["cc"]["metrics_rollup"]["calls"] == 6
            wait_for(lambda: daemon.counter("spans_shipped") >= 13, what="shipped counted")
        finally:
            assert daemon.stop() == 0


def test_without_opik_no_record_is_kept_for_it_and_the_calls_show_in_the_viewer(daemon, upstream):
    """Issue 25: without Opik, the spool held 256 KB of prompt text after 12 calls, with no age limit."""
    calls = replay_scenario(daemon, upstream, "mcp")
    stats = wait_for(lambda: (s := daemon.stats())["counters"]["events_materialized"] == calls and s,
                     what="every call materialized")
    assert stats["opik"]["configured"] is False
    assert stats["wal"]["hot_bytes"] == 0 and stats["wal"]["discarded"] > calls  # issue 25: no spool without Opik
    assert stats["queue"] == {"in_memory": 0, "ready": 0, "inflight": 0}
    report = json.loads(run_command(daemon.home, "report", "--json").stdout)
    assert report["total"]["calls"] == calls  # the ledger has them
    assert "no record is kept for it" in run_command(daemon.home, "status").stdout
    viewer_port = daemon.state["ports"]["viewer"]
    assert daemon.stats()["listeners"]["viewer"] == f"127.0.0.1:{viewer_port}"
    conn = http.client.HTTPConnection("127.0.0.1", viewer_port, timeout=10)
    conn.request("GET", "/api/calls")
    refused = conn.getresponse()
    assert (refused.status, refused.read()[:17]) == (403, b"opik-cipx viewer:")  # prompts: only with the token
    conn.request("GET", "/api/calls", headers=daemon.viewer_cookie())
    rows = json.loads(conn.getresponse().read())
    assert len(rows) == calls and all(r["kind"] == "main" for r in rows)
    conn.request("GET", f"/capture/{rows[0]['capture_id']}", headers=daemon.viewer_cookie())
    page = conn.getresponse().read().decode()
    assert "mcp__weather__get_forecast" in page and "tools_mcp" in page
    assert daemon.stop() == 0
    assert not [p for p in (daemon.home / "spool").glob("*.jsonl") if p.stat().st_size]


def test_kill_9_after_calls_then_restart_ships_the_same_ids_replay_derives(home, upstream):
    with FakeOpik() as opik:
        env = dict(OPIK_CIPX_BASE_URL=opik.url, OPIK_CIPX_API_KEY=API_KEY, OPIK_CIPX_WORKSPACE=WORKSPACE)
        opik.down()  # Opik unreachable while the calls happen
        daemon = DaemonProcess(home, upstream.url, **env)
        calls = replay_scenario(daemon, upstream, "subagent")
        wait_for(lambda: daemon.stats()["counters"]["events_materialized"] == calls, what="materialized")
        wait_for(lambda: daemon.stats()["queue"]["in_memory"] == 0 and daemon.stats()["queue"]["ready"] > 0,
                 what="records durable in the spool")
        daemon.kill()  # kill -9: nothing gets a chance to flush
        opik.up()
        daemon = DaemonProcess(home, upstream.url, **env)
        try:
            replayed = run_command(home, "replay", "--records")
            assert replayed.returncode == 0, replayed.stderr
            expected = {json.loads(line)["body"]["id"] for line in replayed.stdout.splitlines()}
            wait_for(lambda: expected <= opik.ids(), timeout_s=20, what="every record at Opik after the restart")
            assert opik.ids() == expected  # nothing extra, nothing under another id
        finally:
            assert daemon.stop() == 0
    assert opik.violations == []


def test_an_unknown_claude_model_is_priced_as_the_newest_of_its_family_and_status_lists_it(home, upstream):
    """A model newer than the price table (the fake Anthropic answers as `claude-opus-6`)."""
    req, resp = request("subagent", "001", FIXTURES_5X), response("subagent", "001", FIXTURES_5X)
    answer = {**resp, "body": resp["body"].replace('"model": "claude-opus-5-5"', '"model": "claude-opus-6"')}
    assert answer["body"] != resp["body"]
    with FakeOpik() as opik:
        daemon = DaemonProcess(home, upstream.url, OPIK_CIPX_BASE_URL=opik.url, OPIK_CIPX_API_KEY=API_KEY,
                               OPIK_CIPX_WORKSPACE=WORKSPACE)
        try:
            upstream.script(fixture_reply(answer), fixture_reply(answer))
            conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
            headers = {k: v for k, v in req["headers"].items() if k.lower() not in ("host", "content-length")}
            for _ in range(2):
                conn.request("POST", req["path"], body=req["body"].encode(), headers=headers)
                assert conn.getresponse().read() == answer["body"].encode()
            stats = wait_for(lambda: (s := daemon.stats())["counters"]["events_materialized"] == 2 and s,
                             what="both calls materialized")
            assert stats["unknown_models"]["calls"] == 2
            (entry,) = stats["unknown_models"]["ids"]
            assert (entry["id"], entry["calls"], entry["priced_as"]) == ("claude-opus-6", 2, "claude-opus-5-5")

            def llm_spans():
                with opik.lock:
                    return [v[-1] for v in opik.received.values() if v[-1].get("type") == "llm"]

            spans = wait_for(lambda: len(llm_spans()) == 2 and llm_spans(), timeout_s=20, what="2 llm spans in Opik")
            assert opik.violations == []
            # Opus 5.5's published rates: $4 input, $5 5-minute cache write, $20 output per MTok
            expected = (5 * 4 + 20779 * 5 + 88 * 20) / 1e6
            for span in spans:
                pricing = span["metadata"]["cc"]["pricing"]
                assert span["model"] == "claude-opus-6" and span["total_estimated_cost"] == pytest.approx(expected)
                assert pricing["estimated_from"] == "claude-opus-5-5" and pricing["unknown_model"] is True

            status = run_command(home, "status")
            assert status.returncode == 0, status.stderr
            assert ('  ! claude-opus-6: 2 call(s) priced as claude-opus-5-5 (estimated); '
                    'add [prices."claude-opus-6"] to config.toml for its exact price') in status.stdout.splitlines()
            prices = run_command(home, "prices", "--json")
            assert json.loads(prices.stdout)["daemon"]["unknown_models"]["ids"][0]["id"] == "claude-opus-6"
            log = (home / "logs" / "cipx.log").read_text()
            assert log.count("pricing: model 'claude-opus-6' is not in the price table") == 1  # once per new id
            assert '[prices."claude-opus-6"]' in log
        finally:
            assert daemon.stop() == 0
