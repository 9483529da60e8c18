"""`metadata.cipx` of an llm span: the call and its blocks, as Opik's Cost Intelligence reads them
(docs/OPIK.md, "Cost Intelligence"; the contract is its spec, `opik-cost-intelligence.md`).

Pure functions of the call record, never of `metadata.cc`:
- `call_section`: model, usage as returned, config, trigger, turn key, the subagent link;
- `blocks`: the request's runs in prompt order (tools, system, messages, then the request's own
  parameters: `attribution.prompt`, each run one region with the envelope around it) with their
  `cache_status`, consecutive runs of one description and status joined (`input_blocks`); then
  one block per content block of the answer (`output_blocks`). `block_json` omits empty fields.
  The runs are grouped once per conversation where they repeat: the groups are kept in the
  prompt's memo (docs/ARCHITECTURE.md, "Request reader"), and a request groups again only the
  runs it does not share with the one before, so its blocks cost Python work only for what is new.

Where cache boundaries fall (docs/OPIK.md, "Cache status"): Anthropic caches the prompt as a prefix,
tools then system then messages, up to `cache_control` breakpoints. The first `cache_read` tokens'
worth of the prompt was read, the next `cache_creation` tokens' worth written (ending at the last
breakpoint), the rest sent fresh. The write end is the last breakpoint; the read end is placed in
proportion to the two counts within the cached prefix, and moved to a block boundary when one is
close. Every tier with tokens keeps at least one character, so the contract's allocation rule
gives every tier's tokens back to blocks.
"""

import bisect
import json
from functools import lru_cache
from itertools import repeat
from json.encoder import encode_basestring_ascii
from operator import itemgetter
from typing import Any, NamedTuple

from opik_cipx.materialize.attribution.model import (
    AGENTS,
    COMPACTION,
    MEMORY,
    PRIOR_ASSISTANT,
    SKILLS,
    SLASH_COMMAND,
    SYSTEM_PROMPT,
    SYSTEM_REMINDER,
    TOOL_IO,
    TOOLS_BUILTIN,
    TOOLS_MCP,
    UNATTRIBUTED,
    USER_PROMPT,
    Part,
)
from opik_cipx.materialize.attribution.prompt import Prompt, Run
from opik_cipx.materialize.attribution.tools import mcp_tool
from opik_cipx.materialize.call import CallRecord
from opik_cipx.materialize.pricing import count
from opik_cipx.materialize.usage import Usage
from opik_cipx.store.spool_lines import Encoded

READ, WRITE, FRESH = "read", "write", "fresh"
MEMORY_KINDS = {"user": "user_global", "project": "project_instructions", "local": "project_instructions",
                "auto-memory": "auto_memory", "team-memory": "auto_memory", "managed": "rule"}
RULES_DIR = "/.claude/rules/"
SKILL_TOOL = "Skill"
SNAP_CHARS = 64  # a breakpoint's cut moves to a run boundary this close (over the block's own closing syntax)
SNAP_SHARE = 0.02  # a cut placed in proportion moves to a run boundary within this share of the range
FIELDS = ("category", "side", "cache_status", "chars", "tool_name", "tool_server", "tool_use_id", "resource", "kind",
          "subcategory", "sha256")


class Block(NamedTuple):
    """One entry of `metadata.cipx.blocks`; "" is an empty field (left out of the JSON)."""

    category: str
    side: str
    cache_status: str
    chars: int
    tool_name: str = ""
    tool_server: str = ""
    tool_use_id: str = ""
    resource: str = ""
    kind: str = ""
    subcategory: str = ""
    sha256: str = ""


class Kind(NamedTuple):
    """What a block is, all but its side, cache status and size (`Block`'s fields from `tool_name` on)."""

    category: str
    tool_name: str = ""
    tool_server: str = ""
    tool_use_id: str = ""
    resource: str = ""
    kind: str = ""
    subcategory: str = ""
    sha256: str = ""


