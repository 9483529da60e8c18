"""Prices: hand-computed costs, dated rates, tiers, iterations, family estimates, config overrides."""

import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from opik_cipx.config import ConfigError, load_settings, parse_price_overrides
from opik_cipx.materialize.pricing import RATE_KEYS, PriceTable, load_price_table, normalize_model
from opik_cipx.materialize.pricing import price_call as _price_call
from opik_cipx.materialize.response import summarize_response
from opik_cipx.wire.capture import Capture
from tests.conftest import FIXTURES, REPO, examples

TABLE = load_price_table()


def table_with(overrides: dict) -> PriceTable:
    """The table with `[prices]` overrides as config.toml would carry them (parsed as the settings load)."""
    return load_price_table(parse_price_overrides(overrides))


def at(iso: str) -> int:
    """Epoch ns of a UTC date or date-time."""
    return int(datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp() * 1_000_000_000)


NOW = at("2026-11-27T12:00:00")


def price_call(model, usage, table=TABLE, at_ns=NOW):
    return _price_call(model, usage, table, at_ns=at_ns)


def usage(input=0, output=0, read=0, written=None, w5m=None, w1h=None, **extra) -> dict:
    out = {"input_tokens": input, "output_tokens": output, "cache_read_input_tokens": read, **extra}
    if written is not None:
        out["cache_creation_input_tokens"] = written
    if w5m is not None or w1h is not None:
        out["cache_creation"] = {"ephemeral_5m_input_tokens": w5m or 0, "ephemeral_1h_input_tokens": w1h or 0}
    return out


# (model, usage, total USD, input-side USD, tier) -- each total worked out by hand in USD per MTok
CASES = [
    pytest.param("claude-opus-4-8", usage(6, 24, 0, 20759, 20759, 0),
                 (6 * 5 + 20759 * 6.25 + 24 * 25) / 1e6, (6 * 5 + 20759 * 6.25) / 1e6, None, id="5m-writes"),
    pytest.param("claude-opus-4-8", usage(10, 400, 50000, 3000, 1000, 2000),
                 0.0613, 0.0513, None, id="5m-and-1h-writes"),
    pytest.param("claude-sonnet-4-6", usage(100, 1000, 0, 4000),
                 0.0303, 0.0153, None, id="split-absent-all-5m"),
    pytest.param("claude-haiku-4-5-20251001", usage(1000, 1000, 10000, 2000, 0, 2000),
                 (1000 * 1 + 1000 * 5 + 10000 * 0.1 + 2000 * 2) / 1e6, 0.006, None, id="1h-only-haiku"),
    pytest.param("claude-sonnet-4-5", usage(1000, 2000, 149999, 49000, 49000, 0),
                 0.2617497, 0.2317497, None, id="long-context-just-below"),
    pytest.param("claude-sonnet-4-5", usage(1000, 2000, 150000, 49000, 49000, 0),
                 0.26175, 0.23175, None, id="long-context-exactly-at-200k"),
    pytest.param("claude-sonnet-4-5-20250929", usage(1000, 2000, 150001, 49000, 49000, 0),
                 0.5085006, 0.4635006, "long_context", id="long-context-above"),
    pytest.param("claude-sonnet-4-20250514", usage(300000, 100, 0, 10000, 0, 10000),
                 1.92225, 1.92, "long_context", id="long-context-sonnet-4-1h-writes"),
    pytest.param("claude-sonnet-4-6", usage(1000, 2000, 150001, 49000, 49000, 0),
                 0.2617503, 0.2317503, None, id="no-long-context-on-4.6"),
    pytest.param("claude-opus-4-8[1m]", usage(1000, 2000, 150001, 49000, 49000, 0),
                 (1000 * 5 + 150001 * 0.5 + 49000 * 6.25 + 2000 * 25) / 1e6,
                 (1000 * 5 + 150001 * 0.5 + 49000 * 6.25) / 1e6, None, id="no-long-context-on-opus-4.8-1m"),
    pytest.param("claude-opus-4-1-20250805", usage(10, 10, 10, 10),
                 (10 * 15 + 10 * 75 + 10 * 1.5 + 10 * 18.75) / 1e6, (10 * 15 + 10 * 1.5 + 10 * 18.75) / 1e6,
                 None, id="opus-4.1"),
]


@pytest.mark.parametrize("model, use, total, input_side, tier", CASES)
def test_hand_computed_costs(model, use, total, input_side, tier):
    cost = price_call(model, use)
    assert cost.total_usd == pytest.approx(total, abs=1e-9)
    assert cost.input_side_usd == pytest.approx(input_side, abs=1e-9)
    assert cost.tier == tier
    assert cost.unknown_model is False and cost.estimated_from is None
    parts = cost.breakdown
    assert sum(parts.values()) == pytest.approx(cost.total_usd, abs=1e-12)
    assert cost.output_usd == parts["output"] and cost.web_search_usd == parts["web_search"] == 0


def test_breakdown_and_rates_of_a_long_context_call():
    cost = price_call("claude-sonnet-4-5", usage(1000, 2000, 150001, 49000, 49000, 0))
    assert cost.breakdown == pytest.approx({"input": 0.006, "cache_write_5m": 0.3675, "cache_write_1h": 0.0,
                                            "cache_read": 0.0900006, "output": 0.045, "web_search": 0.0}, abs=1e-12)
    assert cost.rates == {"input": 6, "cache_write_5m": 7.5, "cache_write_1h": 12, "cache_read": 0.6,
                          "output": 22.5, "web_search_per_1000": 10}
    assert cost.modifiers == ("long_context: prompt over 200000 tokens",)


def test_web_search_fee():
    cost = price_call("claude-opus-4-8", usage(128, 50, server_tool_use={"web_search_requests": 3}))
    assert cost.web_search_usd == pytest.approx(0.03, abs=1e-12)
    assert cost.total_usd == pytest.approx((128 * 5 + 50 * 25) / 1e6 + 0.03, abs=1e-9)
    assert cost.input_side_usd == pytest.approx(128 * 5 / 1e6, abs=1e-12)


