"""The attribution result and the canvas regions are painted on.

A classifier describes a piece of text as `Piece`s (decoded-text offsets); the walker paints
them on a `Canvas` at body offsets. Whatever no one paints is envelope, so the regions always
cover the body exactly once.
"""

from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import NamedTuple

from opik_cipx.materialize.attribution.json_spans import string_cuts

SYSTEM_PROMPT = "system_prompt"
TOOLS_BUILTIN = "tools_builtin"
TOOLS_MCP = "tools_mcp"
SKILLS = "skills"
MEMORY = "memory"
AGENTS = "agents"
USER_PROMPT = "user_prompt"
SLASH_COMMAND = "slash_command"
TOOL_IO = "tool_io"
PRIOR_ASSISTANT = "prior_assistant"
COMPACTION = "compaction"
SYSTEM_REMINDER = "system_reminder"
ENVELOPE = "envelope"
UNATTRIBUTED = "unattributed"

BUCKETS = (
    SYSTEM_PROMPT,
    TOOLS_BUILTIN,
    TOOLS_MCP,
    SKILLS,
    MEMORY,
    AGENTS,
    USER_PROMPT,
    SLASH_COMMAND,
    TOOL_IO,
    PRIOR_ASSISTANT,
    COMPACTION,
    SYSTEM_REMINDER,
    ENVELOPE,
    UNATTRIBUTED,
)

# (record, key) pairs: the body characters of a painted region are added to record[key].
Tally = tuple[tuple[dict, str], ...]


class Piece(NamedTuple):
    """Decoded characters [start, end) of one string value, and where they go."""

    start: int
    end: int
    bucket: str
    label: str | None = None
    tally: Tally = ()


@dataclass(frozen=True, slots=True)
class Region:
    """Body characters [start, end) belong to `bucket` (and to `label` inside it, if set)."""

    start: int
    end: int
    bucket: str
    label: str | None = None


class Attribution:
    """Where every character of one request body went.

    `regions` are sorted, contiguous and cover [0, total_chars) exactly; `buckets` holds every
    bucket name (zero when empty) and sums to `total_chars`; `by_label[bucket][label]` sums the
    labelled regions of a bucket; `facts` is the JSON-ready metadata of facts.py. `regions` may be
    given as a function that lists them, called on first use (the materializer never needs them).
    """

    __slots__ = ("total_chars", "buckets", "by_label", "facts", "_regions")

    def __init__(self, total_chars: int, regions: "list[Region] | Callable[[], list[Region]]",
                 buckets: dict[str, int], by_label: dict[str, dict[str, int]], facts: dict):
        self.total_chars = total_chars
        self.buckets = buckets
        self.by_label = by_label
        self.facts = facts
        self._regions = regions

    @property
    def regions(self) -> list[Region]:
        if callable(self._regions):
            self._regions = self._regions()
        return self._regions


class Canvas:
    """Regions painted over a body in any order; `regions()` fills every gap with envelope."""

    def __init__(self, text: str):
        self.text = text
        self._paint: list[tuple[int, int, str, str | None]] = []

    def paint(self, start: int, end: int, bucket: str, label: str | None = None, tally: Tally = ()) -> None:
        if end > start:
            self._paint.append((start, end, bucket, label))
        for record, key in tally:
            record[key] += end - start

    def paint_string(self, start: int, end: int, value: str, pieces: list[Piece]) -> None:
        """Paint the string literal text[start:end] (quotes included) split as `pieces`.

        `pieces` cover the decoded `value` in order; escapes go with the piece whose decoded
        character they encode, the opening quote with the first piece, the closing quote with
        the last.
        """
        pieces = [piece for piece in pieces if piece.end > piece.start] or pieces[:1]
        cuts = string_cuts(self.text, start, end, len(value), [piece.start for piece in pieces[1:]])
        for piece, left, right in zip(pieces, [start, *cuts], [*cuts, end], strict=False):  # no pieces: nothing painted
            self.paint(left, right, piece.bucket, piece.label, piece.tally)

    def regions(self, start: int = 0, end: int | None = None, shift: int = 0) -> list[Region]:
        """The regions of text[start:end] (all of it by default), every paint inside it, offsets
        moved by `shift`."""
        out: list[Region] = []
        pos, end = start, len(self.text) if end is None else end
        for left, right, bucket, label in sorted(self._paint, key=itemgetter(0)):
            if left > pos:
                append_region(out, pos + shift, left + shift, ENVELOPE, None)
            append_region(out, left + shift, right + shift, bucket, label)
            pos = right
        if pos < end:
            append_region(out, pos + shift, end + shift, ENVELOPE, None)
        return out


def append_region(out: list[Region], start: int, end: int, bucket: str, label: str | None) -> None:
    """Append a region to `out`, merged into the last one when it continues it (same bucket and label)."""
    if out and out[-1].bucket == bucket and out[-1].label == label:
        out[-1] = Region(out[-1].start, end, bucket, label)
    else:
        out.append(Region(start, end, bucket, label))

