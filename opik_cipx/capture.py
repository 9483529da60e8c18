"""The Capture record: one HTTP exchange as the gateway saw it (architecture.md, contract 1).

The gateway fills it from references to bytes the wire already holds; the response body is
kept as the list of pieces that were forwarded and joined once, off the wire, on first use.
Auth header values never enter a Capture: `redact_headers` replaces them at capture time.
"""

import base64
from dataclasses import dataclass, field

REDACTED = "[redacted]"
SECRET_HEADERS = frozenset({"x-api-key", "authorization", "proxy-authorization", "cookie"})


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
    response_headers: list[list[str]] = field(default_factory=list)
    response_parts: list[bytes] = field(default_factory=list, repr=False)
    client_aborted: bool = False
    upstream_error: str | None = None
    _joined: bytes | None = field(default=None, repr=False)

    @property
    def response_body(self) -> bytes:
        """The response body exactly as upstream sent it (possibly gzip/deflate encoded)."""
        if self._joined is None:
            self._joined = b"".join(self.response_parts)
            self.response_parts = [self._joined]
        return self._joined

    def to_json(self) -> dict:
        """A JSON-ready dict; bodies are UTF-8 text when they decode, else base64."""
        return {
            "id": self.id,
            "started_at_ns": self.started_at_ns,
            "ttfb_ns": self.ttfb_ns,
            "ended_at_ns": self.ended_at_ns,
            "method": self.method,
            "path": self.path,
            "request_headers": self.request_headers,
            "request_body": _encode_body(self.request_body),
            "status": self.status,
            "response_headers": self.response_headers,
            "response_body": _encode_body(self.response_body),
            "client_aborted": self.client_aborted,
            "upstream_error": self.upstream_error,
        }

    @classmethod
    def from_json(cls, data: dict) -> "Capture":
        """Inverse of `to_json`; raises KeyError/ValueError/TypeError on a malformed record."""
        capture = cls(
            id=str(data["id"]),
            started_at_ns=int(data["started_at_ns"]),
            method=str(data["method"]),
            path=str(data["path"]),
            request_headers=[[str(k), str(v)] for k, v in data["request_headers"]],
            request_body=_decode_body(data["request_body"]),
            ttfb_ns=data.get("ttfb_ns"),
            ended_at_ns=data.get("ended_at_ns"),
            status=data.get("status"),
            response_headers=[[str(k), str(v)] for k, v in data.get("response_headers", [])],
            client_aborted=bool(data.get("client_aborted", False)),
            upstream_error=data.get("upstream_error"),
        )
        capture.response_parts = [_decode_body(data["response_body"])]
        return capture


def _encode_body(body: bytes) -> dict:
    try:
        return {"utf8": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(body).decode("ascii")}


def _decode_body(value: dict) -> bytes:
    if "utf8" in value:
        return value["utf8"].encode("utf-8")
    return base64.b64decode(value["b64"], validate=True)