@pytest.mark.parametrize("model, use, when, factor, modifiers", [
    ("claude-opus-5-5", {"speed": "fast"}, NOW, 2, ("fast x2",)),
    ("claude-opus-5", {"speed": "fast"}, NOW, 2, ("fast x2",)),
    ("claude-fable-5-2", {"speed": "fast"}, NOW, 2, ("fast x2",)),
    ("claude-mythos-5-2", {"speed": "fast"}, NOW, 2, ("fast x2",)),
    ("claude-opus-4-8", {"speed": "fast"}, NOW, 2, ("fast x2",)),
    ("claude-opus-4-6", {"speed": "fast"}, at("2026-06-28T23:59:59"), 6, ("fast x6",)),
    ("claude-opus-4-7", {"speed": "fast"}, at("2026-07-23T12:00:00"), 6, ("fast x6",)),
    ("claude-opus-4-7", {"speed": "standard"}, NOW, 1, ()),
    ("claude-sonnet-4-6", {"inference_geo": "us"}, NOW, 1.1, ("inference_geo=us x1.1",)),
    ("claude-sonnet-5-5", {"inference_geo": "US"}, NOW, 1.1, ("inference_geo=US x1.1",)),
    ("claude-haiku-5-5", {"inference_geo": " Us "}, NOW, 1.1, ("inference_geo= Us  x1.1",)),
    ("claude-sonnet-4-6", {"inference_geo": "global"}, NOW, 1, ()),
    ("claude-opus-5-5", {"speed": "fast", "inference_geo": "us"}, NOW, 2.2, ("fast x2", "inference_geo=us x1.1")),
])
def test_fast_mode_and_us_inference_multiply_every_token_rate(model, use, when, factor, modifiers):
    base = usage(1000, 1000, 10000, 2000, 1000, 1000, server_tool_use={"web_search_requests": 1})
    plain = price_call(model, base, at_ns=when)
    cost = price_call(model, {**base, **use}, at_ns=when)
    for key in RATE_KEYS:
        assert cost.breakdown[key] == pytest.approx(plain.breakdown[key] * factor, abs=1e-12)
    assert cost.web_search_usd == plain.web_search_usd == pytest.approx(0.01)  # the search fee is flat
    assert cost.modifiers == modifiers


def test_fast_mode_hand_computed():
    # Opus 5.5 fast = 2x: (1000*4 + 1000*20 + 10000*0.2) * 2
    assert price_call("claude-opus-5-5", usage(1000, 1000, 10000, speed="fast")).total_usd == \
        pytest.approx(0.052, abs=1e-9)
    # Opus 4.6 fast and US-only, while it had fast mode: x6 x1.1 on (1000*5 + 1000*25 + 10000*0.5)
    assert price_call("claude-opus-4-6", usage(1000, 1000, 10000, speed="fast", inference_geo="us"),
                      at_ns=at("2026-05-01")).total_usd == pytest.approx(0.231, abs=1e-9)



def test_mythos_5_2_is_priced_like_fable_5_2_fast_mode_included():
    use = usage(1000, 2000, 30000, 4000, 3000, 1000)
    # $8 in, $10 5m write, $16 1h write, $0.20 read, $40 out: 1000*8 + 3000*10 + 1000*16 + 30000*0.2 + 2000*40
    standard = price_call("claude-mythos-5-2", use)
    assert standard.total_usd == pytest.approx(0.14, abs=1e-12)
    assert standard.unknown_model is False and standard.estimated_from is None and standard.modifiers == ()
    fast = price_call("claude-mythos-5-2-20261201", {**use, "speed": "fast"})  # x2 on every token class
    assert fast.total_usd == pytest.approx(0.28, abs=1e-12) and fast.modifiers == ("fast x2",)
    assert fast.rates["output"] == 80 and fast.rates["cache_read"] == 0.4

@pytest.mark.parametrize("model, when", [
    ("claude-haiku-5-5", NOW), ("claude-sonnet-5-5", NOW), ("claude-haiku-4-5", NOW),
    ("claude-opus-4-6", at("2026-06-29")), ("claude-opus-4-7", NOW),  # fast mode removed 2026-06-29 / 2026-07-24
    ("claude-opus-4-8", at("2026-11-30")),  # removed 2026-11-30
])
def test_fast_where_the_model_has_no_fast_mode_is_flagged_not_guessed(model, when):
    plain = price_call(model, usage(1000, 1000), at_ns=when)
    cost = price_call(model, usage(1000, 1000, speed="fast"), at_ns=when)
    assert cost.total_usd == plain.total_usd
    assert cost.modifiers == ("fast: this model has no fast mode at the call's date; standard rates used",)


@pytest.mark.parametrize("model, reason", [
    ("claude-foo-5", "no known family (opus, sonnet, haiku, fable, mythos) in the id"),
    ("claude-instant-1-20260101", "no known family"),
    ("gpt-4o", "not a Claude model id"),
    ("", "no model id"),
    (None, "no model id"),
])
def test_an_id_of_no_known_family_has_no_cost_never_zero_and_says_why(model, reason):
    cost = price_call(model, usage(1000, 1000))
    assert cost.unknown_model is True and cost.estimated_from is None
    assert (cost.total_usd, cost.input_side_usd, cost.output_usd, cost.breakdown) == (None, None, None, None)
    assert cost.model == (normalize_model(model) if model else None)
    assert reason in cost.unpriced_reason
    if model:
        assert f'[prices."{normalize_model(model)}"]' in cost.unpriced_reason


