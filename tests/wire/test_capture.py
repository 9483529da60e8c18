"""What a Capture keeps (wire/capture.py): header values by a redaction rule, a response by its two
ends beyond a limit."""

from hypothesis import given
from hypothesis import strategies as st

from opik_cipx.wire import capture as capture_module
from opik_cipx.wire.capture import REDACTED, SECRET_WORDS, Capture, KeptResponse, is_secret_header, redact_headers


def test_every_header_whose_name_says_it_holds_a_secret_is_redacted():
    sent = [
        ("x-api-key", "sk-ant-api03-a"), ("Authorization", "Bearer b"), ("Proxy-Authorization", "Basic c"),
        ("Cookie", "sid=d"), ("Set-Cookie", "sid=e"), ("anthropic-api-key", "sk-ant-f"), ("x-goog-api-key", "g"),
        ("X-Auth-Token", "h"), ("x-amz-security-token", "i"), ("X-Client-Secret", "j"), ("x-session-token", "k"),
        ("X-Upstream-Password", "l"), ("x-credential", "m"), ("SESSIONID", "n"), ("x-apikey", "o"),
    ]
    assert redact_headers(sent) == [[name, REDACTED] for name, _ in sent]


def test_what_the_materializer_reads_is_kept():
    kept = [
        ("X-Claude-Code-Session-Id", "0b5c6c2e-5f8a-4ef4-9d0e-0d4b8e0b6a11"),  # a session's id, not a credential
        ("anthropic-ratelimit-input-tokens-remaining", "39000"),  # counters of tokens, not tokens
        ("anthropic-ratelimit-tokens-reset", "2026-12-07T10:00:00Z"),
        ("anthropic-ratelimit-unified-5h-utilization", "0.42"),
        ("x-claude-code-agent-id", "a1"), ("anthropic-beta", "token-efficient-tools-2025-02-19"),
        ("content-type", "application/json"), ("keep-alive", "timeout=5"), ("request-id", "req_1"),
        ("x-stainless-retry-count", "0"), ("user-agent", "claude-cli/2.1.0"),
    ]
    assert redact_headers(kept) == [[name, value] for name, value in kept]


@given(st.sampled_from(SECRET_WORDS), st.text("abcdefghijklmnopqrstuvwxyz-_", max_size=12),
       st.text("abcdefghijklmnopqrstuvwxyz-_", max_size=12), st.booleans())
def test_a_secret_word_anywhere_in_a_name_redacts_it_whatever_its_case(word, before, after, upper):
    name = before + word + after
    name = name.upper() if upper else name
    exception = name.lower() == "x-claude-code-session-id" or name.lower().startswith("anthropic-ratelimit-")
    assert is_secret_header(name) is not exception


@given(st.lists(st.binary(min_size=1, max_size=12), max_size=40), st.integers(0, 120))
def test_a_response_is_kept_whole_up_to_the_limit_and_by_its_two_ends_beyond(pieces, limit):
    capture_module.TAIL_BYTES, saved = 16, capture_module.TAIL_BYTES  # small sizes, so examples cross both bounds
    try:
        capture = Capture(id="c", started_at_ns=0, method="POST", path="/v1/messages", request_headers=[])
        kept = KeptResponse(capture.response_parts, limit)
        for piece in pieces:
            kept.add(piece)
        cut = kept.finish(capture)
    finally:
        capture_module.TAIL_BYTES = saved
    whole, body = b"".join(pieces), capture.response_body
    assert kept.total == len(whole)
    if not cut:
        assert body == whole and capture.response_omitted is None
        return
    at, omitted = capture.response_omitted
    assert omitted > 0 and body == whole[:at] + whole[at + omitted:]
    assert len(whole) > limit and len(body) - at >= 16  # the end kept is at least the tail
    head_limit = max(0, limit - 16)
    assert head_limit <= at < head_limit + 12 or at == head_limit == 0  # the start: up to the limit less the tail
