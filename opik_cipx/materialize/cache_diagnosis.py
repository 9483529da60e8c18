"""Why the prompt cache missed: each call against the previous call of its session and agent.

Anthropic caches a prompt as a prefix in the order tools, system, messages, up to each
`cache_control` breakpoint; a cached entry lives 5 minutes (or 1 hour with `ttl: "1h"`) from
its last use, per model (docs/CACHE_DIAGNOSTICS.md). So a call should read from the cache
everything the previous call of its conversation wrote or read. When it reads less, and paid
to write (or sent uncached) what it could have read, that is a *cache break*:
- where: the first item of the previous call's cached prefix that this call does not repeat,
  as the attribution names it (a tool definition by name, an MCP server connected or
  disconnected, a system prompt section, a message's content block, with its bucket);
- why (`CAUSES`, most decisive first): the model changed (caches are per model), the gap since
  the previous call exceeded the TTL of its breakpoints, the tools, the system prompt or the
  thinking / effort settings changed, the conversation was compacted or otherwise rewritten;
  `unknown` when nothing explains it (an eviction on Anthropic's side);
- what it cost: the tokens written again (or sent uncached) instead of read, at this call's own
  rates (`Cost.rates`: tier and multipliers applied) minus the cache-read rate.

Claude Code's `x-anthropic-billing-header` system block is left out: newer builds change it on
every call (`cch=`), and Anthropic keeps it out of the cache key (else no Claude Code call would
ever read the cache).

The diagnosis is a `CacheDiagnosis` (typed; `to_json()` is `metadata.cc.cache`). Reading a
request's prefix digests what repeats only once: tool definitions by value (`ToolDigests`, one
for the process), messages by identity (a `PrefixReader`, owned by one materializer and living as
long as it does).

A conversation is a *lane*: the main loop (with its compactions), one subagent (by agent id),
or one kind of side call. `CacheLanes` keeps, per lane, what the previous call cached: a
32-bit digest per item of its prefix through its last breakpoint, the tool names and system
section labels, model, settings and token counts; never text. It is bounded (`MAX_LANES` per
session, `MAX_ITEMS` digests per lane) and goes into the materializer checkpoint, so a restart
or `replay` diagnoses every call exactly as an uninterrupted run does.
"""

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from opik_cipx.materialize.attribution import Attribution
from opik_cipx.materialize.attribution.facts import Facts
from opik_cipx.materialize.attribution.json_spans import Cursor
from opik_cipx.materialize.attribution.model import ENVELOPE, TOOLS_BUILTIN, TOOLS_MCP, Piece
from opik_cipx.materialize.attribution.system import BILLING_HEADER, SystemPrompt
from opik_cipx.materialize.attribution.tools import mcp_tool
from opik_cipx.materialize.call_kind import CallKind
from opik_cipx.materialize.usage import Usage

CAUSES = ("model_changed", "ttl_expired", "tools_changed", "system_prompt_changed", "thinking_changed",
          "compaction", "messages_changed", "unknown")
TTL_5M_S, TTL_1H_S = 300, 3600
MAX_LANES = 16  # per session, the least recently used forgotten first
MAX_ITEMS = 4096  # digests kept per lane; a divergence further in is not located
_MTOK = 1_000_000
TOOL_MEMO_MAX = 512  # tool definitions whose digest is kept, one per name
MESSAGE_MEMO_MAX_CHARS = 32 * 1024 * 1024  # characters of messages whose digests a PrefixReader keeps


def lane_of(kind: CallKind) -> str | None:
    """The conversation a call continues: `main` (main loop and its compactions), `agent:<id>`,
    `side:<kind>`; None for calls that read no cache (count_tokens, other routes)."""
    if kind.agent_id:
        return f"agent:{kind.agent_id}"
    if kind.kind in ("main", "compaction"):
        return "main"
    if kind.kind == "subagent":
        return "agent:"
    if kind.kind == "side":
        return f"side:{kind.side_kind or 'unknown'}"
    return None


