"""What a captured response says: model, exact usage, assistant content, and how it ended.

`summarize_response` reads a `Capture` off the wire and never raises on bad input: a body it
cannot decode, parse or make sense of gives a summary with an `error` note instead. Streams
(`text/event-stream`) are rebuilt from their events; anything else is read as JSON.

Usage follows the Messages API streaming contract: `message_start.message.usage` is the
base, and each `message_delta.usage` overwrites it field by field with its non-null values
(they are running totals, never increments; nested objects overwrite key by key).

`partial` is True when the exchange did not run to `message_stop`: a mid-stream `error`
event, a stream that just stops, the client hanging up, or the upstream failing. The usage
is then the last seen, and `error` says why, as `{"type", "message"}`: the API's own error
object when there is one (`error_event` keeps the whole error event or body), else a type of
`upstream_error`, `client_aborted`, `incomplete_stream`, `undecodable_body` or `http_error`.

A response the wire kept in part (`Capture.response_omitted = [at, bytes]`: its start, then its
last 256 KiB or so) is never parsed across the splice at `at`: the events of `body[:at]` (its
trailing partial event dropped), then those of `body[at:]` from its first blank line on (the
event torn at its start dropped), the missing ones in between read as if never sent. Usage is
`message_start`'s merged with the final `message_delta`'s, so it is whole when that delta is in
the tail. `omitted_bytes` says the content is incomplete (a block the gap cut has its two sides
joined, and its tool input is not parsed); `usage_incomplete` says the final usage was not read:
no `message_delta` after the gap, a compressed body (only its start decodes) or a JSON one (it
cannot be parsed). The usage, and so the cost, is then what `message_start` said: the input side
exact, the output a lower bound (none at all for JSON).
"""

import json
import zlib
from dataclasses import dataclass, field
from typing import Any

from opik_cipx.materialize.sse import SSEEvent, SSEParser, parse_sse
from opik_cipx.wire.capture import Capture, header_value

_TEXT_DELTAS = {"text_delta": "text", "thinking_delta": "thinking", "signature_delta": "signature"}


@dataclass(frozen=True)
class ResponseSummary:
    """What a response said. `usage`, `content` and the error objects are JSON off the wire:
    read-only, like the summary itself."""

    status: int | None
    kind: str  # "stream" | "json" | "empty"
    model: str | None = None
    message_id: str | None = None
    stop_reason: str | None = None
    stop_sequence: str | None = None
    usage: dict | None = None
    content: list[dict] = field(default_factory=list)
    partial: bool = False
    error: dict | None = None  # {"type", "message"}, both strings
    error_event: dict | None = None  # the API's error event or error body, as received
    request_id: str | None = None
    omitted_bytes: int = 0  # bytes of the response the wire did not keep: content is missing (module docstring)
    usage_incomplete: bool = False  # kept in part and its final usage not read: the output tokens are undercounted


def summarize_response(capture: Capture) -> ResponseSummary:
    summary: dict[str, Any] = {  # ResponseSummary's fields as they are read; content: [] unless read
        "kind": "empty", "model": None, "message_id": None, "stop_reason": None, "stop_sequence": None,
        "usage": None, "partial": False, "error": None, "error_event": None,
    }
    raw = capture.response_body
    at, omitted = _omitted(capture.response_omitted, len(raw))
    encoding = header_value(capture.response_headers, "content-encoding")
    encoded = any(coding.strip().lower() not in ("", "identity") for coding in (encoding or "").split(","))
    try:
        body = decode_body(raw[:at] if omitted and encoded else raw, encoding)  # a compressed tail cannot decode
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        summary["error"] = _error("undecodable_body", f"cannot decode the response body: {exc}")
        body = b""
    content_type = (header_value(capture.response_headers, "content-type") or "").lower()
    if content_type.startswith("text/event-stream"):
        if not omitted:
            _read_stream(summary, parse_sse(body))
        elif encoded:  # only the start decoded
            events = _whole_events(body)
            _read_stream(summary, events, len(events), tail_read=False)
        else:
            events = _whole_events(body[:at])
            _read_stream(summary, events + _events_after_gap(body[at:]), len(events))
    elif body.strip() and not omitted:
        _read_json(summary, body)
    elif omitted and body.strip():
        summary["kind"] = "json"  # its usage is its last member, after the gap: the body is not JSON as kept
    _note_how_it_ended(summary, capture)
    if omitted:
        summary.update(omitted_bytes=omitted, usage_incomplete=not summary.pop("usage_final", False))
    summary.pop("usage_final", None)
    return ResponseSummary(status=capture.status, request_id=header_value(capture.response_headers, "request-id"),
                           **summary)


