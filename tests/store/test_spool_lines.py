"""A spool line is exactly `json.dumps` of its record, made in pieces no one of which gives the C
encoder much at once (what holds the interpreter while a wire thread waits)."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from opik_cipx.store import spool_lines
from opik_cipx.store.spool_lines import PIECE_CHARS, Encoded, dumps, encode


def compact(value) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def encoded(items: list) -> Encoded:
    return Encoded(items, compact(items))


SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(
    alphabet=st.sampled_from(list('ab"\\\né😀\u2028')), max_size=30).map(lambda text: text * 700)
KEYS = st.text(max_size=4) | st.integers(-3, 3) | st.booleans() | st.none()
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=40) | st.lists(inner, max_size=3).map(tuple)
    | st.lists(inner, max_size=3).map(encoded) | st.dictionaries(KEYS, inner, max_size=30),
    max_leaves=120,
)


@settings(max_examples=80, deadline=None)
@given(VALUES)
def test_dumps_is_json_dumps_of_any_value(value):
    assert dumps(value) == compact(value)


def test_a_large_encoded_list_is_written_as_its_text_and_reads_back_as_its_items():
    blocks = encoded([{"category": "tool_io", "chars": n} for n in range(PIECE_CHARS // 10)])
    line = encode({"kind": "span", "body": {"id": "x", "metadata": {"cipx": {"blocks": blocks}}}})
    assert json.loads(line)["body"]["metadata"]["cipx"]["blocks"] == list(blocks)
    blocks.text = json.dumps(["written as it is" * PIECE_CHARS])  # (breaking the contract, to see it)
    assert f'"blocks":{blocks.text}}}'.encode() in encode({"kind": "span", "body": {"id": "x", "blocks": blocks}})


def test_no_encoder_call_is_given_much_of_a_large_record_however_deep(monkeypatch):
    """20,000 blocks-like objects six levels down, a long string and many small members beside:
    the old depth-limited split encoded such a list in one call (0.5 ms at 708 blocks)."""
    given_sizes: list[int] = []
    real = spool_lines._encode

    def measured(value):
        text = real(value)
        given_sizes.append(len(text))
        return text

    monkeypatch.setattr(spool_lines, "_encode", measured)
    blocks = [{"category": "tool_io", "side": "input", "cache_status": "read", "chars": n, "tool_use_id": f"t{n}"}
              for n in range(20_000)]
    record = {"kind": "span", "body": {"id": "x", "metadata": {"a": {"b": {"c": {"blocks": blocks}}}},
                                       "input": {"text": "é" * 300_000, "many": dict.fromkeys(map(str, range(5000)))}}}
    line = encode(record)
    assert line == compact(record).encode() + b"\n"
    assert max(given_sizes) <= 2 * PIECE_CHARS