@dataclass(frozen=True)
class Prefix:
    """The items of a request in cache order, each with a digest (`cache_control` left out), and
    how many of them its last breakpoint covers."""

    tools: tuple[tuple[str, str], ...]  # (tool name, digest)
    system: tuple[tuple[str, str, str], ...]  # (bucket, section label, digest)
    messages: tuple[tuple[str, ...], ...]  # per message, a digest per content block
    cached: tuple[int, int, int]  # tools, system sections, message blocks through the last breakpoint
    model: str
    settings: dict[str, Any]  # thinking and effort: they decide whether the messages' cache holds
    ttl_s: int  # the shortest TTL among its breakpoints


class ToolDigests:
    """Tool definitions are most of a request and the same call after call, in every session: the
    digest of the last definition seen under each name is kept (a pure function of the definition,
    so any reader may share it), and a definition equal to it (compared in C, no serialization)
    reuses it. Bounded (`TOOL_MEMO_MAX` names, the least recently used go first); thread-safe."""

    def __init__(self) -> None:
        self._memo: OrderedDict[str, tuple[dict, str]] = OrderedDict()
        self._lock = threading.Lock()

    def digest(self, tool: dict) -> str:
        name = str(tool.get("name") or "")
        with self._lock:
            seen = self._memo.get(name)
            if seen is not None and seen[0] == tool:
                self._memo.move_to_end(name)
                return seen[1]
        digest = _digest(tool)
        with self._lock:
            self._memo[name] = (tool, digest)
            self._memo.move_to_end(name)
            while len(self._memo) > TOOL_MEMO_MAX:
                self._memo.popitem(last=False)
        return digest


TOOL_DIGESTS = ToolDigests()


class PrefixReader:
    """Reads the cache prefix of requests, digesting only what is new. Owned by one materializer
    (its lifetime), on one thread.

    The messages of a conversation repeat, and the request reader (attribution/incremental.py)
    hands an unchanged message over as the same parsed object call after call: its block digests
    and breakpoints are kept by identity. An entry holds its message, so no other object can take
    its id while the entry exists, and it is used only for that very object; the entries go with
    the reader. Bounded by the characters serialized (`MESSAGE_MEMO_MAX_CHARS`, as the request
    reader bounds what it keeps), the least recently used first. Tool definitions: `TOOL_DIGESTS`.
    """

    def __init__(self) -> None:
        self._messages: OrderedDict[int, tuple[dict, tuple[str, ...], tuple[tuple[int, int], ...], int]] = \
            OrderedDict()
        self._message_chars = 0

    def prefix(self, body: dict) -> Prefix:
        """The cache prefix of one request body (parsed JSON)."""
        default_ttl = _ttl(body.get("cache_control"))
        marks: list[int] = []  # TTL of every breakpoint
        last = (0, 0, 0)
        tools = []
        for tool in body.get("tools") or ():
            if not isinstance(tool, dict):
                continue
            tools.append((str(tool.get("name") or ""), TOOL_DIGESTS.digest(tool)))
            if "cache_control" in tool:
                marks.append(_ttl(tool["cache_control"]))
                last = (len(tools), 0, 0)
        system = []
        blocks = body.get("system")
        blocks = [{"text": blocks}] if isinstance(blocks, str) else blocks if isinstance(blocks, list) else []
        labeller = SystemPrompt(Facts())
        for block in blocks:
            if not isinstance(block, dict):
                continue
            text = block.get("text")
            if isinstance(text, str) and text.startswith(BILLING_HEADER):
                labeller.block(text)  # request metadata Anthropic keeps out of the cache key; it changes per call
            elif isinstance(text, str):
                for bucket, label, start, end in _sections(labeller.block(text)):
                    system.append((bucket, label or bucket, _digest_text(text[start:end])))
            else:
                system.append(("unattributed", "block", _digest(block)))
            if "cache_control" in block:
                marks.append(_ttl(block["cache_control"]))
                last = (len(tools), len(system), 0)
        messages = []
        count = 0
        for message in body.get("messages") or ():
            digests, breakpoints = self._message_blocks(message)
            for index, ttl in breakpoints:
                marks.append(ttl)
                last = (len(tools), len(system), count + index + 1)
            count += len(digests)
            messages.append(digests)
        if "cache_control" in body:  # automatic caching: a breakpoint after the last block
            marks.append(default_ttl)
            last = (len(tools), len(system), count)
        thinking = body.get("thinking")
        effort = (body.get("output_config") or {}).get("effort") if isinstance(body.get("output_config"), dict) \
            else None
        return Prefix(
            tools=tuple(tools), system=tuple(system), messages=tuple(messages), cached=last,
            model=str(body.get("model") or ""),
            settings={"thinking": thinking if isinstance(thinking, dict) else None, "effort": effort},
            ttl_s=min(marks, default=TTL_5M_S),
        )

    def _message_blocks(self, message: Any) -> tuple[tuple[str, ...], tuple[tuple[int, int], ...]]:
        """A message's digest per content block and its breakpoints (block index, TTL)."""
        seen = self._messages.get(id(message))
        if seen is not None and seen[0] is message:
            self._messages.move_to_end(id(message))
            return seen[1], seen[2]
        content = message.get("content") if isinstance(message, dict) else None
        items = content if isinstance(content, list) else [content]
        digests, breakpoints, chars = [], [], 0
        for index, item in enumerate(items):
            text = item if isinstance(item, str) else _serialized(item)
            digests.append(_digest_text(text))
            chars += len(text)
            if isinstance(item, dict) and "cache_control" in item:
                breakpoints.append((index, _ttl(item["cache_control"])))
        out = (tuple(digests), tuple(breakpoints))
        if isinstance(message, dict):
            self._messages[id(message)] = (message, *out, chars)
            self._message_chars += chars
            while self._message_chars > MESSAGE_MEMO_MAX_CHARS:
                self._message_chars -= self._messages.popitem(last=False)[1][3]
        return out


