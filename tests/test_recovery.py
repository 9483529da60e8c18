"""Crash safety with real processes: the daemon is `kill -9`ed mid-work, Opik is down meanwhile,
and after restarts everything the recorded Claude Code traffic produced arrives once, whole.

docs/ARCHITECTURE.md, "Capture log" and "Materializer checkpoint".
"""

import http.client
import json
from collections import defaultdict
from pathlib import Path

from opik_cipx.materialize.materializer import Materializer, MaterializerConfig
from opik_cipx.materialize.pricing import load_price_table
from tests.claude_code_corpus import SCENARIOS, exchanges, request, requests, response
from tests.conftest import DaemonProcess, load_fixture, run_command, wait_for
from tests.fake_anthropic import fixture_reply, json_reply, split_sse, sse_reply
from tests.fake_opik import API_KEY, WORKSPACE, FakeOpik
from tests.test_daemon import wait_for_listener_closed


def opik_env(opik: FakeOpik) -> dict[str, str]:
    return dict(OPIK_CIPX_BASE_URL=opik.url, OPIK_CIPX_API_KEY=API_KEY, OPIK_CIPX_WORKSPACE=WORKSPACE)


def send(daemon: DaemonProcess, upstream, scenario: str, numbers: list[str]) -> None:
    """Send recorded requests through the daemon, answered as recorded; check every byte came back."""
    upstream.script(*(fixture_reply(response(scenario, n)) for n in numbers))
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    for number in numbers:
        req = request(scenario, number)
        headers = {k: v for k, v in req["headers"].items() if k.lower() not in ("host", "content-length", "connection")}
        conn.request(req["method"], req["path"], body=req["body"].encode(), headers=headers)
        assert conn.getresponse().read() == response(scenario, number)["body"].encode()
    conn.close()


def newest(versions: list[dict]) -> dict:
    """The version of a record Opik keeps: the greatest `last_updated_at`."""
    return max(versions, key=lambda body: body["last_updated_at"])


def llm_spans(opik: FakeOpik) -> dict[str, list[dict]]:
    with opik.lock:
        return {i: v for i, v in opik.received.items() if v[-1].get("type") == "llm"}


def test_five_calls_while_a_stream_is_open_survive_a_kill_9_as_soon_as_they_are_materialized(home, upstream):
    _, streamed = load_fixture("tools", "001")
    held = sse_reply(split_sse(streamed["body"]), hold_after=2)
    replies = [json_reply(200, {"type": "message", "id": f"msg_five_{i}", "model": "claude-opus-4-8",
                                "role": "assistant", "content": [{"type": "text", "text": f"answer {i}"}],
                                "stop_reason": "end_turn", "usage": {"input_tokens": 5 + i, "output_tokens": 2}})
               for i in range(5)]
    upstream.script(held, *replies)
    body = request("simple", "001")["body"].encode()
    with FakeOpik() as opik:
        opik.down()
        daemon = DaemonProcess(home, upstream.url, **opik_env(opik))
        stream = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
        stream.request("POST", "/v1/messages", body=b"{}")
        opened = stream.getresponse()
        opened.read1(65536)  # the stream is open, and stays open (the upstream holds it)
        calls = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
        for _ in range(5):
            calls.request("POST", "/v1/messages?beta=true", body=body, headers={"content-type": "application/json"})
            assert calls.getresponse().read().startswith(b'{"type": "message"')
        # The stream, open since before the calls, does not hold the materializer back once the
        # wire is quiet; kill -9 the moment it is done (its records may not be durable yet).
        wait_for(lambda: daemon.counter("events_materialized") >= 5, timeout_s=20, what="the five calls materialized")
        daemon.kill()
        held.gate.set()
        opik.up()
        daemon = DaemonProcess(home, upstream.url, **opik_env(opik))
        try:
            def five():
                ids = defaultdict(set)
                for span_id, versions in llm_spans(opik).items():
                    ids[versions[-1]["metadata"]["cc"]["call"]["message_id"]].add(span_id)
                return all(f"msg_five_{i}" in ids for i in range(5)) and ids

            by_message = wait_for(five, timeout_s=30, what="the five calls' spans at Opik")
            assert all(len(by_message[f"msg_five_{i}"]) == 1 for i in range(5))
        finally:
            assert daemon.stop() == 0
        assert opik.violations == []


