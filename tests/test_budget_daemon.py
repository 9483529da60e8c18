"""A spend cap in a real daemon (docs/BUDGETS.md): recorded Claude Code calls through it to the TLS
fake Anthropic until the day cap is reached, then a 429 that never reaches the upstream; the
totals survive a restart; `opik-cipx budget allow` lets calls through again; the blocked request
is a ledger row `report --by kind` lists, and a span the fake Opik accepts and Cost Intelligence
does not count."""

import http.client
import json

from tests import cost_intelligence as ci
from tests.claude_code_corpus import corpus, request, response
from tests.conftest import DaemonProcess, run_command, wait_for
from tests.fake_anthropic import fixture_reply
from tests.fake_opik import API_KEY, WORKSPACE, FakeOpik

SCENARIO, NUMBER = "simple", "001"  # `claude -p "say hello"`: one main-loop call


def call_cost() -> float:
    (d,) = [d for d in corpus() if (d.scenario, d.number) == (SCENARIO, NUMBER)]
    return d.result.call.cost.total_usd


def post(daemon: DaemonProcess, path: str = "/v1/messages?beta=true") -> tuple[int, dict, bytes]:
    req = request(SCENARIO, NUMBER)
    headers = {k: v for k, v in req["headers"].items() if k.lower() not in ("host", "content-length", "connection")}
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    try:
        conn.request("POST", path, body=req["body"].encode(), headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def day_spent(daemon: DaemonProcess) -> float:
    (day,) = [cap for cap in daemon.stats()["budget"]["caps"] if cap["scope"] == "day"]
    return day["spent_usd"]


def blocked_spans(opik: FakeOpik) -> list[dict]:
    with opik.lock:
        return [v[-1] for v in opik.received.values() if v[-1].get("name") == "blocked"]


def answered_spans(opik: FakeOpik) -> set[str]:
    return {i for i, s in opik.spans.items() if s.get("type") == "llm" and s.get("name") != "blocked"}


def test_a_day_cap_blocks_on_the_wire_survives_a_restart_and_allow_lets_calls_through(home, upstream):
    cost = call_cost()
    home.mkdir(parents=True)
    (home / "config.toml").write_text(f"[budget]\nday_usd = {cost * 1.5}\n")  # one call below, two over
    upstream.default = fixture_reply(response(SCENARIO, NUMBER))
    with FakeOpik() as opik:
        shipping = {"OPIK_CIPX_BASE_URL": opik.url, "OPIK_CIPX_API_KEY": API_KEY, "OPIK_CIPX_WORKSPACE": WORKSPACE}
        daemon = DaemonProcess(home, upstream.url, **shipping)
        try:
            assert post(daemon)[0] == 200 and post(daemon)[0] == 200  # below the cap: both go through
            wait_for(lambda: day_spent(daemon) >= cost * 2 - 1e-5, what="both calls counted")
            status, headers, body = post(daemon)
            assert status == 429 and headers["x-should-retry"] == "false"
            message = json.loads(body)["error"]["message"]
            assert "spent of the" in message and "day cap" in message and "opik-cipx budget allow" in message
            assert post(daemon, "/v1/messages/count_tokens?beta=true")[0] == 200  # free: forwarded
            assert [s.path for s in upstream.seen].count("/v1/messages?beta=true") == 2
            assert daemon.stats()["budget"]["blocked"] == 1
            assert daemon.stop() == 0

            daemon = DaemonProcess(home, upstream.url, **shipping)  # a restart: the totals come back from the ledger
            assert post(daemon)[0] == 429
            result = run_command(home, "budget", "allow", "--for", "1h")
            assert result.returncode == 0 and "the daemon applied it" in result.stdout, result.stdout + result.stderr
            assert post(daemon)[0] == 200
            assert [s.path for s in upstream.seen].count("/v1/messages?beta=true") == 3
            wait_for(lambda: day_spent(daemon) >= cost * 3 - 1e-5, what="the allowed call counted")
            report = json.loads(run_command(home, "report", "--by", "kind", "--json").stdout)
            kinds = {row["kind"]: row for row in report["rows"]}
            assert kinds["blocked:day"]["calls"] == 2 and kinds["blocked:day"]["cost_usd"] == 0
            assert kinds["main"]["calls"] == 3
            status = run_command(home, "status").stdout
            assert "budget" in status and "2 request(s) blocked" not in status  # this daemon blocked one
            assert "1 request(s) blocked" in status
            spans = wait_for(lambda: len(blocked_spans(opik)) == 2 and blocked_spans(opik), timeout_s=20,
                             what="the two blocked requests' spans at the fake Opik")
            assert opik.violations == []
            assert all(s["type"] == "llm" and s["total_estimated_cost"] == 0 and "blocked" in s["tags"]
                       and s["metadata"]["cc"]["call"]["side_kind"] == "day" and "cipx" not in s["metadata"]
                       for s in spans)
            answered = wait_for(lambda: len(answered_spans(opik)) == 3 and answered_spans(opik), timeout_s=20,
                                what="the three answered calls' spans at the fake Opik")
            assert set(ci.ingest(opik.arrivals()).spends) == set(answered)  # the blocked ones are no spend
        finally:
            daemon.kill()
