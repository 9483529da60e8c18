"""The spool's line format: one Spool record (docs/ARCHITECTURE.md, "Spool records") per line,
`{"kind": "trace" | "span", "body": {...}}` as compact JSON, and its reading back.

Encoding runs on the materializer's thread: a long string (a request of up to `spans.max_io_kb`,
a preview) is escaped in steps, so no single call holds the interpreter for long (`dumps`).
"""

import json
import uuid
from json.encoder import encode_basestring_ascii
from typing import Any

KINDS = ("trace", "span")
STRING_STEP = 16 * 1024  # characters of one string escaped at once (about 0.1 ms)
SPLIT_DEPTH = 4  # container levels of a spool line encoded member by member
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def encode(record: dict[str, Any]) -> bytes:
    """One spool line; ValueError/TypeError for anything that is not a spool record (or not JSON)."""
    if not isinstance(record, dict) or record.get("kind") not in KINDS:
        raise ValueError(f"not a spool record (kind must be trace or span): {str(record)[:200]}")
    body = record.get("body")
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        raise ValueError(f"spool record body without an id: {str(record)[:200]}")
    return dumps({"kind": record["kind"], "body": body}).encode() + b"\n"


def decode(line: bytes) -> tuple[str, dict[str, Any]] | None:
    """(kind, body) of one spool line, or None when it is corrupt."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("kind") not in KINDS:
        return None
    body = record.get("body")
    return (record["kind"], body) if isinstance(body, dict) and isinstance(body.get("id"), str) else None


def dumps(value: Any) -> str:
    """`json.dumps(value, separators=(",", ":"), allow_nan=False)`, in pieces: the containers of the
    first `SPLIT_DEPTH` levels (a record, its body, a request as span input, its messages) one
    member at a time, every long string `STRING_STEP` characters at a time. Off the wire, one call
    that encodes a quarter of a megabyte holds the GIL for a millisecond. The pieces are joined
    once, at the end."""
    parts: list[str] = []
    _pieces(value, SPLIT_DEPTH, parts, uuid.uuid4().hex)
    return "".join(parts)


def _pieces(value: Any, depth: int, out: list[str], nonce: str) -> None:
    if depth and isinstance(value, list):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _pieces(item, depth - 1, out, nonce)
        out.append("]")
    elif depth and isinstance(value, dict) and all(isinstance(key, str) for key in value):
        out.append("{")
        for index, (key, item) in enumerate(value.items()):
            out.append(("," if index else "") + _encode(key) + ":")
            _pieces(item, depth - 1, out, nonce)
        out.append("}")
    else:
        long: list[tuple[str, str]] = []
        text = _encode(_set_aside(value, long, nonce))
        at = 0
        for marker, string in long:  # in the order the encoder met them
            found = text.index(marker, at)
            out.append(text[at:found])
            out.append(_string_literal(string))
            at = found + len(marker)
        out.append(text[at:] if at else text)


def _set_aside(value: Any, long: list[tuple[str, str]], nonce: str) -> Any:
    """`value` with each string longer than `STRING_STEP` replaced by a unique marker (kept, encoded,
    in `long` with the string), so `json.dumps` never escapes a long text in one call; containers
    on the way to one are copied, the record itself is not changed."""
    if isinstance(value, str):
        if len(value) <= STRING_STEP:
            return value
        marker = f"\x00{nonce}:{len(long)}\x00"
        long.append((_encode(marker), value))
        return marker
    if isinstance(value, dict):
        out = None
        for key, item in value.items():
            kept = _set_aside(item, long, nonce)
            if kept is not item:
                out = out if out is not None else dict(value)
                out[key] = kept
        return out if out is not None else value
    if isinstance(value, list):
        copied = None
        for index, item in enumerate(value):
            kept = _set_aside(item, long, nonce)
            if kept is not item:
                copied = copied if copied is not None else list(value)
                copied[index] = kept
        return copied if copied is not None else value
    return value


def _string_literal(text: str) -> str:
    """`json.dumps(text)`, escaped `STRING_STEP` characters at a time (escaping is per character,
    so the pieces join into the same literal)."""
    pieces = [encode_basestring_ascii(text[at : at + STRING_STEP])[1:-1] for at in range(0, len(text), STRING_STEP)]
    return '"' + "".join(pieces) + '"'
