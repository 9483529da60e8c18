"""Response summaries from real recorded traffic, encoded bodies, and broken exchanges."""

import gzip
import hashlib
import json
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opik_cipx.materialize.response import merge_usage, summarize_response
from opik_cipx.wire import capture as capture_module
from opik_cipx.wire.capture import Capture, KeptResponse
from tests.conftest import FIXTURES, load_fixture

SSE = [["content-type", "text/event-stream; charset=utf-8"], ["request-id", "req_test"]]
ALL_RESPONSES = sorted(p.relative_to(FIXTURES).as_posix() for p in FIXTURES.glob("*/*.response.json"))


def capture(body: bytes, headers: list[list[str]], status: int | None = 200, **extra) -> Capture:
    c = Capture(id="c", started_at_ns=0, method="POST", path="/v1/messages?beta=true",
                request_headers=[], status=status, response_headers=headers, **extra)
    c.response_parts = [body]
    return c


def fixture_capture(scenario: str, number: str, **extra) -> Capture:
    _, response = load_fixture(scenario, number)
    headers = [[name, value] for name, value in response["headers"].items()]
    return capture(response["body"].encode(), headers, response["status"], **extra)


def sse(*payloads: dict) -> bytes:
    return b"".join(f"event: {p['type']}\ndata: {json.dumps(p)}\n\n".encode() for p in payloads)


def start(usage: dict) -> dict:
    return {"type": "message_start", "message": {"id": "msg_1", "type": "message", "model": "claude-opus-4-8",
                                                 "content": [], "stop_reason": None, "usage": usage}}


STOP = {"type": "message_stop"}


@pytest.mark.parametrize("path", ALL_RESPONSES)
def test_every_recorded_response_summarizes(path):
    scenario, name = path.split("/")
    summary = summarize_response(fixture_capture(scenario, name.split(".")[0]))
    if summary.kind == "stream":
        assert summary.usage and summary.model and summary.message_id and summary.content
        assert summary.partial is (path == "error/004.response.json")
    elif summary.kind == "json":
        assert (summary.usage is None) == (summary.error is not None)
    else:
        assert summary.usage is None and summary.error is None and summary.content == []


def test_simple_stream_usage_is_the_final_merged_values():
    s = summarize_response(fixture_capture("simple", "001"))
    assert (s.status, s.kind, s.partial, s.error) == (200, "stream", False, None)
    assert (s.model, s.message_id, s.stop_reason, s.stop_sequence) == (
        "claude-opus-4-8", "msg_01Vl6ZrEPR5xlo34m2A9DMpI", "end_turn", None)
    assert s.request_id == "req_011CwHffpLcADGU2lndzZ1"
    assert s.usage == {
        "input_tokens": 6, "cache_creation_input_tokens": 20759, "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 20759, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 24, "service_tier": "standard",
    }
    assert s.content == [{"type": "text", "text": "Hello! How can I help you with this project today?"}]


def test_thinking_signature_text_and_tool_use_are_reassembled():
    s = summarize_response(fixture_capture("tools", "001"))
    thinking, text, tool = s.content
    assert thinking["type"] == "thinking" and thinking["thinking"].startswith("The user wants several checks.")
    assert thinking["signature"].startswith("NHmVYRi+00Un") and thinking["signature"].endswith("WA0H+")
    assert text == {"type": "text", "text": "I'll start by reading the notes file."}
    assert tool == {"type": "tool_use", "id": "toolu_019UAECaFUGAxgo0wfGnKsbg", "name": "Read",
                    "input": {"file_path": "/home/dev/code/billing-svc/notes.txt"}}
    assert s.usage["output_tokens"] == 76 and s.usage["cache_creation_input_tokens"] == 21893


def test_web_search_blocks_and_server_tool_usage():
    s = summarize_response(fixture_capture("nonstream_and_others", "028"))
    search, results, text = s.content
    assert search["type"] == "server_tool_use" and search["input"] == {"query": "example framework release date"}
    assert results["type"] == "web_search_tool_result" and len(results["content"]) == 2
    assert results["tool_use_id"] == search["id"]
    assert text["text"] == "Example Framework 3.0 was released on October 2, 2026 (blog.example.com)."
    assert s.usage["server_tool_use"] == {"web_search_requests": 1} and s.usage["output_tokens"] == 50


