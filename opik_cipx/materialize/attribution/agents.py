"""Agents: the agent-type list in the `role:"system"` message and custom agent definitions.

A subagent request's agent prompt (the system block after the SDK identity line) is either a
built-in agent's prompt, whose first line names Claude Code ("..., Anthropic's official CLI
for Claude."), or a custom agent's .md body followed by the harness's common trailer
(`Notes:` bullets, `<env>`, model line). The body is agents; the trailer stays system_prompt.
"""

from opik_cipx.materialize.attribution.facts import Facts, sha256
from opik_cipx.materialize.attribution.model import AGENTS, SYSTEM_PROMPT, Piece
from opik_cipx.materialize.attribution.skills import listing

LIST = "Available agent types for the Agent tool:"
BUILTIN_MARK = "Anthropic's official CLI for Claude"
_TRAILERS = (
    "\n\nNotes:\n- Agent threads",
    "\n\nHere is useful information about the environment you are running in:",
)


def agent_list(text: str, start: int, end: int, facts: Facts) -> list[Piece]:
    """The agent list text[start:end]: one piece per agent listed, all labelled `list`."""
    names, pieces = listing(text, start, end, AGENTS, "list")
    facts.agents_listed.extend(names)
    return pieces


def custom_definition(text: str, facts: Facts) -> list[Piece] | None:
    """Pieces of a subagent's agent prompt, or None when it is a built-in agent's prompt."""
    if BUILTIN_MARK in text.lstrip().split("\n", 1)[0]:
        return None
    found = [at for at in (text.find(trailer) for trailer in _TRAILERS) if at >= 0]
    cut = min(found, default=len(text))
    record = {"chars": 0, "sha256": sha256(text[:cut].strip())}
    facts.agents_custom.append(record)
    pieces = [Piece(0, cut, AGENTS, "custom", ((record, "chars"),))]
    if cut < len(text):
        pieces.append(Piece(cut, len(text), SYSTEM_PROMPT, "agent_harness"))
    return pieces
