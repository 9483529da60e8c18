"""The Capture record: one HTTP exchange as the gateway saw it (docs/ARCHITECTURE.md, "Capture").

The gateway fills it from references to bytes the wire already holds; the response body is
kept as the list of pieces that were forwarded and joined once, off the wire, on first use.
Auth header values never enter a Capture: `redact_headers` replaces them at capture time.
"""

from dataclasses import dataclass, field

REDACTED = "[redacted]"
SECRET_HEADERS = frozenset({"x-api-key", "authorization", "proxy-authorization", "cookie", "set-cookie"})


def redact_headers(headers: list[tuple[str, str]]) -> list[list[str]]:
    """Headers as [name, value] pairs, with every auth value replaced by `[redacted]`."""
    return [[name, REDACTED if name.lower() in SECRET_HEADERS else value] for name, value in headers]


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

    @property
    def response_body(self) -> bytes:
        """The response body exactly as upstream sent it (possibly gzip/deflate encoded).

        The pieces are joined once and kept as a single piece, which later calls return as is.
        """
        if len(self.response_parts) != 1:
            self.response_parts = [b"".join(self.response_parts)]
        return self.response_parts[0]
