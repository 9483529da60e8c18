"""The spool's line format: one Spool record (docs/ARCHITECTURE.md, "Spool records") per line,
`{"kind": "trace" | "span", "body": {...}}` as compact JSON, and its reading back.

Encoding runs on the materializer's thread, and a single C call cannot hand the interpreter over,
so `dumps` never gives the encoder much at once: a value is encoded whole only when it is small
(about `PIECE_CHARS` characters); a larger container member by member, its small members in runs
of that size, and a long string `STRING_STEP` characters at a time. An `Encoded` list (the blocks
of `metadata.cipx`) carries its JSON text, made as it was built, and is written as it is.
"""

import json
from collections.abc import Callable
from json.encoder import encode_basestring_ascii
from typing import Any

KINDS = ("trace", "span")
STRING_STEP = 16 * 1024  # characters of one string escaped at once (about 0.1 ms)
PIECE_CHARS = 16 * 1024  # about the most one encoder call is given (characters of strings, 8 per other value)
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


class Encoded(list):
    """A JSON array whose text is known: `dumps` writes `text` instead of encoding the items. The
    maker guarantees `text == json.dumps(items, separators=(",", ":"))`; read-only, like a record."""

    __slots__ = ("text",)

    def __init__(self, items: list[Any], text: str):
        super().__init__(items)
        self.text = text


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
    """`json.dumps(value, separators=(",", ":"), allow_nan=False)`, in pieces no single call of
    which holds the interpreter long (the module docstring); joined once, at the end."""
    parts: list[str] = []
    _pieces(value, parts)
    return "".join(parts)


def _pieces(value: Any, out: list[str], large: bool = False) -> None:
    """`value`'s JSON text onto `out` in pieces; `large`: its `_size` is known to pass `PIECE_CHARS`."""
    if isinstance(value, Encoded):
        out.append(value.text)
    elif isinstance(value, str):
        out.append(_string_literal(value))
    elif not large and _size(value) <= PIECE_CHARS:
        out.append(_encode(value))
    elif isinstance(value, (list, tuple)):
        out.append("[")
        _members(list(value), out, lambda run: _encode(run)[1:-1])
        out.append("]")
    elif isinstance(value, dict):
        out.append("{")
        _members(list(value.items()), out, lambda run: _encode(dict(run))[1:-1], keyed=True)
        out.append("}")
    else:
        out.append(_encode(value))  # not JSON: the encoder says why


def _members(members: list[Any], out: list[str], encode_run: Callable[[list[Any]], str], keyed: bool = False) -> None:
    """A container's members, comma-separated: runs of small ones encoded together (`encode_run`),
    each large one on its own. `keyed`: the members are (key, value) pairs."""
    run: list[Any] = []
    run_size = 0
    first = True
    for member in members:
        size = _size(member[1] if keyed else member)
        if size > PIECE_CHARS or run_size + size > PIECE_CHARS:
            if run:
                out.append(("" if first else ",") + encode_run(run))
                first, run, run_size = False, [], 0
        if size <= PIECE_CHARS:
            run.append(member)
            run_size += size
            continue
        if not first:
            out.append(",")
        first = False
        if keyed:
            out.append(_key(member[0]) + ":")
        _pieces(member[1] if keyed else member, out, large=True)
    if run:
        out.append(("" if first else ",") + encode_run(run))


def _key(key: Any) -> str:
    """A member name as the encoder writes it (a number, boolean or null key becomes a string)."""
    return _encode(dict([(key, 0)]))[1:-3]


def _size(value: Any, budget: int = PIECE_CHARS) -> int:
    """About what encoding `value` costs: the characters of its strings and member names, 8 per
    other value; counted only until it passes `budget`."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str:
            total += len(item) + 2
        elif kind is dict:
            total += 8 * len(item) + 2
            for key, member in item.items():
                total += len(key) if type(key) is str else 8
                kind = type(member)
                if kind is str:
                    total += len(member)
                elif kind is not int and kind is not float and kind is not bool and member is not None:
                    stack.append(member)  # counted here as 8; its contents below
        elif kind is list:
            total += len(item) + 2
            stack.extend(item)
        elif kind is int or kind is float or kind is bool or item is None:
            total += 8
        else:
            total += _other_size(item)
        if total > budget:
            return total
    return total


def _other_size(item: Any) -> int:
    """`_size` of what is not a plain str, dict or list, one level down."""
    if isinstance(item, Encoded):
        return len(item.text)
    if isinstance(item, str):
        return len(item) + 2
    if isinstance(item, dict):
        return _size(dict(item))
    if isinstance(item, (list, tuple)):
        return _size(list(item))
    return 8


def _string_literal(text: str) -> str:
    """`json.dumps(text)`, escaped `STRING_STEP` characters at a time (escaping is per character,
    so the pieces join into the same literal)."""
    if len(text) <= STRING_STEP:
        return encode_basestring_ascii(text)
    pieces = [encode_basestring_ascii(text[at : at + STRING_STEP])[1:-1] for at in range(0, len(text), STRING_STEP)]
    return '"' + "".join(pieces) + '"'
