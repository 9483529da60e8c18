"""The requests of one conversation, parsed and attributed at the cost of what is new in each
(docs/ARCHITECTURE.md, "Request reader").

Claude Code resends the whole conversation with every call: the next request of a session and
agent is the previous one with messages appended, while the earlier messages, the system prompt
and the tools repeat byte for byte (apart from the `cache_control` marker, which moves to the
newest message). `RequestReader.read(key, body)` returns what `json.loads` and `categorize` return
for the body, reusing the previous request read under the same key for the bytes both share:

- A body is cut at its top-level `messages` array: the head up to its `[`, one unit per message
  (the separator before it included), the tail from the end of the last message on (the `]`,
  then `system`, `tools`, request parameters).
- The longest run of leading bytes the body shares with the previous request (a memcmp) says how
  many messages are unchanged. The walk resumes from a kept state — facts, conversation,
  system prompt flags, bucket sums — at a message boundary at or before that point, so only the
  changed and new messages are parsed and attributed. The walk being a fold over the units in
  body order, the state after the same bytes is the same state, so the result is the one a walk
  from scratch gives (tests/materialize/test_incremental.py checks it on the corpus and on
  generated sessions).
- A tail byte-identical to the previous one (with the same system prompt flags coming in) is not
  walked again: it was walked on fresh Facts, which `Facts.absorb` adds as if walked in place;
  its bucket sums and parsed members are reused.

No step holds the interpreter for more than one message's worth: the body is decoded in
windows of `WINDOW` characters (larger only for a larger message), each message parsed on its
own, and `pause()` is called between messages. A body of another shape (not a JSON object with
one `messages` array, not UTF-8, malformed) is read from scratch, exactly as before.

What is kept is bounded: at most `MAX_ENTRIES` conversations, `MAX_BYTES` of request bodies,
a few states each; in memory only (after a restart, a conversation's first request is read from
scratch). Nothing kept changes a result, only how much of it is computed again.
"""

import codecs
import json
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from itertools import chain
from typing import Any, NamedTuple

from opik_cipx.materialize.attribution.conversation import Conversation
from opik_cipx.materialize.attribution.facts import Facts
from opik_cipx.materialize.attribution.json_spans import Cursor
from opik_cipx.materialize.attribution.model import Attribution, Canvas, Layout, Region, append_region
from opik_cipx.materialize.attribution.prompt import Prompt, Run, owned, prompt
from opik_cipx.materialize.attribution.request import add_regions, categorize, member, message, tallies
from opik_cipx.materialize.attribution.system import SystemPrompt

WINDOW = 64 * 1024  # characters decoded and walked at once (more only for a larger message)
MAX_ENTRIES = 16  # conversations kept
MAX_PER_KEY = 4  # conversations kept under one key (a session's side calls share the main loop's)
MAX_BYTES = 32 * 1024 * 1024  # request bodies kept, all entries together
KEEP_LAST = 3  # states kept at the last message boundaries (a moved marker changes the last one or two)
KEEP_EARLIER = 2  # states kept from earlier requests, besides the one after the head
_SEPARATORS = frozenset(b" \t\n\r,]")
_scan_once = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # set by __init__, not in the stubs


class ReadRequest(NamedTuple):
    body: dict | None  # `json.loads` of the body when it is a JSON object, else None
    attribution: Attribution


def parse_body(raw: bytes) -> dict | None:
    """The request body as a JSON object, from scratch; None when it is not one."""
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


class _Fallback(Exception):
    """The body is not of the shape read incrementally: read it from scratch."""


@dataclass
class _State:
    """The walk after the head and the first messages; never changed once kept."""

    facts: Facts
    tool_names: dict[str, str]
    last_local_command: dict | None
    continued: bool
    subagent: bool
    prompt_seen: bool
    buckets: dict[str, int]
    by_label: dict[str, dict[str, int]]


