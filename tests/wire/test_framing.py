"""Where a request ends (wire/framing.py): the loop and http.server's header parser agree, chunked bodies
are taken apart whatever the pieces they arrive in."""

import http.client
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opik_cipx.wire.framing import (
    MAX_HEAD_BYTES,
    MAX_HEADER_LINES,
    Dechunker,
    Framing,
    FramingError,
    RequestReader,
    request_framing,
)

HEAD = b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"


def framing(fields: bytes, max_body: int = 1000) -> Framing:
    return request_framing(HEAD + fields + b"\r\n", max_body)


def test_examples():
    assert framing(b"") == Framing()
    assert framing(b"Content-Length: 12\r\n") == Framing(length=12)
    assert framing(b"content-length:  7 \r\nCONTENT-LENGTH: 7\r\n") == Framing(length=7)
    assert framing(b"Content-Length: 7, 7\r\n") == Framing(length=7)
    assert framing(b"Transfer-Encoding: Chunked\r\n") == Framing(chunked=True)
    assert framing(b"Content-Length: 3\r\nExpect: 100-Continue\r\n") == Framing(length=3, expect_continue=True)
    http_1_0 = b"POST / HTTP/1.0\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
    assert not request_framing(http_1_0, 9).expect_continue


@pytest.mark.parametrize("fields, status", [
    (b"Content-Length: 2\r\nContent-Length: 5\r\n", 400),
    (b"Content-Length: 2, 5\r\n", 400),
    (b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n", 400),
    (b"Content-Length: 0x10\r\n", 400),
    (b"Content-Length: 1_0\r\n", 400),
    (b"Content-Length: -1\r\n", 400),
    (b"Content-Length:\r\n", 400),
    (b"Transfer-Encoding: gzip, chunked\r\n", 400),
    (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", 400),
    (b"Content-Length : 2\r\n", 400),
    (b"X: a\r\n\tContent-Length: 5\r\n", 400),
    (b"Content-Length: 1001\r\n", 413),
    (b"X: y\r\n" * (MAX_HEADER_LINES + 1), 431),
])
def test_refusals(fields, status):
    with pytest.raises(FramingError) as refused:
        framing(fields)
    assert refused.value.status == status


NAMES = st.sampled_from([b"Content-Length", b"content-length", b"Transfer-Encoding", b"X-Pad", b"Expect",
                         b"Content-Length ", b" Content-Length", b"Content-Lengt"])
VALUES = st.sampled_from([b"5", b" 5", b"5 ", b"05", b"6", b"5, 5", b"5,6", b"chunked", b"Chunked", b"gzip",
                          b"100-continue", b"", b"+5", b"x"])


@given(st.lists(st.tuples(NAMES, st.sampled_from([b":", b": ", b":\t"]), VALUES), max_size=5))
def test_a_head_the_loop_accepts_is_framed_as_http_server_reads_it(fields):
    """What `request_framing` accepts, http.client's parser (the handler's) reads with the same
    Content-Length and Transfer-Encoding: the loop never reads a body the handler would frame otherwise."""
    raw = b"".join(name + colon + value + b"\r\n" for name, colon, value in fields)
    try:
        got = framing(raw, max_body=100)
    except FramingError:
        return
    parsed = http.client.parse_headers(io.BytesIO(raw + b"\r\n"))
    lengths = {value.strip() for value in parsed.get_all("Content-Length", []) for value in value.split(",")}
    codings = parsed.get_all("Transfer-Encoding", [])
    if got.chunked:
        assert [coding.strip().lower() for coding in codings] == ["chunked"] and not lengths
    else:
        assert not codings
        assert {int(value) for value in lengths} == ({got.length} if lengths else set())


def chunked(pieces: list[bytes], trailers: list[bytes], lf_only: bool) -> bytes:
    end = b"\n" if lf_only else b"\r\n"
    out = b"".join(b"%x%s%s%s" % (len(piece), end, piece, end) for piece in pieces if piece)
    return out + b"0" + end + b"".join(trailer + end for trailer in trailers) + end


@given(st.lists(st.binary(max_size=40), max_size=6), st.lists(st.sampled_from([b"X-T: 1", b"Y: z"]), max_size=2),
       st.booleans(), st.binary(max_size=10), st.lists(st.integers(1, 30), max_size=20))
def test_a_chunked_body_is_the_same_whatever_pieces_it_arrives_in(pieces, trailers, lf_only, after, cuts):
    encoded = chunked(pieces, trailers, lf_only)
    stream = encoded + after
    dechunker, at = Dechunker(max_body=10_000), 0
    for size in cuts + [len(stream)]:
        if dechunker.done:
            break
        at += dechunker.feed(stream[at:at + size])
    assert dechunker.done and dechunker.data == b"".join(pieces)
    assert at == len(encoded) and stream[at:] == after


@given(st.lists(st.binary(min_size=1, max_size=40), max_size=6), st.lists(st.integers(1, 30), max_size=20))
def test_a_dechunker_with_a_sink_hands_out_the_body_as_it_comes_and_keeps_none(pieces, cuts):
    """A response relayed as it arrives (`relay.py`): the runs of body bytes, in order, and nothing held."""
    stream, runs = chunked(pieces, [], False), []
    dechunker, at = Dechunker(max_body=None, sink=runs.append), 0
    for size in cuts + [len(stream)]:
        if dechunker.done:
            break
        at += dechunker.feed(stream[at:at + size])
    assert dechunker.done and b"".join(runs) == b"".join(pieces) and dechunker.size == len(b"".join(pieces))
    assert all(isinstance(run, bytes) for run in runs) and dechunker.data == b""


@pytest.mark.parametrize("body, status", [
    (b"zz\r\n", 400),
    (b"5\r\nabcdefgh\r\n", 400),  # longer than its size
    (b"0x5\r\nabcde\r\n0\r\n\r\n", 400),
    (b"1" * 2000, 400),  # a size line that never ends
    (b"400\r\n", 413),  # 1024 bytes announced, 1000 allowed
])
def test_chunked_refusals(body, status):
    with pytest.raises(FramingError) as refused:
        Dechunker(max_body=1000).feed(body)
    assert refused.value.status == status


@given(st.binary(max_size=300), st.booleans(), st.binary(max_size=20), st.lists(st.integers(1, 64), max_size=30))
def test_a_request_is_read_the_same_whatever_pieces_it_arrives_in(body, chunked_body, after, cuts):
    """`RequestReader` as the loop drives it: the head, then the body, then what follows the request."""
    framing_line = b"Transfer-Encoding: chunked\r\n" if chunked_body else b"Content-Length: %d\r\n" % len(body)
    head = HEAD + framing_line + b"\r\n"
    stream = head + (chunked([body], [], False) if chunked_body else body) + after
    reader, at, rest = RequestReader(max_body=1000), 0, None
    for size in cuts + [len(stream)]:
        data, at = stream[at:at + size], at + size
        if reader.head is None:
            data = reader.take_head(data)
            if data is None:
                continue
        rest = reader.take_body(data)
        if rest is not None:
            break
    assert (reader.head, reader.body()) == (head, body)
    assert rest + stream[at:] == after


def test_a_head_larger_than_its_bound_is_431():
    with pytest.raises(FramingError) as refused:
        RequestReader(1000).take_head(b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD_BYTES)
    assert refused.value.status == 431