def test_mid_stream_error_is_partial_with_usage_so_far():
    s = summarize_response(fixture_capture("error", "004"))
    assert s.partial and s.error == {"type": "overloaded_error", "message": "Overloaded"}
    assert s.usage["output_tokens"] == 2 and s.usage["cache_read_input_tokens"] == 18861
    assert s.content == [{"type": "text", "text": "The command"}]
    assert s.stop_reason is None


def test_json_fallback_message():
    s = summarize_response(fixture_capture("error", "005"))
    assert (s.kind, s.partial, s.error, s.stop_reason) == ("json", False, None, "end_turn")
    assert s.usage["output_tokens"] == 10 and s.usage["cache_creation"]["ephemeral_5m_input_tokens"] == 2006
    assert s.content == [{"type": "text", "text": "The command printed `hi`."}]


def test_overloaded_529_has_the_error_and_no_usage():
    s = summarize_response(fixture_capture("error", "001"))
    assert (s.status, s.kind, s.usage, s.partial) == (529, "json", None, False)
    assert s.error == {"type": "overloaded_error", "message": "Overloaded"}
    assert s.request_id == "req_011CWWNFovAXPJSqUeGtCB"


@pytest.mark.parametrize("body, headers", [
    (b"", []),  # HEAD preconnect
    (b"{}", [["content-type", "application/json"]]),
    (b'{"input_tokens": 323}', [["content-type", "application/json"]]),  # count_tokens
    (b"<html><body>Error</body></html>", [["content-type", "text/html"]]),
    (b"[1, 2]", [["content-type", "application/json"]]),
])
def test_bodies_that_are_not_messages_give_an_empty_summary(body, headers):
    s = summarize_response(capture(body, headers))
    assert (s.kind, s.usage, s.content, s.error, s.partial) == ("empty", None, [], None, False)


def test_non_2xx_without_an_api_error_body_is_noted():
    s = summarize_response(capture(b"<html>bad gateway</html>", [["content-type", "text/html"]], status=502))
    assert s.error == {"type": "http_error", "message": "HTTP 502"}


@pytest.mark.parametrize("encoding, encode", [
    ("gzip", gzip.compress),
    ("x-gzip", gzip.compress),
    ("deflate", zlib.compress),  # zlib-wrapped, as the RFC says
    ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, as some servers send
    ("gzip", lambda b: gzip.compress(b[:300]) + gzip.compress(b[300:])),  # two gzip members
    ("identity", lambda b: b),
])
def test_encoded_bodies_decode_to_the_same_summary(encoding, encode):
    plain = fixture_capture("simple", "001")
    encoded = capture(encode(plain.response_body), plain.response_headers + [["Content-Encoding", encoding]])
    assert summarize_response(encoded) == summarize_response(plain)


def test_encoded_json_body():
    plain = fixture_capture("error", "005")
    encoded = capture(gzip.compress(plain.response_body), plain.response_headers + [["content-encoding", "gzip"]])
    assert summarize_response(encoded) == summarize_response(plain)


@pytest.mark.parametrize("body, encoding", [
    (b"\x1f\x8b\x08\x00garbage-not-gzip", "gzip"),
    (b"not deflate at all", "deflate"),
    (b"data: x\n\n", "br"),
])
def test_undecodable_body_is_a_note_not_an_exception(body, encoding):
    s = summarize_response(capture(body, SSE + [["content-encoding", encoding]]))
    assert s.error["type"] == "undecodable_body" and s.usage is None and s.partial


def test_client_abort_mid_stream_keeps_what_arrived():
    body = fixture_capture("simple", "001").response_body
    cut = body.index(b"event: content_block_stop")
    s = summarize_response(capture(body[:cut], SSE, client_aborted=True))
    assert s.partial and s.error["type"] == "client_aborted"
    assert s.usage["output_tokens"] == 4  # message_start's count: the final one never arrived
    assert s.content == [{"type": "text", "text": "Hello! How can I help you with this project today?"}]


