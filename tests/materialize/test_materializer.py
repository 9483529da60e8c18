"""Capture -> Opik records over the recorded Claude Code corpus, materialized in recorded order."""

import dataclasses
import hashlib
import json
import tempfile
from collections import defaultdict
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opik_cipx.ids import derived_uuid7, is_uuid7
from opik_cipx.materialize.attribution.incremental import RequestReader
from opik_cipx.materialize.call import AMBIGUOUS, NO_DISPATCH, AgentCounts, CallConfig, Trigger
from opik_cipx.materialize.materializer import Materializer, MaterializerConfig
from opik_cipx.materialize.pricing import load_price_table
from opik_cipx.materialize.redaction import REDACTED_TEXT
from opik_cipx.materialize.usage import read_usage
from opik_cipx.wire.capture import Capture, KeptResponse
from tests.claude_code_corpus import SCENARIOS, cli_result, exchanges, response, runs
from tests.conftest import examples
from tests.opik_schema import problems


def config(tmp_path: Path, **overrides) -> MaterializerConfig:
    values = dict(project_template="claude-code", capture_content=True, max_io_chars=500_000,
                  sessions_dir=tmp_path / "sessions", claude_json=tmp_path / ".claude.json")
    values.update(overrides)
    return MaterializerConfig(**values)


def run(scenario: str, tmp_path: Path, **overrides) -> dict[str, list[dict]]:
    """Fixture number -> the records its exchange produced (a new materializer's)."""
    materializer = Materializer(config(tmp_path, **overrides), load_price_table())
    return {number: materializer.materialize(capture).records for number, capture in exchanges(scenario)}


def recorded(scenario: str) -> dict[str, list[dict]]:
    """`run(scenario, <an empty directory>)` with the default config: a fresh copy of the records one
    materializer made once per test process (tests that only read them need not make them again)."""
    return json.loads(_recorded_json(scenario))


