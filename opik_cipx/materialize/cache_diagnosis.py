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

A conversation is a *lane*: the main loop (with its compactions), one subagent (by agent id),
or one kind of side call. `CacheLanes` keeps, per lane, what the previous call cached: a
32-bit digest per item of its prefix through its last breakpoint, the tool names and system
section labels, model, settings and token counts; never text. It is bounded (`MAX_LANES` per
session, `MAX_ITEMS` digests per lane) and goes into the materializer checkpoint, so a restart
or `replay` diagnoses every call exactly as an uninterrupted run does.
"""

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from opik_cipx.materialize.attribution import Attribution
from opik_cipx.materialize.attribution.facts import Facts
from opik_cipx.materialize.attribution.json_spans import Cursor
from opik_cipx.materialize.attribution.model import ENVELOPE, TOOLS_BUILTIN, TOOLS_MCP
from opik_cipx.materialize.attribution.system import BILLING_HEADER, SystemPrompt
from opik_cipx.materialize.attribution.tools import mcp_tool
from opik_cipx.materialize.call_kind import CallKind
from opik_cipx.materialize.pricing import token_counts

CAUSES = ("model_changed", "ttl_expired", "tools_changed", "system_prompt_changed", "thinking_changed",
          "compaction", "messages_changed", "unknown")
TTL_5M_S, TTL_1H_S = 300, 3600
MAX_LANES = 16  # per session, the least recently used forgotten first
MAX_ITEMS = 4096  # digests kept per lane; a divergence further in is not located
_MTOK = 1_000_000
# Tool definitions are most of a request and the same call after call: the digest of the last
# definition seen under each name is kept (a pure function of it, so only the time changes),
# and a definition equal to it (compared in C, no serialization) reuses it.
_TOOL_MEMO: "OrderedDict[str, tuple[dict, str]]" = OrderedDict()
_TOOL_MEMO_MAX = 512
# The messages of a conversation repeat too, and the request reader (attribution/incremental.py)
# hands an unchanged message over as the same parsed object call after call: its block digests
# and breakpoints are kept by identity (the entry holds the object, so its id is not reused),
# bounded by the characters serialized, as the reader bounds what it keeps.
_MESSAGE_MEMO: "OrderedDict[int, tuple[dict, tuple[str, ...], tuple[tuple[int, int], ...], int]]" = OrderedDict()
_MESSAGE_MEMO_MAX_CHARS = 32 * 1024 * 1024
_message_memo_chars = 0


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


def prefix_of(body: dict) -> Prefix:
    """The cache prefix of one request body (parsed JSON)."""
    default_ttl = _ttl(body.get("cache_control"))
    marks: list[int] = []  # TTL of every breakpoint
    last = (0, 0, 0)
    tools = []
    for tool in body.get("tools") or ():
        if not isinstance(tool, dict):
            continue
        tools.append((str(tool.get("name") or ""), _tool_digest(tool)))
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
            for piece in labeller.block(text):
                system.append((piece.bucket, piece.label or piece.bucket,
                               _digest_text(text[piece.start:piece.end])))
        else:
            system.append(("unattributed", "block", _digest(block)))
        if "cache_control" in block:
            marks.append(_ttl(block["cache_control"]))
            last = (len(tools), len(system), 0)
    messages = []
    count = 0
    for message in body.get("messages") or ():
        digests, breakpoints = _message_blocks(message)
        for index, ttl in breakpoints:
            marks.append(ttl)
            last = (len(tools), len(system), count + index + 1)
        count += len(digests)
        messages.append(digests)
    if "cache_control" in body:  # automatic caching: a breakpoint after the last block
        marks.append(default_ttl)
        last = (len(tools), len(system), count)
    thinking = body.get("thinking")
    effort = (body.get("output_config") or {}).get("effort") if isinstance(body.get("output_config"), dict) else None
    return Prefix(
        tools=tuple(tools), system=tuple(system), messages=tuple(messages), cached=last,
        model=str(body.get("model") or ""),
        settings={"thinking": thinking if isinstance(thinking, dict) else None, "effort": effort},
        ttl_s=min(marks, default=TTL_5M_S),
    )


def _ttl(mark: Any) -> int:
    return TTL_1H_S if isinstance(mark, dict) and mark.get("ttl") == "1h" else TTL_5M_S


def _tool_digest(tool: dict) -> str:
    name = str(tool.get("name") or "")
    seen = _TOOL_MEMO.get(name)
    if seen is not None and seen[0] == tool:
        _TOOL_MEMO.move_to_end(name)
        return seen[1]
    digest = _digest(tool)
    _TOOL_MEMO[name] = (tool, digest)
    _TOOL_MEMO.move_to_end(name)
    while len(_TOOL_MEMO) > _TOOL_MEMO_MAX:
        _TOOL_MEMO.popitem(last=False)
    return digest


def _message_blocks(message: Any) -> tuple[tuple[str, ...], tuple[tuple[int, int], ...]]:
    """A message's digest per content block and its breakpoints (block index, TTL)."""
    global _message_memo_chars
    seen = _MESSAGE_MEMO.get(id(message))
    if seen is not None and seen[0] is message:
        _MESSAGE_MEMO.move_to_end(id(message))
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
        _MESSAGE_MEMO[id(message)] = (message, *out, chars)
        _message_memo_chars += chars
        while _message_memo_chars > _MESSAGE_MEMO_MAX_CHARS:
            _message_memo_chars -= _MESSAGE_MEMO.popitem(last=False)[1][3]
    return out