@dataclass
class _Tail:
    """A walked tail: reused while the next body ends with the same bytes."""

    data: memoryview  # its bytes (in the body it was read from)
    chars: int
    system_in: tuple[bool, bool]  # the system prompt flags it was walked with
    facts: Facts  # walked on fresh Facts
    regions: list[Region]  # offsets from the tail's start
    buckets: dict[str, int]
    by_label: dict[str, dict[str, int]]
    members: list[tuple[str, Any]]
    layout: Layout  # offsets from the tail's start
    close: int  # the end of the `]` that closes `messages`, from the tail's start


@dataclass
class _Entry:
    """One request read, kept for the next one of its conversation."""

    key: Hashable
    body: bytes
    bytes_at: list[int]  # byte offset of each message boundary: [0] after `[`, [i] after message i-1
    chars_at: list[int]  # the same in characters
    head: list[tuple[str, Any]]  # parsed members before `messages`
    messages: list[Any]  # parsed messages
    regions: list[list[Region]]  # [0]: the head's, [i]: message i-1's with the separator before it
    breakpoints: list[list[int]]  # the same for cache breakpoints
    runs: list[list[Run]]  # [i]: message i's runs in the prompt (attribution/prompt.py)
    head_layout: Layout  # sections of the head
    states: dict[int, _State]  # by message boundary
    memo: dict[Any, Any]  # the conversation's prompt memo (attribution/prompt.py), from its first request on
    tail: _Tail | None = None  # set once the walk reached it
    tail_chars_at: int = 0  # character offset of the tail


class _Walk:
    """The mutable state of one walk: facts, conversation, system prompt flags, bucket sums."""

    def __init__(self, state: _State | None = None):
        if state is None:
            self.facts = Facts()
            self.conversation = Conversation(Canvas(""), self.facts)
            self.system = SystemPrompt(self.facts)
            self.buckets, self.by_label = tallies()
            return
        self.facts, last = state.facts.copy(state.last_local_command)
        self.conversation = Conversation(Canvas(""), self.facts)
        self.conversation.tool_names = dict(state.tool_names)
        self.conversation.last_local_command = last
        self.conversation.continued = state.continued
        self.system = SystemPrompt(self.facts)
        self.system.subagent, self.system.prompt_seen = state.subagent, state.prompt_seen
        self.buckets = dict(state.buckets)
        self.by_label = {bucket: dict(labels) for bucket, labels in state.by_label.items()}

    def keep(self) -> _State:
        facts, last = self.facts.copy(self.conversation.last_local_command)
        return _State(facts, dict(self.conversation.tool_names), last, self.conversation.continued,
                      self.system.subagent, self.system.prompt_seen, dict(self.buckets),
                      {bucket: dict(labels) for bucket, labels in self.by_label.items()})

    def add(self, buckets: dict[str, int], by_label: dict[str, dict[str, int]]) -> None:
        for bucket, size in buckets.items():
            self.buckets[bucket] += size
        for bucket, labels in by_label.items():
            mine = self.by_label[bucket]
            for label, size in labels.items():
                mine[label] = mine.get(label, 0) + size


class _Text:
    """The body decoded from a byte offset on, one window at a time (UTF-8, strict)."""

    def __init__(self, body: bytes, byte: int, char: int):
        self.body = memoryview(body)
        self.size = len(body)
        self.text = ""
        self.char = char  # character offset of text[0] in the body
        self.next = byte  # the first byte not decoded yet
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    @property
    def complete(self) -> bool:
        return self.next >= self.size

    def more(self, pos: int) -> None:
        """Decode the next window (at least as much as is held after `pos`), dropping the text
        before `pos`; positions in the text then count from `pos`. _Fallback at the end."""
        if self.complete:
            raise _Fallback("truncated or malformed")
        keep = self.text[pos:]
        stop = min(self.size, self.next + max(WINDOW, 2 * len(keep)))
        try:
            piece = self._decoder.decode(self.body[self.next:stop], stop >= self.size)
        except UnicodeDecodeError:
            raise _Fallback("not UTF-8") from None
        self.text, self.char, self.next = keep + piece, self.char + pos, stop


