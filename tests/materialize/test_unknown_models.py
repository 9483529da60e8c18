"""The tally of model ids the price table does not know: counts, one log line per new id, bounded."""

import logging

from opik_cipx.materialize.pricing import load_price_table, price_call
from opik_cipx.materialize.unknown_models import MAX_IDS, UnknownModels
from tests.fake_clock import FakeClock

TABLE = load_price_table()


def cost(model: str):
    return price_call(model, {"input_tokens": 1000, "output_tokens": 10}, TABLE, at_ns=0)


def test_known_models_are_not_counted_and_unknown_ones_are_logged_once(caplog):
    clock = FakeClock(1_800_000_000 * 10**9)
    tally = UnknownModels(clock)
    with caplog.at_level(logging.WARNING, logger="opik_cipx.materialize.unknown_models"):
        for model in ("claude-opus-5-5", "claude-opus-6", "claude-opus-6", "gpt-4o", "claude-haiku-5-5"):
            tally.note(cost(model))
            clock.advance(60)
    section = tally.section()
    assert section["calls"] == 3
    assert [(e["id"], e["calls"], e["priced_as"]) for e in section["ids"]] == [
        ("claude-opus-6", 2, "claude-opus-5-5"), ("gpt-4o", 1, None)]
    assert section["ids"][1]["reason"].startswith("not a Claude model id")
    assert [e["first_seen_at"] for e in section["ids"]] == ["2027-01-15T08:01:00.000Z", "2027-01-15T08:03:00.000Z"]
    assert [r.getMessage().split(";")[0].split(" has ")[0] for r in caplog.records] == [
        "pricing: model 'claude-opus-6' is not in the price table", "pricing: model 'gpt-4o'"]
    assert all("\n" not in r.getMessage() for r in caplog.records)


def test_ids_are_bounded_and_long_ones_cut():
    tally = UnknownModels()
    for i in range(MAX_IDS + 10):
        tally.note(cost(f"claude-opus-{i + 100}"))
    tally.note(cost("claude-opus-7-" + "x" * 500))
    section = tally.section()
    assert section["calls"] == MAX_IDS + 11 and len(section["ids"]) == MAX_IDS
    fresh = UnknownModels()
    fresh.note(cost("claude-opus-7-" + "x" * 500))
    assert len(fresh.section()["ids"][0]["id"]) == 120