def decode_body(body: bytes, content_encoding: str | None) -> bytes:
    """The body with its content codings undone (gzip, deflate zlib-wrapped or raw, identity).

    A truncated compressed body yields what decodes; a corrupt one raises OSError,
    zlib.error or ValueError.
    """
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    for coding in reversed(codings):
        if coding in ("gzip", "x-gzip"):
            body = _inflate(body, 16 + zlib.MAX_WBITS)
        elif coding == "deflate":
            try:
                body = _inflate(body, zlib.MAX_WBITS)
            except zlib.error:
                body = _inflate(body, -zlib.MAX_WBITS)
        elif coding != "identity":
            raise ValueError(f"unsupported content-encoding {coding!r}")
    return body


def _inflate(body: bytes, wbits: int) -> bytes:
    """Every member of a (possibly multi-member, possibly truncated) compressed body."""
    out = []
    while body:
        inflater = zlib.decompressobj(wbits)
        out.append(inflater.decompress(body))
        if not inflater.eof:
            break  # truncated: keep what decoded
        body = inflater.unused_data
    return b"".join(out)


def merge_usage(usage: dict, update: dict) -> dict:
    """A new dict: `usage` overwritten by every non-null field of `update`, nested objects per key."""
    merged = dict(usage)
    for key, value in update.items():
        if value is None:
            continue
        if isinstance(value, dict):
            current = merged.get(key)
            value = merge_usage(current if isinstance(current, dict) else {}, value)
        merged[key] = value
    return merged


def _read_json(summary: dict[str, Any], body: bytes) -> None:
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return  # not a JSON body: nothing of a Messages response to read
    if not isinstance(message, dict):
        return
    if message.get("type") == "message":
        summary["kind"] = "json"
        _take_message_fields(summary, message)
        summary["usage"] = _usage(message)
        summary["content"] = [block for block in message.get("content") or [] if isinstance(block, dict)]
    elif message.get("type") == "error":
        summary["kind"] = "json"
        summary["error"], summary["error_event"] = _api_error(message.get("error")), message


def _omitted(omitted: object, size: int) -> tuple[int, int]:
    """(at, bytes) of a capture's `response_omitted`, `at` within the body; (size, 0) when whole."""
    if not isinstance(omitted, (list, tuple)) or len(omitted) != 2 or not all(type(n) is int for n in omitted):
        return size, 0
    at, missing = omitted
    return (min(max(at, 0), size), missing) if missing > 0 else (size, 0)


def _whole_events(head: bytes) -> list[SSEEvent]:
    """The events of a body's start that end before it is cut (the last, torn, one left out)."""
    return SSEParser().feed(head)


def _events_after_gap(tail: bytes) -> list[SSEEvent]:
    """The events of a body's end from its first blank line on (what comes before it belongs to an
    event whose start is gone; a blank line is `\n\n` or `\r\n\r\n`, as Anthropic writes them)."""
    ends = [found + len(blank) for blank in (b"\n\n", b"\r\n\r\n") if (found := tail.find(blank)) >= 0]
    return parse_sse(tail[min(ends):]) if ends else []


