"""A request a spend cap kept from Anthropic (`Capture.blocked`, docs/BUDGETS.md) is recorded like
any exchange: a call of kind `blocked` naming the cap, costing exactly 0, a span in Opik that Cost
Intelligence does not count (no `metadata.cipx`), a ledger row that `report --by kind` lists."""

from opik_cipx.ledger.db import connect
from opik_cipx.ledger.queries import report
from opik_cipx.ledger.store import Ledger
from opik_cipx.materialize.materializer import Materializer, MaterializerConfig
from opik_cipx.materialize.pricing import load_price_table
from opik_cipx.wire.budget import Block
from opik_cipx.wire.capture import header_value
from tests import cost_intelligence as ci
from tests.claude_code_corpus import corpus_clock, exchange, write_session_files
from tests.json_schema import opik_schema


def blocked_capture(scenario: str, number: str, cap: str = "day"):
    """A recorded request as the gateway captures it when a cap keeps it back: its own answer."""
    capture = exchange(scenario, number)
    block = Block(cap.removeprefix("project_"), 5.0, 5.12, None, "/srv" if cap.startswith("project_") else None,
                  None, "opik-cipx kept this request from Anthropic: $5.12 spent of the $5.00 day cap")
    status, headers, body = block.answer()
    capture.status, capture.blocked = status, block.tag
    capture.response_headers = [[name, value] for name, value in [*headers, ("content-type", "application/json")]]
    capture.response_parts = [body]
    return capture


def materializer(tmp_path) -> Materializer:
    write_session_files(tmp_path / "sessions")
    config = MaterializerConfig("claude-code", True, 500_000, tmp_path / "sessions", tmp_path / "no-claude.json")
    return Materializer(config, load_price_table())


def test_a_blocked_call_is_a_call_of_kind_blocked_that_costs_nothing(tmp_path):
    m = materializer(tmp_path)
    capture = blocked_capture("subagent", "003")  # it would have been a subagent call
    result = m.materialize(capture)
    call = result.call
    assert (call.kind.kind, call.kind.side_kind, call.kind.subagent) == ("blocked", "day", True)
    assert call.kind.session_id == header_value(capture.request_headers, "x-claude-code-session-id")
    assert call.kind.agent_id == header_value(capture.request_headers, "x-claude-code-agent-id")
    assert call.cost is not None and call.cost.total_usd == 0.0 and call.usage is None
    assert call.error_type == "rate_limit_error" and call.model == "claude-opus-4-8"
    (span,) = [r["body"] for r in result.records if r["kind"] == "span"]
    assert span["name"] == "blocked" and span["type"] == "llm" and span["total_estimated_cost"] == 0.0
    assert "blocked" in span["tags"] and span["error_info"]["exception_type"] == "rate_limit_error"
    assert span["metadata"]["cc"]["call"]["kind"] == "blocked" and span["metadata"]["cc"]["call"]["side_kind"] == "day"


def test_cost_intelligence_counts_the_call_before_and_not_the_blocked_one(tmp_path):
    m = materializer(tmp_path)
    answered = m.materialize(exchange("tools", "001")).records
    blocked = m.materialize(blocked_capture("tools", "002")).records  # the next call, kept back
    spans = {r["body"]["name"]: r["body"] for r in answered + blocked if r["kind"] == "span"
             and r["body"]["type"] == "llm"}
    assert set(spans) == {"main", "blocked"} and "cipx" not in spans["blocked"]["metadata"]
    opik_schema("SpanBatch_Write").validate({"spans": list(spans.values())})
    ingested = ci.ingest(ci.received_from_spool(answered + blocked))
    assert set(ingested.spends) == {spans["main"]["id"]}  # the blocked call is no spend, not even of 0 tokens
    assert sum(ingested.spends[spans["main"]["id"]].usage.values()) > 0


def test_the_ledger_row_names_the_cap_and_report_by_kind_lists_it(tmp_path):
    m = materializer(tmp_path)
    ledger = Ledger(tmp_path / "ledger.db", 400, clock=corpus_clock())
    ledger.write(m.materialize(exchange("tools", "001")).call)
    ledger.write(m.materialize(blocked_capture("tools", "002", "project_week")).call)  # the next call, kept back
    ledger.close()
    conn = connect(tmp_path / "ledger.db", 1.0)
    row = conn.execute("SELECT kind, side_kind, status, cost_usd, input_tokens FROM calls WHERE kind = 'blocked'")
    assert row.fetchone() == ("blocked", "project_week", 429, 0.0, 0)
    kinds = {r["kind"]: r for r in report(conn, ("kind",)).rows}
    assert set(kinds) == {"main", "blocked:project_week"} and kinds["blocked:project_week"]["cost_usd"] == 0.0