def test_truncated_gzip_stream_decodes_what_arrived():
    events = fixture_capture("simple", "001").response_body.split(b"\n\n")
    packer = zlib.compressobj(wbits=31)  # gzip, flushed per event the way a streaming server sends it
    sent = b"".join(packer.compress(e + b"\n\n") + packer.flush(zlib.Z_SYNC_FLUSH) for e in events[:4])
    s = summarize_response(capture(sent, SSE + [["content-encoding", "gzip"]], client_aborted=True))
    assert s.partial and s.error["type"] == "client_aborted" and s.usage["input_tokens"] == 6
    assert s.content == [{"type": "text", "text": "Hello! How"}]


def test_client_abort_flag_marks_even_a_complete_stream_partial():
    s = summarize_response(fixture_capture("simple", "001", client_aborted=True))
    assert s.partial and s.error["type"] == "client_aborted" and s.usage["output_tokens"] == 24


def test_upstream_failures():
    before = summarize_response(capture(b"", [], status=None, upstream_error="upstream timed out before a response"))
    assert before.partial and before.error == {"type": "upstream_error",
                                               "message": "upstream timed out before a response"}
    body = fixture_capture("simple", "001").response_body
    mid = summarize_response(capture(body[:700], SSE, upstream_error="upstream timed out mid-response"))
    assert mid.partial and mid.error["type"] == "upstream_error" and mid.usage["input_tokens"] == 6


def test_stream_without_message_stop_is_incomplete():
    s = summarize_response(capture(sse(start({"input_tokens": 3, "output_tokens": 1})), SSE))
    assert s.partial and s.error["type"] == "incomplete_stream" and s.usage == {"input_tokens": 3, "output_tokens": 1}


def test_tool_input_json_invalid_or_empty():
    body = sse(
        start({"input_tokens": 1, "output_tokens": 1}),
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "tool_use", "id": "t0", "name": "A", "input": {}}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": ""}},
        {"type": "content_block_start", "index": 1,
         "content_block": {"type": "tool_use", "id": "t1", "name": "B", "input": {}}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"a": '}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "tru"}},
        {"type": "content_block_start", "index": 2, "content_block": {"type": "redacted_thinking", "data": "xyz"}},
        STOP,
    )
    empty, bad, redacted = summarize_response(capture(body, SSE)).content
    assert empty == {"type": "tool_use", "id": "t0", "name": "A", "input": {}}
    assert bad["input"] == {} and bad["input_raw"] == '{"a": tru' and bad["input_parse_error"] is True
    assert redacted == {"type": "redacted_thinking", "data": "xyz"}


