"""The `messages` array: what each message block is, in conversation order.

- user text: `<system-reminder>` spans (the claudeMd one split by memory.py), slash commands
  (commands.py), skill bodies (skills.py), compaction texts (compaction.py); any other user
  text is user_prompt.
- `role:"system"` messages: sections started by a known heading (agent list, MCP server
  instructions, skills menu, re-attached files); text before the first heading is unattributed.
- assistant text, thinking (with signature) and redacted thinking: prior_assistant.
- tool calls (`input`) and their results (`content`): tool_io under the tool's name, a result
  joined to its call through `tool_use_id`.

Block members `type`, `cache_control`, `id`, `name`, `tool_use_id`, `is_error` are envelope; a
member a block type does not know, and a block type this module does not know, is unattributed.
"""

import re
from typing import NamedTuple

from opik_cipx.materialize.attribution import agents, commands, compaction, environment, memory, skills, tools
from opik_cipx.materialize.attribution.facts import SAMPLE_CHARS, Facts
from opik_cipx.materialize.attribution.json_spans import Field
from opik_cipx.materialize.attribution.model import (
    NO_PART,
    PRIOR_ASSISTANT,
    SYSTEM_REMINDER,
    TOOL_IO,
    UNATTRIBUTED,
    USER_PROMPT,
    Canvas,
    Part,
    Piece,
    Tally,
)

STRUCTURAL = frozenset({"type", "cache_control", "id", "name", "tool_use_id", "is_error"})
PAYLOAD = {
    "text": frozenset({"text", "citations"}),
    "thinking": frozenset({"thinking", "signature"}),
    "redacted_thinking": frozenset({"data"}),
    "tool_use": frozenset({"input"}),
    "server_tool_use": frozenset({"input"}),
    "mcp_tool_use": frozenset({"input", "server_name"}),
    "image": frozenset({"source"}),
    "document": frozenset({"source", "title", "context", "citations"}),
}
RESULT_PAYLOAD = frozenset({"content"})  # `tool_result` and every `*_tool_result` block type
TEXT, THINKING = Part(kind="text"), Part(kind="thinking")
SYSTEM_REMINDER_OPEN = "<system-reminder>"
_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>\s*", re.S)
_SYSTEM_SECTION = re.compile(
    "^(?:"
    + "|".join(re.escape(heading) for heading in (agents.LIST, tools.MCP_INSTRUCTIONS, skills.MENU))
    + "|"
    + compaction.REATTACHED
    + ")",
    re.M,
)

# Kinds of user text segments.
PLAIN, REMINDER, CAVEAT, COMMAND, OUTPUT, SKILL, SUMMARY_PROMPT, CONTINUED = range(8)


class Block(NamedTuple):
    """One element of a content array: text[start:end], its members read whole."""

    start: int
    end: int
    fields: dict[str, Field]


class _Segment(NamedTuple):
    item: int  # index of the text item it belongs to
    text: str
    start: int
    end: int
    kind: int


