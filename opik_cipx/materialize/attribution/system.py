"""The `system` array: billing header, SDK identity line, and the main or agent prompt.

The main prompt is labelled by its `# <heading>` sections (`# Harness`, `# Memory`,
`# Environment`, ...), the text before the first heading as `preamble`; a `# MCP Server
Instructions` section counts to tools_mcp by server. In a subagent request (billing header
carries `cc_is_subagent=true`) the first prompt block after the header and identity line may be
a custom agent definition (agents.py). The environment and git status sections keep the label of
the section they are in, as pieces of their own (environment.carve).
"""

import re

from opik_cipx.materialize.attribution import agents, environment, tools
from opik_cipx.materialize.attribution.facts import Facts
from opik_cipx.materialize.attribution.model import SYSTEM_PROMPT, Piece

BILLING_HEADER = "x-anthropic-billing-header:"
SUBAGENT_FLAG = "cc_is_subagent=true"
IDENTITIES = (
    "You are a Claude agent, built on Anthropic's Claude Agent SDK.",
    "You are Claude Code, Anthropic's official CLI for Claude",
)
_SECTION = re.compile(r"^# (.+)$", re.M)


class SystemPrompt:
    """Classifies the system blocks of one request, in order."""

    def __init__(self, facts: Facts):
        self.facts = facts
        self.subagent = False
        self.prompt_seen = False

    def block(self, text: str) -> list[Piece]:
        if text.startswith(BILLING_HEADER):
            self.subagent = self.subagent or SUBAGENT_FLAG in text
            return [Piece(0, len(text), SYSTEM_PROMPT, "billing_header")]
        if text.startswith(IDENTITIES) and "\n" not in text:
            return [Piece(0, len(text), SYSTEM_PROMPT, "identity")]
        first_prompt = not self.prompt_seen
        self.prompt_seen = True
        if self.subagent and first_prompt:
            custom = agents.custom_definition(text, self.facts)
            if custom is not None:
                return environment.carve(text, custom)
        return environment.carve(text, self._sections(text))

    def _sections(self, text: str) -> list[Piece]:
        headings = list(_SECTION.finditer(text))
        pieces = [Piece(0, headings[0].start() if headings else len(text), SYSTEM_PROMPT, "preamble")]
        for index, heading in enumerate(headings):
            stop = headings[index + 1].start() if index + 1 < len(headings) else len(text)
            if heading.group(0) == tools.MCP_INSTRUCTIONS:
                pieces += tools.instructions(text, heading.start(), stop, self.facts)
            else:
                pieces.append(Piece(heading.start(), stop, SYSTEM_PROMPT, heading.group(1).strip()))
        return pieces