def test_citations_and_blocks_out_of_order():
    body = sse(
        start({"input_tokens": 1, "output_tokens": 1}),
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": "a"}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "citations_delta", "citation": {"url": "u"}}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "b"}},
        {"type": "content_block_delta", "index": 9, "delta": {"type": "text_delta", "text": "no such block"}},
        STOP,
    )
    assert summarize_response(capture(body, SSE)).content == [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b", "citations": [{"url": "u"}]}]


def test_garbage_events_are_skipped():
    body = sse(start({"input_tokens": 1}), STOP) + b"data: {not json\n\ndata: [1]\n\nevent: x\ndata: 5\n\n"
    s = summarize_response(capture(body, SSE))
    assert s.usage == {"input_tokens": 1} and not s.partial


def test_nested_usage_objects_overwrite_per_key():
    base = {"input_tokens": 5, "cache_creation": {"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 0},
            "server_tool_use": {"web_search_requests": 1}}
    update = {"output_tokens": 9, "cache_creation": {"ephemeral_1h_input_tokens": 4}, "server_tool_use": None}
    assert merge_usage(base, update) == {
        "input_tokens": 5, "output_tokens": 9,
        "cache_creation": {"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 4},
        "server_tool_use": {"web_search_requests": 1},
    }
    assert base["cache_creation"]["ephemeral_1h_input_tokens"] == 0  # inputs untouched


counts = st.one_of(st.none(), st.integers(0, 10**7))
usage_fields = st.fixed_dictionaries({}, optional={
    "input_tokens": counts, "output_tokens": counts, "cache_read_input_tokens": counts,
    "cache_creation": st.fixed_dictionaries({}, optional={"ephemeral_5m_input_tokens": counts,
                                                          "ephemeral_1h_input_tokens": counts}),
})


def stream_usage(start_usage: dict, deltas: list[dict]) -> dict | None:
    body = sse(start(start_usage), *({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": u}
                                     for u in deltas), STOP)
    return summarize_response(capture(body, SSE)).usage


@given(usage_fields, usage_fields, st.integers(1, 5))
def test_repeated_identical_message_deltas_are_idempotent(start_usage, delta, repeats):
    assert stream_usage(start_usage, [delta] * repeats) == stream_usage(start_usage, [delta])


@given(usage_fields, st.lists(usage_fields, max_size=5))
def test_merge_takes_the_last_non_null_value_and_never_sums(start_usage, deltas):
    merged = stream_usage(start_usage, deltas)
    for key in ("input_tokens", "output_tokens", "cache_read_input_tokens"):
        seen = [d[key] for d in deltas if d.get(key) is not None]
        expected = seen[-1] if seen else start_usage.get(key)
        assert merged.get(key) == expected
    for key in ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"):
        seen = [d["cache_creation"][key] for d in deltas if d.get("cache_creation", {}).get(key) is not None]
        expected = seen[-1] if seen else start_usage.get("cache_creation", {}).get(key)
        assert merged.get("cache_creation", {}).get(key) == expected


# --- a response the wire kept in part (issue 22, item 7) -------------------------------------------

def delta_text(number: int) -> str:
    """280 characters that say which delta they are (and compress no better than hex)."""
    return f"<{number:05d}>" + (hashlib.sha256(str(number).encode()).hexdigest() * 5)[:273]


def big_stream(deltas: int, final_usage: bool = True) -> bytes:
    """A streamed answer: one long text block, then a short tool call, then the final usage."""
    text = [{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": delta_text(n)}}
            for n in range(deltas)]
    tool = [{"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1",
                                                                          "name": "Read", "input": {}}},
            {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta",
                                                                  "partial_json": '{"file_path": "/a"}'}},
            {"type": "content_block_stop", "index": 1}]
    end = [{"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 98765}}]
    return sse(start({"input_tokens": 7, "cache_read_input_tokens": 50_000, "output_tokens": 2}),
               {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
               *text, {"type": "content_block_stop", "index": 0}, *tool, *(end if final_usage else []), STOP)


def kept_in_part(body: bytes, headers: list[list[str]], limit: int, piece: int = 1000) -> Capture:
    """The capture the wire makes of `body` arriving in `piece`-byte pieces, over a cap of `limit`."""
    kept = capture(b"", headers)
    kept.response_parts = []
    keeper = KeptResponse(kept.response_parts, limit)
    for at in range(0, len(body), piece):
        keeper.add(body[at : at + piece])
    assert keeper.finish(kept)
    return kept


def whole_deltas(text: str) -> list[int]:
    """Which deltas a text joins, checking that it holds only whole ones (none torn by the gap)."""
    assert len(text) % 280 == 0
    numbers = [int(text[at + 1 : at + 6]) for at in range(0, len(text), 280)]
    assert all(text[at : at + 280] == delta_text(n) for at, n in zip(range(0, len(text), 280), numbers, strict=True))
    return numbers


def test_a_stream_kept_in_part_is_read_on_each_side_of_the_gap_with_its_final_usage():
    body = big_stream(8000)  # about 3 MB
    kept = kept_in_part(body, SSE, limit=1024 * 1024)
    s = summarize_response(kept)
    at, omitted = kept.response_omitted
    assert (s.omitted_bytes, s.usage_incomplete, s.partial, s.error) == (omitted, False, False, None)
    assert s.usage == {"input_tokens": 7, "cache_read_input_tokens": 50_000, "output_tokens": 98765}
    assert s.stop_reason == "tool_use"
    numbers = whole_deltas(s.content[0]["text"])
    jump = next(i for i in range(1, len(numbers)) if numbers[i] != numbers[i - 1] + 1)
    assert numbers[:jump] == list(range(jump)) and numbers[jump:] == list(range(numbers[jump], 8000))
    event = [sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": delta_text(n)}})
             for n in (jump - 1, jump)]
    assert body.index(event[0]) + len(event[0]) <= at < body.index(event[1]) + len(event[1])  # whole events only
    assert s.content[1] == {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "/a"}}


def test_a_tool_input_the_gap_cut_is_kept_raw_never_parsed_across_it():
    chunks = [{"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta",
                                                                    "partial_json": f'"{n:07d}", '}}
              for n in range(20_000)]  # about 3 MB: the 1 MB cap cuts the tool input in its middle
    body = sse(start({"input_tokens": 3, "output_tokens": 1}),
               {"type": "content_block_start", "index": 0,
                "content_block": {"type": "tool_use", "id": "t", "name": "Write", "input": {}}},
               {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta",
                                                                     "partial_json": '{"lines": ['}},
               *chunks, {"type": "content_block_delta", "index": 0,
                         "delta": {"type": "input_json_delta", "partial_json": '"end"]}'}},
               {"type": "content_block_stop", "index": 0},
               {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 5}}, STOP)
    s = summarize_response(kept_in_part(body, SSE, limit=1024 * 1024, piece=4096))
    block = s.content[0]
    assert block["input"] == {} and block["input_parse_error"] and block["input_raw"].endswith('"end"]}')
    assert (s.usage["output_tokens"], s.usage_incomplete) == (5, False)


def test_without_a_final_usage_after_the_gap_the_usage_is_message_starts_and_says_so():
    s = summarize_response(kept_in_part(big_stream(8000, final_usage=False), SSE, limit=1024 * 1024))
    assert s.usage_incomplete and s.omitted_bytes and not s.partial
    assert s.usage == {"input_tokens": 7, "cache_read_input_tokens": 50_000, "output_tokens": 2}


def test_a_compressed_stream_kept_in_part_is_read_up_to_the_gap_only():
    packer = zlib.compressobj(wbits=31)  # gzip, flushed per event the way a streaming server sends it
    events = [e + b"\n\n" for e in big_stream(8000).split(b"\n\n") if e]
    sent = b"".join(packer.compress(e) + packer.flush(zlib.Z_SYNC_FLUSH) for e in events) + packer.flush()
    s = summarize_response(kept_in_part(sent, SSE + [["content-encoding", "gzip"]], limit=512 * 1024))
    assert s.usage_incomplete and s.omitted_bytes and (s.partial, s.error) == (False, None)
    assert s.usage["output_tokens"] == 2 and s.model == "claude-opus-4-8"
    numbers = whole_deltas(s.content[0]["text"])
    assert numbers == list(range(len(numbers))) and 0 < len(numbers) < 8000


def test_a_json_answer_kept_in_part_is_not_parsed_and_its_usage_is_incomplete():
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-opus-4-8",
               "content": [{"type": "text", "text": "x" * 3_000_000}], "stop_reason": "end_turn",
               "usage": {"input_tokens": 1, "output_tokens": 700_000}}
    s = summarize_response(kept_in_part(json.dumps(message).encode(), [["content-type", "application/json"]],
                                        limit=1024 * 1024))
    assert (s.kind, s.usage, s.content, s.usage_incomplete, s.partial, s.error) == ("json", None, [], True, False, None)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 700), st.integers(0, 9000), st.integers(1, 400), st.booleans())
