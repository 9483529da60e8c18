"""`metadata.cipx` of an llm span: the call and its blocks, as Opik's Cost Intelligence reads them
(docs/OPIK.md, "Cost Intelligence"; the contract is its spec, `opik-cost-intelligence.md`).

Pure functions of the call record, never of `metadata.cc`:
- `call_section`: model, usage as returned, config, trigger, turn key, the subagent link;
- `blocks`: the request's runs in prompt order (tools, system, messages, then the request's own
  parameters: `attribution.prompt`, each run one region with the envelope around it) with their
  `cache_status`, consecutive runs of one description and status joined (`input_blocks`); then
  one block per content block of the answer (`output_blocks`). `block_json` omits empty fields.

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
from collections.abc import Iterable
from functools import lru_cache
from itertools import accumulate, compress
from operator import itemgetter, ne, sub
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
from opik_cipx.materialize.attribution.prompt import Prompt
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


Columns = tuple[list[Kind], list[str], list[str], list[int]]  # per block: kind, side, cache status, chars
_json = json.JSONEncoder(separators=(",", ":")).encode  # as the spool encodes


def metadata(call: CallRecord) -> dict[str, Any]:
    """`metadata.cipx` of the call's llm span."""
    return {"call": call_section(call), "blocks": blocks_json(*_columns(call))}


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


def blocks_json(kinds: list[Kind], sides: Iterable[str], statuses: Iterable[str], sizes: list[int]) -> Encoded:
    """Blocks given as columns, as `metadata.cipx.blocks`: JSON objects (`block_json`) with the text
    the spool writes as it is. A session's next call repeats most blocks of the one before, so each
    block's object and text are kept (`_block`)."""
    made = list(map(_block, kinds, sides, statuses, sizes))
    return Encoded(list(map(itemgetter(0), made)), f"[{','.join(map(itemgetter(1), made))}]")


@lru_cache(maxsize=8192)
def _block(kind: Kind, side: str, status: str, chars: int) -> tuple[dict[str, Any], str]:
    """A block as JSON (shared by every record that has it: read-only) and as text."""
    template, head, tail = _template(kind, side, status)
    return dict(template, chars=chars), f"{head}{chars}{tail}"


@lru_cache(maxsize=4096)
def _template(kind: Kind, side: str, status: str) -> tuple[dict[str, Any], str, str]:
    """A block of this kind, side and status as JSON with `chars` 0 (copied, never changed), and its
    text before and after the size."""
    head: dict[str, Any] = {"category": kind.category, "side": side}
    if status:
        head["cache_status"] = status
    rest = {name: value for name, value in zip(FIELDS[4:], kind[1:], strict=True) if value}
    text = _json(head)[:-1] + ',"chars":'
    return {**head, "chars": 0, **rest}, text, "," + _json(rest)[1:] if rest else "}"


def blocks(call: CallRecord) -> list[Block]:
    """The call's blocks: the request's, in prompt order, then the answer's."""
    return [Block(kind.category, side, status, chars, *kind[1:]) for kind, side, status, chars in
            zip(*_columns(call), strict=True)]


def _columns(call: CallRecord) -> Columns:
    agent = call.agent.subagent_type if call.agent is not None else None
    kinds, statuses, sizes = _input_runs(call.attribution.prompt, tier_tokens(call.usage), agent or "")
    sides = ["input"] * len(kinds)
    for block in output_blocks(call.response.content, call.usage):
        kinds.append(Kind(block.category, *block[4:]))
        sides.append(block.side)
        statuses.append(block.cache_status)
        sizes.append(block.chars)
    return kinds, sides, statuses, sizes


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
    kinds, statuses, sizes = _input_runs(prompt, tokens, agent)
    return [Block(kind.category, "input", status, chars, *kind[1:]) for kind, status, chars in
            zip(kinds, statuses, sizes, strict=True)]


def _input_runs(prompt: Prompt, tokens: tuple[int, int, int], agent: str) -> tuple[list[Kind], list[str], list[int]]:
    """`input_blocks` as three lists: each block's kind, cache status and size. Per run, only its
    description is looked up in Python; grouping, cutting and sizes are list operations."""
    runs = prompt.runs if all(map(itemgetter(0), prompt.runs)) else [run for run in prompt.runs if run[0]]
    if not runs:
        return [], [], []
    ends = list(accumulate(map(itemgetter(0), runs)))
    total = ends[-1]
    write_end, read_end = boundaries(prompt.breakpoints, ends, tokens)
    keys = [(describe(owner.bucket, owner.label, owner.part, agent), owner.bucket) for _, _, owner in runs]
    firsts = [0, *compress(range(1, len(keys)), map(ne, keys[1:], keys))]  # each block's first run
    kinds = [keys[index][0] for index in firsts]
    starts = list(map([0, *ends[:-1]].__getitem__, firsts))  # where each block starts
    for cut in (read_end, write_end):  # a block that straddles a cache boundary is cut there
        at = bisect.bisect_right(starts, cut) - 1
        if 0 < cut < total and starts[at] != cut:
            starts.insert(at + 1, cut)
            kinds.insert(at + 1, kinds[at])
    read, written = bisect.bisect_left(starts, read_end), bisect.bisect_left(starts, write_end)
    statuses = [READ] * read + [WRITE] * (written - read) + [FRESH] * (len(starts) - written)
    return kinds, statuses, list(map(sub, [*starts[1:], total], starts))


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