def _sections(pieces: list[Piece]) -> list[tuple[str, str | None, int, int]]:
    """A system block's sections: its pieces with the pieces of one bucket and label that follow
    each other joined (a section's environment part is a piece of its own, not a section)."""
    out: list[tuple[str, str | None, int, int]] = []
    for piece in pieces:
        if out and out[-1][:2] == (piece.bucket, piece.label) and out[-1][3] == piece.start:
            out[-1] = (piece.bucket, piece.label, out[-1][2], piece.end)
        else:
            out.append((piece.bucket, piece.label, piece.start, piece.end))
    return out


def _ttl(mark: Any) -> int:
    return TTL_1H_S if isinstance(mark, dict) and mark.get("ttl") == "1h" else TTL_5M_S


def _digest(value: Any) -> str:
    return _digest_text(_serialized(value))


def _serialized(value: Any) -> str:
    """`value` as compact JSON, a block's `cache_control` left out (it moves; the content does not)."""
    if isinstance(value, dict) and "cache_control" in value:
        value = {k: v for k, v in value.items() if k != "cache_control"}
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _digest_text(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()


@dataclass(frozen=True)
class PreviousCall:
    """The lane's previous call, as this call is compared with it."""

    capture_id: str
    gap_s: float  # from its start to this call's
    ttl_s: int  # the shortest TTL of its breakpoints
    cached_tokens: int  # what it read or wrote: what this call should read

    def to_json(self) -> dict[str, Any]:
        return {"capture_id": self.capture_id, "gap_s": self.gap_s, "ttl_s": self.ttl_s,
                "cached_tokens": self.cached_tokens}


@dataclass(frozen=True)
class Divergence:
    """The first item of the previous call's cached prefix this request does not repeat: a tool
    definition (`index`, `tool`, and `server_change` when a whole MCP server came or went), a
    system prompt section (`index`), or a message's content block (`message`, `block`); `bucket`
    and `label` name it as the attribution does."""

    part: str  # tools | system | messages
    change: str  # changed | added | removed | moved
    bucket: str | None = None
    label: str | None = None
    index: int | None = None
    tool: str | None = None
    server_change: str | None = None  # connected | disconnected
    message: int | None = None
    block: int | None = None

    def to_json(self) -> dict[str, Any]:
        if self.part == "messages":
            return {"part": self.part, "message": self.message, "block": self.block, "bucket": self.bucket,
                    "label": self.label, "change": self.change}
        out: dict[str, Any] = {"part": self.part, "index": self.index, "bucket": self.bucket, "label": self.label}
        if self.part == "tools":
            out["tool"] = self.tool
        out["change"] = self.change
        if self.server_change:
            out["server_change"] = self.server_change
        return out


@dataclass(frozen=True)
class CacheBreak:
    """A call that paid to write (or sent uncached) what it should have read: why, where, what it cost."""

    cause: str  # the most decisive of `causes` (`CAUSES` order)
    causes: tuple[str, ...]
    expected_read_tokens: int
    read_tokens: int
    lost_tokens: int  # written again or sent uncached instead of read
    extra_cost_usd: float | None  # None: the call has no price
    where: Divergence | None
    item: str  # one line for tables
    model: tuple[str, str] | None = None  # (from, to) when the model changed
    settings: tuple[Mapping[str, Any], Mapping[str, Any]] | None = None  # (from, to) when thinking / effort did

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "cause": self.cause,
            "causes": list(self.causes),
            "expected_read_tokens": self.expected_read_tokens,
            "read_tokens": self.read_tokens,
            "lost_tokens": self.lost_tokens,
            "extra_cost_usd": self.extra_cost_usd,
            "where": self.where.to_json() if self.where else None,
        }
        if self.model:
            out["model"] = {"from": self.model[0], "to": self.model[1]}
        if self.settings:
            out["settings"] = {"from": self.settings[0], "to": self.settings[1]}
        out["item"] = self.item
        return out


