"""What one call tells `advise`, from its call record alone (docs/ADVICE.md, "What the ledger keeps").

Pure. A call's prompt is placed in cache tiers exactly as its `metadata.cipx` blocks are
(`materialize/cipx.boundaries`: what it read, what it wrote, what it sent fresh), and each tier's
tokens are given to the characters of that tier in proportion (Cost Intelligence's allocation
rule), so a piece's tokens by tier are `tier tokens x its characters in the tier / the tier's
characters`; a piece's cache writes are split into 5-minute and 1-hour writes in the proportion of
the call's own.

- `parts`: per definition group, the tokens by tier of what defines it in the request, and whether
  the call used it. Groups (`PARTS`): an MCP server (`mcp`: its tool schemas and its instructions),
  a skill (`skill`: its entry in the list of available skills), an agent (`agent`: its entry in the
  list of agent types), a memory file (`memory`: CLAUDE.md, rules, auto memory; by path).
  `invocations` counts the answer's calls of it (an `mcp__<server>__*` tool, `Skill` naming the
  skill, `Agent`/`Task` naming the agent type); `loaded` says the request carries a use of it (a
  tool call or result of the server, the skill's body, the agent's own definition: the call is
  that agent running).
- `history_read`: the tokens of the conversation (prompts, answers, tool calls and results,
  compaction summaries, reminders: what a compaction replaces) the call read from the cache;
  `messages_read`: every token of the `messages` it read from the cache.
"""

from itertools import accumulate
from operator import itemgetter
from typing import NamedTuple

from opik_cipx.materialize.attribution.model import (
    AGENTS,
    COMPACTION,
    MEMORY,
    PRIOR_ASSISTANT,
    SKILLS,
    SLASH_COMMAND,
    SYSTEM_REMINDER,
    TOOL_IO,
    TOOLS_MCP,
    USER_PROMPT,
    Region,
)
from opik_cipx.materialize.attribution.tools import mcp_tool
from opik_cipx.materialize.call import CallRecord
from opik_cipx.materialize.cipx import SKILL_TOOL, boundaries, tier_tokens
from opik_cipx.materialize.turns import AGENT_TOOLS

MCP, SKILL, AGENT, MEMORY_FILE = "mcp", "skill", "agent", "memory"
PARTS = (MCP, SKILL, AGENT, MEMORY_FILE)
HISTORY_BUCKETS = frozenset({USER_PROMPT, SLASH_COMMAND, TOOL_IO, PRIOR_ASSISTANT, COMPACTION, SYSTEM_REMINDER})
TOOL_USES = ("tool_use", "mcp_tool_use")


class PartRow(NamedTuple):
    """One definition group of one call: its tokens by tier, the answer's calls of it, and whether
    the request carries a use of it (0 / 1)."""

    part: str
    name: str
    fresh: float
    read: float
    write_5m: float
    write_1h: float
    invocations: int = 0
    loaded: int = 0


class CallFacts(NamedTuple):
    parts: tuple[PartRow, ...] = ()
    history_read: float = 0.0
    messages_read: float = 0.0


