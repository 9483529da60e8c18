"""Character offsets of JSON values, read one container level at a time.

`Cursor` is a pull reader over a JSON text: the caller descends (`members`, `elements`) only
into the containers whose children it needs and reads every other value whole with the C
scanner of the `json` module, so a request body costs a handful of Python steps per message
block, not one per character. Offsets are indices into the text (a `str`), so they count
characters, not bytes.

`string_cuts` maps indices of a decoded string value back to offsets in the JSON text, so a
string can be split into pieces whose escapes stay inside the piece they belong to.
"""

import json
import re
from collections.abc import Iterator
from json.decoder import scanstring  # type: ignore[attr-defined]  # public, but not in the stubs
from typing import Any, NamedTuple

_WS = re.compile(r"[ \t\n\r]*")
_scan_once = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # set by __init__, not in the stubs
# One decoded character per match: a UTF-16 surrogate pair, one \uXXXX, or one short escape.
_ESCAPE = re.compile(r"\\(?:u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|.)")


class Field(NamedTuple):
    """A decoded value and the text[start:end] it was read from."""

    value: Any
    start: int
    end: int


class Cursor:
    """A position in a JSON text; every read leaves `pos` just after what it read."""

    __slots__ = ("text", "pos")

    def __init__(self, text: str, pos: int = 0):
        self.text = text
        self.pos = pos

    def peek(self) -> str:
        """The first character of the next value ('' at the end), after skipping whitespace."""
        self.pos = _WS.match(self.text, self.pos).end()  # type: ignore[union-attr]  # `*`: always matches
        return self.text[self.pos : self.pos + 1]

    def value(self) -> Field:
        """Read the next value whole. ValueError if malformed."""
        self.peek()
        start = self.pos
        try:
            value, end = _scan_once(self.text, start)
        except StopIteration:
            raise ValueError(f"expected a JSON value at {start}") from None
        self.pos = end
        return Field(value, start, end)

    def members(self) -> Iterator[tuple[str, int]]:
        """Yield (key, key_start) for each member of the object at the cursor.

        At each yield the cursor is at the member's value; the caller reads it (`value`,
        `members` or `elements`) before asking for the next member, or leaves it to be skipped.
        """
        self._expect("{")
        return self.rest_of_object(first=True)

    def rest_of_object(self, first: bool) -> Iterator[tuple[str, int]]:
        """The remaining members of an object the cursor is inside: just after its `{` (`first`)
        or just after a member's value. Same protocol as `members`."""
        if first:
            if self.peek() == "}":
                self.pos += 1
                return
        elif self._after_item("}"):
            return
        while True:
            if self.peek() != '"':
                raise ValueError(f"expected an object key at {self.pos}")
            key_start = self.pos
            key, self.pos = scanstring(self.text, key_start + 1)
            self._expect(":")
            value_start = self.pos = _WS.match(self.text, self.pos).end()  # type: ignore[union-attr]  # `*`: always matches
            yield key, key_start
            if self.pos == value_start:
                self.value()
            if self._after_item("}"):
                return

    def elements(self) -> Iterator[int]:
        """Yield the start of each element of the array at the cursor (same protocol as `members`)."""
        self._expect("[")
        return self.rest_of_array(first=True)

    def rest_of_array(self, first: bool) -> Iterator[int]:
        """The remaining elements of an array the cursor is inside: just after its `[` (`first`)
        or just after an element. Same protocol as `elements`."""
        if first:
            if self.peek() == "]":
                self.pos += 1
                return
        elif self._after_item("]"):
            return
        while True:
            start = self.pos = _WS.match(self.text, self.pos).end()  # type: ignore[union-attr]  # `*`: always matches
            yield start
            if self.pos == start:
                self.value()
            if self._after_item("]"):
                return

    def finish(self) -> None:
        """Check that only whitespace follows the document."""
        if self.peek():
            raise ValueError(f"extra data at {self.pos}")

    def _expect(self, char: str) -> None:
        if self.peek() != char:
            raise ValueError(f"expected {char!r} at {self.pos}")
        self.pos += 1

    def _after_item(self, close: str) -> bool:
        char = self.peek()
        self.pos += 1
        if char == close:
            return True
        if char != ",":
            raise ValueError(f"expected ',' or {close!r} at {self.pos - 1}")
        return False


def string_cuts(text: str, start: int, end: int, length: int, cuts: list[int]) -> list[int]:
    """Offsets in `text` where decoded characters `cuts` (ascending) of a string literal begin.

    `start`/`end` delimit the literal including its quotes; `length` is its decoded length.
    """
    inner = start + 1
    if end - start - 2 == length:  # no escapes: one text character per decoded character
        return [inner + cut for cut in cuts]
    offsets = []
    pending = iter(cuts)
    cut = next(pending, None)
    decoded, raw = 0, inner
    for match in _ESCAPE.finditer(text, inner, end - 1):
        plain = match.start() - raw
        while cut is not None and cut <= decoded + plain:
            offsets.append(raw + cut - decoded)
            cut = next(pending, None)
        decoded += plain + 1
        raw = match.end()
    while cut is not None:
        offsets.append(raw + cut - decoded)
        cut = next(pending, None)
    return offsets
