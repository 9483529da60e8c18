"""The attribution result and the canvas regions are painted on.

A classifier describes a piece of text as `Piece`s (decoded-text offsets); the walker paints
them on a `Canvas` at body offsets. Whatever no one paints is envelope, so the regions always
cover the body exactly once. Besides its bucket and label, a piece carries a `Part`: what a block
of Opik's Cost Intelligence needs to know of it (docs/OPIK.md, "Blocks"); pieces of one bucket and
label with different parts are different regions, and add up to the same bucket and label sums.
The canvas also notes where the request's `system`, `tools` and `messages` values lie and where
its cache breakpoints are: the prompt's layout, which `cache_status` is placed on.
"""

from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, NamedTuple

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

SECTIONS = ("tools", "system", "messages")  # the prompt's order: what Anthropic caches as a prefix

# (record, key) pairs: the body characters of a painted region are added to record[key].
Tally = tuple[tuple[dict, str], ...]


class Part(NamedTuple):
    """What a piece is, beyond its bucket and label: what one block of the request needs
    (materialize/cipx.py maps bucket, label and part to a block). Empty strings: not known or
    not applying.

    `kind`: `text`, `thinking`, `tool_use`, `tool_result`, `image`, `document` (message content);
    `deferred` (a tool definition loaded on demand), `instructions` (MCP server instructions),
    `environment`, `git_status` (where the session works), `prompt` / `local` (a slash command's
    kind). `tool_name` is the tool's full name (`mcp__<server>__<tool>` for MCP), `tool_server`
    its MCP server; `resource` the skill, agent, memory file or attachment; `subcategory` a memory
    file's kind (memory.KINDS' values); `sha256` a memory file's content digest.
    """

    kind: str = ""
    tool_name: str = ""
    tool_server: str = ""
    tool_use_id: str = ""
    resource: str = ""
    subcategory: str = ""
    sha256: str = ""


NO_PART = Part()


class Piece(NamedTuple):
    """Decoded characters [start, end) of one string value, and where they go."""

    start: int
    end: int
    bucket: str
    label: str | None = None
    tally: Tally = ()
    part: Part = NO_PART


@dataclass(frozen=True, slots=True)
class Region:
    """Body characters [start, end) belong to `bucket` (and to `label` inside it, if set); `part`
    says what they are."""

    start: int
    end: int
    bucket: str
    label: str | None = None
    part: Part = NO_PART


class Layout(NamedTuple):
    """Where the prompt's parts lie in a body: `sections` maps `tools`, `system` and `messages` to
    the body characters [start, end) of their values (absent when the body has none);
    `breakpoints` are the body offsets where an item carrying a `cache_control` object ends (a
    tool definition, a system block, a content block), in body order; `message_ends` where each
    element of `messages` ends; `auto_cache`: the request asks for caching at its end (a top-level
    `cache_control`)."""

    sections: dict[str, tuple[int, int]]
    breakpoints: list[int]
    message_ends: list[int]
    auto_cache: bool = False


class Attribution:
    """Where every character of one request body went.

    `regions` are sorted, contiguous and cover [0, total_chars) exactly; `buckets` holds every
    bucket name (zero when empty) and sums to `total_chars`; `by_label[bucket][label]` sums the
    labelled regions of a bucket; `facts` is the JSON-ready metadata of facts.py; `layout` where
    the prompt's parts and cache breakpoints are; `prompt` the request in prompt order. `regions`,
    `layout` and `prompt` (always) are given as functions that make them, called on first use.
    """

    __slots__ = ("total_chars", "buckets", "by_label", "facts", "_regions", "_layout", "_prompt")

    def __init__(self, total_chars: int, regions: "list[Region] | Callable[[], list[Region]]",
                 buckets: dict[str, int], by_label: dict[str, dict[str, int]], facts: dict,
                 layout: "Layout | Callable[[], Layout] | None" = None,
                 prompt: "Callable[[Layout], Any] | None" = None):
        self.total_chars = total_chars
        self.buckets = buckets
        self.by_label = by_label
        self.facts = facts
        self._regions = regions
        self._layout = layout if layout is not None else Layout({}, [], [])
        self._prompt = prompt

    @property
    def regions(self) -> list[Region]:
        if callable(self._regions):
            self._regions = self._regions()
        return self._regions

    @property
    def layout(self) -> Layout:
        if callable(self._layout):
            self._layout = self._layout()
        return self._layout

    @property
    def prompt(self) -> Any:
        """The request in prompt order (`attribution.prompt.Prompt`), made from the layout when first
        asked for."""
        if callable(self._prompt):
            self._prompt = self._prompt(self.layout)
        return self._prompt


class Canvas:
    """Regions painted over a body in any order; `regions()` fills every gap with envelope."""

    def __init__(self, text: str):
        self.text = text
        self._paint: list[tuple[int, int, str, str | None, Part]] = []
        self.sections: dict[str, tuple[int, int]] = {}  # text offsets of the prompt's parts (Layout)
        self.breakpoints: list[int] = []  # text offsets where an item with a cache_control object ends
        self.message_ends: list[int] = []  # text offsets where each element of `messages` ends
        self.auto_cache = False  # a top-level cache_control

    def paint(self, start: int, end: int, bucket: str, label: str | None = None, tally: Tally = (),
              part: Part = NO_PART) -> None:
        if end > start:
            self._paint.append((start, end, bucket, label, part))
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
            self.paint(left, right, piece.bucket, piece.label, piece.tally, piece.part)

    def regions(self, start: int = 0, end: int | None = None, shift: int = 0) -> list[Region]:
        """The regions of text[start:end] (all of it by default), every paint inside it, offsets
        moved by `shift`."""
        out: list[Region] = []
        pos, end = start, len(self.text) if end is None else end
        for left, right, bucket, label, part in sorted(self._paint, key=itemgetter(0)):
            if left > pos:
                append_region(out, pos + shift, left + shift, ENVELOPE, None)
            append_region(out, left + shift, right + shift, bucket, label, part)
            pos = right
        if pos < end:
            append_region(out, pos + shift, end + shift, ENVELOPE, None)
        return out

    def breakpoints_in(self, start: int, end: int, shift: int = 0) -> list[int]:
        """The breakpoints within text[start:end], offsets moved by `shift`."""
        return [at + shift for at in self.breakpoints if start < at <= end]


def append_region(out: list[Region], start: int, end: int, bucket: str, label: str | None,
                  part: Part = NO_PART) -> None:
    """Append a region to `out`, merged into the last one when it continues it (same bucket, label
    and part)."""
    if out:
        last = out[-1]
        if last.bucket == bucket and last.label == label and last.part == part:
            out[-1] = Region(last.start, end, bucket, label, part)
            return
    out.append(Region(start, end, bucket, label, part))