def _digest(value: Any) -> str:
    return _digest_text(_serialized(value))


def _serialized(value: Any) -> str:
    """`value` as compact JSON, a block's `cache_control` left out (it moves; the content does not)."""
    if isinstance(value, dict) and "cache_control" in value:
        value = {k: v for k, v in value.items() if k != "cache_control"}
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _digest_text(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()


def _memory(prefix: Prefix, usage: dict, started_ns: int, capture_id: str) -> dict[str, Any]:
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
    tokens = token_counts(usage)
    return {
        "capture_id": capture_id,
        "at_ns": started_ns,
        "model": prefix.model,
        "settings": prefix.settings,
        "ttl_s": prefix.ttl_s,
        "cached_tokens": tokens["cache_read"] + tokens["cache_write_5m"] + tokens["cache_write_1h"],
        "tools": [list(t) for t in prefix.tools[:n_tools]],
        "system": [list(s) for s in prefix.system[:n_system]],
        "messages": "|".join(blocks),
    }


def diagnose(previous: dict[str, Any] | None, prefix: Prefix, usage: dict, rates: dict[str, float] | None,
             started_ns: int, compacted: bool, attribution: Attribution | None = None,
             raw_body: bytes | None = None) -> dict[str, Any]:
    """`cc.cache` of one call: its read / write / uncached shares and, against `previous` (the
    lane's memory), the gap, the tokens it should have read and, on a break, where, why and
    what it cost. `compacted`: the call continues a compacted conversation (its first message
    holds the summary). `attribution` and `raw_body` (the request body it was made from) map a
    divergent message block to its bucket."""
    tokens = token_counts(usage)
    written = tokens["cache_write_5m"] + tokens["cache_write_1h"]
    read, uncached = tokens["cache_read"], tokens["input"]
    prompt = read + written + uncached
    out: dict[str, Any] = {
        "read_share": _share(read, prompt),
        "write_share": _share(written, prompt),
        "uncached_share": _share(uncached, prompt),
        "previous": None,
        "break": None,
    }
    if previous is None:
        return out
    gap_s = round((started_ns - int(previous["at_ns"])) / 1e9, 3)
    expected = int(previous["cached_tokens"])
    out["previous"] = {"capture_id": previous["capture_id"], "gap_s": gap_s, "ttl_s": previous["ttl_s"],
                       "cached_tokens": expected}
    missing = expected - read
    rewritten = min(max(missing, 0), written)
    resent = min(max(missing, 0) - rewritten, uncached)
    if rewritten + resent <= 0:
        return out
    where = _divergence(previous, prefix)
    if where and where["part"] == "messages" and where["change"] == "changed" and attribution is not None \
            and raw_body is not None:
        where.update(_bucket_of(raw_body.decode("utf-8", "replace"), attribution, where["message"], where["block"]))
    causes = []
    if previous["model"] != prefix.model:
        causes.append("model_changed")
    if gap_s > previous["ttl_s"]:
        causes.append("ttl_expired")
    if where:
        rewritten_whole = where["part"] == "messages" and where["message"] == 0 and compacted
        causes.append({"tools": "tools_changed", "system": "system_prompt_changed"}.get(
            where["part"], "compaction" if rewritten_whole else "messages_changed"))
    settings_changed = previous["settings"] != prefix.settings
    if settings_changed and (where is None or where["part"] == "messages"):
        causes.append("thinking_changed")
    causes = sorted(set(causes), key=CAUSES.index) or ["unknown"]
    found: dict[str, Any] = {
        "cause": causes[0],
        "causes": causes,
        "expected_read_tokens": expected,
        "read_tokens": read,
        "lost_tokens": rewritten + resent,
        "extra_cost_usd": _extra_cost(rewritten, resent, tokens, rates),
        "where": where,
    }
    if "model_changed" in causes:
        found["model"] = {"from": previous["model"], "to": prefix.model}
    if settings_changed:
        found["settings"] = {"from": previous["settings"], "to": prefix.settings}
    found["item"] = _describe(found, gap_s, previous["ttl_s"])
    out["break"] = found
    return out


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _extra_cost(rewritten: int, resent: int, tokens: dict[str, int], rates: dict[str, float] | None) -> float | None:
    """The tokens written again at the write rate (resent uncached at the input rate) instead of
    read at the read rate; None when the call has no price."""
    if not rates or "cache_read" not in rates:
        return None
    w5, w1h = tokens["cache_write_5m"], tokens["cache_write_1h"]
    write_rate = (w5 * rates["cache_write_5m"] + w1h * rates["cache_write_1h"]) / (w5 + w1h) if w5 + w1h \
        else rates["cache_write_5m"]
    usd = rewritten * (write_rate - rates["cache_read"]) + resent * (rates["input"] - rates["cache_read"])
    return round(usd / _MTOK, 9)


def _divergence(previous: dict[str, Any], prefix: Prefix) -> dict[str, Any] | None:
    """The first item of the previous call's cached prefix this request does not repeat."""
    before = [tuple(t) for t in previous["tools"]]
    for index, item in enumerate(before):
        if index >= len(prefix.tools) or prefix.tools[index] != item:
            return _tool_change(before, list(prefix.tools), index)
    for index, (bucket, label, digest) in enumerate(previous["system"]):
        now = prefix.system[index] if index < len(prefix.system) else None
        if now is None or now[2] != digest or now[1] != label:
            change = "changed" if now is not None and now[1] == label else "removed"
            return {"part": "system", "index": index, "bucket": bucket, "label": label, "change": change}
    kept = [message.split(",") for message in previous["messages"].split("|")] if previous["messages"] else []
    for i, blocks in enumerate(kept):
        now = prefix.messages[i] if i < len(prefix.messages) else ()
        for j, digest in enumerate(blocks):
            if j >= len(now) or now[j] != digest:
                return {"part": "messages", "message": i, "block": j, "bucket": None, "label": None,
                        "change": "changed" if j < len(now) else "removed"}
    return None


def _tool_change(before: list[tuple[str, str]], now: list[tuple[str, str]], index: int) -> dict[str, Any]:
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
    out: dict[str, Any] = {"part": "tools", "index": index, "bucket": TOOLS_MCP if server else TOOLS_BUILTIN,
                           "label": server, "tool": name, "change": change}
    if server:
        on_server = lambda names: [n for n in names if (mcp_tool(n) or (None,))[0] == server]  # noqa: E731
        if change == "removed" and not on_server(names_now):
            out["server_change"] = "disconnected"
        elif change == "added" and not on_server(names_before):
            out["server_change"] = "connected"
    return out


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
    bucket, label = max(sizes, key=sizes.get)
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


def _describe(found: dict[str, Any], gap_s: float, ttl_s: int) -> str:
    """One line for tables: what broke the cache, e.g. `MCP server notes disconnected`."""
    cause, where = found["cause"], found["where"]
    if cause == "model_changed":
        return f"model {found['model']['from']} -> {found['model']['to']}"
    if cause == "ttl_expired":
        return f"expired: {gap_s:g} s since the previous call, TTL {ttl_s} s"
    if cause == "thinking_changed":
        before, after = found["settings"]["from"], found["settings"]["to"]
        return f"thinking / effort {_settings(before)} -> {_settings(after)}"
    if where is None:
        return "prefix unchanged: evicted by Anthropic"
    if where["part"] == "tools":
        if where.get("server_change"):
            return f"MCP server {where['label']} {where['server_change']}"
        return f"tool {where['tool']} {where['change']}"
    if where["part"] == "system":
        return f"system prompt section {where['label']} {where['change']}"
    inside = f" ({where['bucket']}{': ' + where['label'] if where.get('label') else ''})" if where["bucket"] else ""
    return f"message {where['message']} block {where['block']} {where['change']}{inside}"


def _settings(settings: dict[str, Any]) -> str:
    thinking = settings.get("thinking") or {}
    budget = thinking.get("budget_tokens")
    return f"{thinking.get('type') or 'default'}{f' {budget}' if budget else ''}/{settings.get('effort') or 'default'}"


class CacheLanes:
    """The previous call of each lane of one session (bounded, JSON-ready, no text)."""

    def __init__(self, lanes: dict[str, dict] | None = None):
        self._lanes: OrderedDict[str, dict] = OrderedDict(lanes or {})

    def observe(self, lane: str | None, body: dict, usage: dict | None, rates: dict[str, float] | None,
                started_ns: int, capture_id: str, compacted: bool, attribution: Attribution | None = None,
                raw_body: bytes | None = None) -> dict[str, Any] | None:
        """`cc.cache` of one call (None without usage: nothing was read or written), and this call
        becomes what the lane's next call is compared with."""
        if lane is None or not usage:
            return None
        prefix = prefix_of(body)
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
