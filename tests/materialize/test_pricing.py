"""Prices: hand-computed costs, model-id normalisation, config overrides, the packaged table."""

import json
import subprocess
import sys

import pytest

import build_zipapp
from opik_cipx.config import ConfigError, load_settings
from opik_cipx.materialize.pricing import RATE_KEYS, load_price_table, normalize_model, price_call
from opik_cipx.materialize.response import summarize_response
from opik_cipx.wire.capture import Capture
from tests.conftest import FIXTURES

TABLE = load_price_table()


def usage(input=0, output=0, read=0, written=None, w5m=None, w1h=None, **extra) -> dict:
    out = {"input_tokens": input, "output_tokens": output, "cache_read_input_tokens": read, **extra}
    if written is not None:
        out["cache_creation_input_tokens"] = written
    if w5m is not None or w1h is not None:
        out["cache_creation"] = {"ephemeral_5m_input_tokens": w5m or 0, "ephemeral_1h_input_tokens": w1h or 0}
    return out


# (model, usage, total USD, input-side USD, long context) -- each total worked out by hand in USD per MTok
CASES = [
    pytest.param("claude-opus-4-8", usage(6, 24, 0, 20759, 20759, 0),
                 (6 * 5 + 20759 * 6.25 + 24 * 25) / 1e6, (6 * 5 + 20759 * 6.25) / 1e6, False, id="5m-writes"),
    pytest.param("claude-opus-4-8", usage(10, 400, 50000, 3000, 1000, 2000),
                 0.0613, 0.0513, False, id="5m-and-1h-writes"),
    pytest.param("claude-sonnet-4-6", usage(100, 1000, 0, 4000),
                 0.0303, 0.0153, False, id="split-absent-all-5m"),
    pytest.param("claude-haiku-4-5-20251001", usage(1000, 1000, 10000, 2000, 0, 2000),
                 (1000 * 1 + 1000 * 5 + 10000 * 0.1 + 2000 * 2) / 1e6, 0.006, False, id="1h-only-haiku"),
    pytest.param("claude-sonnet-4-5", usage(1000, 2000, 149999, 49000, 49000, 0),
                 0.2617497, 0.2317497, False, id="long-context-just-below"),
    pytest.param("claude-sonnet-4-5", usage(1000, 2000, 150000, 49000, 49000, 0),
                 0.26175, 0.23175, False, id="long-context-exactly-at-200k"),
    pytest.param("claude-sonnet-4-5-20250929", usage(1000, 2000, 150001, 49000, 49000, 0),
                 0.5085006, 0.4635006, True, id="long-context-above"),
    pytest.param("claude-sonnet-4-20250514", usage(300000, 100, 0, 10000, 0, 10000),
                 1.92225, 1.92, True, id="long-context-sonnet-4-1h-writes"),
    pytest.param("claude-sonnet-4-6", usage(1000, 2000, 150001, 49000, 49000, 0),
                 0.2617503, 0.2317503, False, id="no-long-context-on-4.6"),
    pytest.param("claude-opus-4-8[1m]", usage(1000, 2000, 150001, 49000, 49000, 0),
                 (1000 * 5 + 150001 * 0.5 + 49000 * 6.25 + 2000 * 25) / 1e6,
                 (1000 * 5 + 150001 * 0.5 + 49000 * 6.25) / 1e6, False, id="no-long-context-on-opus-4.8-1m"),
    pytest.param("claude-opus-4-1-20250805", usage(10, 10, 10, 10),
                 (10 * 15 + 10 * 75 + 10 * 1.5 + 10 * 18.75) / 1e6, (10 * 15 + 10 * 1.5 + 10 * 18.75) / 1e6,
                 False, id="opus-4.1"),
]


@pytest.mark.parametrize("model, use, total, input_side, long_context", CASES)
def test_hand_computed_costs(model, use, total, input_side, long_context):
    cost = price_call(model, use, TABLE)
    assert cost.total_usd == pytest.approx(total, abs=1e-9)
    assert cost.input_side_usd == pytest.approx(input_side, abs=1e-9)
    assert cost.long_context is long_context
    assert cost.unknown_model is False
    parts = cost.breakdown
    assert sum(parts.values()) == pytest.approx(cost.total_usd, abs=1e-12)
    assert cost.output_usd == parts["output"] and cost.web_search_usd == parts["web_search"] == 0


