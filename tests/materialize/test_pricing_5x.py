"""Claude 5.x calls priced end to end: recorded Claude Code exchanges moved to the 5.x models
(tests/fixtures/claude-code-5x, see its README), each cost checked against a figure worked out
here from the published rates, never read from prices.json."""

import importlib.util
import json

import pytest

from opik_cipx.materialize.materializer import Materializer
from opik_cipx.materialize.pricing import load_price_table
from opik_cipx.store.captures import CaptureStore
from tests.claude_code_corpus import FIXTURES_5X, exchanges
from tests.conftest import run_command
from tests.materialize.test_materializer import cc, config, llm

# Published USD per million tokens (Anthropic's model pages; see prices.json for the sources).
OPUS_5_5 = {"in": 4, "w5m": 5, "w1h": 8, "read": 0.2, "out": 20}
HAIKU_5_5 = {"in": 0.1, "w5m": 0.125, "w1h": 0.2, "read": 0.01, "out": 0.5}
HAIKU_5_5_OVER_100K = {"in": 0.5, "w5m": 0.625, "w1h": 1, "read": 0.05, "out": 2.5}
SONNET_5_5_BEFORE_CUT = {"in": 2, "w5m": 2.5, "w1h": 4, "read": 0.2, "out": 10}
SONNET_5_5_FROM_2026_10_07 = {"in": 2, "w5m": 2.5, "w1h": 4, "read": 0.1, "out": 10}


def usd(rates: dict, inp=0, w5m=0, read=0, out=0) -> float:
    return (inp * rates["in"] + w5m * rates["w5m"] + read * rates["read"] + out * rates["out"]) / 1e6


# fixture -> (model, USD), the token counts as the fixture's response reports them
EXPECTED = {
    "subagent/001": ("claude-opus-5-5", usd(OPUS_5_5, inp=5, w5m=20779, out=88)),
    "subagent/002": ("claude-haiku-5-5", usd(HAIKU_5_5, inp=8, w5m=12449, out=58)),
    "subagent/003": ("claude-haiku-5-5", usd(HAIKU_5_5, inp=4, w5m=2122, read=10935, out=36)),
    "subagent/004": ("claude-haiku-5-5", usd(HAIKU_5_5, inp=5, w5m=107, read=13061, out=65)),
    "subagent/005": ("claude-opus-5-5", usd(OPUS_5_5, inp=8, w5m=2268, read=18862, out=55)),
    "side_calls/028": ("claude-haiku-5-5", usd(HAIKU_5_5, inp=128, out=50) + 10 / 1000),  # + one web search
    "side_calls/032": ("claude-haiku-5-5", usd(HAIKU_5_5, inp=287, out=55)),
    # prompt 150 + 11,500 + 111,625 = 123,275 tokens: the whole request at the over-100K rates
    "long_prompt/004": ("claude-haiku-5-5", usd(HAIKU_5_5_OVER_100K, inp=150, w5m=11500, read=111625, out=62)),
    "sonnet_dated/002": ("claude-sonnet-5-5", usd(SONNET_5_5_BEFORE_CUT, inp=7, w5m=2168, read=19967, out=42)),
    "sonnet_dated/003": ("claude-sonnet-5-5", usd(SONNET_5_5_FROM_2026_10_07, inp=3, w5m=106, read=22142, out=55)),
    # the compaction iteration plus the message iteration; the top level (= the message) not again
    "compaction/012": ("claude-opus-5-5", usd(OPUS_5_5, inp=6, w5m=1646, read=21303, out=285)
                       + usd(OPUS_5_5, inp=7, w5m=21619, out=44)),
}
SCENARIOS = sorted({name.split("/")[0] for name in EXPECTED})


def spans(tmp_path) -> dict[str, dict]:
    materializer = Materializer(config(tmp_path), load_price_table())
    out = {}
    for scenario in SCENARIOS:
        for number, capture in exchanges(scenario, FIXTURES_5X):
            out[f"{scenario}/{number}"] = llm(materializer.materialize(capture).records)
    assert materializer.unknown_models.section() == {"calls": 0, "ids": []}
    return out


def test_every_5x_call_costs_what_the_published_rates_say(tmp_path):
    found = spans(tmp_path)
    assert set(found) == set(EXPECTED)
    for name, (model, expected) in EXPECTED.items():
        span = found[name]
        assert span["model"] == model, name
        assert span["total_estimated_cost"] == pytest.approx(expected, rel=1e-12, abs=1e-15), name
        pricing = cc(span)["pricing"]
        assert pricing["unknown_model"] is False and pricing["estimated_from"] is None, name