class _Groups:
    """A prompt's runs grouped into blocks before cache boundaries cut them: consecutive runs of one
    description and bucket. Kept in the prompt's memo for the conversation's next request, which
    groups again only the runs after those the two share (`_grouped`), with the JSON of the first
    groups as whole `read` blocks (what a growing session's next call reads from the cache)."""

    __slots__ = ("runs", "ends", "kinds", "buckets", "firsts", "starts", "sizes", "items", "texts")

    def __init__(self, runs: list[Run], ends: list[int], kinds: list[Kind], buckets: list[str], firsts: list[int],
                 starts: list[int], sizes: list[int], items: list[dict[str, Any]], texts: list[str]):
        self.runs, self.ends = runs, ends  # the prompt's runs; where each ends
        self.kinds, self.buckets = kinds, buckets  # per group: its description and bucket
        self.firsts, self.starts, self.sizes = firsts, starts, sizes  # per group: its first run, start and size
        self.items, self.texts = items, texts  # the first groups as whole `read` blocks (`_block`), made as needed


class _Placed(NamedTuple):
    """The request's blocks: the groups cut at the cache boundaries. Blocks [0, `read`) were read,
    [`read`, `written`) written, the rest fresh; blocks [0, `whole`) are groups no cut changed."""

    groups: _Groups
    kinds: list[Kind]
    sizes: list[int]
    read: int
    written: int
    whole: int


def metadata(call: CallRecord) -> dict[str, Any]:
    """`metadata.cipx` of the call's llm span."""
    return {"call": call_section(call), "blocks": _blocks_encoded(call)}


def call_section(call: CallRecord) -> dict[str, Any]:
    """`metadata.cipx.call`."""
    config = call.config
    out: dict[str, Any] = {
        "model": call.model or "",
        "usage": call.usage.original if call.usage else {},
        "config": {"effort": config.effort, "thinking_type": config.thinking_type, "max_tokens": config.max_tokens,
                   "context_management": config.context_management, "speed": config.speed},
        "trigger": call.trigger.name,
        "trigger_detail": call.trigger.detail,
        "turn_key": call.turn_digest,
    }
    if call.agent is not None:
        out["parent_tool_use_id"] = call.agent.tool_use_id
    if call.link_failure:
        out["link_failure_reason"] = call.link_failure
    if call.response.omitted_bytes:  # the wire kept the response in part (materialize/response.py)
        out["output_truncated"] = True
        if call.response.usage_incomplete:
            out["usage_incomplete"] = True
    return out


def block_json(block: Block) -> dict[str, Any]:
    """A block as JSON, its empty fields left out."""
    item = _template(Kind(block.category, *block[4:]), block.side, block.cache_status)[0].copy()
    item["chars"] = block.chars
    return item


def _blocks_encoded(call: CallRecord) -> Encoded:
    """`metadata.cipx.blocks`: JSON objects (`block_json`) with the text the spool writes as it is."""
    items, texts = _input_json(_placed(call))
    made = [_block(Kind(block.category, *block[4:]), block.side, block.cache_status, block.chars)
            for block in output_blocks(call.response.content, call.usage)]
    items += map(itemgetter(0), made)
    texts += map(itemgetter(1), made)
    return Encoded(items, f"[{','.join(texts)}]")


def input_json(prompt: Prompt, tokens: tuple[int, int, int], agent: str = "") -> Encoded:
    """`input_blocks` as JSON objects (`block_json`) with their text, as `metadata.cipx.blocks` has them."""
    items, texts = _input_json(_cut(_grouped(prompt, agent), prompt.breakpoints, tokens))
    return Encoded(items, f"[{','.join(texts)}]")


def _input_json(placed: _Placed) -> tuple[list[dict[str, Any]], list[str]]:
    """The request's blocks as JSON objects and texts: the leading `read` blocks that are whole groups
    from the groups kept for the conversation (`_Groups.items`, made once per group), the rest block
    by block (`_block`)."""
    groups, kinds, sizes, read, written = placed.groups, placed.kinds, placed.sizes, placed.read, placed.written
    kept = min(read, placed.whole)
    if len(groups.items) < kept:
        made = list(map(_block, kinds[len(groups.items):kept], repeat("input"), repeat(READ),
                        sizes[len(groups.items):kept]))
        groups.items += map(itemgetter(0), made)
        groups.texts += map(itemgetter(1), made)
    statuses = [READ] * (read - kept) + [WRITE] * (written - read) + [FRESH] * (len(kinds) - written)
    made = list(map(_block, kinds[kept:], repeat("input"), statuses, sizes[kept:]))
    items, texts = groups.items[:kept], groups.texts[:kept]
    items += map(itemgetter(0), made)
    texts += map(itemgetter(1), made)
    return items, texts