@dataclass(frozen=True)
class CacheDiagnosis:
    """One call's cache use: its read / write / uncached shares of the prompt, the lane's previous
    call it is compared with, and the break when there was one."""

    read_share: float | None
    write_share: float | None
    uncached_share: float | None
    previous: PreviousCall | None = None
    cache_break: CacheBreak | None = None

    def to_json(self) -> dict[str, Any]:
        """`metadata.cc.cache`."""
        return {"read_share": self.read_share, "write_share": self.write_share, "uncached_share": self.uncached_share,
                "previous": self.previous.to_json() if self.previous else None,
                "break": self.cache_break.to_json() if self.cache_break else None}


def _memory(prefix: Prefix, usage: Usage, started_ns: int, capture_id: str) -> dict[str, Any]:
    """What the next call of the lane is compared with: this call's cached prefix (bounded), as JSON."""
    n_tools, n_system, n_blocks = prefix.cached
    blocks: list[str] = []
    budget = MAX_ITEMS - n_tools - n_system
    for digests in prefix.messages:
        if n_blocks <= 0 or budget <= 0:
            break
        kept = digests[:min(n_blocks, budget)]
        blocks.append(",".join(kept))
        n_blocks -= len(kept)
        budget -= len(kept)
    return {
        "capture_id": capture_id,
        "at_ns": started_ns,
        "model": prefix.model,
        "settings": prefix.settings,
        "ttl_s": prefix.ttl_s,
        "cached_tokens": usage.cache_read + usage.cache_write,
        "tools": [list(t) for t in prefix.tools[:n_tools]],
        "system": [list(s) for s in prefix.system[:n_system]],
        "messages": "|".join(blocks),
    }