def test_breakdown_and_rates_of_a_long_context_call():
    cost = price_call("claude-sonnet-4-5", usage(1000, 2000, 150001, 49000, 49000, 0), TABLE)
    assert cost.breakdown == pytest.approx({"input": 0.006, "cache_write_5m": 0.3675, "cache_write_1h": 0.0,
                                            "cache_read": 0.0900006, "output": 0.045, "web_search": 0.0}, abs=1e-12)
    assert cost.rates == {"input": 6, "cache_write_5m": 7.5, "cache_write_1h": 12, "cache_read": 0.6,
                          "output": 22.5, "web_search_per_1000": 10}
    assert cost.modifiers == ("long_context: prompt over 200000 tokens",)


def test_web_search_fee():
    cost = price_call("claude-opus-4-8", usage(128, 50, server_tool_use={"web_search_requests": 3}), TABLE)
    assert cost.web_search_usd == pytest.approx(0.03, abs=1e-12)
    assert cost.total_usd == pytest.approx((128 * 5 + 50 * 25) / 1e6 + 0.03, abs=1e-9)
    assert cost.input_side_usd == pytest.approx(128 * 5 / 1e6, abs=1e-12)


@pytest.mark.parametrize("model, use, factor, modifiers", [
    ("claude-opus-4-8", {"speed": "fast"}, 2, ("fast x2",)),
    ("claude-opus-4-6", {"speed": "fast"}, 6, ("fast x6",)),
    ("claude-opus-4-7", {"speed": "standard"}, 1, ()),
    ("claude-sonnet-4-6", {"inference_geo": "us"}, 1.1, ("inference_geo=us x1.1",)),
    ("claude-sonnet-4-6", {"inference_geo": "global"}, 1, ()),
    ("claude-opus-4-6", {"speed": "fast", "inference_geo": "us"}, 6.6, ("fast x6", "inference_geo=us x1.1")),
])
def test_fast_mode_and_us_inference_multiply_every_token_rate(model, use, factor, modifiers):
    base = usage(1000, 1000, 10000, 2000, 1000, 1000, server_tool_use={"web_search_requests": 1})
    plain = price_call(model, base, TABLE)
    cost = price_call(model, {**base, **use}, TABLE)
    for key in RATE_KEYS:
        assert cost.breakdown[key] == pytest.approx(plain.breakdown[key] * factor, abs=1e-12)
    assert cost.web_search_usd == plain.web_search_usd == pytest.approx(0.01)  # the search fee is flat
    assert cost.modifiers == modifiers


def test_fast_mode_hand_computed():
    # Opus 4.8 fast = 2x: (1000*5 + 1000*25 + 10000*0.5) * 2
    assert price_call("claude-opus-4-8", usage(1000, 1000, 10000, speed="fast"), TABLE).total_usd == \
        pytest.approx(0.07, abs=1e-9)
    # Opus 4.6 fast and US-only: x6 x1.1
    assert price_call("claude-opus-4-6", usage(1000, 1000, 10000, speed="fast", inference_geo="us"),
                      TABLE).total_usd == pytest.approx(0.231, abs=1e-9)


def test_fast_on_a_model_without_a_known_multiplier_is_flagged_not_guessed():
    cost = price_call("claude-haiku-4-5", usage(1000, 1000, speed="fast"), TABLE)
    assert cost.total_usd == pytest.approx(0.006, abs=1e-9)
    assert cost.modifiers == ("fast: no multiplier known for this model, standard rates used",)


@pytest.mark.parametrize("model", ["claude-foo-5", "claude-foo-5-20260101", "gpt-4o", "", None])
def test_unknown_model_has_no_cost_never_zero(model):
    cost = price_call(model, usage(1000, 1000), TABLE)
    assert cost.unknown_model is True
    assert (cost.total_usd, cost.input_side_usd, cost.output_usd, cost.breakdown) == (None, None, None, None)
    assert cost.model == (normalize_model(model) if model else None)


def test_known_model_without_usage_has_no_cost():
    cost = price_call("claude-opus-4-8", None, TABLE)
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


# The rows of the project's pricing facts (shared/spec/pricing-facts.md), as absolute USD per MTok.
FACTS = {
    ("claude-opus-4", "claude-opus-4-1"): (15, 18.75, 30, 1.5, 75),
    ("claude-opus-4-5", "claude-opus-4-6", "claude-opus-4-7", "claude-opus-4-8"): (5, 6.25, 10, 0.5, 25),
    ("claude-3-7-sonnet", "claude-sonnet-4", "claude-sonnet-4-5", "claude-sonnet-4-6"): (3, 3.75, 6, 0.3, 15),
    ("claude-haiku-4-5",): (1, 1.25, 2, 0.1, 5),
    ("claude-3-5-haiku",): (0.8, 1, 1.6, 0.08, 4),
    ("claude-3-haiku",): (0.25, 0.3, 0.5, 0.03, 1.25),
}