class RequestReader:
    """Reads request bodies, reusing the last ones read under the same key (bounded, in memory)."""

    def __init__(self) -> None:
        self._entries: list[_Entry] = []  # least recently used first

    def read(self, key: Hashable, body: bytes, pause: Callable[[], None] = lambda: None) -> ReadRequest:
        """`json.loads` and `categorize` of `body`. `key` names its conversation (session, agent,
        route): only requests under one key are compared, and a wrong one costs time, never a
        different result. `pause()` is called between messages."""
        previous = self._best(key, body)
        try:
            entry, result = _read(key, body, previous, pause)
        except (_Fallback, ValueError, RecursionError, StopIteration):
            return ReadRequest(parse_body(body), categorize(body))
        self._keep(entry, previous)
        return result

    def _best(self, key: Hashable, body: bytes) -> tuple[_Entry, int] | None:
        """The kept request of `key` sharing the most messages with `body`, and how many."""
        best = None
        for entry in self._entries:
            if entry.key == key:
                shared = _shared_messages(entry, body)
                if shared is not None and (best is None or shared > best[1]):
                    best = (entry, shared)
        return best

    def _keep(self, entry: _Entry, previous: tuple[_Entry, int] | None) -> None:
        if previous is not None and previous[1] > 0:
            self._entries.remove(previous[0])  # the conversation moved on: its newer request replaces it
        self._entries.append(entry)
        same = [e for e in self._entries if e.key == entry.key]
        for stale in same[: max(0, len(same) - MAX_PER_KEY)]:
            self._entries.remove(stale)
        total = sum(len(e.body) for e in self._entries)
        while self._entries and (len(self._entries) > MAX_ENTRIES or total > MAX_BYTES):
            total -= len(self._entries.pop(0).body)


def _shared_messages(entry: _Entry, body: bytes) -> int | None:
    """How many leading messages `body` shares byte for byte with the kept request (None: not even
    the head). memcmp only: the longest shared prefix ending at a message boundary."""
    kept = memoryview(entry.body)
    at = entry.bytes_at
    if not body.startswith(kept[: at[0]]):
        return None
    last = len(at) - 1
    lo, hi = 0, last
    for guess in (last, last - 1, last - 2):  # a retry, a moved marker, a compaction request
        if guess > 0 and body.startswith(kept[: at[guess]]):
            lo, hi = guess, guess
            break
        hi = guess - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if body.startswith(kept[: at[mid]]):
            lo = mid
        else:
            hi = mid - 1
    while lo > 0 and not (at[lo] < len(body) and body[at[lo]] in _SEPARATORS):
        lo -= 1  # a number element may go on in the new body
    return lo


def _read(key: Hashable, body: bytes, previous: tuple[_Entry, int] | None,
          pause: Callable[[], None]) -> tuple[_Entry, ReadRequest]:
    old: _Entry | None = None
    if previous is None:
        walk, head, head_regions, head_layout, head_bytes, head_chars = _head(body)
        entry = _Entry(key, body, [head_bytes], [head_chars], head, [], [head_regions], [head_layout.breakpoints],
                       [], head_layout, {0: walk.keep()}, {})
    else:
        old, shared = previous
        start = max(count for count in old.states if count <= shared)
        entry = _Entry(key, body, old.bytes_at[: start + 1], old.chars_at[: start + 1], old.head,
                       old.messages[:start], old.regions[: start + 1], old.breakpoints[: start + 1], old.runs[:start],
                       old.head_layout, {count: state for count, state in old.states.items() if count <= start},
                       old.memo)
        walk = _Walk(old.states[start])
    tail_at = _messages(entry, walk, pause)
    entry.tail = _tail(body, tail_at, walk, old.tail if old is not None else None)
    if not walk.facts.absorb(entry.tail.facts):
        raise _Fallback("a tail that is not additive")
    walk.add(entry.tail.buckets, entry.tail.by_label)
    parsed: dict[str, Any] = {}
    for name, value in entry.head:
        parsed[name] = value
    parsed["messages"] = entry.messages
    for name, value in entry.tail.members:
        parsed[name] = value
    attribution = Attribution(entry.tail_chars_at + entry.tail.chars, _regions(entry), walk.buckets, walk.by_label,
                              walk.facts.to_json(walk.buckets, walk.by_label), _layout(entry), _prompt(entry))
    return entry, ReadRequest(parsed, attribution)