class Conversation:
    """Paints the content of each message, in order, remembering what earlier ones established."""

    def __init__(self, canvas: Canvas, facts: Facts):
        self.canvas = canvas
        self.facts = facts
        self.tool_names: dict[str, str] = {}
        self.last_local_command: dict | None = None
        self.continued = False

    def string_content(self, role: object, content: Field) -> None:
        if role == "user":
            self._user([content], opens_turn=True)
        elif role == "assistant":
            self._string(content, [Piece(0, len(content.value), PRIOR_ASSISTANT, "text", (), TEXT)])
        elif role == "system":
            self._string(content, self._system_text(content.value))
        else:
            self.canvas.paint(content.start, content.end, UNATTRIBUTED)

    def blocks(self, role: object, blocks: list[Block]) -> None:
        if role not in ("user", "assistant", "system"):
            for block in blocks:
                self.canvas.paint(block.start, block.end, UNATTRIBUTED)
            return
        user_items: list[Field | None] = []
        opens_turn = True
        for block in blocks:
            kind = block.fields.get("type")
            kind = kind.value if kind is not None else None
            payload = PAYLOAD.get(kind) if isinstance(kind, str) else None
            if isinstance(kind, str) and kind.endswith("tool_result"):
                payload, opens_turn = RESULT_PAYLOAD, False
            if payload is None or not isinstance(kind, str):  # a payload is known only for a str kind
                self.canvas.paint(block.start, block.end, UNATTRIBUTED)
                user_items.append(None)
                continue
            for key, field in block.fields.items():
                if key not in STRUCTURAL and key not in payload:
                    self.canvas.paint(field.start, field.end, UNATTRIBUTED)
            if kind == "text" and role == "user":
                text = block.fields.get("text")
                if text is not None and isinstance(text.value, str):
                    user_items.append(text)
                else:
                    self._whole(block, "text", UNATTRIBUTED, None)
                    user_items.append(None)
                self._whole(block, "citations", UNATTRIBUTED, None)
                continue
            if kind == "text":
                self._text_block(role, block)
            else:
                self._other_block(role, kind, payload, block)
            user_items.append(None)
        if role == "user":
            self._user(user_items, opens_turn)

    # -- user messages --------------------------------------------------------------------

    def _user(self, items: list[Field | None], opens_turn: bool) -> None:
        """User text items in message order; None marks a non-text block between them.

        A user message without tool results opens a turn: its prompt text is the turn's prompt.
        """
        if opens_turn:
            self.facts.turn_prompts = []
        segments: list[_Segment | None] = []
        for number, item in enumerate(items):
            if item is None:
                segments.append(None)
            else:
                segments += [_Segment(number, item.value, *span) for span in _segments(item.value)]
        records = self._commands(segments)
        pieces: list[list[Piece]] = [[] for _ in items]
        previous: dict | None = None  # a prompt command directly before this segment
        for index, segment in enumerate(segments):
            if segment is None:
                previous = None
                continue
            pieces[segment.item] += self._user_segment(
                index, segment, segments, records, previous, opens_turn
            )
            command = records.get(index)
            previous = command[0] if command is not None and command[0]["kind"] == "prompt" else None
        for item, item_pieces in zip(items, pieces, strict=True):
            if item is not None:
                self._string(item, item_pieces)

    def _commands(self, segments: list[_Segment | None]) -> dict[int, tuple[dict, list[Piece]]]:
        """Command records and pieces by segment index, created in message order."""
        records: dict[int, tuple[dict, list[Piece]]] = {}
        for index, segment in enumerate(segments):
            if segment is not None and segment.kind == COMMAND:
                before = segments[index - 1] if index else None
                after_caveat = before is not None and before.kind == CAVEAT
                records[index] = commands.command(
                    segment.text, segment.start, segment.end, after_caveat, self.facts
                )
        return records

    def _user_segment(
        self,
        index: int,
        segment: _Segment,
        segments: list[_Segment | None],
        records: dict[int, tuple[dict, list[Piece]]],
        previous: dict | None,
        opens_turn: bool,
    ) -> list[Piece]:
        _, text, start, end, kind = segment
        facts = self.facts
        if kind == REMINDER:
            if memory.CLAUDE_MD in text[start:end]:
                return environment.carve(text, memory.claude_md(text, start, end, facts))
            return environment.carve(text, [Piece(start, end, SYSTEM_REMINDER)])
        if kind == COMMAND:
            record, pieces = records[index]
            if record["kind"] == "local":
                self.last_local_command = record
            return pieces
        if kind == CAVEAT:
            following = next((i for i in range(index + 1, len(segments)) if i in records), None)
            return [commands.part(start, end, records[following][0] if following is not None else None)]
        if kind == OUTPUT:
            return [commands.part(start, end, self.last_local_command, output=True)]
        if kind == SKILL:
            return skills.loaded(text, start, end, facts)
        if kind == SUMMARY_PROMPT:
            return [compaction.summary_prompt(start, end, facts)]
        if kind == CONTINUED:
            self.continued = True
            return [compaction.continued_summary(start, end, facts)]
        if previous is not None:  # the expansion of the prompt command just before
            return [commands.part(start, end, previous)]
        prompt = {"text": text[start:end], "text_chars": 0}
        facts.prompts.append(prompt)
        if opens_turn:
            facts.turn_prompts.append(prompt)
        return [Piece(start, end, USER_PROMPT, None, ((prompt, "text_chars"),))]

    # -- system messages and other blocks -------------------------------------------------

    def _system_text(self, text: str) -> list[Piece]:
        headings = list(_SYSTEM_SECTION.finditer(text))
        if not headings:
            return [Piece(0, len(text), UNATTRIBUTED)]
        pieces = []
        first = headings[0].start()
        if text[:first].strip():
            pieces.append(Piece(0, first, UNATTRIBUTED))
            first_start = first
        else:
            first_start = 0
        for index, heading in enumerate(headings):
            start = first_start if index == 0 else heading.start()
            stop = headings[index + 1].start() if index + 1 < len(headings) else len(text)
            pieces += self._system_section(text, heading, start, stop)
        return pieces

    def _system_section(self, text: str, heading: re.Match, start: int, stop: int) -> list[Piece]:
        title = heading.group(0)
        if title == agents.LIST:
            return agents.agent_list(text, start, stop, self.facts)
        if title == tools.MCP_INSTRUCTIONS:
            return tools.instructions(text, start, stop, self.facts)
        if title == skills.MENU:
            return skills.menu(text, start, stop, self.facts)
        tool = heading.group(1)
        if self.continued:
            return [compaction.reattached(start, stop, tool, self.facts)]
        return [Piece(start, stop, TOOL_IO, tool, ((self.facts.tool(tool), "result_chars"),),
                      tools.part(tool, kind="tool_result"))]

    def _text_block(self, role: object, block: Block) -> None:
        """A text block of an assistant or system message."""
        text = block.fields.get("text")
        if role == "assistant":
            self._whole(block, "text", PRIOR_ASSISTANT, "text", part=TEXT)
            self._whole(block, "citations", PRIOR_ASSISTANT, "text", part=TEXT)
            return
        if text is not None and isinstance(text.value, str):
            self._string(text, self._system_text(text.value))
        else:
            self._whole(block, "text", UNATTRIBUTED, None)
        self._whole(block, "citations", UNATTRIBUTED, None)

    def _other_block(self, role: object, kind: str, payload: frozenset[str], block: Block) -> None:
        """A non-text block; its `payload` members are painted here, each exactly once."""
        fields = block.fields
        if kind in ("thinking", "redacted_thinking"):
            for key in payload:
                self._whole(block, key, PRIOR_ASSISTANT, "thinking", part=THINKING)
        elif kind in ("tool_use", "server_tool_use", "mcp_tool_use"):
            name = _string_of(fields.get("name")) or "unknown"
            call_id = _string_of(fields.get("id"))
            if call_id is not None:
                self.tool_names[call_id] = name
            record = self.facts.tool(name)
            record["calls"] += 1
            part = tools.part(name, kind="tool_use", tool_use_id=call_id or "")
            for key in payload:
                self._whole(block, key, TOOL_IO, name, ((record, "input_chars"),), part)
        elif kind == "image" or kind == "document":
            bucket = PRIOR_ASSISTANT if role == "assistant" else USER_PROMPT
            part = Part(kind=kind, resource=_attachment(fields))
            for key in payload:
                self._whole(block, key, bucket, kind, part=part)
        else:  # a tool result
            call_id = _string_of(fields.get("tool_use_id")) or ""
            name = self.tool_names.get(call_id, "unknown")
            record = self.facts.tool(name)
            error = fields.get("is_error")
            if error is not None and error.value is True:
                record["errors"] += 1
            content = fields.get("content")
            if content is not None:
                record["sample_chars"] = _sample(content.value)
            part = tools.part(name, kind="tool_result", tool_use_id=call_id)
            self._whole(block, "content", TOOL_IO, name, ((record, "result_chars"),), part)

    # -- painting -------------------------------------------------------------------------

    def _string(self, field: Field, pieces: list[Piece]) -> None:
        self.canvas.paint_string(field.start, field.end, field.value, pieces)

    def _whole(self, block: Block, key: str, bucket: str, label: str | None, tally: Tally = (),
               part: Part = NO_PART) -> None:
        field = block.fields.get(key)
        if field is not None:
            self.canvas.paint(field.start, field.end, bucket, label, tally, part)