def diagnose(previous: dict[str, Any] | None, prefix: Prefix, usage: Usage, rates: dict[str, float] | None,
             started_ns: int, compacted: bool, attribution: Attribution | None = None,
             raw_body: bytes | None = None) -> CacheDiagnosis:
    """One call's cache use: its read / write / uncached shares and, against `previous` (the
    lane's memory), the gap, the tokens it should have read and, on a break, where, why and
    what it cost. `compacted`: the call continues a compacted conversation (its first message
    holds the summary). `attribution` and `raw_body` (the request body it was made from) map a
    divergent message block to its bucket."""
    read, written, uncached = usage.cache_read, usage.cache_write, usage.input
    prompt = read + written + uncached
    shares = (_share(read, prompt), _share(written, prompt), _share(uncached, prompt))
    if previous is None:
        return CacheDiagnosis(*shares)
    gap_s = round((started_ns - int(previous["at_ns"])) / 1e9, 3)
    expected = int(previous["cached_tokens"])
    before = PreviousCall(previous["capture_id"], gap_s, previous["ttl_s"], expected)
    missing = expected - read
    rewritten = min(max(missing, 0), written)
    resent = min(max(missing, 0) - rewritten, uncached)
    if rewritten + resent <= 0:
        return CacheDiagnosis(*shares, previous=before)
    where = _divergence(previous, prefix)
    if where and where.part == "messages" and where.change == "changed" and attribution is not None \
            and raw_body is not None:
        where = replace(where, **_bucket_of(raw_body.decode("utf-8", "replace"), attribution, where.message or 0,
                                            where.block or 0))
    causes = []
    if previous["model"] != prefix.model:
        causes.append("model_changed")
    if gap_s > previous["ttl_s"]:
        causes.append("ttl_expired")
    if where:
        rewritten_whole = where.part == "messages" and where.message == 0 and compacted
        causes.append({"tools": "tools_changed", "system": "system_prompt_changed"}.get(
            where.part, "compaction" if rewritten_whole else "messages_changed"))
    settings_changed = previous["settings"] != prefix.settings
    if settings_changed and (where is None or where.part == "messages"):
        causes.append("thinking_changed")
    causes = sorted(set(causes), key=CAUSES.index) or ["unknown"]
    found = CacheBreak(
        cause=causes[0],
        causes=tuple(causes),
        expected_read_tokens=expected,
        read_tokens=read,
        lost_tokens=rewritten + resent,
        extra_cost_usd=_extra_cost(rewritten, resent, usage, rates),
        where=where,
        item="",
        model=(previous["model"], prefix.model) if "model_changed" in causes else None,
        settings=(previous["settings"], prefix.settings) if settings_changed else None,
    )
    found = replace(found, item=_describe(found, gap_s, before.ttl_s))
    return CacheDiagnosis(*shares, previous=before, cache_break=found)


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _extra_cost(rewritten: int, resent: int, usage: Usage, rates: dict[str, float] | None) -> float | None:
    """The tokens written again at the write rate (resent uncached at the input rate) instead of
    read at the read rate; None when the call has no price."""
    if not rates or "cache_read" not in rates:
        return None
    w5, w1h = usage.cache_write_5m, usage.cache_write_1h
    write_rate = (w5 * rates["cache_write_5m"] + w1h * rates["cache_write_1h"]) / (w5 + w1h) if w5 + w1h \
        else rates["cache_write_5m"]
    usd = rewritten * (write_rate - rates["cache_read"]) + resent * (rates["input"] - rates["cache_read"])
    return round(usd / _MTOK, 9)


def _divergence(previous: dict[str, Any], prefix: Prefix) -> Divergence | None:
    """The first item of the previous call's cached prefix this request does not repeat."""
    before = [tuple(t) for t in previous["tools"]]
    for index, item in enumerate(before):
        if index >= len(prefix.tools) or prefix.tools[index] != item:
            return _tool_change(before, list(prefix.tools), index)
    for index, (bucket, label, digest) in enumerate(previous["system"]):
        now = prefix.system[index] if index < len(prefix.system) else None
        if now is None or now[2] != digest or now[1] != label:
            change = "changed" if now is not None and now[1] == label else "removed"
            return Divergence("system", change, bucket, label, index=index)
    kept = [message.split(",") for message in previous["messages"].split("|")] if previous["messages"] else []
    for i, blocks in enumerate(kept):
        digests = prefix.messages[i] if i < len(prefix.messages) else ()
        for j, digest in enumerate(blocks):
            if j >= len(digests) or digests[j] != digest:
                return Divergence("messages", "changed" if j < len(digests) else "removed", message=i, block=j)
    return None


def _tool_change(before: list[tuple[str, str]], now: list[tuple[str, str]], index: int) -> Divergence:
    """A tool definition changed, added, removed or moved at `index`; an MCP server whose every
    tool appeared or disappeared is said to have connected or disconnected."""
    names_before, names_now = [n for n, _ in before], [n for n, _ in now]
    name = names_before[index]
    if index < len(now) and names_now[index] == name:
        change = "changed"
    elif index < len(now) and names_now[index] not in names_before:
        name, change = names_now[index], "added"
    elif name not in names_now:
        change = "removed"
    else:
        change = "moved"
    server = (mcp_tool(name) or (None,))[0]
    server_change = None
    if server:
        on_server = lambda names: [n for n in names if (mcp_tool(n) or (None,))[0] == server]  # noqa: E731
        if change == "removed" and not on_server(names_now):
            server_change = "disconnected"
        elif change == "added" and not on_server(names_before):
            server_change = "connected"
    return Divergence("tools", change, TOOLS_MCP if server else TOOLS_BUILTIN, server, index=index, tool=name,
                      server_change=server_change)