# (scenario, request numbers, kill -9 after them?) in the order Claude Code sent them.
PLAN = [
    ("simple", ["001"], False),
    ("tools", ["001", "002", "003"], True),  # mid-turn
    ("tools", ["004", "005", "006"], False),
    ("subagent", ["001", "002", "003"], True),  # during a subagent (two of its three calls done)
    ("subagent", ["004", "005"], False),
    ("compact", ["001", "002", "004", "005", "007", "008", "010"], True),  # right after a compaction
]


def messages_numbers(scenario: str) -> list[str]:
    return [n for n, req in requests(scenario) if req["path"].startswith("/v1/messages")]


def planned() -> list[tuple[str, list[str], bool]]:
    """PLAN, then the rest of every scenario (the compaction's follow-up included)."""
    sent = defaultdict(set)
    for scenario, numbers, _ in PLAN:
        sent[scenario].update(numbers)
    rest = [(s, [n for n in messages_numbers(s) if n not in sent[s]], False) for s in SCENARIOS]
    return PLAN + [(s, numbers, False) for s, numbers, _ in rest if numbers]


def straight_run() -> list[dict]:
    """What one uninterrupted materializer makes of the same calls, for the expected structure."""
    config = MaterializerConfig("claude-code", True, 262_144, Path("/nonexistent"), Path("/nonexistent"))
    materializer = Materializer(config, load_price_table())
    captured = {(s, n): c for s in SCENARIOS for n, c in exchanges(s)}
    return [r for scenario, numbers, _ in planned() for n in numbers
            for r in materializer.materialize(captured[(scenario, n)]).records]


def partition(spans: list[dict]) -> set[frozenset[str]]:
    """Anthropic message ids grouped by the trace their llm spans are in."""
    groups = defaultdict(set)
    for span in spans:
        groups[span["trace_id"]].add(span["metadata"]["cc"]["call"]["message_id"])
    return {frozenset(g) for g in groups.values()}


def test_the_corpus_through_three_kill_9s_with_opik_down_arrives_once_and_whole(home, upstream):
    expected = [r["body"] for r in straight_run() if r["kind"] == "span" and r["body"]["type"] == "llm"]
    message_ids = {s["metadata"]["cc"]["call"]["message_id"] for s in expected} - {None}
    with FakeOpik() as opik:
        opik.down()
        daemon = DaemonProcess(home, upstream.url, **opik_env(opik))
        sent = 0
        for scenario, numbers, kill in planned():
            send(daemon, upstream, scenario, numbers)
            sent += len(numbers)
            if kill:
                wait_for(lambda: (s := daemon.stats())["materializer"]["ready_raw"] == 0  # noqa: B023 - waited on here
                         and s["counters"]["requests_captured"] == sent, what="the calls in the capture log")  # noqa: B023
                daemon.kill()
                daemon = DaemonProcess(home, upstream.url, **opik_env(opik))
                sent = 0
        wait_for(lambda: daemon.stats()["materializer"]["lag_events"] == 0, timeout_s=60, what="materialized")
        opik.up()
        try:
            def arrived():
                spans = [versions[-1] for versions in llm_spans(opik).values()]
                got = {s["metadata"]["cc"]["call"]["message_id"] for s in spans}
                return message_ids <= got and spans

            wait_for(arrived, timeout_s=60, what="every Anthropic message at Opik")
            wait_for(lambda: daemon.stats()["queue"]["ready"] == 0, timeout_s=30, what="the spool shipped")
            stats = daemon.stats()
        finally:
            assert daemon.stop() == 0
        with opik.lock:
            received = {i: list(v) for i, v in opik.received.items()}
    assert opik.violations == []
    assert stats["opik"]["quarantined"] == 0 and not (home / "spool" / "quarantine.jsonl").exists()
    spans = {i: newest(v) for i, v in received.items() if "trace_id" in v[-1]}
    traces = {i: v for i, v in received.items() if "trace_id" not in v[-1]}
    llm = [s for s in spans.values() if s["type"] == "llm"]
    by_message = defaultdict(set)
    for span in llm:
        by_message[span["metadata"]["cc"]["call"]["message_id"]].add(span["id"])
    assert all(len(by_message[m]) == 1 for m in message_ids)  # each message under exactly one llm span id
    assert len(llm) == len(expected)  # and no llm span beyond those (errors have no message id)
    for span in spans.values():  # every trace and parent named was received
        assert span["trace_id"] in traces, span["name"]
        assert span.get("parent_span_id") in (None, *spans), span["name"]
    assert partition(llm) == partition(expected)  # each user turn one trace, as without crashes
    for trace_id, versions in traces.items():  # the final version carries the turn's last answer
        answers = [s for s in sorted(llm, key=lambda s: s["start_time"])
                   if s["trace_id"] == trace_id and s["metadata"]["cc"]["call"]["kind"] in ("main", "compaction")
                   and any(b.get("type") == "text" and b.get("text")
                           for b in (s.get("output") or {}).get("content", []))]
        if answers:
            text = "\n".join(b["text"] for b in answers[-1]["output"]["content"] if b.get("type") == "text")
            assert newest(versions)["output"] == {"response": text}
    replayed = run_command(home, "replay", "--records")
    assert replayed.returncode == 0, replayed.stderr
    assert {json.loads(line)["body"]["id"] for line in replayed.stdout.splitlines()} == set(received)