@pytest.mark.parametrize("model, newest", [
    ("claude-opus-6", "claude-opus-5-5"),
    ("claude-opus-6-20270101[1m]", "claude-opus-5-5"),
    ("claude-sonnet-6", "claude-sonnet-5-5"),
    ("claude-haiku-6-5", "claude-haiku-5-5"),
    ("claude-4-haiku", "claude-haiku-5-5"),
    ("us.anthropic.claude-fable-6-v1:0", "claude-fable-5-2"),
    ("claude-mythos-6", "claude-mythos-5-2"),
])
def test_an_unknown_claude_id_is_priced_as_the_newest_of_its_family_and_flagged(model, newest):
    use = usage(1000, 2000, 30000, 4000, 3000, 1000)
    cost = price_call(model, use)
    assert cost.unknown_model is True and cost.estimated_from == newest and cost.unpriced_reason is None
    assert cost.model == normalize_model(model)
    assert cost.total_usd == price_call(newest, use).total_usd > 0
    assert cost.modifiers[0] == f"estimated: {normalize_model(model)} is not in the price table, priced as {newest}"


def test_an_estimate_uses_the_tiers_of_the_model_it_is_priced_as():
    cost = price_call("claude-haiku-6", usage(100001, 1000))
    assert cost.tier == "prompt_over_100k"
    assert cost.total_usd == pytest.approx((100001 * 0.5 + 1000 * 2.5) / 1e6, abs=1e-12)


def test_known_model_without_usage_has_no_cost():
    cost = price_call("claude-opus-4-8", None)
    assert cost.unknown_model is False and cost.total_usd is None and cost.model == "claude-opus-4-8"


@pytest.mark.parametrize("raw, normalised", [
    ("claude-opus-4-8", "claude-opus-4-8"),
    ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
    ("claude-opus-4-8[1m]", "claude-opus-4-8"),
    ("claude-sonnet-4-5-20250929[1m]", "claude-sonnet-4-5"),
    ("Claude-Sonnet-4-6 ", "claude-sonnet-4-6"),
    ("claude-3-7-sonnet-latest", "claude-3-7-sonnet"),
    ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5"),
    ("anthropic.claude-3-5-haiku-20241022-v1:0", "claude-3-5-haiku"),
    ("claude-opus-4-1@20250805", "claude-opus-4-1"),
    ("anthropic/claude-opus-4-8", "claude-opus-4-8"),
])
def test_model_id_normalisation(raw, normalised):
    assert normalize_model(raw) == normalised
    assert TABLE.lookup(raw) == (normalised, TABLE.models[normalised])


def test_aliases():
    assert TABLE.lookup("claude-opus-4-0")[0] == "claude-opus-4"
    assert TABLE.lookup("claude-sonnet-4-0")[0] == "claude-sonnet-4"


# The published rates (USD per MTok: input, 5m write, 1h write, cache read, output), written out
# here independently of prices.json: Anthropic's pricing page and model pages (see prices.json).
FACTS = {
    ("claude-opus-4", "claude-opus-4-1"): (15, 18.75, 30, 1.5, 75),
    ("claude-opus-4-5", "claude-opus-4-6", "claude-opus-4-7", "claude-opus-4-8", "claude-opus-5"):
        (5, 6.25, 10, 0.5, 25),
    ("claude-opus-5-5",): (4, 5, 8, 0.2, 20),
    ("claude-3-7-sonnet", "claude-sonnet-4", "claude-sonnet-4-5", "claude-sonnet-4-6"): (3, 3.75, 6, 0.3, 15),
    ("claude-sonnet-5",): (2, 2.5, 4, 0.2, 10),
    ("claude-sonnet-5-5",): (2, 2.5, 4, 0.1, 10),  # cache read was 0.20 before 2026-10-07
    ("claude-haiku-5-5",): (0.1, 0.125, 0.2, 0.01, 0.5),  # prompt up to 100K tokens
    ("claude-haiku-4-5",): (1, 1.25, 2, 0.1, 5),
    ("claude-3-5-haiku",): (0.8, 1, 1.6, 0.08, 4),
    ("claude-3-haiku",): (0.25, 0.3, 0.5, 0.03, 1.25),
    ("claude-fable-5-2", "claude-mythos-5-2"): (8, 10, 16, 0.2, 40),  # Mythos 5.2 priced like Fable 5.2
    ("claude-fable-5-1", "claude-mythos-5-1"): (10, 12.5, 20, 0.25, 50),
    ("claude-fable-5", "claude-mythos-5"): (10, 12.5, 20, 1, 50),
}
TIERS = {
    "claude-sonnet-4": ("long_context", 200000, (6, 7.5, 12, 0.6, 22.5)),
    "claude-sonnet-4-5": ("long_context", 200000, (6, 7.5, 12, 0.6, 22.5)),
    "claude-haiku-5-5": ("prompt_over_100k", 100000, (0.5, 0.625, 1, 0.05, 2.5)),
}
FAST_NOW = {"claude-opus-5-5": 2, "claude-opus-5": 2, "claude-opus-4-8": 2, "claude-fable-5-2": 2,
            "claude-mythos-5-2": 2}


def test_packaged_table_matches_the_published_rates():
    expected = {m: dict(zip(RATE_KEYS, row, strict=True)) for models, row in FACTS.items() for m in models}
    assert {name: price.at(NOW).rates for name, price in TABLE.models.items()} == expected
    tiers = {name: [(t.name, t.above_prompt_tokens, tuple(t.rates[k] for k in RATE_KEYS)) for t in price.at(NOW).tiers]
             for name, price in TABLE.models.items() if price.at(NOW).tiers}
    assert tiers == {name: [tier] for name, tier in TIERS.items()}
    assert {n: p.at(NOW).fast_multiplier for n, p in TABLE.models.items() if p.at(NOW).fast_multiplier} == FAST_NOW
    assert TABLE.effective_date == "2026-12-06" and TABLE.web_search_usd_per_1000 == 10
    assert TABLE.newest == {"opus": "claude-opus-5-5", "sonnet": "claude-sonnet-5-5", "haiku": "claude-haiku-5-5",
                            "fable": "claude-fable-5-2", "mythos": "claude-mythos-5-2"}