@lru_cache(maxsize=8192)
def _block(kind: Kind, side: str, status: str, chars: int) -> tuple[dict[str, Any], str]:
    """A block as JSON (shared by every record that has it: read-only) and as text."""
    template, head, tail = _template(kind, side, status)
    return dict(template, chars=chars), f"{head}{chars}{tail}"


@lru_cache(maxsize=4096)
def _template(kind: Kind, side: str, status: str) -> tuple[dict[str, Any], str, str]:
    """A block of this kind, side and status as JSON with `chars` 0 (copied, never changed), and its
    text before and after the size, as the spool's encoder writes it (member names here need no
    escaping; values are strings)."""
    head: dict[str, Any] = {"category": kind.category, "side": side}
    if status:
        head["cache_status"] = status
    rest = {name: value for name, value in zip(FIELDS[4:], kind[1:], strict=True) if value}
    text = "{" + ",".join(f'"{name}":{encode_basestring_ascii(value)}' for name, value in head.items())
    rest_text = "".join(f',"{name}":{encode_basestring_ascii(value)}' for name, value in rest.items())
    return {**head, "chars": 0, **rest}, text + ',"chars":', rest_text + "}"


def blocks(call: CallRecord) -> list[Block]:
    """The call's blocks: the request's, in prompt order, then the answer's."""
    placed = _placed(call)
    return [*_input(placed), *output_blocks(call.response.content, call.usage)]


def tier_tokens(usage: Usage | None) -> tuple[int, int, int]:
    """(cache read, cache write, uncached input) tokens as the response's top-level fields say (what
    Cost Intelligence allocates); a value that is not a count reads as 0."""
    if usage is None:
        return 0, 0, 0
    original = usage.original
    return (count(original.get("cache_read_input_tokens")), count(original.get("cache_creation_input_tokens")),
            count(original.get("input_tokens")))


# --- the request, in prompt order ------------------------------------------------------------------

def input_blocks(prompt: Prompt, tokens: tuple[int, int, int], agent: str = "") -> list[Block]:
    """The request's blocks: its runs (attribution/prompt.py) in prompt order with their cache status
    for `tokens` (read, write, fresh), consecutive runs of one description, bucket and status
    joined; a run that straddles a cache boundary is cut there. `agent`: the subagent type that
    names a custom agent's definition."""
    return _input(_cut(_grouped(prompt, agent), prompt.breakpoints, tokens))


def _input(placed: _Placed) -> list[Block]:
    statuses = [READ] * placed.read + [WRITE] * (placed.written - placed.read) + [FRESH] * (len(placed.kinds) -
                                                                                         placed.written)
    return [Block(kind.category, "input", status, chars, *kind[1:]) for kind, status, chars in
            zip(placed.kinds, statuses, placed.sizes, strict=True)]


def _placed(call: CallRecord) -> _Placed:
    agent = call.agent.subagent_type if call.agent is not None else None
    prompt = call.attribution.prompt
    return _cut(_grouped(prompt, agent or ""), prompt.breakpoints, tier_tokens(call.usage))


def _grouped(prompt: Prompt, agent: str) -> _Groups:
    """The prompt's runs grouped (`_Groups`): those after the runs it shares with the request the
    prompt's memo kept groups for (of the same `agent`) grouped again, the groups before kept."""
    runs = prompt.runs
    kept = prompt.memo.get((_Groups, agent))
    again = 0  # the first group made again: the last one all of whose runs are shared may go on
    if kept is not None:
        shared = _shared(kept.runs, runs)
        again = max(0, bisect.bisect_right(kept.firsts, shared - 1) - 1)
    if again:  # the kept groups cut back in place (only the memo holds them)
        assert kept is not None
        groups, run, position = kept, kept.firsts[again], kept.starts[again]
        for column in (kept.kinds, kept.buckets, kept.firsts, kept.starts, kept.sizes, kept.items, kept.texts):
            del column[again:]
        del kept.ends[run:]
        kept.runs = runs
    else:
        groups, run, position = _Groups(runs, [], [], [], [], [], [], [], []), 0, 0
    ends, kinds, buckets, firsts, starts, sizes = \
        groups.ends, groups.kinds, groups.buckets, groups.firsts, groups.starts, groups.sizes
    last = (kinds[-1], buckets[-1]) if kinds else None
    for index in range(run, len(runs)):
        size, _, owner = runs[index]
        if size:  # (a run of no characters is no block)
            key = (describe(owner.bucket, owner.label, owner.part, agent), owner.bucket)
            if key != last:
                if len(sizes) < len(starts):
                    sizes.append(position - starts[-1])
                kinds.append(key[0])
                buckets.append(owner.bucket)
                firsts.append(index)
                starts.append(position)
                last = key
            position += size
        ends.append(position)
    if len(sizes) < len(starts):
        sizes.append(position - starts[-1])
    prompt.memo[(_Groups, agent)] = groups
    return groups


