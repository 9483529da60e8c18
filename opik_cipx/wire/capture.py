"""The Capture record: one HTTP exchange as the gateway saw it (docs/ARCHITECTURE.md, "Capture").

The gateway fills it from references to bytes the wire already holds; the response body is
kept as the list of pieces that were forwarded and joined once, off the wire, on first use.
Secret header values never enter a Capture: `redact_headers` replaces them at capture time, by
a rule on the header's name (docs/SECURITY.md, "What a Capture keeps of the headers").
"""

import re
from dataclasses import dataclass, field

REDACTED = "[redacted]"
# A header whose name holds one of these words, in any case and anywhere (`x-api-key`,
# `Authorization`, `anthropic-api-key`, `x-goog-api-key`, `Set-Cookie`, `x-amz-security-token`,
# ...), is kept as `[redacted]`; a name that only looks like one is redacted too.
SECRET_WORDS = ("auth", "cookie", "credential", "key", "password", "secret", "session", "token")
_SECRET_NAME = re.compile("|".join(SECRET_WORDS), re.IGNORECASE)
# The exceptions, which the materializer reads and which grant nothing: Claude Code's session id,
# and the rate-limit counters of the response (`anthropic-ratelimit-input-tokens-remaining`, ...).
KEPT_NAMES = frozenset({"x-claude-code-session-id"})
KEPT_PREFIX = "anthropic-ratelimit-"


def is_secret_header(name: str) -> bool:
    """True when the value of header `name` must not be kept (`SECRET_WORDS`, less `KEPT_NAMES` and `KEPT_PREFIX`)."""
    if _SECRET_NAME.search(name) is None:
        return False
    lowered = name.lower()
    return lowered not in KEPT_NAMES and not lowered.startswith(KEPT_PREFIX)


def redact_headers(headers: list[tuple[str, str]]) -> list[list[str]]:
    """Headers as [name, value] pairs, with the value of every secret header (`is_secret_header`) replaced by `[redacted]`."""
    return [[name, REDACTED if is_secret_header(name) else value] for name, value in headers]


def header_value(headers: list[list[str]], name: str) -> str | None:
    """The first value of header `name` (case-insensitive), or None."""
    lowered = name.lower()
    for key, value in headers:
        if key.lower() == lowered:
            return value
    return None


@dataclass
class Capture:
    id: str
    started_at_ns: int
    method: str
    path: str
    request_headers: list[list[str]]
    request_body: bytes = b""
    ttfb_ns: int | None = None
    ended_at_ns: int | None = None
    status: int | None = None
    response_headers: list[list[str]] = field(default_factory=list)
    response_parts: list[bytes] = field(default_factory=list, repr=False)
    client_aborted: bool = False
    upstream_error: str | None = None

    @property
    def response_body(self) -> bytes:
        """The response body exactly as upstream sent it (possibly gzip/deflate encoded).

        The pieces are joined once and kept as a single piece, which later calls return as is.
        """
        if len(self.response_parts) != 1:
            self.response_parts = [b"".join(self.response_parts)]
        return self.response_parts[0]