def test_every_row_names_its_source_and_the_date_it_was_checked():
    for name, price in TABLE.models.items():
        assert price.source and price.source.startswith("https://"), name
        assert datetime.fromisoformat(price.checked), name
    assert TABLE.models["claude-fable-5-2"].unconfirmed is True
    mythos = TABLE.models["claude-mythos-5-2"]  # no Anthropic page gives its rates: the row says how it is priced
    assert mythos.unconfirmed is True and mythos.note.startswith("priced like claude-fable-5-2")
    assert "priced like claude-fable-5-2" in mythos.secondary
    assert TABLE.models["claude-opus-4-5"].secondary is None  # every rate from Anthropic's own pages
    assert TABLE.models["claude-sonnet-5-5"].secondary  # the cut's date is from secondary sources


@pytest.mark.parametrize("when, cache_read", [
    ("2026-10-06T23:59:59.999999", 0.2), ("2026-10-07T00:00:00", 0.1), ("2026-09-28", 0.2), ("2027-01-01", 0.1)])
def test_a_call_is_priced_at_the_rate_in_force_when_it_started(when, cache_read):
    cost = price_call("claude-sonnet-5-5", usage(10, 100, 1_000_000), at_ns=at(when))
    assert cost.rates["cache_read"] == cache_read
    assert cost.total_usd == pytest.approx((10 * 2 + 100 * 10) / 1e6 + cache_read, abs=1e-12)
    assert cost.rates_effective_from == (None if cache_read == 0.2 else "2026-10-07")


@pytest.mark.parametrize("prompt, tier", [(100000, None), (100001, "prompt_over_100k")])
def test_haiku_5_5_prices_the_whole_request_at_the_higher_rates_over_100k(prompt, tier):
    # the prompt counts input + cache reads + cache writes: here 1000 + 60000 + (prompt - 61000) 5m writes
    cost = price_call("claude-haiku-5-5", usage(1000, 2000, 60000, prompt - 61000))
    rates = (0.5, 0.625, 1, 0.05, 2.5) if tier else (0.1, 0.125, 0.2, 0.01, 0.5)
    expected = (1000 * rates[0] + (prompt - 61000) * rates[1] + 60000 * rates[3] + 2000 * rates[4]) / 1e6
    assert cost.total_usd == pytest.approx(expected, abs=1e-12)
    assert cost.tier == tier


def test_cost_to_json_is_json():
    cost = price_call("claude-opus-5-5", usage(1, 2, 3, 4, speed="fast"))
    data = json.loads(json.dumps(cost.to_json()))
    assert data["model"] == "claude-opus-5-5" and data["modifiers"] == ["fast x2"]
    assert data["price_table_date"] == TABLE.effective_date
    assert set(data["breakdown"]) == {*RATE_KEYS, "web_search"}
    assert data["estimated_from"] is None and data["iterations"] is None and data["tier"] is None
    assert json.loads(json.dumps(price_call(None, None).to_json()))["total_usd"] is None


# -- usage.iterations (server-side compaction, server tool loops) ---------------------------------

def iteration(kind, input=0, output=0, read=0, written=0, **extra):
    return {"type": kind, "input_tokens": input, "output_tokens": output, "cache_read_input_tokens": read,
            "cache_creation_input_tokens": written, **extra}


def test_iterations_are_priced_one_by_one_and_top_level_tokens_not_added_again():
    # The top level repeats the message iteration; the compaction iteration is only in the list.
    compaction = iteration("compaction", input=180000, output=3500)
    message = iteration("message", input=23000, output=1000, read=5000)
    cost = price_call("claude-opus-5-5", {**message, "iterations": [compaction, message]})
    # Opus 5.5 ($4 in, $0.20 read, $20 out) has no tier: (180000*4 + 3500*20) + (23000*4 + 5000*0.2 + 1000*20)
    assert cost.total_usd == pytest.approx((180000 * 4 + 3500 * 20 + 23000 * 4 + 5000 * 0.2 + 1000 * 20) / 1e6,
                                           abs=1e-12)
    assert [it["type"] for it in cost.iterations] == ["compaction", "message"]
    assert cost.iterations[0]["usd"] == pytest.approx((180000 * 4 + 3500 * 20) / 1e6, abs=1e-12)
    assert cost.iterations[1]["prompt_tokens"] == 28000
    assert "the top-level tokens are not added again" in cost.modifiers[0]


def test_each_iteration_chooses_its_own_tier():
    # Haiku 5.5: the compaction pass read 180K (over 100K: $0.50 in / $2.50 out), the answer 23K ($0.10 / $0.50).
    compaction = iteration("compaction", input=180000, output=3500)
    message = iteration("message", input=23000, output=1000)
    cost = price_call("claude-haiku-5-5", {**message, "iterations": [compaction, message]})
    assert cost.total_usd == pytest.approx((180000 * 0.5 + 3500 * 2.5 + 23000 * 0.1 + 1000 * 0.5) / 1e6, abs=1e-12)
    assert [it["tier"] for it in cost.iterations] == ["prompt_over_100k", None]
    assert cost.tier == "prompt_over_100k"


def test_an_iteration_served_by_another_model_is_priced_as_that_model():
    advisor = iteration("advisor_message", input=1000, output=100, model="claude-opus-5-5")
    message = iteration("message", input=1000, output=100)
    cost = price_call("claude-haiku-5-5", {**message, "iterations": [message, advisor]})
    assert cost.total_usd == pytest.approx((1000 * 0.1 + 100 * 0.5 + 1000 * 4 + 100 * 20) / 1e6, abs=1e-12)
    assert cost.iterations[1]["model"] == "claude-opus-5-5"
    unpriced = price_call("claude-haiku-5-5", {**message, "iterations": [message, {**advisor, "model": "gpt-9"}]})
    assert unpriced.total_usd is None and "usage.iterations[1] ran on gpt-9" in unpriced.unpriced_reason