def call_facts(call: CallRecord) -> CallFacts:
    """The call's definition groups and the conversation it read; nothing for a call without usage."""
    usage, prompt = call.usage, call.attribution.prompt
    if usage is None or prompt is None:  # no usage; an attribution made without the prompt order (tests)
        return CallFacts()
    read, write, fresh = tokens = tier_tokens(usage)
    ends = list(accumulate(map(itemgetter(0), prompt.runs)))
    total = ends[-1] if ends else 0
    write_end, read_end = boundaries(prompt.breakpoints, ends, tokens) if ends else (0, 0)
    per_char = (read / read_end if read_end else 0.0, write / (write_end - read_end) if write_end > read_end else 0.0,
                fresh / (total - write_end) if total > write_end else 0.0)
    start_of_messages, end_of_messages = _messages(call)
    agent = call.agent.subagent_type if call.agent is not None else None
    chars: dict[tuple[str, str], list[int]] = {}  # group -> characters read, written, fresh
    used: set[tuple[str, str]] = {(AGENT, agent)} if agent else set()
    history = messages = 0
    for (size, _, owner), end in zip(prompt.runs, ends, strict=True):
        start = end - size
        split = (max(0, min(end, read_end) - start), max(0, min(end, write_end) - max(start, read_end)),
                 max(0, end - max(start, write_end)))
        if start_of_messages <= start and end <= end_of_messages:
            messages += split[0]
            history += split[0] if owner.bucket in HISTORY_BUCKETS else 0
        group = _group(owner)
        if group is not None:
            counted = chars.setdefault(group, [0, 0, 0])
            for tier in range(3):
                counted[tier] += split[tier]
        elif (use := _use(owner, agent)) is not None:
            used.add(use)
    fives = usage.cache_write_5m / usage.cache_write if usage.cache_write else 1.0
    invoked = _invocations(call.response.content)
    rows = []
    for (part, name), (in_read, in_write, in_fresh) in chars.items():
        written = in_write * per_char[1]
        rows.append(PartRow(part, name, in_fresh * per_char[2], in_read * per_char[0], written * fives,
                            written * (1 - fives), invoked.get((part, name), 0), int((part, name) in used)))
    for group in sorted(used.union(invoked) - chars.keys()):  # used without being defined in this request
        rows.append(PartRow(*group, 0.0, 0.0, 0.0, 0.0, invoked.get(group, 0), int(group in used)))
    return CallFacts(tuple(rows), history * per_char[0], messages * per_char[0])


def _messages(call: CallRecord) -> tuple[int, int]:
    """Where `messages` lies in prompt order (tools, then system, then messages): [start, end)."""
    sections = call.attribution.layout.sections
    if "messages" not in sections:
        return 0, 0
    before = sum(end - start for name, (start, end) in sections.items() if name in ("tools", "system"))
    start, end = sections["messages"]
    return before, before + end - start


def _group(region: Region) -> tuple[str, str] | None:
    """The definition group a region belongs to, if any."""
    part = region.part
    if region.bucket == TOOLS_MCP and part.tool_server:
        return MCP, part.tool_server
    if region.bucket == SKILLS and region.label == "menu" and part.resource:
        return SKILL, part.resource
    if region.bucket == AGENTS and region.label == "list" and part.resource:
        return AGENT, part.resource
    if region.bucket == MEMORY and part.resource:
        return MEMORY_FILE, part.resource
    return None


def _use(region: Region, agent: str | None) -> tuple[str, str] | None:
    """The group a region shows a use of: a tool call or result of an MCP server, a skill's body,
    a custom agent's definition."""
    part = region.part
    if region.bucket == TOOL_IO and part.tool_server:
        return MCP, part.tool_server
    if region.bucket == SKILLS and region.label != "menu" and part.resource:
        return SKILL, part.resource
    if region.bucket == AGENTS and region.label == "custom" and agent:
        return AGENT, agent
    return None


def _invocations(content: list[dict]) -> dict[tuple[str, str], int]:
    """The answer's calls of each group: MCP tools by server, `Skill` by skill, `Agent` by type."""
    out: dict[tuple[str, str], int] = {}
    for block in content:
        if not isinstance(block, dict) or block.get("type") not in TOOL_USES or not isinstance(block.get("name"), str):
            continue
        name, given = block["name"], block.get("input")
        given = given if isinstance(given, dict) else {}
        server = mcp_tool(name)
        if server is not None:
            group = (MCP, server[0])
        elif name == SKILL_TOOL and isinstance(given.get("skill"), str):
            group = (SKILL, given["skill"])
        elif name in AGENT_TOOLS and isinstance(given.get("subagent_type"), str):
            group = (AGENT, given["subagent_type"])
        else:
            continue
        out[group] = out.get(group, 0) + 1
    return out