def _head(body: bytes) -> tuple[_Walk, list[tuple[str, Any]], list[Region], Layout, int, int]:
    """Walk the members before `messages` up to its `[`, decoding more while the first window
    ends inside them: the walk, the parsed members, regions, layout, and the `[`'s end in bytes
    and chars."""
    text = _Text(body, 0, 0)
    while True:
        text.more(0)
        walk = _Walk()
        canvas = Canvas(text.text)
        walk.conversation.canvas = canvas
        cursor = Cursor(text.text)
        try:
            if cursor.peek() != "{":
                raise _Fallback("not a JSON object")
            cursor.pos += 1
            head: list[tuple[str, Any]] = []
            for name, _ in cursor.rest_of_object(first=True):
                if name == "messages":
                    if cursor.peek() != "[":
                        raise ValueError("messages is not an array (or not here yet)")
                    chars = cursor.pos + 1
                    regions = canvas.regions(0, chars)
                    add_regions(regions, walk.buckets, walk.by_label)
                    layout = Layout(dict(canvas.sections), list(canvas.breakpoints), [], canvas.auto_cache)
                    return walk, head, regions, layout, len(text.text[:chars].encode()), chars
                head.append((name, _scan_once(text.text, cursor.pos)[0]))
                member(name, cursor, canvas, walk.system, walk.conversation)
        except (ValueError, StopIteration):
            if text.complete:
                raise _Fallback("malformed, or no messages array") from None
            continue
        raise _Fallback("no messages array")


_END = object()


def _messages(entry: _Entry, walk: _Walk, pause: Callable[[], None]) -> int:
    """Walk the messages after the entry's last boundary to the array's end; the tail's byte offset."""
    text = _Text(entry.body, entry.bytes_at[-1], entry.chars_at[-1])
    text.more(0)
    pos, byte, count = 0, entry.bytes_at[-1], len(entry.messages)
    while True:
        try:
            found = _next_message(text, pos, first=count == 0)
        except (ValueError, StopIteration):
            found = None
        if found is None:  # the window ends inside it
            text.more(pos)
            pos = 0
            continue
        start, end, value = found
        if value is _END:
            entry.tail_chars_at = text.char + pos
            return byte
        canvas = Canvas(text.text)
        walk.conversation.canvas = canvas
        message(Cursor(text.text, start), canvas, walk.conversation)
        regions = canvas.regions(pos, end, shift=text.char)
        add_regions(regions, walk.buckets, walk.by_label)
        byte += end - pos if text.text.isascii() else len(text.text[pos:end].encode())
        count += 1
        entry.messages.append(value)
        entry.regions.append(regions)
        entry.breakpoints.append(canvas.breakpoints_in(pos, end, shift=text.char))
        entry.runs.append(owned(regions))
        entry.bytes_at.append(byte)
        entry.chars_at.append(text.char + end)
        entry.states[count] = walk.keep()
        _prune(entry.states)
        pos = end
        pause()


def _next_message(text: _Text, pos: int, first: bool) -> tuple[int, int, Any] | None:
    """(start, end, parsed value) of the message after `pos`, (`]`'s offset, end, _END) at the
    array's end, or None when the window ends before it does."""
    cursor = Cursor(text.text, pos)
    char = cursor.peek()
    if char == "]":
        return cursor.pos, cursor.pos + 1, _END
    if not first:
        if char != ",":
            raise ValueError(f"expected ',' at {cursor.pos}")
        cursor.pos += 1
        char = cursor.peek()
    if not char:
        return None
    value, end = _scan_once(text.text, cursor.pos)
    if end >= len(text.text) and not text.complete:
        return None  # a number may go on
    return cursor.pos, end, value


