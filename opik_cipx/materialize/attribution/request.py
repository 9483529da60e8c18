"""Categorize one Messages API request body: every character into exactly one cost bucket.

The walker descends into `system`, `tools` and `messages` and hands text to the domain
modules (system, tools, conversation, and through it memory, skills, agents, commands,
compaction); every other top-level member is a request parameter (envelope) or, if unknown,
unattributed. A body that is not UTF-8 JSON with an object at the top is all unattributed.
"""

from opik_cipx.materialize.attribution import tools
from opik_cipx.materialize.attribution.conversation import Block, Conversation
from opik_cipx.materialize.attribution.facts import Facts
from opik_cipx.materialize.attribution.json_spans import Cursor, Field
from opik_cipx.materialize.attribution.model import (
    BUCKETS,
    SECTIONS,
    UNATTRIBUTED,
    Attribution,
    Canvas,
    Layout,
    Region,
)
from opik_cipx.materialize.attribution.prompt import prompt
from opik_cipx.materialize.attribution.system import SystemPrompt

PARAMS = frozenset(
    {
        "model",
        "max_tokens",
        "stream",
        "metadata",
        "thinking",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "tool_choice",
        "context_management",
        "output_config",
        "output_format",
        "service_tier",
        "container",
        "betas",
    }
)


