"""Pricing a call again (`ledger/reprice.py`) agrees with `price_call`: the call as it was, a call
with changed whole-token counts, a usage with billed iterations, a dated price change and a tier."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opik_cipx.ledger.reprice import Priced, Repricer, Tokens
from opik_cipx.materialize.materializer import Materializer, MaterializerConfig
from opik_cipx.materialize.pricing import load_price_table, price_call
from tests.claude_code_corpus import FIXTURES, exchanges, materialized, write_session_files
from tests.ledger.test_advice import usage_of

TABLE = load_price_table()
FIVE_X = FIXTURES.parent / "claude-code-5x"  # 5.x models, a tier, a dated change, iterations: see its README


def five_x_calls(tmp_path) -> list:
    sessions = tmp_path / "sessions"
    write_session_files(sessions)
    materializer = Materializer(MaterializerConfig("claude-code", True, 500_000, sessions, sessions / "no.json"),
                                TABLE)
    return [materializer.materialize(capture).call
            for scenario in ("subagent", "side_calls", "long_prompt", "sonnet_dated", "compaction")
            for _, capture in exchanges(scenario, FIVE_X)]


@pytest.fixture(scope="module")
def calls(tmp_path_factory):
    corpus = [r.call for *_, r in materialized(tmp_path_factory.mktemp("sessions")) if r.call is not None]
    return [c for c in corpus + five_x_calls(tmp_path_factory.mktemp("5x")) if c.usage and c.cost.total_usd is not None]


def priced(call) -> Priced:
    original = call.usage.original
    iterations = json.dumps(original["iterations"]) if original.get("iterations") else None
    return Priced(call.model, call.exchange.started_at_ns, original.get("speed"), original.get("inference_geo"),
                  iterations)


def tokens(call) -> Tokens:
    u = call.usage
    return Tokens(u.input, u.cache_write_5m, u.cache_write_1h, u.cache_read, u.output)


def without_fees(cost) -> float:
    return cost.total_usd - (cost.web_search_usd or 0)


def test_every_call_costs_what_price_call_said_and_saves_nothing_unchanged(calls):
    repricer = Repricer(TABLE)
    assert any(priced(c).iterations for c in calls) and len(calls) > 40
    for call in calls:
        assert repricer.saving(priced(call), tokens(call), lambda t: t) == pytest.approx(0, abs=1e-12)
        if not priced(call).iterations:
            assert repricer.cost(priced(call), tokens(call)) == pytest.approx(without_fees(call.cost), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(index=st.integers(0, 10**6), fewer=st.integers(0, 5000), share=st.floats(0, 1))
def test_fewer_tokens_save_what_price_call_says_of_the_changed_usage(calls, index, fewer, share):
    """Whole tokens moved out of the reads and writes: the saving is `price_call`'s difference,
    the tier the smaller prompt falls in and the iterations included."""
    call = calls[index % len(calls)]
    actual = tokens(call)
    read = min(round(fewer * share), actual.read)
    written = min(fewer - read, actual.write_5m)
    changed = actual._replace(read=actual.read - read, write_5m=actual.write_5m - written)
    usage = usage_of(call)
    after = {**usage, "cache_read_input_tokens": changed.read,
             "cache_creation_input_tokens": changed.write_5m + changed.write_1h,
             "cache_creation": {"ephemeral_5m_input_tokens": changed.write_5m,
                                "ephemeral_1h_input_tokens": changed.write_1h}}
    for key in ("speed", "inference_geo"):
        if key in call.usage.original:
            usage[key] = after[key] = call.usage.original[key]
    if priced(call).iterations:  # the change applies to the message iteration, the compaction one is kept
        iterations = call.usage.original["iterations"]
        usage["iterations"] = iterations
        after["iterations"] = [it if it.get("type") == "compaction" else
                               {**{k: v for k, v in after.items() if k != "iterations"}, "type": "message"}
                               for it in iterations]
    start = call.exchange.started_at_ns
    expected = without_fees(price_call(call.model, usage, TABLE, start)) - without_fees(
        price_call(call.model, after, TABLE, start))
    assert Repricer(TABLE).saving(priced(call), actual, lambda t: changed) == pytest.approx(expected, abs=1e-12)


def test_one_set_of_rates_only_where_every_call_has_the_same(calls):
    repricer = Repricer(TABLE)
    dated = [c for c in calls if c.model.startswith("claude-sonnet-5-5")]
    first, last = min(c.exchange.started_at_ns for c in dated), max(c.exchange.started_at_ns for c in dated)
    assert repricer.steady(dated[0].model, first, first, 1000) is not None
    assert repricer.steady(dated[0].model, first, last, 1000) is None  # a dated change in between
    long = next(c for c in calls if c.usage.prompt_tokens > 100_000)
    at = long.exchange.started_at_ns
    assert repricer.steady(long.model, at, at, 1000) is not None
    assert repricer.steady(long.model, at, at, long.usage.prompt_tokens) is None  # a tier it reaches


def test_a_dated_change_that_leaves_the_rates_alike_keeps_one_set_of_rates():
    """claude-opus-4-8's 2026-11-30 change removes fast mode: the standard rates stay, the fast ones do not."""
    repricer = Repricer(TABLE)
    change = next(p.from_ns for p in TABLE.resolve("claude-opus-4-8").price.periods if p.from_ns)
    day = 86400 * 10**9
    assert repricer.steady("claude-opus-4-8", change - day, change + day, 1000) == repricer.rates(
        "claude-opus-4-8", change + day, 1000)
    assert repricer.steady("claude-opus-4-8", change - day, change + day, 1000, speed="fast") is None


def test_iterations_without_a_split_of_their_own_save_nothing_unchanged():
    """`price_call` shares such an iteration's writes 5m/1h as the top level's: so must the repricing,
    or an unchanged call shows a saving (1-hour writes read as 5-minute ones)."""
    iterations = json.dumps([{"type": "message", "input_tokens": 10, "cache_creation_input_tokens": 10_000,
                              "cache_read_input_tokens": 0, "output_tokens": 50}])
    call = Priced("claude-opus-4-8", 1_780_000_000 * 10**9, iterations=iterations)
    actual = Tokens(10, 0, 10_000, 0, 50)  # the top level: every write a 1-hour one
    assert Repricer(TABLE).saving(call, actual, lambda t: t) == pytest.approx(0, abs=1e-12)