def _prune(states: dict[int, _State]) -> None:
    """Keep the state after the head and those at the last few boundaries."""
    if len(states) > 1 + KEEP_LAST + KEEP_EARLIER:
        for count in sorted(states)[1 : -KEEP_LAST - KEEP_EARLIER]:
            del states[count]


def _tail(body: bytes, tail_at: int, walk: _Walk, old: _Tail | None) -> _Tail:
    """The tail from the end of the last message on (`]`, then the members after `messages`): the
    kept one when its bytes and the system prompt flags coming in are the same, else walked on
    fresh Facts."""
    system_in = (walk.system.subagent, walk.system.prompt_seen)
    size = len(body) - tail_at
    if old is not None and len(old.data) == size and old.system_in == system_in and body.endswith(old.data):
        return old
    try:
        text = body[tail_at:].decode("utf-8")
    except UnicodeDecodeError:
        raise _Fallback("not UTF-8") from None
    facts = Facts()
    canvas = Canvas(text)
    system = SystemPrompt(facts)
    system.subagent, system.prompt_seen = system_in
    conversation = Conversation(canvas, facts)
    cursor = Cursor(text)
    cursor.peek()
    cursor.pos += 1  # the `]` after the whitespace that follows the last message
    close = cursor.pos
    members = []
    for name, _ in cursor.rest_of_object(first=False):
        if name == "messages":
            raise _Fallback("a second messages array")
        members.append((name, _scan_once(text, cursor.pos)[0]))
        member(name, cursor, canvas, system, conversation)
    cursor.finish()
    regions = canvas.regions()
    buckets, by_label = tallies()
    add_regions(regions, buckets, by_label)
    layout = Layout(dict(canvas.sections), list(canvas.breakpoints), [], canvas.auto_cache)
    return _Tail(memoryview(body)[tail_at:], len(text), system_in, facts, regions, buckets, by_label, members, layout,
                 close)


def _regions(entry: _Entry) -> Callable[[], list[Region]]:
    """The body's regions, listed when first asked for."""
    parts, tail, shift = entry.regions, entry.tail, entry.tail_chars_at
    assert tail is not None  # asked for once the walk reached the tail

    def listed() -> list[Region]:
        out: list[Region] = []
        for part in parts:
            for region in part:
                append_region(out, region.start, region.end, region.bucket, region.label, region.part)
        for region in tail.regions:
            append_region(out, region.start + shift, region.end + shift, region.bucket, region.label, region.part)
        return out

    return listed


def _prompt(entry: _Entry) -> Callable[[Layout], Prompt]:
    """The body in prompt order, made when first asked for: the head's and tail's regions cut into
    units, the messages' runs as kept."""
    head, tail, shift, runs, memo = entry.regions[0], entry.tail, entry.tail_chars_at, entry.runs, entry.memo
    assert tail is not None  # the walk reached it

    def made(layout: Layout) -> Prompt:
        return prompt(((head, 0), (tail.regions, shift)), layout, runs, memo)

    return made


def _layout(entry: _Entry) -> Callable[[], Layout]:
    """The body's layout, made when first asked for."""
    head, parts, tail, shift, opened = entry.head_layout, entry.breakpoints, entry.tail, entry.tail_chars_at, \
        entry.chars_at[0] - 1
    assert tail is not None  # the walk reached it

    def made() -> Layout:
        sections = dict(head.sections)
        sections["messages"] = (opened, shift + tail.close)
        sections.update({name: (start + shift, end + shift) for name, (start, end) in tail.layout.sections.items()})
        breakpoints = [*chain.from_iterable(parts), *(at + shift for at in tail.layout.breakpoints)]
        return Layout(sections, breakpoints, entry.chars_at[1:], head.auto_cache or tail.layout.auto_cache)

    return made
