"""SSE parsing: the WHATWG rules, and results independent of how the bytes arrive."""

from hypothesis import given
from hypothesis import strategies as st

from opik_cipx.materialize.sse import SSEEvent, SSEParser, parse_sse


def feed_in_pieces(body: bytes, cuts: list[int]) -> list[SSEEvent]:
    parser, events, start = SSEParser(), [], 0
    for cut in sorted(cuts):
        events += parser.feed(body[start:cut])
        start = cut
    return events + parser.feed(body[start:]) + parser.close()


def test_event_defaults_to_message_and_data_lines_join_with_newline():
    assert parse_sse(b"data: one\ndata: two\n\n") == [SSEEvent("message", "one\ntwo")]


def test_event_names_kept_even_unknown_ones():
    body = b"event: message_start\ndata: {}\n\nevent: brand_new_thing\ndata: x\n\n"
    assert parse_sse(body) == [SSEEvent("message_start", "{}"), SSEEvent("brand_new_thing", "x")]


def test_comments_unknown_fields_and_id_retry_are_ignored():
    body = b": keep-alive\nid: 7\nretry: 100\nfoo: bar\ndata: x\n:another\n\n"
    assert parse_sse(body) == [SSEEvent("message", "x")]


def test_only_one_leading_space_is_stripped_and_colons_in_values_stay():
    assert parse_sse(b"data:  two spaces\ndata:no space\ndata: a: b\n\n") == [
        SSEEvent("message", " two spaces\nno space\na: b")
    ]


def test_field_without_colon_has_an_empty_value():
    assert parse_sse(b"data\ndata\n\n") == [SSEEvent("message", "\n")]
    assert parse_sse(b"event\ndata: x\n\n") == [SSEEvent("message", "x")]


def test_blank_line_without_data_dispatches_nothing_and_resets_the_event_name():
    assert parse_sse(b"event: ping\n\ndata: x\n\n") == [SSEEvent("message", "x")]


def test_every_line_ending():
    expected = [SSEEvent("a", "1\n2"), SSEEvent("message", "3")]
    for end in (b"\n", b"\r\n", b"\r"):
        body = end.join([b"event: a", b"data: 1", b"data: 2", b"", b"data: 3", b"", b""])
        assert parse_sse(body) == expected, end


def test_mixed_line_endings_in_one_stream():
    assert parse_sse(b"data: 1\r\ndata: 2\rdata: 3\n\r\n") == [SSEEvent("message", "1\n2\n3")]


def test_byte_order_mark_dropped_and_invalid_utf8_replaced():
    assert parse_sse(b"\xef\xbb\xbfdata: \xff ok\n\n") == [SSEEvent("message", "\ufffd ok")]


def test_close_flushes_a_final_event_without_its_blank_line():
    assert parse_sse(b"data: last") == [SSEEvent("message", "last")]
    assert parse_sse(b"event: e\ndata: last\n") == [SSEEvent("e", "last")]
    assert parse_sse(b"") == []


def test_split_inside_a_multibyte_character_and_between_cr_and_lf():
    body = "data: héllo 👋\r\n\r\ndata: z\r\n\r\n".encode()
    expected = [SSEEvent("message", "héllo 👋"), SSEEvent("message", "z")]
    for cut in range(len(body) + 1):
        assert feed_in_pieces(body, [cut]) == expected, cut
    assert feed_in_pieces(body, list(range(len(body)))) == expected  # one byte at a time


def test_feed_returns_events_as_soon_as_they_complete():
    parser = SSEParser()
    assert parser.feed(b"data: a\n") == []
    assert parser.feed(b"\ndata: b") == [SSEEvent("message", "a")]
    assert parser.close() == [SSEEvent("message", "b")]


names = st.sampled_from(["message", "message_start", "content_block_delta", "ping", "error", "x-custom"])
values = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=30)
events = st.lists(st.tuples(names, st.lists(values, min_size=1, max_size=4)), max_size=8)


@given(events, st.sampled_from(["\n", "\r\n", "\r"]), st.data())
def test_parse_result_is_independent_of_split_points(evts, end, data):
    body = "".join(f"event: {name}{end}" + "".join(f"data: {v}{end}" for v in lines) + end for name, lines in evts)
    raw = body.encode()
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=12))
    expected = [SSEEvent(name, "\n".join(lines)) for name, lines in evts]
    assert parse_sse(raw) == expected
    assert feed_in_pieces(raw, cuts) == expected


@given(st.lists(st.tuples(values, st.sampled_from(["\n", "\r\n", "\r"])), max_size=20), st.data())
def test_split_independence_with_a_random_ending_per_line(lines, data):
    raw = "".join(f"data: {v}{end}" if i % 3 else f"{end}" for i, (v, end) in enumerate(lines)).encode()
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=12))
    assert feed_in_pieces(raw, cuts) == parse_sse(raw)