def test_a_call_that_arrives_during_shutdown_completes_and_is_materialized_at_the_next_start(home, upstream):
    """SIGTERM, then, once the materializer has stopped and while the shipper's stop (5 s) keeps the
    shutdown busy, a call on the idle keep-alive connection: a stream that outlives the rest of the
    shutdown is relayed whole, the daemon exits 0, and the next start materializes the call."""
    _, answer = load_fixture("simple", "001")
    body = request("simple", "001")["body"].encode()
    with FakeOpik() as opik:
        opik.delay_s = 10.0  # a slow Opik keeps the shutdown busy (5 s) after the materializer stopped
        daemon = DaemonProcess(home, upstream.url, **opik_env(opik))
        upstream.script(fixture_reply(answer))
        conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=15)
        conn.request("POST", "/v1/messages", body=body)
        conn.getresponse().read()
        wait_for(lambda: daemon.stats()["queue"]["inflight"] > 0, what="a post to Opik in flight")
        daemon.proc.send_signal(15)
        wait_for_listener_closed(daemon.port)
        wait_for(lambda: "shutdown: cipx-materializer stopped" in (home / "logs" / "cipx.log").read_text(),
                 what="the materializer stopped")  # the shipper's 5 s stop has begun
        held = sse_reply(split_sse(answer["body"]), hold_after=2)
        upstream.script(held)
        conn.request("POST", "/v1/messages", body=body)  # the idle keep-alive connection brings one more
        resp = conn.getresponse()
        first = resp.read1(65536)
        log_path = home / "logs" / "cipx.log"
        wait_for(lambda: "shutdown: cipx-shipper " in log_path.read_text(), timeout_s=20,
                 what="the shipper's stop over (stopped, or given up on after 5 s)")  # the rest of the shutdown
        held.gate.set()  # the stream outlived it
        assert first + resp.read() == answer["body"].encode(), "the late stream relayed whole"
        assert daemon.proc.wait(30) == 0, "the daemon's exit after the late stream"
        opik.delay_s = 0.0
        again = DaemonProcess(home, upstream.url, **opik_env(opik))
        try:
            wait_for(lambda: again.counter("events_materialized") == 1, what="the late call materialized now")
            wait_for(lambda: len(llm_spans(opik)) == 2, timeout_s=20, what="both calls at Opik")
        finally:
            assert again.stop() == 0