def categorize(body: bytes) -> Attribution:
    """Where every character of `body` went. Never raises on any input bytes."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return _summarise(body.decode("utf-8", "replace"), None, Facts())
    canvas, facts = Canvas(text), Facts()
    try:
        walked = _walk(Cursor(text), canvas, facts)
    except (ValueError, RecursionError):
        walked = False
    return _summarise(text, canvas if walked else None, facts if walked else Facts())


def _walk(cur: Cursor, canvas: Canvas, facts: Facts) -> bool:
    if cur.peek() != "{":
        cur.value()
        cur.finish()
        return False
    system, conversation = SystemPrompt(facts), Conversation(canvas, facts)
    for key, _ in cur.members():
        member(key, cur, canvas, system, conversation)
    cur.finish()
    return True


def member(key: str, cur: Cursor, canvas: Canvas, system: SystemPrompt, conversation: Conversation) -> None:
    """Paint the value of the top-level member `key` at the cursor (and note where a section lies)."""
    cur.peek()
    start = cur.pos
    _member(key, cur, canvas, system, conversation)
    if key in SECTIONS:
        canvas.sections[key] = (start, cur.pos)
    elif key == "cache_control" and canvas.text[start:start + 1] == "{":
        canvas.auto_cache = True


def _member(key: str, cur: Cursor, canvas: Canvas, system: SystemPrompt, conversation: Conversation) -> None:
    if key == "system":
        _system(cur, canvas, system)
    elif key == "tools":
        _tools(cur, canvas, system.facts)
    elif key == "messages":
        if cur.peek() != "[":
            _unknown(cur, canvas)
            return
        for _ in cur.elements():
            message(cur, canvas, conversation)
            canvas.message_ends.append(cur.pos)
    elif key in PARAMS:
        cur.value()
    else:
        _unknown(cur, canvas)


def _system(cur: Cursor, canvas: Canvas, system: SystemPrompt) -> None:
    char = cur.peek()
    if char == '"':
        field = cur.value()
        canvas.paint_string(field.start, field.end, field.value, system.block(field.value))
    elif char == "[":
        for _ in cur.elements():
            if cur.peek() != "{":
                _unknown(cur, canvas)
                continue
            marked = False
            for key, _ in cur.members():
                if key == "text" and cur.peek() == '"':
                    field = cur.value()
                    canvas.paint_string(field.start, field.end, field.value, system.block(field.value))
                elif key == "cache_control":
                    marked = cur.peek() == "{"
                elif key != "type":
                    _unknown(cur, canvas)
            if marked:
                canvas.breakpoints.append(cur.pos)
    else:
        _unknown(cur, canvas)


def _tools(cur: Cursor, canvas: Canvas, facts: Facts) -> None:
    """Each tool definition whole, except its own `cache_control` member (envelope)."""
    if cur.peek() != "[":
        _unknown(cur, canvas)
        return
    for start in cur.elements():
        if cur.peek() != "{":
            _unknown(cur, canvas)
            continue
        name, carve, marked, deferred = None, None, False, False
        for key, key_start in cur.members():
            field = cur.value()
            if key == "name" and isinstance(field.value, str):
                name = field.value
            elif key == "cache_control":
                carve, marked = (key_start, field.end), isinstance(field.value, dict)
            elif key == "defer_loading":
                deferred = field.value is True
        end = cur.pos
        if marked:
            canvas.breakpoints.append(end)
        if name is None:
            canvas.paint(start, end, UNATTRIBUTED)
            continue
        bucket, label, tally, part = tools.definition(name, deferred, facts)
        left, right = carve or (end, end)
        canvas.paint(start, left, bucket, label, tally, part)
        canvas.paint(right, end, bucket, label, tally, part)


def message(cur: Cursor, canvas: Canvas, conversation: Conversation) -> None:
    """Paint one element of `messages` (the cursor at its start), after those before it."""
    if cur.peek() != "{":
        _unknown(cur, canvas)
        return
    role, role_seen, deferred = None, False, []
    for key, _ in cur.members():
        if key == "role":
            role, role_seen = cur.value().value, True
        elif key == "content" and role_seen:
            _content(cur, canvas, conversation, role)
        elif key == "content":  # content before role: read it once the role is known
            deferred.append(cur.value().start)
        else:
            _unknown(cur, canvas)
    for start in deferred:
        _content(Cursor(cur.text, start), canvas, conversation, role)


def _content(cur: Cursor, canvas: Canvas, conversation: Conversation, role: object) -> None:
    char = cur.peek()
    if char == '"':
        conversation.string_content(role, cur.value())
    elif char == "[":
        blocks = []
        for start in cur.elements():
            if cur.peek() == "{":
                fields = _read_object(cur, canvas)
                blocks.append(Block(start, cur.pos, fields))
                marker = fields.get("cache_control")
                if marker is not None and isinstance(marker.value, dict):
                    canvas.breakpoints.append(cur.pos)
            else:
                _unknown(cur, canvas)
        conversation.blocks(role, blocks)
    else:
        _unknown(cur, canvas)


def _read_object(cur: Cursor, canvas: Canvas) -> dict[str, Field]:
    """Every member of the object at the cursor, read whole; a repeated key is unattributed."""
    fields: dict[str, Field] = {}
    for key, _ in cur.members():
        field = cur.value()
        if key in fields:
            canvas.paint(field.start, field.end, UNATTRIBUTED)
        else:
            fields[key] = field
    return fields


def _unknown(cur: Cursor, canvas: Canvas) -> None:
    field = cur.value()
    canvas.paint(field.start, field.end, UNATTRIBUTED)


def _summarise(text: str, canvas: Canvas | None, facts: Facts) -> Attribution:
    if canvas is not None:
        regions = canvas.regions()
        layout = Layout(dict(canvas.sections), list(canvas.breakpoints), list(canvas.message_ends), canvas.auto_cache)
    else:
        regions = [Region(0, len(text), UNATTRIBUTED)] if text else []
        layout = Layout({}, [], [])
    buckets, by_label = tallies()
    add_regions(regions, buckets, by_label)
    return Attribution(len(text), regions, buckets, by_label, facts.to_json(buckets, by_label), layout,
                       lambda laid_out: prompt(((regions, 0),), laid_out))


def tallies() -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Empty `buckets` and `by_label` (every bucket present)."""
    return dict.fromkeys(BUCKETS, 0), {bucket: {} for bucket in BUCKETS}


def add_regions(regions: list[Region], buckets: dict[str, int], by_label: dict[str, dict[str, int]]) -> None:
    """Add the sizes of `regions` (in body order) to `buckets` and `by_label`."""
    for region in regions:
        size = region.end - region.start
        buckets[region.bucket] += size
        if region.label is not None:
            labels = by_label[region.bucket]
            labels[region.label] = labels.get(region.label, 0) + size