def test_fast_mode_and_geo_apply_to_every_iteration():
    its = [iteration("compaction", input=1000, output=10), iteration("message", input=100, output=10)]
    cost = price_call("claude-opus-5-5", {**its[1], "iterations": its, "speed": "fast", "inference_geo": "us"})
    assert cost.total_usd == pytest.approx((1100 * 4 + 20 * 20) * 2 * 1.1 / 1e6, abs=1e-12)



# An iteration without its own 5m/1h split takes the top level's (Opus 5.5: $5 5m write, $8 1h write).
SPLIT_NOTE = "usage.iterations[0]: no cache_creation split; its writes split 5m/1h as the top level's"


def test_an_iteration_without_a_split_takes_the_top_levels():
    message = iteration("message", input=10, output=100, read=20000, written=4000,
                        cache_creation={"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 3000})
    compaction = iteration("compaction", input=50000, output=2000, written=4000)  # no cache_creation
    cost = price_call("claude-opus-5-5", {**message, "iterations": [compaction, message]})
    # compaction: 50000*4 + 1000*5 + 3000*8 + 2000*20 = 269,000; message: 10*4 + 20000*0.2 + 1000*5 + 3000*8 + 100*20
    # = 35,040 (as all 5-minute writes the compaction pass would have cost 260,000)
    assert cost.total_usd == pytest.approx(0.30404, abs=1e-12)
    assert cost.iterations[0]["tokens"] == {"input": 50000, "cache_write_5m": 1000, "cache_write_1h": 3000,
                                            "cache_read": 0, "output": 2000}
    assert cost.iterations[0]["usd"] == pytest.approx(0.269, abs=1e-12)
    assert cost.iterations[0]["prompt_tokens"] == 54000  # the writes are shared out, never added or lost
    assert SPLIT_NOTE in cost.modifiers


def test_an_iteration_takes_a_1h_only_top_level_split_as_all_1h_writes():
    message = iteration("message", input=5, output=40, read=1000, written=2000,
                        cache_creation={"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 2000})
    compaction = iteration("compaction", input=30000, output=1500, written=5000, cache_creation=None)  # null split
    cost = price_call("claude-opus-5-5", {**message, "iterations": [compaction, message]})
    # compaction: 30000*4 + 5000*8 + 1500*20 = 190,000; message: 5*4 + 1000*0.2 + 2000*8 + 40*20 = 17,020
    assert cost.total_usd == pytest.approx(0.20702, abs=1e-12)
    assert (cost.iterations[0]["tokens"]["cache_write_5m"], cost.iterations[0]["tokens"]["cache_write_1h"]) == (0, 5000)


@pytest.mark.parametrize("top_5m, top_1h, written, expect_5m, expect_1h", [
    (1000, 3000, 4000, 1000, 3000),  # the same count: the top level's split as it is
    (1000, 3000, 400, 100, 300),  # fewer writes, in proportion
    (1, 2, 1000, 333, 667),  # 666.67 1-hour writes round to 667; the 5-minute ones are the rest
    (1, 1, 7, 3, 4),  # a half rounds up
    (2, 1, 1, 1, 0),  # 0.33 rounds down
    (2000, 0, 5000, 5000, 0),  # 5-minute-only top level
])
def test_a_missing_split_is_shared_in_proportion_and_the_writes_stay_exact(top_5m, top_1h, written, expect_5m,
                                                                         expect_1h):
    top = iteration("message", written=top_5m + top_1h,
                    cache_creation={"ephemeral_5m_input_tokens": top_5m, "ephemeral_1h_input_tokens": top_1h})
    cost = price_call("claude-opus-5-5", {**top, "iterations": [iteration("compaction", written=written), top]})
    tokens = cost.iterations[0]["tokens"]
    assert (tokens["cache_write_5m"], tokens["cache_write_1h"]) == (expect_5m, expect_1h)
    assert cost.iterations[0]["usd"] == pytest.approx((expect_5m * 5 + expect_1h * 8) / 1e6, abs=1e-15)


@pytest.mark.parametrize("top, total", [
    # no split anywhere: all 5-minute writes, as before: (100*4 + 3000*5 + 10*20) + (10*4 + 1000*5 + 10*20)
    ({}, 0.02084),
    ({"cache_creation": None}, 0.02084),
    # a top-level split of no writes has no proportion to give: (100*4 + 3000*5 + 10*20) + (10*4 + 10*20)
    ({"cache_creation_input_tokens": 0,
      "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}}, 0.01584),
])
def test_without_a_top_level_split_an_iteration_s_writes_stay_5_minute_writes(top, total):
    message = {**iteration("message", input=10, output=10, written=1000), **top}
    compaction = iteration("compaction", input=100, output=10, written=3000)
    cost = price_call("claude-opus-5-5", {**message, "iterations": [compaction, message]})
    assert cost.total_usd == pytest.approx(total, abs=1e-12)
    assert cost.iterations[0]["tokens"]["cache_write_1h"] == 0
    assert not any("cache_creation split" in line for line in cost.modifiers)


def test_an_iteration_with_its_own_split_keeps_it():
    message = iteration("message", written=2000,
                        cache_creation={"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 2000})
    compaction = iteration("compaction", written=3000,
                           cache_creation={"ephemeral_5m_input_tokens": 3000, "ephemeral_1h_input_tokens": 0})
    cost = price_call("claude-opus-5-5", {**message, "iterations": [compaction, message]})
    assert cost.total_usd == pytest.approx((3000 * 5 + 2000 * 8) / 1e6, abs=1e-12)
    assert cost.modifiers == ("usage.iterations: 2 billed iteration(s) priced one by one; "
                              "the top-level tokens are not added again",)


def test_a_call_without_iterations_keeps_its_own_rule_for_a_missing_split():
    # No iterations: writes the split does not cover are 5-minute writes (1000*5 + 500*8), as before.
    use = usage(written=1500, w1h=500)
    del use["cache_creation"]["ephemeral_5m_input_tokens"]
    assert price_call("claude-opus-5-5", use).total_usd == pytest.approx(0.009, abs=1e-12)
    assert price_call("claude-opus-5-5", usage(written=1500)).total_usd == pytest.approx(0.0075, abs=1e-12)


# -- overrides from config.toml -----------------------------------------------------------------

def test_override_adds_a_model_and_overrides_one_rate():
    table = table_with({
        "claude-foo-5": {"input": 2, "output": 10, "cache_write_5m": 2.5, "cache_write_1h": 4, "cache_read": 0.2},
        "claude-opus-5-5[1m]": {"output": 30},
    })
    foo = price_call("claude-foo-5-20261001", usage(1000, 1000, 10000), table)
    assert foo.model == "claude-foo-5" and foo.total_usd == pytest.approx(0.014, abs=1e-9)
    assert foo.unknown_model is False
    opus = price_call("claude-opus-5-5", usage(1000, 1000, speed="fast"), table)
    assert opus.rates["output"] == 60 and opus.rates["input"] == 8  # fast x2 kept, input untouched
    assert table.models["claude-opus-5-5"].overridden and not table.models["claude-opus-5"].overridden
    assert TABLE.models["claude-opus-5-5"].at(NOW).rates["output"] == 20  # the shared default is not changed


def test_an_override_with_a_tier_and_a_fast_multiplier_is_applied():
    table = table_with({"claude-opus-6": {
        "input": 6, "cache_write_5m": 7.5, "cache_write_1h": 12, "cache_read": 0.3, "output": 30, "fast_multiplier": 3,
        "tiers": [{"above_prompt_tokens": 400000, "input": 12, "cache_write_5m": 15, "cache_write_1h": 24,
                   "cache_read": 0.6, "output": 60}]}})
    below = price_call("claude-opus-6", usage(400000, 1000), table)
    above = price_call("claude-opus-6", usage(400001, 1000), table)
    fast = price_call("claude-opus-6", usage(400001, 1000, speed="fast"), table)
    assert below.total_usd == pytest.approx((400000 * 6 + 1000 * 30) / 1e6, abs=1e-12) and below.tier is None
    assert above.total_usd == pytest.approx((400001 * 12 + 1000 * 60) / 1e6, abs=1e-12)
    assert above.tier == "prompt_over_400000" and above.estimated_from is None and not above.unknown_model
    assert fast.total_usd == pytest.approx(above.total_usd * 3, abs=1e-12)
    assert table.newest["opus"] == "claude-opus-6"  # an added model is the family's newest for estimates


def test_an_override_with_a_dated_change_and_no_fast_mode():
    table = table_with({"claude-opus-5-5": {
        "fast_multiplier": False, "changes": [{"effective_from": "2027-01-01", "input": 3}]}})
    before = price_call("claude-opus-5-5", usage(1000, speed="fast"), table, at_ns=at("2026-12-31T23:59:59"))
    after = price_call("claude-opus-5-5", usage(1000, speed="fast"), table, at_ns=at("2027-01-01"))
    assert before.total_usd == pytest.approx(1000 * 4 / 1e6) and after.total_usd == pytest.approx(1000 * 3 / 1e6)
    assert after.rates_effective_from == "2027-01-01"
    assert "no fast mode" in before.modifiers[0]


def test_an_override_of_a_rate_wins_over_a_packaged_dated_change():
    table = table_with({"claude-sonnet-5-5": {"cache_read": 0.15}})
    for when in ("2026-10-01", "2026-11-01"):
        assert price_call("claude-sonnet-5-5", usage(read=1_000_000), table, at_ns=at(when)).total_usd == \
            pytest.approx(0.15)


@pytest.mark.parametrize("overrides, message", [
    ({"claude-foo-5": {"input": 1, "output": "x", "cache_write_5m": 1, "cache_write_1h": 1, "cache_read": 1}},
     "prices.claude-foo-5.output: expected a number"),
    ({"claude-opus-4-8": {"output": True}}, "prices.claude-opus-4-8.output: expected a number"),
    ({"claude-opus-4-8": {"output": float("nan")}}, "prices.claude-opus-4-8.output: expected a number"),
    ({"claude-opus-4-8": {"input": -1}}, "prices.claude-opus-4-8.input: must not be negative"),
    ({"claude-opus-4-8": {"ouptut": 30}}, "prices.claude-opus-4-8.ouptut: unknown key"),
    ({"claude-foo-5": {"input": 1, "output": 2}}, "prices.claude-foo-5: a model without a packaged price needs"),
    ({"claude-foo-5": 3}, "prices.claude-foo-5: expected a table"),
    ([1, 2], "prices: expected a table of models"),
    ({"claude-opus-5": {"fast_multiplier": 0.5}},
     "prices.claude-opus-5.fast_multiplier: expected a number of at least 1"),
    ({"claude-opus-5": {"fast_multiplier": "2x"}}, "prices.claude-opus-5.fast_multiplier: expected a number"),
    ({"claude-opus-5": {"tiers": {"above_prompt_tokens": 1}}},
     'prices.claude-opus-5.tiers: expected a list of tables ([[prices."claude-opus-5".tiers]])'),
    ({"claude-opus-5": {"tiers": [{"above_prompt_tokens": 1000, "input": 1}]}},
     "prices.claude-opus-5.tiers[0]: a tier needs every rate; missing cache_write_5m"),
    ({"claude-opus-5": {"tiers": [{"input": 1}]}}, "prices.claude-opus-5.tiers[0].above_prompt_tokens: expected"),
    ({"claude-opus-5": {"tiers": [{"above_prompt_tokens": 1.5}]}}, "tiers[0].above_prompt_tokens: expected a whole"),
    ({"claude-opus-5": {"tiers": [{"threshold": 1}]}}, "prices.claude-opus-5.tiers[0].threshold: unknown key"),
    ({"claude-opus-5": {"changes": [{"input": 1}]}}, "prices.claude-opus-5.changes[0]: missing effective_from"),
    ({"claude-opus-5": {"changes": [{"effective_from": "soon", "input": 1}]}},
     "prices.claude-opus-5.changes[0].effective_from: expected a date such as 2026-10-07"),
    ({"claude-opus-5": {"changes": [{"effective_from": "2027-01-01"}]}},
     "prices.claude-opus-5.changes[0]: changes nothing"),
    ({"claude-opus-5": {"changes": [{"effective_from": "2027-01-01", "changes": []}]}},
     "prices.claude-opus-5.changes[0].changes: unknown key"),
    ({"claude-opus-5": {"changes": "2027"}}, 'prices.claude-opus-5.changes: expected a list of tables'),
    ({"claude-opus-5": {"source": 3}}, "prices.claude-opus-5.source: expected a string"),
])
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(ValueError) as err:
        table_with(overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_rates_are_listed():
    with pytest.raises(ValueError, match="missing cache_write_5m, cache_write_1h, cache_read"):
        table_with({"claude-foo-5": {"input": 1, "output": 2}})


def settings(tmp_path, toml: str):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(toml)
    return load_settings({"CIPX_HOME": str(home)})


def test_config_carries_price_overrides_without_unknown_key_warnings(tmp_path):
    s = settings(tmp_path, '[prices."claude-foo-5"]\ninput = 2\noutput = 10\ncache_write_5m = 2.5\n'
                           'cache_write_1h = 4\ncache_read = 0.2\n[prices.claude-opus-4-8]\noutput = 30\n')
    assert s.warnings == ()
    assert s.prices["claude-opus-4-8"] == {"rates": {"output": 30.0}}  # parsed once, here
    assert load_price_table(s.prices).models["claude-foo-5"].at(NOW).rates["cache_read"] == 0.2
    assert settings(tmp_path, "").prices == {}


TOML_WITH_EVERYTHING = """
[prices."claude-haiku-6"]
input = 0.2
output = 1
cache_write_5m = 0.25
cache_write_1h = 0.4
cache_read = 0.02
fast_multiplier = 2
note = "from the launch post"

[[prices."claude-haiku-6".tiers]]
name = "over_200k"
above_prompt_tokens = 200_000
input = 1
output = 5
cache_write_5m = 1.25
cache_write_1h = 2
cache_read = 0.1

[[prices."claude-haiku-6".changes]]
effective_from = 2027-02-01
cache_read = 0.01

[[prices."claude-sonnet-5-5".changes]]
effective_from = 2027-03-01T12:00:00Z
fast_multiplier = 1.5
"""


def test_config_toml_expresses_tiers_fast_mode_and_dated_changes(tmp_path):
    table = load_price_table(settings(tmp_path, TOML_WITH_EVERYTHING).prices)
    small = price_call("claude-haiku-6", usage(200000, 1000, speed="fast"), table, at_ns=at("2027-01-15"))
    big = price_call("claude-haiku-6", usage(200000, 1000, 1), table, at_ns=at("2027-02-01"))
    assert small.total_usd == pytest.approx((200000 * 0.2 + 1000 * 1) * 2 / 1e6, abs=1e-12)
    assert big.tier == "over_200k" and big.rates_effective_from == "2027-02-01"
    assert big.total_usd == pytest.approx((200000 * 1 + 1 * 0.1 + 1000 * 5) / 1e6, abs=1e-12)  # the tier is not dated
    sonnet = table.models["claude-sonnet-5-5"]
    assert [period.effective_from for period in sonnet.periods] == [None, "2026-10-07", "2027-03-01T12:00:00+00:00"]
    assert sonnet.at(at("2027-03-01T12:00:00")).fast_multiplier == 1.5
    assert sonnet.at(at("2027-03-01T11:59:59")).fast_multiplier is None
    assert table.models["claude-haiku-6"].note == "from the launch post"


def test_config_rejects_a_bad_price_naming_file_and_key(tmp_path):
    with pytest.raises(ConfigError) as err:
        settings(tmp_path, '[prices."claude-foo-5"]\ninput = 1\noutput = "ten"\n')
    message = str(err.value)
    assert "prices.claude-foo-5.output: expected a number" in message
    assert str(tmp_path / "home" / "config.toml") in message and "\n" not in message


def test_config_rejects_a_bad_tier_at_load_time(tmp_path):
    with pytest.raises(ConfigError) as err:
        settings(tmp_path, '[[prices."claude-haiku-6".tiers]]\nabove_prompt_tokens = 100000\ninput = 1\n')
    assert "prices.claude-haiku-6.tiers[0]: a tier needs every rate; missing cache_write_5m" in str(err.value)


# -- properties ----------------------------------------------------------------------------------

TOKENS = st.integers(min_value=0, max_value=3_000_000)
USAGES = st.fixed_dictionaries({
    "input_tokens": TOKENS, "output_tokens": TOKENS, "cache_read_input_tokens": TOKENS,
    "cache_creation": st.fixed_dictionaries({"ephemeral_5m_input_tokens": TOKENS, "ephemeral_1h_input_tokens": TOKENS}),
})
FIELDS = [("input_tokens",), ("output_tokens",), ("cache_read_input_tokens",),
          ("cache_creation", "ephemeral_5m_input_tokens"), ("cache_creation", "ephemeral_1h_input_tokens")]


def _bump(use: dict, path: tuple[str, ...], by: int) -> dict:
    out = {**use, "cache_creation": dict(use["cache_creation"])}
    node = out["cache_creation"] if len(path) == 2 else out
    node[path[-1]] += by
    out["cache_creation_input_tokens"] = sum(out["cache_creation"].values())
    return out


@hsettings(max_examples=examples(300), deadline=None)
@given(model=st.sampled_from(sorted(TABLE.models)), use=USAGES, field=st.sampled_from(FIELDS),
       by=st.integers(min_value=1, max_value=500_000), when=st.sampled_from([at("2026-01-01"), NOW, at("2028-01-01")]))
def test_cost_never_falls_when_any_token_count_grows(model, use, field, by, when):
    use = _bump(use, field, 0)
    assert (price_call(model, _bump(use, field, by), at_ns=when).total_usd
            >= price_call(model, use, at_ns=when).total_usd)


@hsettings(max_examples=examples(200), deadline=None)
@given(model=st.sampled_from(sorted(n for n, p in TABLE.models.items() if p.at(NOW).tiers)),
       split=st.lists(st.integers(min_value=0, max_value=10), min_size=4, max_size=4).filter(any),
       output=TOKENS, above=st.booleans())
def test_the_tier_boundary_reprices_the_whole_request(model, split, output, above):
    tier = TABLE.models[model].at(NOW).tiers[0]
    prompt = tier.above_prompt_tokens + (1 if above else 0)
    # spread the prompt over the four input-side classes in the drawn proportions
    shares = [prompt * part // sum(split) for part in split]
    shares[0] += prompt - sum(shares)
    use = {"input_tokens": shares[0], "cache_read_input_tokens": shares[1], "output_tokens": output,
           "cache_creation": {"ephemeral_5m_input_tokens": shares[2], "ephemeral_1h_input_tokens": shares[3]}}
    rates = tier.rates if above else TABLE.models[model].at(NOW).rates
    expected = (shares[0] * rates["input"] + shares[1] * rates["cache_read"] + shares[2] * rates["cache_write_5m"]
                + shares[3] * rates["cache_write_1h"] + output * rates["output"]) / 1e6
    cost = price_call(model, use)
    assert cost.total_usd == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert cost.tier == (tier.name if above else None)


@hsettings(max_examples=examples(200), deadline=None)
@given(model=st.sampled_from(sorted(TABLE.models)), parts=st.lists(USAGES, min_size=1, max_size=4))
def test_a_call_with_iterations_costs_the_sum_of_its_iterations_priced_alone(model, parts):
    its = [{**part, "type": "message"} for part in parts]
    whole = price_call(model, {**its[-1], "iterations": its})
    assert whole.total_usd == pytest.approx(sum(price_call(model, part).total_usd for part in parts), rel=1e-12)


@hsettings(max_examples=examples(300), deadline=None)
@given(top=st.tuples(TOKENS, TOKENS).filter(any), written=TOKENS)
def test_a_shared_out_split_adds_up_to_the_iterations_writes(top, written):
    message = iteration("message", written=sum(top),
                        cache_creation={"ephemeral_5m_input_tokens": top[0], "ephemeral_1h_input_tokens": top[1]})
    cost = price_call("claude-opus-5-5", {**message, "iterations": [iteration("compaction", written=written), message]})
    tokens = cost.iterations[0]["tokens"]
    assert tokens["cache_write_5m"] + tokens["cache_write_1h"] == written == cost.iterations[0]["prompt_tokens"]
    assert abs(tokens["cache_write_1h"] - written * top[1] / sum(top)) <= 0.5


@hsettings(max_examples=examples(300), deadline=None)
@given(key=st.sampled_from(["input", "output", "cache_read", "fast_multiplier", "tiers", "changes", "oops"]),
       value=st.one_of(st.text(max_size=5), st.booleans(), st.none(), st.floats(allow_nan=True), st.integers(-5, -1),
                       st.lists(st.integers(), max_size=2),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)))
def test_a_malformed_override_is_one_line_naming_its_key(key, value):
    try:
        table_with({"claude-opus-5": {key: value}})
    except ValueError as err:
        message = str(err)
        assert message.startswith(f"prices.claude-opus-5.{key}") and "\n" not in message
def test_price_table_loads_from_the_zipapp(tmp_path, built_pyz):
    pyz = built_pyz  # build_zipapp.py's build of this tree, made once per run
    code = "from opik_cipx.materialize.pricing import load_price_table; print(len(load_price_table().models))"
    out = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(pyz)!r}); {code}"],
                         capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == len(TABLE.models)


def scenario_cost(scenario: str) -> float:
    total = 0.0
    for path in sorted((FIXTURES / scenario).glob("*.response.json")):
        recorded = json.loads(path.read_text())
        c = Capture(id=path.name, started_at_ns=0, method="POST", path="/", request_headers=[],
                    status=recorded["status"], response_headers=[[k, v] for k, v in recorded["headers"].items()])
        c.response_parts = [recorded["body"].encode()]
        summary = summarize_response(c)
        if summary.usage is not None:
            total += price_call(summary.model, summary.usage).total_usd
    return total


@pytest.mark.parametrize("scenario", ["simple", "tools", "subagent", "mcp", "skills_agents", "compact",
                                      "nonstream_and_others", "error"])
def test_recorded_sessions_cost_what_claude_code_reported(scenario):
    reported = sum(json.loads(p.read_text())["total_cost_usd"]
                   for p in (FIXTURES / scenario).glob("cli_run*.stdout.json"))
    aborted_stream = (6 * 5 + 2006 * 6.25 + 18861 * 0.5 + 2 * 25) / 1e6 if scenario == "error" else 0.0
    # Claude Code leaves out the stream that died mid-way (error/004); its tokens were still sent and are priced here.
    assert scenario_cost(scenario) == pytest.approx(reported + aborted_stream, abs=1e-9)


def test_the_readme_example_of_a_prices_table_loads_and_prices(tmp_path):
    text = (REPO / "README.md").read_text()
    start = text.index("```toml", text.index("A price the package does not have yet")) + len("```toml")
    table = load_price_table(settings(tmp_path, text[start:text.index("```", start)]).prices)
    assert price_call("claude-haiku-6", usage(200001), table).total_usd == pytest.approx(200001 * 1 / 1e6)
    assert price_call("claude-sonnet-5-5", usage(read=1_000_000), table, at_ns=at("2027-01-01")).total_usd == \
        pytest.approx(0.08)
