"""Which header values a Capture keeps: redaction by rule (wire/capture.py)."""

from hypothesis import given
from hypothesis import strategies as st

from opik_cipx.wire.capture import REDACTED, SECRET_WORDS, is_secret_header, redact_headers


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
