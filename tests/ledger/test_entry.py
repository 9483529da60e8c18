"""A call's ledger rows, derived from the recorded corpus' captures and their span records."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opik_cipx.ledger.entry import OUTPUT, UNLABELLED_BUCKETS, WEB_SEARCH, ledger_entry
from opik_cipx.materialize.attribution import BUCKETS
from tests.claude_code_corpus import materialized


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return materialized(tmp_path_factory.mktemp("sessions"))


CALL_SPANS = ("llm", "general")  # a Messages call is an llm span; count_tokens a general one


def call_span(records):
    return next(r["body"] for r in records if r["body"].get("type") in CALL_SPANS)


def test_one_entry_per_model_call_with_the_span_cost_and_exact_usage(corpus):
    calls = 0
    for scenario, number, capture, records in corpus:
        entry = ledger_entry(capture, records)
        if not any(r["body"].get("type") in CALL_SPANS for r in records):
            assert entry is None, (scenario, number)  # preconnects, telemetry routes
            continue
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
    for _, _, capture, records in corpus:
        entry = ledger_entry(capture, records)
        if entry is None:
            continue
        rows = {(d.bucket, d.detail): d for d in entry.details}
        assert {b for b, _ in rows} <= {*BUCKETS, OUTPUT, WEB_SEARCH}
        assert not any(b in UNLABELLED_BUCKETS and label for b, label in rows)
        for (bucket, label), d in rows.items():
            if label:
                assert d.chars <= rows[(bucket, "")].chars
        total_chars = sum(d.chars for d in entry.details if d.detail == "" and d.bucket in BUCKETS)
        assert total_chars == entry.call["request_chars"]


def test_count_tokens_error_and_subagent_calls(corpus):
    entries = {(s, n): ledger_entry(c, r) for s, n, c, r in corpus}
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
    entry = next(ledger_entry(c, r) for s, n, c, r in corpus if (s, n) == ("subagent", "002")).call
    written = entry["cache_write_5m_tokens"] + entry["cache_write_1h_tokens"]
    assert written == 12449
    expected = entry["cost_usd"] - entry["cost_cache_write_5m_usd"] - entry["cost_cache_write_1h_usd"] + written * 0.5e-6
    assert entry["warm_cache_cost_usd"] == pytest.approx(expected, rel=1e-12)
    assert entry["warm_cache_cost_usd"] < entry["cost_usd"] / 5


def span_for(capture_id: str, categories: dict, usage: dict, input_usd: float, output_usd: float, search: float):
    breakdown = {"input": input_usd, "cache_write_5m": 0.0, "cache_write_1h": 0.0, "cache_read": 0.0,
                 "output": output_usd, "web_search": search}
    total = input_usd + output_usd + search
    cc = {
        "call": {"capture_id": capture_id, "kind": "main", "request_chars": sum(c["chars"] for c in categories.values())},
        "usage": usage,
        "pricing": {"model": "m", "unknown_model": False, "input_side_usd": input_usd, "output_usd": output_usd,
                    "web_search_usd": search, "breakdown": breakdown, "rates": {"cache_read": 0.5}},
        "categories": categories,
        "output_categories": {"thinking": {"chars": 3}, "text": {"chars": 5}, "tool_use": {"chars": 0}},
        "session": {"id": "s", "cwd": "/p", "git": None},
    }
    return [{"kind": "span", "body": {"id": "x", "type": "llm", "model": "m", "metadata": {"cc": cc},
                                      "total_estimated_cost": total}}]


@given(
    chars=st.lists(st.integers(0, 10**6), min_size=len(BUCKETS), max_size=len(BUCKETS)).filter(any),
    tokens=st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6), st.integers(1, 10**5)),
    usd=st.tuples(st.floats(0, 100), st.floats(0, 100), st.sampled_from([0.0, 0.01, 0.05])),
)
def test_bucket_rows_partition_the_cost_and_tokens(chars, tokens, usd):
    from tests.claude_code_corpus import exchange

    capture = exchange("simple", "001")
    categories = {b: {"chars": n, "by": {"a": {"chars": n // 2}}} for b, n in zip(BUCKETS, chars)}
    usage = {"input_tokens": tokens[0], "cache_creation_input_tokens": tokens[1], "cache_read_input_tokens": tokens[2],
             "output_tokens": tokens[3]}
    entry = ledger_entry(capture, span_for(capture.id, categories, usage, *usd))
    whole = [d for d in entry.details if d.detail == ""]
    assert sum(d.cost_usd for d in whole) == pytest.approx(sum(usd), rel=1e-9, abs=1e-12)
    request = [d for d in whole if d.bucket in BUCKETS]
    assert sum(d.tokens for d in request) == pytest.approx(sum(tokens[:3]), rel=1e-9, abs=1e-9)
    assert next(d for d in whole if d.bucket == OUTPUT).tokens == tokens[3]
    assert any(d.bucket == WEB_SEARCH for d in whole) == bool(usd[2])
