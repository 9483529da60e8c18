"""A call's ledger rows, derived from the call records of the recorded corpus (and checked
against the span records made from the same call)."""

import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opik_cipx.ledger.db import connect
from opik_cipx.ledger.entry import OUTPUT, UNLABELLED_BUCKETS, WEB_SEARCH, ledger_entry
from opik_cipx.materialize.attribution import BUCKETS, Attribution
from opik_cipx.materialize.cache_diagnosis import CacheBreak, CacheDiagnosis, Divergence, PreviousCall
from opik_cipx.materialize.call import AgentLink, Git, OutputSplit, Session
from opik_cipx.materialize.call_kind import CallKind
from opik_cipx.materialize.identity import Identity
from opik_cipx.materialize.pricing import Cost, load_price_table, price_call
from opik_cipx.materialize.rate_limits import RateLimits, parse_rate_limits
from opik_cipx.materialize.usage import read_usage
from tests.claude_code_corpus import materialized


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return materialized(tmp_path_factory.mktemp("sessions"))


CALL_SPANS = ("llm", "general")  # a Messages call is an llm span; count_tokens a general one


def call_span(records):
    return next(r["body"] for r in records if r["body"].get("type") in CALL_SPANS)


def test_one_entry_per_model_call_with_the_span_cost_and_exact_usage(corpus):
    calls = 0
    for scenario, number, capture, result in corpus:
        records = result.records
        if not any(r["body"].get("type") in CALL_SPANS for r in records):
            assert result.call is None, (scenario, number)  # preconnects, telemetry routes
            continue
        entry = ledger_entry(result.call)
        calls += 1
        span, call = call_span(records), entry.call
        cc = span["metadata"]["cc"]
        assert call["capture_id"] == capture.id and call["span_id"] == span["id"]
        assert call["cost_usd"] == span.get("total_estimated_cost")
        usage = cc.get("usage") or {}
        assert call["input_tokens"] == usage.get("input_tokens", 0)
        assert call["cache_creation_input_tokens"] == usage.get("cache_creation_input_tokens", 0)
        assert call["cache_read_input_tokens"] == usage.get("cache_read_input_tokens", 0)
        assert call["output_tokens"] == usage.get("output_tokens", 0)
        assert call["kind"] == cc["call"]["kind"] and call["session_id"] == cc["session"]["id"]
        assert call["project_dir"] == cc["session"]["cwd"] and call["project_dir"].startswith("/home/dev/code/")
        assert call["git_branch"] and call["git_remote"].startswith("https://github.com/acme/")
        assert (call["user_email"], call["org_name"]) == ("dev@acme.test", "Acme")
        if call["cost_usd"] is not None:
            # the bucket rows of a call add up to its cost, output and search fees included
            parts = sum(d.cost_usd for d in entry.details if d.detail == "")
            assert parts == pytest.approx(call["cost_usd"], rel=1e-12, abs=1e-15)
            assert call["cost_usd"] == pytest.approx(sum(
                call[k] for k in ("cost_input_usd", "cost_cache_write_5m_usd", "cost_cache_write_1h_usd",
                                  "cost_cache_read_usd", "cost_output_usd", "cost_web_search_usd")), rel=1e-12)
    assert calls == 71


def test_labels_add_up_within_their_bucket_and_static_ones_are_not_kept(corpus):
    for _, _, _, result in corpus:
        if result.call is None:
            continue
        entry = ledger_entry(result.call)
        rows = {(d.bucket, d.detail): d for d in entry.details}
        assert {b for b, _ in rows} <= {*BUCKETS, OUTPUT, WEB_SEARCH}
        assert not any(b in UNLABELLED_BUCKETS and label for b, label in rows)
        for (bucket, label), d in rows.items():
            if label:
                assert d.chars <= rows[(bucket, "")].chars
        total_chars = sum(d.chars for d in entry.details if d.detail == "" and d.bucket in BUCKETS)
        assert total_chars == entry.call["request_chars"]


