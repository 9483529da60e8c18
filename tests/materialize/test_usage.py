"""A call's usage, read once: token classes, Opik's prompt tokens, and the fields that are no count."""

import re

from hypothesis import example, given
from hypothesis import strategies as st

from opik_cipx.materialize.materializer import Materializer
from opik_cipx.materialize.pricing import load_price_table, token_counts
from opik_cipx.materialize.usage import MAX_COUNT, SPLIT_FIELDS, TOKEN_FIELDS, read_usage
from tests.claude_code_corpus import exchange
from tests.materialize.test_materializer import cc, config, llm

WELL_FORMED = {"input_tokens": 6, "cache_creation_input_tokens": 2006, "cache_read_input_tokens": 18861,
               "cache_creation": {"ephemeral_5m_input_tokens": 6, "ephemeral_1h_input_tokens": 2000},
               "output_tokens": 10, "service_tier": "standard"}


def test_classes_and_prompt_tokens_of_a_well_formed_usage():
    usage = read_usage(WELL_FORMED)
    assert (usage.input, usage.cache_write_5m, usage.cache_write_1h, usage.cache_read, usage.output) == \
        (6, 6, 2000, 18861, 10)
    assert usage.prompt_tokens == usage.input_side == 6 + 2006 + 18861 and usage.cache_write == 2006
    assert usage.malformed == () and usage.original is WELL_FORMED
    assert read_usage(None) is None and read_usage({}) is None  # no usage reported


VALUES = st.one_of(st.none(), st.integers(-5, 10**20), st.just(10**30), st.booleans(), st.floats(allow_nan=True),
                   st.text(max_size=4), st.lists(st.integers(), max_size=1))


@example(fields={"output_tokens": float("inf")}, split={"ephemeral_5m_input_tokens": float("-inf")})  # JSON's Infinity
@given(fields=st.fixed_dictionaries({}, optional={name: VALUES for name in TOKEN_FIELDS}),
       split=st.one_of(st.none(), VALUES, st.fixed_dictionaries({}, optional={name: VALUES for name in SPLIT_FIELDS})))
def test_any_usage_is_read_and_every_field_that_is_no_count_is_named(fields, split):
    raw = {**fields, "service_tier": "standard"} if split is None else {**fields, "cache_creation": split}
    usage = read_usage(raw)
    counts = token_counts(raw)
    assert (usage.input, usage.cache_write_5m, usage.cache_write_1h, usage.cache_read, usage.output) == (
        counts["input"], counts["cache_write_5m"], counts["cache_write_1h"], counts["cache_read"], counts["output"])

    def count(value) -> bool:
        return value is None or (type(value) is int and 0 <= value <= MAX_COUNT)

    expected = [name for name in TOKEN_FIELDS if not count(raw.get(name))]
    if isinstance(split, dict):
        expected += [f"cache_creation.{name}" for name in SPLIT_FIELDS if not count(split.get(name))]
    elif split is not None:
        expected.append("cache_creation")
    assert list(usage.malformed) == expected


def test_a_call_whose_usage_holds_no_number_is_still_materialized_and_flagged(tmp_path):
    capture = exchange("simple", "001")
    body = capture.response_body.decode()
    capture.response_parts = [re.sub(r'"output_tokens": ?\d+', '"output_tokens": "many"', body).encode()]
    result = Materializer(config(tmp_path), load_price_table()).materialize(capture)
    assert result.call.usage.malformed == ("output_tokens",) and result.call.usage.output == 0
    span = llm(result.records)
    assert span["usage"]["completion_tokens"] == 0 and cc(span)["usage"]["output_tokens"] == "many"
    assert span["total_estimated_cost"] > 0  # the input side is still priced