def _shared(old: list[Run], new: list[Run]) -> int:
    """How many leading runs two prompts share (slices compared in C, halving the range)."""
    high = min(len(old), len(new))
    if old[:high] == new[:high]:
        return high
    low = 0  # old[:low] == new[:low] and old[:high] != new[:high]
    while high - low > 1:
        middle = (low + high) // 2
        if old[low:middle] == new[low:middle]:
            low = middle
        else:
            high = middle
    return low


def _cut(groups: _Groups, breakpoints: list[int], tokens: tuple[int, int, int]) -> _Placed:
    """The groups as blocks with their cache status for `tokens` (read, write, fresh): a group that
    straddles a cache boundary is cut there. List operations only, but for the two cuts."""
    total = groups.ends[-1] if groups.ends else 0
    if not total:
        return _Placed(groups, [], [], 0, 0, 0)
    write_end, read_end = boundaries(breakpoints, groups.ends, tokens)
    kinds, starts, sizes, whole = groups.kinds, groups.starts, groups.sizes, len(groups.kinds)
    for cut in (read_end, write_end):  # a block that straddles a cache boundary is cut there
        at = bisect.bisect_right(starts, cut) - 1
        if 0 < cut < total and starts[at] != cut:
            if whole == len(groups.kinds):
                kinds, starts, sizes = list(kinds), list(starts), list(sizes)  # the kept groups stay as they are
            starts.insert(at + 1, cut)
            kinds.insert(at + 1, kinds[at])
            sizes[at:at + 1] = [cut - starts[at], starts[at] + sizes[at] - cut]
            whole = min(whole, at)
    read, written = bisect.bisect_left(starts, read_end), bisect.bisect_left(starts, write_end)
    return _Placed(groups, kinds, sizes, read, written, whole)


def boundaries(breakpoints: list[int], ends: list[int], tokens: tuple[int, int, int]) -> tuple[int, int]:
    """(write end, read end) in prompt positions, for runs ending at `ends`: [0, read end) was read,
    [read end, write end) written, the rest fresh. The write end is the last breakpoint (without
    one, the cached share of the prompt, in proportion to the tokens), the read end the read share
    of the cached prefix, in proportion; each moved to the nearest run boundary when one is close
    (`SNAP_CHARS` of a breakpoint, `SNAP_SHARE` of the range divided), and each tier with tokens
    keeps a character when the prompt has enough."""
    read, write, fresh = tokens
    cached, total = read + write, ends[-1] if ends else 0
    if cached == 0:
        return 0, 0
    edges = [0, *ends]
    if breakpoints:
        write_end = _nearest(edges, breakpoints[-1], 0, total, SNAP_CHARS)
    else:
        write_end = _nearest(edges, round(total * cached / (cached + fresh)), 0, total, total * SNAP_SHARE)
    if fresh:
        write_end = min(write_end, total - 1)
    write_end = max(write_end, min(total, (read > 0) + (write > 0)))
    if not write:
        return write_end, write_end
    if not read:
        return write_end, 0
    read_end = _nearest(edges, round(write_end * read / cached), 1, write_end - 1, write_end * SNAP_SHARE)
    return write_end, max(1, min(read_end, write_end - 1))


def _nearest(edges: list[int], position: int, low: int, high: int, within: float) -> int:
    """The run boundary nearest `position` within [low, high] and `within` characters of it, else
    `position` kept within [low, high]."""
    index = bisect.bisect_left(edges, position)
    candidates = [edges[i] for i in (index - 1, index) if 0 <= i < len(edges) and low <= edges[i] <= high
                  and abs(edges[i] - position) <= within]
    if not candidates:
        return max(low, min(position, high))
    return min(candidates, key=lambda candidate: (abs(candidate - position), candidate))


# --- what each block is ------------------------------------------------------------------------------