def _bucket_of(text: str, attribution: Attribution, message: int, block: int) -> dict[str, Any]:
    """The bucket (and label) holding most of messages[message].content[block] in the body."""
    span = _block_span(text, message, block)
    if span is None:
        return {}
    start, end = span
    sizes: dict[tuple[str, str | None], int] = {}
    for region in attribution.regions:
        if region.end <= start or region.bucket == ENVELOPE:
            continue
        if region.start >= end:
            break
        key = (region.bucket, region.label)
        sizes[key] = sizes.get(key, 0) + min(end, region.end) - max(start, region.start)
    if not sizes:
        return {}
    bucket, label = max(sizes, key=sizes.__getitem__)
    return {"bucket": bucket, "label": label}


def _block_span(text: str, message: int, block: int) -> tuple[int, int] | None:
    """Body offsets of messages[message].content[block] (the content string for block 0)."""
    try:
        cur = Cursor(text)
        for key, _ in cur.members():
            if key != "messages":
                continue
            for i, _ in enumerate(cur.elements()):
                if i != message:
                    continue
                for name, _ in cur.members():
                    if name != "content":
                        continue
                    if cur.peek() != "[":
                        field = cur.value()
                        return field.start, field.end
                    for j, start in enumerate(cur.elements()):
                        field = cur.value()
                        if j == block:
                            return start, field.end
    except ValueError:
        return None
    return None


def _describe(found: CacheBreak, gap_s: float, ttl_s: int) -> str:
    """One line for tables: what broke the cache, e.g. `MCP server notes disconnected`."""
    cause, where = found.cause, found.where
    if cause == "model_changed" and found.model:
        return f"model {found.model[0]} -> {found.model[1]}"
    if cause == "ttl_expired":
        return f"expired: {gap_s:g} s since the previous call, TTL {ttl_s} s"
    if cause == "thinking_changed" and found.settings:
        return f"thinking / effort {_settings(found.settings[0])} -> {_settings(found.settings[1])}"
    if where is None:
        return "prefix unchanged: evicted by Anthropic"
    if where.part == "tools":
        if where.server_change:
            return f"MCP server {where.label} {where.server_change}"
        return f"tool {where.tool} {where.change}"
    if where.part == "system":
        return f"system prompt section {where.label} {where.change}"
    inside = f" ({where.bucket}{': ' + where.label if where.label else ''})" if where.bucket else ""
    return f"message {where.message} block {where.block} {where.change}{inside}"


def _settings(settings: Mapping[str, Any]) -> str:
    thinking = settings.get("thinking") or {}
    budget = thinking.get("budget_tokens")
    return f"{thinking.get('type') or 'default'}{f' {budget}' if budget else ''}/{settings.get('effort') or 'default'}"


class CacheLanes:
    """The previous call of each lane of one session (bounded, JSON-ready, no text)."""

    def __init__(self, lanes: dict[str, dict] | None = None):
        self._lanes: OrderedDict[str, dict] = OrderedDict(lanes or {})

    def observe(self, lane: str, prefix: Prefix, usage: Usage, rates: dict[str, float] | None,
                started_ns: int, capture_id: str, compacted: bool, attribution: Attribution | None = None,
                raw_body: bytes | None = None) -> CacheDiagnosis:
        """The diagnosis of one call of `lane` (`diagnose`), and this call becomes what the lane's
        next call is compared with. Only calls with usage are observed: a call without one read
        and wrote nothing."""
        previous = self._lanes.pop(lane, None)
        out = diagnose(previous, prefix, usage, rates, started_ns, compacted, attribution, raw_body)
        self._lanes[lane] = _memory(prefix, usage, started_ns, capture_id)
        while len(self._lanes) > MAX_LANES:
            self._lanes.popitem(last=False)
        return out

    def snapshot(self) -> list[list]:
        return [[lane, dict(memory)] for lane, memory in self._lanes.items()]

    @classmethod
    def restore(cls, doc: list[list] | None) -> "CacheLanes":
        return cls({lane: memory for lane, memory in doc or ()})