def _segments(text: str) -> list[tuple[int, int, int]]:
    """(start, end, kind) spans covering one user text: reminders split off, the rest by marker.

    Blank text between spans is glued to the span before it (to the first span if leading).
    """
    if SYSTEM_REMINDER_OPEN not in text:
        return [(0, len(text), _kind(text))]
    found: list[tuple[int, int]] = []
    pos = 0
    for match in _REMINDER.finditer(text):
        if text[pos : match.start()].strip():
            found.append((pos, _kind(text[pos : match.start()])))
        found.append((match.start(), REMINDER))
        pos = match.end()
    if text[pos:].strip():
        found.append((pos, _kind(text[pos:])))
    starts = [0] + [start for start, _ in found[1:]]
    ends = starts[1:] + [len(text)]
    return [(start, end, kind) for start, end, (_, kind) in zip(starts, ends, found, strict=True)]


def _kind(text: str) -> int:
    head = text.lstrip()
    if head.startswith(SYSTEM_REMINDER_OPEN):
        return REMINDER
    if head.startswith(commands.CAVEAT):
        return CAVEAT
    if head.startswith(commands.OUTPUTS):
        return OUTPUT
    if head.startswith(skills.BODY):
        return SKILL
    if head.startswith(compaction.CONTINUED):
        return CONTINUED
    if commands.is_command(head):
        return COMMAND
    if compaction.SUMMARY_PROMPT in head:
        return SUMMARY_PROMPT
    return PLAIN


def _string_of(field: Field | None) -> str | None:
    return field.value if field is not None and isinstance(field.value, str) else None


def _attachment(fields: dict[str, Field]) -> str:
    """What names an image or document: its title, else its source's URL or file id ("" for data)."""
    title = _string_of(fields.get("title"))
    if title:
        return title
    field = fields.get("source")
    source = field.value if field is not None and isinstance(field.value, dict) else {}
    for key in ("url", "file_id"):
        if isinstance(source.get(key), str):
            return source[key]
    return ""


def _sample(content: object) -> str:
    if isinstance(content, str):
        return content[:SAMPLE_CHARS]
    if isinstance(content, list):
        texts = [item.get("text") for item in content if isinstance(item, dict)]
        return "".join(text for text in texts if isinstance(text, str))[:SAMPLE_CHARS]
    return ""