def test_count_tokens_error_and_subagent_calls(corpus):
    entries = {(s, n): ledger_entry(r.call) for s, n, c, r in corpus if r.call}
    counted = entries[("compact", "014")].call
    assert counted["kind"] == "count_tokens" and counted["cost_usd"] is None
    assert counted["input_tokens"] == counted["output_tokens"] == 0
    overloaded = entries[("error", "002")].call
    assert (overloaded["status"], overloaded["error_type"], overloaded["cost_usd"]) == (529, "overloaded_error", None)
    sub = entries[("subagent", "002")].call
    assert (sub["kind"], sub["agent_id"], sub["agent_type"]) == ("subagent", "ace3cfb3d1dc59e10", "general-purpose")
    # the Agent tool span arrives with the main call after the subagent finished; it names the
    # llm span that launched the subagent
    launches = dict(entries[("subagent", "005")].launches)
    assert launches[sub["parent_span_id"]] == entries[("subagent", "001")].call["span_id"]
    side = entries[("nonstream_and_others", "028")].call
    assert (side["kind"], side["side_kind"]) == ("side", "web_search")


def test_warm_cache_cost_reads_what_the_call_wrote(corpus):
    entry = next(ledger_entry(r.call) for s, n, c, r in corpus if (s, n) == ("subagent", "002")).call
    written = entry["cache_write_5m_tokens"] + entry["cache_write_1h_tokens"]
    assert written == 12449
    expected = (entry["cost_usd"] - entry["cost_cache_write_5m_usd"] - entry["cost_cache_write_1h_usd"]
                + written * 0.5e-6)
    assert entry["warm_cache_cost_usd"] == pytest.approx(expected, rel=1e-12)
    assert entry["warm_cache_cost_usd"] < entry["cost_usd"] / 5


def call_with(corpus, categories: dict, usage: dict, input_usd: float, output_usd: float, search: float):
    """A corpus call record with the given request buckets, usage and cost."""
    base = next(r.call for s, n, c, r in corpus if (s, n) == ("simple", "001"))
    breakdown = {"input": input_usd, "cache_write_5m": 0.0, "cache_write_1h": 0.0, "cache_read": 0.0,
                 "output": output_usd, "web_search": search}
    cost = Cost(model="m", unknown_model=False, price_table_date="2026-11-01",
                total_usd=input_usd + output_usd + search,
                input_side_usd=input_usd, output_usd=output_usd, web_search_usd=search, breakdown=breakdown,
                rates={"cache_read": 0.5})
    buckets = {bucket: entry["chars"] for bucket, entry in categories.items()}
    by_label = {bucket: {label: part["chars"] for label, part in entry["by"].items()}
                for bucket, entry in categories.items()}
    attribution = Attribution(sum(buckets.values()), [], buckets, by_label, {})
    return dataclasses.replace(base, attribution=attribution, usage=read_usage(usage), cost=cost,
                               output=OutputSplit(thinking=3, text=5))


