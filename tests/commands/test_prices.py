"""`opik-cipx prices [--json]` in the test's process (`run_command`): the table in use, overrides,
bad overrides, no daemon."""

import json

import pytest

from tests.conftest import run_command

TIERED_OVERRIDE = """
[prices."claude-opus-6"]
input = 6
output = 30
cache_write_5m = 7.5
cache_write_1h = 12
cache_read = 0.3
fast_multiplier = 2
source = "https://example.com/launch"

[[prices."claude-opus-6".tiers]]
above_prompt_tokens = 400_000
input = 12
output = 60
cache_write_5m = 15
cache_write_1h = 24
cache_read = 0.6

[prices."claude-sonnet-5-5"]
cache_read = 0.15
"""


def write_config(home, text: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(text)


def test_the_packaged_table_with_no_daemon_running(home):
    result = run_command(home, "prices")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "price table 2026-12-06: USD per million tokens, the rates in force now"
    row = next(line for line in lines if line.startswith("claude-opus-5-5 "))
    assert row.split() == ["claude-opus-5-5", "4", "5", "8", "0.2", "20", "x2", "2026-11-27"]
    assert "    tier prompt_over_100k: a prompt over 100,000 tokens pays 0.5 / 0.625 / 1 / 0.05 / 2.5 for the whole " \
           "request" in lines
    assert next(line for line in lines if line.startswith("    until 2026-10-07")).split()[2:] == \
        ["2", "2.5", "4", "0.2", "10", "-"]  # Sonnet 5.5 before the cache-read cut
    assert any(line.startswith("claude-fable-5-2 ") and line.endswith("[unconfirmed]") for line in lines)
    assert "    source: https://platform.claude.com/docs/en/models/haiku-5-5/overview" in lines
    assert f"no [prices] overrides in {home / 'config.toml'}" in lines
    assert lines[-1] == "the daemon is not running, so there are no unknown ids to show (`opik-cipx sync` starts it)"


def test_json_holds_every_model_with_its_periods_and_the_daemon_state(home):
    result = run_command(home, "prices", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    haiku = doc["models"]["claude-haiku-5-5"]
    assert haiku["rates"] == {"input": 0.1, "cache_write_5m": 0.125, "cache_write_1h": 0.2, "cache_read": 0.01,
                              "output": 0.5}
    assert haiku["tiers"][0]["above_prompt_tokens"] == 100000 and haiku["checked"] == "2026-11-27"
    sonnet = doc["models"]["claude-sonnet-5-5"]
    assert [(p["effective_from"], p["rates"]["cache_read"]) for p in sonnet["periods"]] == [
        (None, 0.2), ("2026-10-07", 0.1)]
    assert doc["newest_by_family"]["opus"] == "claude-opus-5-5"
    assert doc["overrides"] == [] and doc["daemon"]["running"] is False and doc["daemon"]["unknown_models"] is None


def test_overrides_with_a_tier_are_applied_and_shown(home):
    write_config(home, TIERED_OVERRIDE)
    doc = json.loads(run_command(home, "prices", "--json").stdout)
    assert doc["overrides"] == ["claude-opus-6", "claude-sonnet-5-5"]
    opus = doc["models"]["claude-opus-6"]
    assert opus["overridden"] and opus["fast_multiplier"] == 2 and opus["source"] == "https://example.com/launch"
    assert opus["tiers"] == [{"name": "prompt_over_400000", "above_prompt_tokens": 400000,
                              "rates": {"input": 12, "cache_write_5m": 15, "cache_write_1h": 24, "cache_read": 0.6,
                                        "output": 60}}]
    assert doc["newest_by_family"]["opus"] == "claude-opus-6"
    assert [p["rates"]["cache_read"] for p in doc["models"]["claude-sonnet-5-5"]["periods"]] == [0.15, 0.15]
    text = run_command(home, "prices").stdout.splitlines()
    assert any(line.startswith("claude-opus-6 ") and line.endswith("[override]") for line in text)
    assert f"overrides from {home / 'config.toml'}: claude-opus-6, claude-sonnet-5-5" in text


@pytest.mark.parametrize("toml, message", [
    ('[[prices."claude-opus-6".tiers]]\nabove_prompt_tokens = 1000\ninput = 1\n',
     "prices.claude-opus-6.tiers[0]: a tier needs every rate; missing cache_write_5m, cache_write_1h, cache_read, "
     "output"),
    ('[prices."claude-opus-6"]\ninput = 1\noutput = 2\n',
     "prices.claude-opus-6: a model without a packaged price needs every rate; missing cache_write_5m"),
    ('[[prices."claude-sonnet-5-5".changes]]\neffective_from = "next week"\ncache_read = 0.1\n',
     "prices.claude-sonnet-5-5.changes[0].effective_from: expected a date such as 2026-10-07"),
])
def test_a_malformed_override_is_refused_with_one_line_naming_the_key(home, toml, message):
    write_config(home, toml)
    result = run_command(home, "prices")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert result.stderr.startswith(f"opik-cipx: bad setting in config file {home / 'config.toml'}")