@cache
def _recorded_json(scenario: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        return json.dumps(run(scenario, Path(tmp)))


def llm(records: list[dict]) -> dict:
    (span,) = [r["body"] for r in records if r["kind"] == "span" and r["body"]["type"] == "llm"]
    return span


def cc(body: dict) -> dict:
    return body["metadata"]["cc"]


@pytest.mark.parametrize("redacted", [False, True])
def test_requests_read_incrementally_give_the_records_of_reading_each_from_scratch(tmp_path, redacted):
    """The request reader keeps each conversation's last request: the records (ids, metadata, every
    byte of them) are those of a materializer that reads every request from scratch."""
    kept = Materializer(config(tmp_path, capture_content=not redacted), load_price_table())
    scratch = Materializer(config(tmp_path, capture_content=not redacted), load_price_table())
    for scenario in SCENARIOS:
        for number, capture in exchanges(scenario):
            scratch._requests = RequestReader()  # nothing kept from the request before
            assert json.dumps(kept.materialize(capture).records) == json.dumps(
                scratch.materialize(capture).records), (scenario, number)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_record_validates_and_ids_are_deterministic(scenario, tmp_path):
    first = run(scenario, tmp_path)
    again = recorded(scenario)  # made by another materializer
    assert first == again  # same captures => same records, ids included
    ids = defaultdict(list)
    for number, records in first.items():
        for record in records:
            assert problems(record) == [], (number, problems(record))
            ids[record["body"]["id"]].append(record["kind"])
    spans = [i for i, kinds in ids.items() if "span" in kinds]
    agents = {r["body"]["id"] for rs in first.values() for r in rs if r["body"].get("name") in ("Agent", "Task")}
    # a span id is emitted once (an Agent span twice: while it runs, then with its result);
    # traces are upserted
    assert all(len(ids[i]) == (2 if i in agents else 1) for i in spans)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_costs_match_claude_codes_own_total_per_invocation(scenario):
    records = recorded(scenario)
    per_run = defaultdict(float)
    for number, run_no in runs(scenario).items():
        for record in records.get(number, []):
            body = record["body"]
            if body.get("type") == "llm" and not cc(body)["call"]["partial"]:
                per_run[run_no] += body.get("total_estimated_cost") or 0.0
    for run_no, total in per_run.items():
        assert total == pytest.approx(cli_result(scenario, run_no)["total_cost_usd"], abs=1e-9), run_no


def test_buckets_partition_the_request_and_tokens_follow_chars():
    span = llm(recorded("mcp")["001"])
    categories = cc(span)["categories"]
    assert sum(c["chars"] for c in categories.values()) == cc(span)["call"]["request_chars"]
    assert categories["unattributed"]["chars"] == 0
    assert set(categories["tools_mcp"]["by"]) == {"weather", "notes"}
    assert sum(c["tokens"] for c in categories.values()) == pytest.approx(span["usage"]["prompt_tokens"], abs=0.1)
    total_input_cost = cc(span)["pricing"]["input_side_usd"]
    assert sum(c["cost_usd"] for c in categories.values()) == pytest.approx(total_input_cost, abs=1e-8)
    output = cc(span)["output_categories"]
    assert sum(o["tokens"] for o in output.values()) == pytest.approx(span["usage"]["completion_tokens"], abs=0.1)


def test_one_trace_per_user_turn_with_tool_spans_under_their_llm_span():
    records = recorded("tools")
    all_records = [r for number in sorted(records) for r in records[number]]
    traces = {r["body"]["id"] for r in all_records if r["kind"] == "trace"}
    assert len(traces) == 1
    spans = [r["body"] for r in all_records if r["kind"] == "span"]
    assert {s["trace_id"] for s in spans} == traces
    tools = [s for s in spans if s["type"] == "tool"]
    assert [t["name"] for t in tools] == ["Read", "Bash", "Glob", "Grep", "Edit", "Bash"]
    llm_ids = {s["id"] for s in spans if s["type"] == "llm"}
    assert all(t["parent_span_id"] in llm_ids for t in tools)
    failing = tools[-1]
    assert failing["error_info"]["exception_type"] == "tool_error" and cc(failing)["tool"]["is_error"]
    assert failing["error_info"]["traceback"].startswith("Bash\nExit code 2")
    trace = [r["body"] for r in all_records if r["kind"] == "trace"][-1]
    assert trace["thread_id"] == cc(spans[0])["session"]["id"]
    assert cc(trace)["metrics_rollup"]["calls"] == 6


def test_subagent_calls_nest_under_the_agent_tool_span():
    records = recorded("subagent")
    agent_span = next(r["body"] for r in records["005"] if r["body"].get("name") == "Agent")
    for number in ("002", "003", "004"):
        sub = llm(records[number])
        assert sub["parent_span_id"] == agent_span["id"]
        assert sub["trace_id"] == agent_span["trace_id"]
        assert cc(sub)["call"]["kind"] == "subagent"
        assert cc(sub)["call"]["subagent_type"] == "general-purpose"
    assert llm(records["001"])["trace_id"] == agent_span["trace_id"]


def again(capture, shift_ms: int, body: bytes | None = None):
    """The same exchange sent again later (a retry, or a variation of it)."""
    copy = dataclasses.replace(capture, id=derived_uuid7(capture.started_at_ns // 1_000_000 + shift_ms, capture.id),
                               started_at_ns=capture.started_at_ns + shift_ms * 1_000_000,
                               ended_at_ns=capture.ended_at_ns + shift_ms * 1_000_000)
    if body is not None:
        copy.request_body = body
    return copy


def test_a_repeated_request_does_not_repeat_its_tool_spans(tmp_path):
    materializer = Materializer(config(tmp_path), load_price_table())
    captured = dict(exchanges("tools"))
    for number in ("001", "002", "003", "004", "005"):
        materializer.materialize(captured[number])
    first = materializer.materialize(captured["006"]).records
    retry = materializer.materialize(again(captured["006"], 1500)).records  # e.g. after a 529
    assert [r["body"]["name"] for r in first if r["body"].get("type") == "tool"] == ["Bash"]
    assert [r for r in retry if r["body"].get("type") == "tool"] == []


def test_a_subagent_stays_in_the_turn_that_launched_it_after_the_next_prompt(tmp_path):
    materializer = Materializer(config(tmp_path), load_price_table())
    captured = dict(exchanges("subagent"))
    launch = llm(materializer.materialize(captured["001"]).records)
    body = json.loads(captured["001"].request_body)
    body["messages"][0]["content"][-1]["text"] = "meanwhile, something else entirely"
    meanwhile = again(captured["001"], 200, json.dumps(body).encode())
    meanwhile.response_parts = [exchanges("simple")[1][1].response_body]  # a plain text answer
    other_turn = llm(materializer.materialize(meanwhile).records)
    assert other_turn["trace_id"] != launch["trace_id"]
    sub = llm(materializer.materialize(captured["002"]).records)
    assert sub["trace_id"] == launch["trace_id"]  # with its Agent tool call, not the newer turn


def test_compaction_is_flagged_with_before_and_after_sizes():
    records = recorded("compact")
    request = cc(llm(records["010"]))
    assert request["call"]["kind"] == "compaction"
    assert request["compaction"]["request"] is True
    continued = cc(llm(records["012"]))["compaction"]
    assert continued["continued"] is True
    before, after = continued["before"], continued["after"]
    assert continued["delta_chars"] == after["chars"] - before["chars"]
    assert continued["delta_prompt_tokens"] == after["prompt_tokens"] - before["prompt_tokens"]
    assert (before["messages"], after["messages"]) == (12, 7)  # history replaced by the summary
    assert llm(records["010"])["trace_id"] != llm(records["012"])["trace_id"]
    (trace,) = [r["body"] for r in records["010"] if r["kind"] == "trace"]
    assert trace["name"] == "claude-code compaction" and "input" not in trace  # not the turn before's prompt
    assert trace["output"]["response"]  # the summary


def test_side_calls_and_count_tokens_are_flagged():
    records = recorded("nonstream_and_others")
    assert cc(llm(records["028"]))["call"]["side_kind"] == "web_search"
    assert llm(records["028"])["name"] == "side_call:web_search"
    assert cc(llm(records["028"]))["pricing"]["web_search_usd"] == pytest.approx(0.01)
    assert recorded("simple")["000"] == []  # HEAD / preconnect carries no model call


def test_count_tokens_is_a_general_span_in_the_turn_counted_apart():
    records = recorded("compact")
    (span,) = [r["body"] for r in records["014"] if r["kind"] == "span"]
    assert span["type"] == "general" and span["name"] == "count_tokens"
    assert not {"model", "usage", "total_estimated_cost", "provider"} & set(span)
    assert span["output"] == {"input_tokens": 323}
    assert cc(span)["count_tokens"] == {"model": "claude-opus-4-8", "input_tokens": 323}  # the model it counted for
    assert cc(span)["call"]["kind"] == "count_tokens"
    assert sum(c["tokens"] for c in cc(span)["categories"].values()) == pytest.approx(323, abs=0.1)
    assert span["trace_id"] == llm(records["012"])["trace_id"]  # /context right after the turn joins it
    (trace,) = [r["body"] for r in records["027"] if r["kind"] == "trace"]
    rollup = cc(trace)["metrics_rollup"]
    assert rollup["count_tokens_calls"] == 14 and rollup["calls"] == 1 and "count_tokens" not in rollup["calls_by_kind"]


def test_errors_and_partial_streams():
    records = recorded("error")
    overloaded = llm(records["001"])
    assert overloaded["error_info"]["exception_type"] == "overloaded_error"
    assert json.loads(overloaded["error_info"]["traceback"]) == json.loads(response("error", "001")["body"])
    assert "usage" not in overloaded and "total_estimated_cost" not in overloaded
    partial = llm(records["004"])
    assert cc(partial)["call"]["partial"] is True
    assert json.loads(partial["error_info"]["traceback"])["error"]["type"] == "overloaded_error"  # the SSE error event
    assert partial["usage"]["prompt_tokens"] > 0  # tokens seen before the stream broke
    assert llm(records["005"])["output"]["content"][0]["text"] == "The command printed `hi`."


def test_redacted_mode_ships_no_prompt_or_completion_text(tmp_path):
    texts = ["say hello", "Hello! How", "Exit code 2", "echo hi", "What have we done so far?", "v1.3.0",
             "Compacted (ctrl+o", "notes.txt lists TODOs"]
    made = {}
    for scenario in SCENARIOS:
        records = made[scenario] = run(scenario, tmp_path, capture_content=False)
        for record in (r for rs in records.values() for r in rs):
            body = record["body"]
            assert "input" not in body and "output" not in body
            assert cc(body)["privacy"]["capture_content"] is False
            blob = json.dumps(record)
            for text in texts:
                assert text not in blob, (scenario, text)
    failing = [r["body"] for r in made["tools"]["006"] if r["body"].get("error_info")]
    assert [f["error_info"]["traceback"] for f in failing] == [REDACTED_TEXT]  # Opik needs one; no tool output
    numbers = cc(llm(made["tools"]["006"]))
    assert numbers["categories"]["tool_io"]["chars"] > 0 and numbers["user_prompt"]["text_chars"] > 0


def test_project_name_is_templated_from_the_session_identity(tmp_path):
    (tmp_path / "sessions").mkdir()
    session = json.loads(exchanges("simple")[1][1].request_body)["metadata"]["user_id"]
    session_id = json.loads(session)["session_id"]
    (tmp_path / "sessions" / f"{session_id}.json").write_text(json.dumps({
        "session_id": session_id, "cwd": "/home/dev/code/acme-api",
        "git": {"remote": "git@example.com:acme/api.git", "branch": "main", "commit": "abc"},
        "identity": {"user_email": "ada@example.com", "user_uuid": "u-1", "display_name": "Ada",
                     "org_uuid": "o-1", "org_name": "Acme"}}))
    records = run("simple", tmp_path, project_template="cc-{username}-{org_name}-{nope}")["001"]
    assert {r["body"]["project_name"] for r in records} == {"cc-ada-Acme-{nope}"}
    span = llm(records)
    assert "user:ada@example.com" in span["tags"]
    assert cc(span)["session"]["git"]["branch"] == "main"
    assert cc(span)["identity"]["user_email"] == "ada@example.com"


def test_external_parent_trace_and_root_span(tmp_path):
    parent = "01960000-0000-7000-8000-000000000001"
    root = "01960000-0000-7000-8000-000000000002"
    records = run("subagent", tmp_path, parent_trace_id=parent, root_span_id=root)
    flat = [r for rs in records.values() for r in rs]
    assert all(r["kind"] == "span" for r in flat)
    assert {r["body"]["trace_id"] for r in flat} == {parent}
    assert llm(records["001"])["parent_span_id"] == root
    assert all(is_uuid7(r["body"]["id"]) for r in flat)


def test_oversized_input_is_truncated_explicitly(tmp_path):
    span = llm(run("simple", tmp_path, max_io_chars=5_000)["001"])
    assert span["input"]["_opik_cipx_truncated"] is True
    assert span["input"]["original_chars"] > 5_000


# Letters and digits of any script (all encodable in UTF-8: surrogates are neither; naming the codec
# too made each test process build Hypothesis's UTF-8 table, 1.3 s of CPU on a fresh machine).
SECRET = st.text(alphabet=st.characters(categories=("L", "N")), min_size=12, max_size=40).map(
    lambda t: "Z" + t)  # a leading marker keeps generated text from colliding with metadata keys


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=SECRET, answer=SECRET, tool_input=SECRET, tool_output=SECRET, args=SECRET)
def test_redacted_spans_never_contain_text_of_any_shape(tmp_path, prompt, answer, tool_input, tool_output, args):
    body = {
        "model": "claude-opus-4-8", "stream": True, "context_management": {},  # a main-loop call
        "metadata": {"user_id": json.dumps({"session_id": "s-1"})},
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": prompt},
                {"type": "text", "text": f"<command-name>/x</command-name><command-args>{args}</command-args>"}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": answer},
                {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": tool_input}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": tool_output, "is_error": True}]},
        ],
    }
    events = [
        {"type": "message_start", "message": {"id": "msg_1", "model": "claude-opus-4-8", "content": [],
                                               "usage": {"input_tokens": 5, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": answer}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}},
        {"type": "message_stop"},
    ]
    sse = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()
    capture = Capture(id=derived_uuid7(1_795_000_000_000, prompt), started_at_ns=1_795_000_000_000_000_000,
                      ended_at_ns=1_795_000_001_000_000_000, method="POST", path="/v1/messages?beta=true",
                      request_headers=[["X-Claude-Code-Session-Id", "s-1"]], request_body=json.dumps(body).encode(),
                      status=200, response_headers=[["content-type", "text/event-stream"]])
    capture.response_parts = [sse]
    records = Materializer(config(tmp_path, capture_content=False), load_price_table()).materialize(capture).records
    assert {r["body"].get("type") for r in records if r["kind"] == "span"} == {"llm", "tool"}
    blob = json.dumps(records, ensure_ascii=False)
    for text in (prompt, answer, tool_input, tool_output, args):
        assert text not in blob


def flat(records: dict[str, list[dict]]) -> list[dict]:
    return [r for number in records for r in records[number]]


def newest(versions: list[dict]) -> dict:
    """The version Opik keeps: the greatest `last_updated_at`."""
    return max(versions, key=lambda body: body["last_updated_at"])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_version_of_a_trace_carries_at_least_what_the_one_before_had(scenario):
    versions = defaultdict(list)
    for record in flat(recorded(scenario)):
        if record["kind"] == "trace":
            versions[record["body"]["id"]].append(record["body"])
    for bodies in versions.values():
        for before, after in zip(bodies, bodies[1:], strict=False):
            assert after["last_updated_at"] > before["last_updated_at"]
            assert after["end_time"] >= before["end_time"] and after["start_time"] <= before["start_time"]
            assert after["name"] == before["name"]
            assert set(before["tags"]) <= set(after["tags"])
            assert "output" not in before or after.get("output") is not None
            old, new = cc(before)["metrics_rollup"], cc(after)["metrics_rollup"]
            assert all(new[k] >= old[k] for k in ("calls", "prompt_tokens", "completion_tokens", "cost_usd",
                                                  "count_tokens_calls"))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_final_trace_carries_the_turns_last_main_answer(scenario):
    records = flat(recorded(scenario))
    last_answer = {}
    for record in records:
        body = record["body"]
        if body.get("type") == "llm" and cc(body)["call"]["kind"] in ("main", "compaction"):
            text = "\n".join(b.get("text", "") for b in (body.get("output") or {}).get("content", [])
                             if b.get("type") == "text")
            if text:
                last_answer[body["trace_id"]] = text
    traces = defaultdict(list)
    for record in records:
        if record["kind"] == "trace":
            traces[record["body"]["id"]].append(record["body"])
    for trace_id, text in last_answer.items():
        assert newest(traces[trace_id])["output"] == {"response": text}, trace_id


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_trace_and_parent_a_span_names_was_emitted_no_later(scenario):
    seen: set[str] = set()
    for record in flat(recorded(scenario)):
        body = record["body"]
        if record["kind"] == "span":
            assert body["trace_id"] in seen, (scenario, body["name"])
            assert body.get("parent_span_id") is None or body["parent_span_id"] in seen, (scenario, body["name"])
        seen.add(body["id"])


def test_an_agent_span_goes_out_when_its_subagent_starts_and_again_with_its_result():
    records = recorded("subagent")
    early = next(r["body"] for r in records["002"] if r["body"].get("name") == "Agent")
    assert "end_time" not in early and "output" not in early and cc(early)["tool"]["running"] is True
    assert early["input"]["subagent_type"] == "general-purpose"
    assert [r["body"]["name"] for r in records["003"] + records["004"] if r["kind"] == "span"] == [
        "Bash", "subagent", "Read", "subagent"]  # once only
    final = next(r["body"] for r in records["005"] if r["body"].get("name") == "Agent")
    assert final["id"] == early["id"] and final["last_updated_at"] > early["last_updated_at"]
    assert "agentId:" in final["output"]["result"]
    assert llm(records["002"])["parent_span_id"] == early["id"]


def later(capture: Capture, hours: float) -> Capture:
    return again(capture, int(hours * 3600 * 1000))


def test_a_count_tokens_call_hours_later_gets_a_trace_of_its_own(tmp_path):
    materializer = Materializer(config(tmp_path), load_price_table())
    captured = dict(exchanges("compact"))
    turn = materializer.materialize(captured["012"]).records
    (answer,) = [r["body"] for r in turn if r["kind"] == "trace"]
    burst = [materializer.materialize(later(captured[n], 3)).records for n in ("014", "015", "016")]
    traces = [r["body"] for rs in burst for r in rs if r["kind"] == "trace"]
    assert {t["id"] for t in traces} != {answer["id"]} and len({t["id"] for t in traces}) == 1
    assert traces[-1]["name"] == "claude-code count_tokens"
    assert cc(traces[-1])["metrics_rollup"]["count_tokens_calls"] == 3
    back = materializer.materialize(later(captured["012"], 3.1)).records  # the same prompt's turn goes on
    (resumed,) = [r["body"] for r in back if r["kind"] == "trace"]
    assert resumed["id"] == answer["id"] and resumed["output"] == answer["output"]


def restarted(materializer: Materializer, tmp_path: Path, **overrides) -> Materializer:
    """A new materializer (a restarted daemon) from the old one's snapshot, through JSON."""
    fresh = Materializer(config(tmp_path, **overrides), load_price_table())
    fresh.restore(json.loads(json.dumps(materializer.snapshot())))
    return fresh


ALL = [(scenario, number, capture) for scenario in SCENARIOS for number, capture in exchanges(scenario)]


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario=st.sampled_from(SCENARIOS), cuts=st.sets(st.integers(0, 60), max_size=4))
def test_a_restart_at_any_capture_boundary_changes_no_record(tmp_path, scenario, cuts):
    captured = [capture for s, _, capture in ALL if s == scenario]
    expected = list(recorded(scenario).values())  # a materializer that never restarts
    materializer = Materializer(config(tmp_path), load_price_table())
    got = []
    for i, capture in enumerate(captured):
        if i in cuts:
            materializer = restarted(materializer, tmp_path)
        got.append(materializer.materialize(capture).records)
    assert got == expected


def test_a_request_retried_after_a_restart_emits_no_second_tool_span(tmp_path):
    materializer = Materializer(config(tmp_path), load_price_table())
    captured = dict(exchanges("tools"))
    for number in ("001", "002", "003", "004", "005"):
        materializer.materialize(captured[number])
    first = materializer.materialize(captured["006"]).records
    retry = restarted(materializer, tmp_path).materialize(again(captured["006"], 1500)).records
    assert [r["body"]["name"] for r in first if r["body"].get("type") == "tool"] == ["Bash"]
    assert [r for r in retry if r["body"].get("type") == "tool"] == []
    assert [r["body"]["id"] for r in retry if r["kind"] == "trace"] == [
        r["body"]["id"] for r in first if r["kind"] == "trace"]


def test_the_redacted_state_kept_across_restarts_holds_no_text(tmp_path):
    materializer = Materializer(config(tmp_path, capture_content=False), load_price_table())
    for scenario in SCENARIOS:
        for _, capture in exchanges(scenario):
            materializer.materialize(capture)
    blob = json.dumps(materializer.snapshot())
    for text in ("say hello", "Hello! How", "Survey the project", "What have we done so far?", "echo hi"):
        assert text not in blob


def test_a_session_idle_for_a_day_is_forgotten_by_the_captures_clock(tmp_path):
    materializer = Materializer(config(tmp_path), load_price_table())
    materializer.materialize(exchanges("tools")[1][1])
    materializer.materialize(later(exchanges("simple")[1][1], 23))
    assert len(materializer.snapshot()["sessions"]) == 2
    materializer.materialize(later(exchanges("simple")[1][1], 25))
    (session,) = materializer.snapshot()["sessions"]
    assert session["id"] == json.loads(json.loads(exchanges("simple")[1][1].request_body)["metadata"]["user_id"])[
        "session_id"]


# -- what made each call (the call record's trigger, turn digest, config, agent link) --------------

def calls(scenario: str, tmp_path: Path, materializer: Materializer | None = None) -> dict:
    """Fixture number -> the call record of its exchange (model calls only)."""
    materializer = materializer or Materializer(config(tmp_path), load_price_table())
    out = {number: materializer.materialize(capture).call for number, capture in exchanges(scenario)}
    return {number: call for number, call in out.items() if call is not None}


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_a_typed_prompt_starts_a_turn_and_every_later_call_of_it_continues_it(tmp_path):
    tools = calls("tools", tmp_path)
    assert [call.trigger for call in tools.values()] == [Trigger("user_turn")] + [Trigger("tool_continuation")] * 5
    prompt = tools["001"].attribution.facts["user_prompt"]["text"]
    assert {call.turn_digest for call in tools.values()} == {sha256_hex(prompt)}
    compact = calls("compact", tmp_path)
    assert compact["010"].trigger == Trigger("automated", "compaction")
    assert compact["012"].trigger == Trigger("user_turn")  # after the summary and /compact's output
    assert compact["012"].turn_digest == sha256_hex("What have we done so far?")
    assert compact["029"].turn_digest == sha256_hex("/init")  # a slash command opened it
    assert compact["010"].turn_digest == sha256_hex(compact["010"].turn_key)  # no prompt opened it
    assert {call.trigger for n, call in compact.items() if call.kind.kind == "count_tokens"} == {Trigger("unknown")}
    others = calls("nonstream_and_others", tmp_path)
    sides = {call.trigger for call in others.values() if call.kind.kind == "side"}
    assert sides == {Trigger("automated", "web_search"), Trigger("automated", "web_fetch")}


def test_subagent_calls_name_their_type_their_dispatch_and_the_turn_of_the_prompt(tmp_path):
    subagent = calls("subagent", tmp_path)
    dispatch = next(block["id"] for block in subagent["001"].response.content if block.get("name") == "Agent")
    for number in ("002", "003", "004"):
        call = subagent[number]
        assert call.trigger == Trigger("subagent", "general-purpose")
        assert call.agent is not None and call.agent.tool_use_id == dispatch and call.link_failure is None
        assert call.turn_digest == subagent["001"].turn_digest
    custom = calls("skills_agents", tmp_path)["003"]
    assert custom.trigger == Trigger("subagent", "code-auditor")


def test_a_subagent_call_that_cannot_be_linked_says_why(tmp_path):
    captured = dict(exchanges("subagent"))
    alone = Materializer(config(tmp_path), load_price_table()).materialize(captured["002"]).call
    assert (alone.agent, alone.link_failure, alone.trigger) == (None, NO_DISPATCH, Trigger("subagent"))
    materializer = Materializer(config(tmp_path), load_price_table())
    materializer.materialize(captured["001"])
    second = again(captured["001"], 100)  # another Agent call waiting, with another id
    second.response_parts = [captured["001"].response_body.replace(b'"toolu_', b'"toolu_x')]
    materializer.materialize(second)
    body = json.loads(captured["002"].request_body)
    body["messages"][0]["content"][-1]["text"] = "a brief neither Agent call gave"
    unlinked = materializer.materialize(again(captured["002"], 200, json.dumps(body).encode())).call
    assert (unlinked.agent, unlinked.link_failure) == (None, AMBIGUOUS)
    # the session's totals: two Agent calls, none linked, one agent ambiguous (counted once)
    assert unlinked.agent_counts == AgentCounts(dispatched=2, linked=0, ambiguous=1)
    later = materializer.materialize(again(captured["002"], 300, json.dumps(body).encode())).call
    assert later.agent_counts == AgentCounts(dispatched=2, linked=0, ambiguous=1)


def test_the_config_is_read_from_the_request():
    tools = dict(exchanges("tools"))
    body = json.loads(tools["001"].request_body)
    assert CallConfig.of(body, None) == CallConfig(
        effort=body["output_config"]["effort"], thinking_type="adaptive", max_tokens=body["max_tokens"],
        context_management=",".join(edit["type"] for edit in body["context_management"]["edits"]))
    odd = {"speed": "fast", "max_tokens": True, "thinking": {"type": 3}}
    assert CallConfig.of(odd, None) == CallConfig(speed="fast")
    fast = read_usage({"input_tokens": 1, "speed": "fast"})
    assert CallConfig.of({}, fast).speed == "fast" and CallConfig.of({"output_config": "x"}, None) == CallConfig()


def test_the_turn_digest_survives_a_restart_and_a_checkpoint_of_an_older_version(tmp_path):
    captured = dict(exchanges("tools"))
    before = Materializer(config(tmp_path, capture_content=False), load_price_table())
    digest = before.materialize(captured["001"]).call.turn_digest
    snapshot = before.snapshot()
    assert [turn["prompt_sha256"] for turn in snapshot["turns"]] == [digest]  # a digest: no text in redacted mode
    after = Materializer(config(tmp_path, capture_content=False), load_price_table())
    after.restore(snapshot)
    assert after.materialize(captured["002"]).call.turn_digest == digest
    for turn in snapshot["turns"]:
        del turn["prompt_sha256"]  # as an older version wrote it
    older = Materializer(config(tmp_path), load_price_table())
    older.restore(snapshot)
    call = older.materialize(captured["002"]).call
    assert call.turn_digest == sha256_hex(call.turn_key)  # its prompt is not kept: the turn key stands in


@pytest.mark.parametrize("final_usage", [True, False])
def test_a_response_kept_in_part_says_so_on_its_span_and_prices_the_usage_it_read(tmp_path, final_usage):
    """Issue 22, item 7: the wire keeps a response over its cap by its two ends (`KeptResponse`)."""
    recorded = dict(exchanges("simple"))["001"]
    events = [event + b"\n\n" for event in recorded.response_body.split(b"\n\n") if event.strip()]
    delta = next(event for event in events if b'"text_delta"' in event)
    if not final_usage:
        events = [event for event in events if b"message_delta" not in event]
    at = events.index(delta)
    body = b"".join(events[:at] + [delta] * 30_000 + events[at:])
    capture = dataclasses.replace(recorded, response_parts=[])
    keeper = KeptResponse(capture.response_parts, 1024 * 1024)
    for start in range(0, len(body), 1000):
        keeper.add(body[start : start + 1000])
    assert keeper.finish(capture)
    materializer = Materializer(config(tmp_path), load_price_table())
    span = llm(materializer.materialize(capture).records)
    whole = llm(Materializer(config(tmp_path), load_price_table()).materialize(recorded).records)
    call, cipx_call = cc(span)["call"], span["metadata"]["cipx"]["call"]
    assert call["response_omitted_bytes"] == capture.response_omitted[1] > 0
    assert call["usage_incomplete"] is (not final_usage) and call["partial"] is False
    assert cipx_call["output_truncated"] is True and cipx_call.get("usage_incomplete", False) is (not final_usage)
    assert (cc(whole)["call"]["response_omitted_bytes"], cc(whole)["call"]["usage_incomplete"]) == (0, False)
    assert "output_truncated" not in whole["metadata"]["cipx"]["call"]
    if final_usage:  # the same usage and cost as the whole response's
        assert span["usage"] == whole["usage"] and span["total_estimated_cost"] == whole["total_estimated_cost"]
    else:  # message_start's: the input side exact, the output a lower bound
        assert span["usage"]["prompt_tokens"] == whole["usage"]["prompt_tokens"]
        assert span["usage"]["completion_tokens"] < whole["usage"]["completion_tokens"]
    assert not problems({"kind": "span", "body": span})
