"""The upstream's response head (wire/upstream.py, `FinalResponse`): read as http.client reads it, whatever
the head, but past interim 1xx responses and without the email package for an ordinary header block.

The pool itself (TLS, reuse, stale connections) is tested through the gateway (test_gateway.py)."""

import email.parser
import http.client
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opik_cipx.wire.framing import header_fields
from opik_cipx.wire.upstream import FinalResponse

_TOKEN = st.text("abcxyzABCXYZ0123456789-_!#$%&'*+.^`|~", min_size=1, max_size=10)
_VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"), max_size=16)
_ODD_LINES = st.sampled_from([" folded onto the line before", "\tfolded too", "no colon here", "Bad Name: x",
                              ": no name", "From someone", "X-Lone: a\rb", "X-Empty:"])
_FRAMING = st.sampled_from([("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "Chunked"),
                            ("Transfer-Encoding", "gzip"), ("Content-Length", "12"), ("Content-Length", "-1"),
                            ("Content-Length", "x"), ("Content-Length", ""), ("Connection", "close"),
                            ("Connection", "keep-alive"), ("Keep-Alive", "timeout=5"),
                            ("Proxy-Connection", "keep-alive")])


class _Sock:
    def __init__(self, data: bytes):
        self.data = data

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(io.BytesIO(self.data))


def read(response_class: type[http.client.HTTPResponse], data: bytes, method: str) -> tuple:
    response = response_class(_Sock(data), method=method)  # a socket's makefile is all it uses
    response.begin()
    assert response.fp is not None
    return (response.status, response.reason, response.version, response.headers.items(), response.chunked,
            response.length, response.will_close, response.fp.read())


@settings(max_examples=150)
@given(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/0.9"]), st.sampled_from([200, 204, 304, 101, 404, 529]),
       st.lists(st.one_of(st.tuples(_TOKEN, st.sampled_from(["", " ", "\t "]), _VALUE).map(
           lambda field: f"{field[0]}:{field[1]}{field[2]}"), _FRAMING.map(lambda field: f"{field[0]}: {field[1]}"),
           _ODD_LINES), max_size=10),
       st.sampled_from(["GET", "POST", "HEAD"]), st.booleans(), st.sampled_from([[], [100], [103], [100, 103]]))
def test_a_response_head_is_read_as_http_client_reads_it(version, status, lines, method, lf_only, interim):
    end = "\n" if lf_only else "\r\n"
    head = f"{version} {status} Reason{end}" + "".join(line + end for line in lines) + end
    body = b"0123456789abcdef"
    before = b"".join(b"HTTP/1.1 %d Early\r\nLink: </a>; rel=preload\r\n\r\n" % code for code in interim)
    expected = read(http.client.HTTPResponse, head.encode("latin-1") + body, method)
    assert read(FinalResponse, before + head.encode("latin-1") + body, method) == expected


def test_an_ordinary_header_block_is_split_without_the_email_parser_and_an_odd_one_is_not(monkeypatch):
    odd = b"X-A: one\r\n two\r\nbroken line\r\n\r\n"
    expected = http.client.parse_headers(io.BytesIO(odd)).items()

    def no_parser(*args, **kwargs):
        raise AssertionError("the email parser was used")

    monkeypatch.setattr(email.parser.Parser, "parsestr", no_parser)
    ordinary = header_fields(b"Content-Type: application/json\r\nX-A:\t two  words \r\nX-A: again\r\n\r\n")
    assert ordinary.items() == [("Content-Type", "application/json"), ("X-A", "two  words "), ("X-A", "again")]
    with pytest.raises(AssertionError, match="email parser"):
        header_fields(odd)
    monkeypatch.undo()
    assert header_fields(odd).items() == expected