def test_packaged_table_matches_the_pricing_facts():
    expected = {m: dict(zip(RATE_KEYS, row)) for models, row in FACTS.items() for m in models}
    assert {name: price.rates for name, price in TABLE.models.items()} == expected
    assert {n for n, p in TABLE.models.items() if p.long_context_above} == {"claude-sonnet-4", "claude-sonnet-4-5"}
    assert {n: p.fast_multiplier for n, p in TABLE.models.items() if p.fast_multiplier} == {
        "claude-opus-4-6": 6, "claude-opus-4-7": 6, "claude-opus-4-8": 2}
    assert TABLE.effective_date and TABLE.web_search_usd_per_1000 == 10


def test_cost_to_json_is_json():
    cost = price_call("claude-opus-4-6", usage(1, 2, 3, 4, speed="fast"), TABLE)
    data = json.loads(json.dumps(cost.to_json()))
    assert data["model"] == "claude-opus-4-6" and data["modifiers"] == ["fast x6"]
    assert data["price_table_date"] == TABLE.effective_date
    assert set(data["breakdown"]) == {*RATE_KEYS, "web_search"}
    assert json.loads(json.dumps(price_call(None, None, TABLE).to_json()))["total_usd"] is None


def test_override_adds_a_model_and_overrides_one_rate():
    table = load_price_table({
        "claude-foo-5": {"input": 2, "output": 10, "cache_write_5m": 2.5, "cache_write_1h": 4, "cache_read": 0.2},
        "claude-opus-4-8[1m]": {"output": 30},
    })
    foo = price_call("claude-foo-5-20261001", usage(1000, 1000, 10000), table)
    assert foo.model == "claude-foo-5" and foo.total_usd == pytest.approx(0.014, abs=1e-9)
    opus = price_call("claude-opus-4-8", usage(1000, 1000, speed="fast"), table)
    assert opus.rates["output"] == 60 and opus.rates["input"] == 10  # fast x2 kept, input untouched
    assert TABLE.models["claude-opus-4-8"].rates["output"] == 25  # the shared default is not changed


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
])
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(ValueError) as err:
        load_price_table(overrides)
    assert message in str(err.value)


def test_missing_rates_are_listed():
    with pytest.raises(ValueError, match="missing cache_write_5m, cache_write_1h, cache_read"):
        load_price_table({"claude-foo-5": {"input": 1, "output": 2}})


def settings(tmp_path, toml: str):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(toml)
    return load_settings({"CIPX_HOME": str(home)})


def test_config_carries_price_overrides_without_unknown_key_warnings(tmp_path):
    s = settings(tmp_path, '[prices."claude-foo-5"]\ninput = 2\noutput = 10\ncache_write_5m = 2.5\n'
                           'cache_write_1h = 4\ncache_read = 0.2\n[prices.claude-opus-4-8]\noutput = 30\n')
    assert s.warnings == ()
    assert s.prices["claude-opus-4-8"] == {"output": 30}
    assert load_price_table(s.prices).models["claude-foo-5"].rates["cache_read"] == 0.2
    assert settings(tmp_path, "").prices == {}


def test_config_rejects_a_bad_price_naming_file_and_key(tmp_path):
    with pytest.raises(ConfigError) as err:
        settings(tmp_path, '[prices."claude-foo-5"]\ninput = 1\noutput = "ten"\n')
    message = str(err.value)
    assert "prices.claude-foo-5.output: expected a number" in message
    assert str(tmp_path / "home" / "config.toml") in message and "\n" not in message


def test_price_table_loads_from_the_zipapp(tmp_path):
    pyz = build_zipapp.build(tmp_path / "opik-cipx.pyz")
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
            total += price_call(summary.model, summary.usage, TABLE).total_usd
    return total


@pytest.mark.parametrize("scenario", ["simple", "tools", "subagent", "mcp", "skills_agents", "compact",
                                      "nonstream_and_others", "error"])
def test_recorded_sessions_cost_what_claude_code_reported(scenario):
    reported = sum(json.loads(p.read_text())["total_cost_usd"] for p in (FIXTURES / scenario).glob("cli_run*.stdout.json"))
    aborted_stream = (6 * 5 + 2006 * 6.25 + 18861 * 0.5 + 2 * 25) / 1e6 if scenario == "error" else 0.0
    # Claude Code leaves out the stream that died mid-way (error/004); its tokens were still sent and are priced here.
    assert scenario_cost(scenario) == pytest.approx(reported + aborted_stream, abs=1e-9)