@given(
    chars=st.lists(st.integers(0, 10**6), min_size=len(BUCKETS), max_size=len(BUCKETS)).filter(any),
    tokens=st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6), st.integers(1, 10**5)),
    usd=st.tuples(st.floats(0, 100), st.floats(0, 100), st.sampled_from([0.0, 0.01, 0.05])),
)
def test_bucket_rows_partition_the_cost_and_tokens(corpus, chars, tokens, usd):
    categories = {b: {"chars": n, "by": {"a": {"chars": n // 2}}} for b, n in zip(BUCKETS, chars, strict=True)}
    usage = {"input_tokens": tokens[0], "cache_creation_input_tokens": tokens[1], "cache_read_input_tokens": tokens[2],
             "output_tokens": tokens[3]}
    entry = ledger_entry(call_with(corpus, categories, usage, *usd))
    whole = [d for d in entry.details if d.detail == ""]
    assert sum(d.cost_usd for d in whole) == pytest.approx(sum(usd), rel=1e-9, abs=1e-12)
    request = [d for d in whole if d.bucket in BUCKETS]
    assert sum(d.tokens for d in request) == pytest.approx(sum(tokens[:3]), rel=1e-9, abs=1e-9)
    assert next(d for d in whole if d.bucket == OUTPUT).tokens == tokens[3]
    assert any(d.bucket == WEB_SEARCH for d in whole) == bool(usd[2])


def full_call(corpus):
    """A call record with every part set: an errored, estimated-price subagent call with a cache
    break, rate limits, a git session and an identity."""
    base = next(r.call for s, n, c, r in corpus if (s, n) == ("subagent", "002"))
    usage = {"input_tokens": 3, "cache_creation_input_tokens": 7, "cache_read_input_tokens": 11,
             "cache_creation": {"ephemeral_5m_input_tokens": 5, "ephemeral_1h_input_tokens": 2}, "output_tokens": 13,
             "speed": "fast", "inference_geo": "us",
             "iterations": [{"type": "message", "input_tokens": 3, "cache_creation_input_tokens": 7,
                             "cache_read_input_tokens": 11, "output_tokens": 13}]}
    cost = price_call("claude-opus-99", usage, load_price_table(), base.exchange.started_at_ns)
    where = Divergence("messages", "changed", bucket="tool_io", label="Bash", message=3, block=1)
    cache_break = CacheBreak("messages_changed", ("messages_changed",), 100, 11, 7, 0.001, where, "message 3 block 1")
    limits = parse_rate_limits([["anthropic-ratelimit-unified-5h-utilization", "0.5"],
                                ["anthropic-ratelimit-unified-5h-reset", "1795493182"],
                                ["anthropic-ratelimit-unified-5h-status", "allowed_warning"],
                                ["anthropic-ratelimit-unified-5h-surpassed-threshold", "0.4"],
                                ["anthropic-ratelimit-requests-limit", "10"],
                                ["anthropic-ratelimit-requests-remaining", "9"]])
    return dataclasses.replace(
        base,
        exchange=dataclasses.replace(base.exchange, ttfb_ns=base.exchange.started_at_ns + 1),
        kind=CallKind("subagent", side_kind="none", subagent=True, agent_id="a", parent_agent_id="p", session_id="s"),
        session=Session("s", "/home/dev/code/x", Git("https://example.test/x.git", "main", "0" * 40), "/t.jsonl"),
        identity=Identity("dev@example.test", "u", "Dev", "o", "Org"),
        parent_span_id="0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c",
        model="claude-opus-99",
        response=dataclasses.replace(base.response, error={"type": "overloaded_error", "message": "busy"},
                                     request_id="req_1", message_id="msg_1", stop_reason="end_turn"),
        usage=read_usage(usage),
        cost=cost,
        cache=CacheDiagnosis(0.5, 0.3, 0.2, PreviousCall("c-0", 3.5, 300, 100), cache_break),
        rate_limits=RateLimits.of(limits),
        agent=AgentLink("toolu_1", "Explore"),
    )


def test_a_call_with_every_part_set_fills_every_column(corpus, tmp_path):
    """No column of the calls table is left empty by a call that has every value: a part of the
    record renamed or missing cannot quietly become NULL columns."""
    call = full_call(corpus)
    assert call.cost.estimated_from and call.cost.total_usd  # priced as the newest Opus
    entry = ledger_entry(call)
    conn = connect(tmp_path / "ledger.db", 1.0)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(calls)")} - {"id"}
    conn.close()
    assert set(entry.call) == columns
    assert [column for column, value in entry.call.items() if value is None] == []
    assert entry.call["error_type"] == "overloaded_error" and entry.call["cache_break_bucket"] == "tool_io"
    assert entry.call["cache_creation_input_tokens"] == 7 and entry.call["cache_write_1h_tokens"] == 2
    assert entry.rate_limits == (("5h", "unified", 0.5, 1795493182, "allowed_warning", 0.4, None, None),
                                 ("requests", "classic", 0.1, None, None, None, 10, 9))
    assert all(value is not None for row in entry.details for value in dataclasses.astuple(row))
    assert (entry.call["speed"], entry.call["inference_geo"]) == ("fast", "us")
    assert json.loads(entry.call["usage_iterations"]) == call.usage.original["iterations"]
    assert {(row.part, row.name) for row in entry.parts} >= {("memory", "/home/dev/code/inventory-sync/CLAUDE.md"),
                                                            ("agent", "Explore")}  # it runs as Explore


def test_a_count_tokens_call_has_no_price_and_no_output_rows(corpus):
    call = next(r.call for s, n, c, r in corpus if (s, n) == ("compact", "014"))
    assert call.cost is None and call.usage is None and call.counted_tokens == 323
    entry = ledger_entry(call)
    priced = ("cost_usd", "cost_input_usd", "cost_output_usd", "warm_cache_cost_usd", "price_table_date")
    assert all(entry.call[column] is None for column in priced) and entry.call["unknown_model"] == 0
    assert entry.call["model"] == "claude-opus-4-8"
    assert {d.bucket for d in entry.details} <= set(BUCKETS) and all(d.cost_usd is None for d in entry.details)