def test_the_main_loop_is_opus_and_subagents_and_side_calls_are_haiku(tmp_path):
    found = spans(tmp_path)
    kinds = {name: (cc(span)["call"]["kind"], span["model"]) for name, span in found.items()}
    assert {model for kind, model in kinds.values() if kind == "main" and "sonnet" not in model} == {"claude-opus-5-5"}
    assert {model for kind, model in kinds.values() if kind in ("subagent", "side")} == {"claude-haiku-5-5"}
    assert {kind for kind, _ in kinds.values()} >= {"main", "subagent", "side"}


def test_pricing_metadata_says_which_tier_rate_date_and_iterations_applied(tmp_path):
    found = spans(tmp_path)
    long_prompt = cc(found["long_prompt/004"])["pricing"]
    assert long_prompt["tier"] == "prompt_over_100k" and long_prompt["rates"]["output"] == 2.5
    assert cc(found["subagent/004"])["pricing"]["tier"] is None
    before, after = cc(found["sonnet_dated/002"])["pricing"], cc(found["sonnet_dated/003"])["pricing"]
    assert (before["rates"]["cache_read"], before["rates_effective_from"]) == (0.2, None)
    assert (after["rates"]["cache_read"], after["rates_effective_from"]) == (0.1, "2026-10-07")
    compaction = cc(found["compaction/012"])["pricing"]
    assert [(it["type"], it["prompt_tokens"], it["tokens"]["output"]) for it in compaction["iterations"]] == [
        ("compaction", 6 + 1646 + 21303, 285), ("message", 7 + 21619, 44)]
    assert sum(it["usd"] for it in compaction["iterations"]) == pytest.approx(compaction["total_usd"], rel=1e-12)
    # Opik's usage stays the response's own top-level figures (the final context), the cost covers both passes
    assert found["compaction/012"]["usage"]["prompt_tokens"] == 7 + 21619


def store(home, scenario: str) -> None:
    captures = CaptureStore(home / "captures", segment_bytes=10**7)
    for _, capture in exchanges(scenario, FIXTURES_5X):
        captures.append(capture)
    captures.close()


def test_replaying_old_captures_uses_the_rates_in_force_when_they_were_made(home):
    store(home, "sonnet_dated")
    result = run_command(home, "replay", "--records")
    assert result.returncode == 0, result.stderr
    costs = [record["body"]["total_estimated_cost"] for record in map(json.loads, result.stdout.splitlines())
             if record["body"].get("type") == "llm"]
    assert costs == pytest.approx([EXPECTED["sonnet_dated/002"][1], EXPECTED["sonnet_dated/003"][1]], rel=1e-12)


def test_the_committed_fixtures_are_what_the_generator_writes():
    spec = importlib.util.spec_from_file_location("generate_5x", FIXTURES_5X / "generate.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    built = generator.build()
    committed = {str(path.relative_to(FIXTURES_5X)): path.read_text() for path in FIXTURES_5X.glob("*/*.json")}
    assert built == committed


def test_a_config_override_with_a_tier_is_applied_by_the_daemons_assembly(home):
    """`replay` builds the daemon's own materializer: here Haiku 5.5's tier moved to 150,000 tokens."""
    store(home, "long_prompt")
    (home / "config.toml").write_text('[[prices."claude-haiku-5-5".tiers]]\nname = "over_150k"\n'
                                      'above_prompt_tokens = 150_000\ninput = 0.5\noutput = 2.5\n'
                                      'cache_write_5m = 0.625\ncache_write_1h = 1\ncache_read = 0.05\n')
    result = run_command(home, "replay", "--records")
    assert result.returncode == 0, result.stderr
    (span,) = [r["body"] for r in map(json.loads, result.stdout.splitlines()) if r["body"].get("type") == "llm"]
    assert span["total_estimated_cost"] == pytest.approx(usd(HAIKU_5_5, inp=150, w5m=11500, read=111625, out=62))
    assert cc(span)["pricing"]["tier"] is None  # 123,275 prompt tokens: under the moved threshold


def test_a_new_model_missing_a_rate_stops_the_daemons_assembly_with_one_line(home):
    store(home, "long_prompt")
    (home / "config.toml").write_text('[prices."claude-haiku-6"]\ninput = 0.2\noutput = 1\n')
    result = run_command(home, "replay", "--records")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (f"opik-cipx: bad setting in config file {home / 'config.toml'}: prices.claude-haiku-6: "
                             "a model without a packaged price needs every rate; missing cache_write_5m, "
                             "cache_write_1h, cache_read\n")