@lru_cache(maxsize=16384)
def describe(bucket: str, label: str | None, part: Part, agent: str = "") -> Kind:
    """The block a region of `bucket`, `label` and `part` belongs to (docs/OPIK.md, "Categories");
    `agent` names a custom agent's definition (the `custom` label)."""
    if bucket == SYSTEM_PROMPT:
        if part.kind in ("environment", "git_status"):
            return Kind("env_info")
        return Kind("agent_overhead" if label == "agent_harness" else "system_prompt")
    if bucket in (TOOLS_BUILTIN, TOOLS_MCP):
        return _tool_schema(part)
    if bucket == SKILLS:
        return Kind("skills_menu" if label == "menu" else "skills_loaded", resource=part.resource)
    if bucket == MEMORY:
        return Kind("memory", resource=part.resource, subcategory=_memory_kind(part), sha256=part.sha256)
    if bucket == AGENTS:  # a custom agent's definition is named by the Agent call that launched it
        return Kind("custom_agents", resource=part.resource or (agent if label == "custom" else ""))
    if bucket in (USER_PROMPT, PRIOR_ASSISTANT) and part.kind in ("image", "document"):
        return Kind("file_attachments", resource=part.resource, kind=part.kind)
    if bucket == USER_PROMPT or bucket == SLASH_COMMAND and part.kind == "prompt":
        return Kind("user_prompts")
    if bucket == PRIOR_ASSISTANT:
        return Kind("prior_assistant", kind=part.kind or "text")
    if bucket == TOOL_IO or bucket == COMPACTION and part.kind == "tool_result":
        category = "prior_assistant" if part.kind == "tool_use" else "tool_io"
        return Kind(category, part.tool_name, part.tool_server, part.tool_use_id, kind=part.kind or "tool_result")
    if bucket == COMPACTION:  # the summary stands for the earlier conversation; the request's prompt is the harness's
        return Kind("prior_assistant", kind="text") if label == "continued_summary" else Kind("system_prompt")
    if bucket == SYSTEM_REMINDER and part.kind in ("environment", "git_status"):
        return Kind("env_info")
    if bucket == UNATTRIBUTED:
        return Kind("unknown")
    return Kind(bucket)  # slash_command (a local command's), system_reminder, envelope: no lane


def _tool_schema(part: Part) -> Kind:
    deferred = part.kind == "deferred"
    if part.kind == "instructions":
        return Kind("mcp_server_instructions", tool_server=part.tool_server)
    if part.tool_server:
        return Kind("mcp_tools_deferred" if deferred else "mcp_tools_active", part.tool_name, part.tool_server)
    return Kind("system_tools_deferred" if deferred else "system_tools", part.tool_name)


def _memory_kind(part: Part) -> str:
    if RULES_DIR in part.resource:
        return "rule"
    return MEMORY_KINDS.get(part.subcategory, "")


# --- the answer ------------------------------------------------------------------------------------

def output_blocks(content: list[dict], usage: Usage | None) -> list[Block]:
    """One block per content block of the answer (results of server tools are not output). An
    answer with billed output and no characters weighs each block 1, or is one `unknown` block of 1,
    so the output tier keeps its tokens."""
    out = [block for block in map(_output_block, content) if block is not None]
    if usage is not None and count(usage.original.get("output_tokens")) and not any(block.chars for block in out):
        out = [block._replace(chars=1) for block in out] or [Block("unknown", "output", "", 1)]
    return out


def _output_block(block: Any) -> Block | None:
    kind = block.get("type") if isinstance(block, dict) else None
    if kind == "thinking":
        return Block("thinking", "output", "", _length(block.get("thinking")))
    if kind == "redacted_thinking":
        return Block("thinking", "output", "", _length(block.get("data")))
    if kind == "text":
        return Block("assistant_text", "output", "", _length(block.get("text")))
    if kind not in ("tool_use", "server_tool_use", "mcp_tool_use"):
        return None
    name = block.get("name") if isinstance(block.get("name"), str) else ""
    chars = len(json.dumps(block.get("input"), ensure_ascii=False))
    call_id = block.get("id") if isinstance(block.get("id"), str) else ""
    server = (mcp_tool(name) or ("",))[0]
    if server:
        return Block("mcp_tool_calls", "output", "", chars, name, server, call_id)
    tool_input = block.get("input")
    skill = tool_input.get("skill") if name == SKILL_TOOL and isinstance(tool_input, dict) else None
    if isinstance(skill, str):
        return Block("skill_invocations", "output", "", chars, name, "", call_id, skill)
    return Block("built_in_tool_calls", "output", "", chars, name, "", call_id)


def _length(value: object) -> int:
    return len(value) if isinstance(value, str) else 0