def _read_stream(summary: dict[str, Any], events: list[SSEEvent], gap: int | None = None,
                 tail_read: bool = True) -> None:
    """The summary of a stream's `events`. Of one kept in part, `gap` events came before the gap,
    and `tail_read` is False when nothing after it could be read; `summary["usage_final"]` then
    says whether a `message_delta`'s usage came after the gap."""
    summary["kind"] = "stream"
    blocks: dict[int, dict] = {}
    pieces: dict[int, dict[str, list[str]]] = {}  # block index -> field -> streamed chunks
    before_gap: set[int] = set()  # blocks started before the gap
    cut: set[int] = set()  # those continued after it
    completed = False
    for number, event in enumerate(events):
        try:
            payload = json.loads(event.data)
        except (ValueError, RecursionError):
            continue  # a torn last event of a cut stream
        if not isinstance(payload, dict):
            continue
        kind = payload.get("type")
        after = gap is not None and number >= gap
        if kind == "content_block_delta":
            index, delta = payload.get("index"), payload.get("delta")
            if isinstance(index, int) and index in blocks and isinstance(delta, dict):
                _add_delta(pieces.setdefault(index, {}), blocks[index], delta)
                if after and index in before_gap:
                    cut.add(index)
        elif kind == "content_block_start":
            index, block = payload.get("index"), payload.get("content_block")
            if isinstance(index, int) and isinstance(block, dict):
                blocks[index] = dict(block)
                if gap is not None and not after:
                    before_gap.add(index)
        elif kind == "message_delta":
            delta = payload.get("delta")
            if isinstance(delta, dict):
                summary["stop_reason"] = delta.get("stop_reason", summary["stop_reason"])
                summary["stop_sequence"] = delta.get("stop_sequence", summary["stop_sequence"])
            if isinstance(payload.get("usage"), dict):
                summary["usage"] = merge_usage(summary["usage"] or {}, payload["usage"])
                summary["usage_final"] = after
        elif kind == "message_start":
            message = payload.get("message")
            if isinstance(message, dict):
                _take_message_fields(summary, message)
                summary["usage"] = _usage(message)
        elif kind == "message_stop":
            completed = True
        elif kind == "error":
            summary["error"], summary["error_event"] = _api_error(payload.get("error")), payload
    summary["content"] = [_finish_block(blocks[i], pieces.get(i, {}), i not in cut) for i in sorted(blocks)]
    if not completed and tail_read:
        summary["partial"] = True
        if summary["error"] is None:
            summary["error"] = _error("incomplete_stream", "the stream ended without message_stop")


def _add_delta(pieces: dict[str, list[str]], block: dict, delta: dict) -> None:
    kind = delta.get("type")
    if kind == "input_json_delta":
        pieces.setdefault("partial_json", []).append(str(delta.get("partial_json") or ""))
    elif kind in _TEXT_DELTAS:
        name = _TEXT_DELTAS[kind]
        pieces.setdefault(name, []).append(str(delta.get(name) or ""))
    elif kind == "citations_delta" and isinstance(delta.get("citation"), dict):
        block.setdefault("citations", []).append(delta["citation"])


def _finish_block(block: dict, pieces: dict[str, list[str]], whole: bool = True) -> dict:
    """Join the streamed chunks onto the block; tool input JSON is parsed, or kept raw when invalid
    or not `whole` (a gap in the capture cut it)."""
    for name, chunks in pieces.items():
        if name != "partial_json":
            block[name] = str(block.get(name) or "") + "".join(chunks)
    raw = "".join(pieces.get("partial_json", ()))
    if raw.strip():
        try:
            if not whole:
                raise ValueError("a gap in the capture")
            block["input"] = json.loads(raw)
        except (ValueError, RecursionError):
            block["input_raw"] = raw
            block["input_parse_error"] = True
    return block


def _usage(message: dict) -> dict | None:
    usage = message.get("usage")
    return dict(usage) if isinstance(usage, dict) else None


def _take_message_fields(summary: dict[str, Any], message: dict) -> None:
    summary["model"] = message.get("model") or summary["model"]
    summary["message_id"] = message.get("id") or summary["message_id"]
    summary["stop_reason"] = message.get("stop_reason") or summary["stop_reason"]
    summary["stop_sequence"] = message.get("stop_sequence") or summary["stop_sequence"]


def _note_how_it_ended(summary: dict[str, Any], capture: Capture) -> None:
    if capture.upstream_error or capture.client_aborted:
        summary["partial"] = True
    if summary["error"] is None or summary["error"]["type"] == "incomplete_stream":
        if capture.upstream_error:
            summary["error"] = _error("upstream_error", capture.upstream_error)
        elif capture.client_aborted:
            summary["error"] = _error("client_aborted", "the client closed the connection before the response ended")
    if summary["error"] is None and capture.status is not None and not 200 <= capture.status < 300:
        summary["error"] = _error("http_error", f"HTTP {capture.status}")


def _api_error(error: object) -> dict:
    if not isinstance(error, dict):
        return _error("api_error", "error event without an error object")
    return _error(str(error.get("type") or "api_error"), str(error.get("message") or ""))


def _error(kind: str, message: str) -> dict:
    return {"type": kind, "message": message}


def counted_tokens(capture: Capture) -> int | None:
    """`input_tokens` of a count_tokens answer, or None when it has none."""
    try:
        doc = json.loads(decode_body(capture.response_body, header_value(capture.response_headers, "content-encoding")))
    except (OSError, EOFError, zlib.error, ValueError, RecursionError):
        return None
    value = doc.get("input_tokens") if isinstance(doc, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None