def test_any_gap_gives_whole_deltas_and_the_final_usage_exactly_when_it_was_kept(piece, limit, tail, crlf):
    """Small sizes (the kept tail is `tail` bytes), so gaps fall anywhere: inside an event, a line
    ending, a UTF-8 character, the final `message_delta`."""
    body = big_stream(40).replace(b"<", "é<".encode())
    if crlf:
        body = body.replace(b"\n", b"\r\n")
    saved, capture_module.TAIL_BYTES = capture_module.TAIL_BYTES, tail
    try:
        kept = capture(b"", SSE)
        kept.response_parts = []
        keeper = KeptResponse(kept.response_parts, limit)
        for at in range(0, len(body), piece):
            keeper.add(body[at : at + piece])
        if not keeper.finish(kept):
            return
    finally:
        capture_module.TAIL_BYTES = saved
    s = summarize_response(kept)
    at, _ = kept.response_omitted
    text = "".join(block["text"] for block in s.content if block["type"] == "text").replace("é", "")
    numbers = whole_deltas(text)
    assert numbers == sorted(set(numbers))
    final = b'"usage": {"output_tokens": 98765}}'
    tail_body = kept.response_body[at:]
    blank = b"\r\n\r\n" if crlf else b"\n\n"
    after_first_blank = tail_body[tail_body.find(blank) + len(blank):] if blank in tail_body else b""
    assert s.usage_incomplete == (final + blank not in after_first_blank)
    assert s.usage_incomplete or s.usage["output_tokens"] == 98765
