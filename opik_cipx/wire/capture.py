"""The Capture record: one HTTP exchange as the gateway saw it (docs/ARCHITECTURE.md, "Capture").

The gateway fills it from references to bytes the wire already holds; the response body is
kept as the list of pieces that were forwarded and joined once, off the wire, on first use. A
response larger than the gateway's cap is kept in part (`KeptResponse`): its start and its end,
and the capture says what is missing between them (`response_omitted`).
Secret header values never enter a Capture: `redact_headers` replaces them at capture time, by
a rule on the header's name (docs/SECURITY.md, "What a Capture keeps of the headers").
"""

import functools
import re
from collections import deque
from dataclasses import dataclass, field

REDACTED = "[redacted]"
TAIL_BYTES = 256 * 1024  # of a response over the cap, the end kept (usage comes last, in JSON and in streams)
# A header whose name holds one of these words, in any case and anywhere (`x-api-key`,
# `Authorization`, `anthropic-api-key`, `x-goog-api-key`, `Set-Cookie`, `x-amz-security-token`,
# ...), is kept as `[redacted]`; a name that only looks like one is redacted too.
SECRET_WORDS = ("auth", "cookie", "credential", "key", "password", "secret", "session", "token")
_SECRET_NAME = re.compile("|".join(SECRET_WORDS), re.IGNORECASE)
# The exceptions, which the materializer reads and which grant nothing: Claude Code's session id,
# and the rate-limit counters of the response (`anthropic-ratelimit-input-tokens-remaining`, ...).
KEPT_NAMES = frozenset({"x-claude-code-session-id"})
KEPT_PREFIX = "anthropic-ratelimit-"


@functools.lru_cache(maxsize=1024)  # on the wire for every header of every exchange: the names repeat
def is_secret_header(name: str) -> bool:
    """True when the value of header `name` must not be kept (`SECRET_WORDS`, less `KEPT_NAMES` and `KEPT_PREFIX`)."""
    if _SECRET_NAME.search(name) is None:
        return False
    lowered = name.lower()
    return lowered not in KEPT_NAMES and not lowered.startswith(KEPT_PREFIX)


def redact_headers(headers: list[tuple[str, str]]) -> list[list[str]]:
    """Headers as [name, value] pairs, with the value of every secret header (`is_secret_header`)
    replaced by `[redacted]`."""
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
    blocked: str | None = None  # the spend cap that kept it from the upstream (`wire/budget.Block.tag`)
    response_headers: list[list[str]] = field(default_factory=list)
    response_parts: list[bytes] = field(default_factory=list, repr=False)
    client_aborted: bool = False
    upstream_error: str | None = None
    response_omitted: list[int] | None = None  # [at, bytes]: see `KeptResponse`

    @property
    def response_body(self) -> bytes:
        """The response body exactly as upstream sent it (possibly gzip/deflate encoded).

        The pieces are joined once and kept as a single piece, which later calls return as is.
        """
        if len(self.response_parts) != 1:
            self.response_parts = [b"".join(self.response_parts)]
        return self.response_parts[0]


class KeptResponse:
    """The pieces of a response a Capture keeps, fed in order as they are forwarded (`add`).

    Up to `limit` bytes, every piece. Beyond, the pieces that started before `limit - TAIL_BYTES`
    and the last pieces that hold at least `TAIL_BYTES` (a stream's `message_start` and its final
    `message_delta`, with the usage, are in them); the pieces between are dropped as they are
    forwarded, never held. `finish` puts the kept pieces into the capture, and when some were left
    out, `response_omitted = [at, bytes]`: `bytes` bytes are missing at offset `at` of the kept
    body (whose first `at` bytes are the response's first, and the rest its last).
    """

    def __init__(self, parts: list[bytes], limit: int):
        self.parts = parts
        self.head_limit = max(0, limit - TAIL_BYTES)
        self.head = 0  # bytes in `parts`
        self.tail: deque[bytes] = deque()
        self.tail_bytes = 0
        self.omitted = 0

    def add(self, piece: bytes) -> None:
        if self.head < self.head_limit:
            self.parts.append(piece)
            self.head += len(piece)
            return
        self.tail.append(piece)
        self.tail_bytes += len(piece)
        while self.tail_bytes - len(self.tail[0]) >= TAIL_BYTES:
            dropped = len(self.tail.popleft())
            self.tail_bytes -= dropped
            self.omitted += dropped

    @property
    def total(self) -> int:
        """Bytes of the response so far, kept or not."""
        return self.head + self.omitted + self.tail_bytes

    def finish(self, capture: "Capture") -> bool:
        """Hand the kept pieces to `capture`; True when some of the response was left out."""
        self.parts.extend(self.tail)
        if self.omitted:
            capture.response_omitted = [self.head, self.omitted]
        return bool(self.omitted)
