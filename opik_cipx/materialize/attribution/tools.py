"""Tool definitions: built-in tools by name, MCP tools and MCP server instructions by server.

MCP tools are named `mcp__<server>__<tool>`. A plugin's server arrives as
`mcp__plugin_<plugin>_<server>__<tool>`; plugin and server names may both contain `_`, so the
label is the whole `plugin_<plugin>_<server>` id rather than a guessed split.
"""

import re

from opik_cipx.materialize.attribution.facts import Facts
from opik_cipx.materialize.attribution.model import TOOLS_BUILTIN, TOOLS_MCP, Part, Piece, Tally

MCP_PREFIX = "mcp__"
MCP_INSTRUCTIONS = "# MCP Server Instructions"
INSTRUCTIONS = Part(kind="instructions")
_SERVER_HEADING = re.compile(r"^## (.+)$", re.M)


def mcp_tool(name: str) -> tuple[str, str] | None:
    """(server, tool) of an MCP tool name, or None for a built-in tool."""
    if not name.startswith(MCP_PREFIX):
        return None
    server, _, tool = name[len(MCP_PREFIX) :].partition("__")
    return server, tool


def part(name: str, **fields: str) -> Part:
    """The part of a piece about the tool `name` (its MCP server too, for an MCP tool)."""
    parsed = mcp_tool(name)
    return Part(tool_name=name, tool_server=parsed[0] if parsed else "", **fields)


def definition(name: str, deferred: bool, facts: Facts) -> tuple[str, str, Tally, Part]:
    """Bucket, label, tally and part of the tool definition called `name` (`deferred`: loaded on
    demand, `defer_loading`)."""
    parsed = mcp_tool(name)
    described = part(name, kind="deferred" if deferred else "")
    if parsed is None:
        facts.builtin_tools.append(name)
        return TOOLS_BUILTIN, name, (), described
    server, tool = parsed
    record = facts.mcp_server(server)
    record["tools"].append(tool)
    return TOOLS_MCP, server, ((record, "chars"),), described


def instructions(text: str, start: int, end: int, facts: Facts) -> list[Piece]:
    """The `# MCP Server Instructions` section text[start:end]: one piece per `## <server>`.

    The section's own heading and preamble count to tools_mcp without a server label.
    """
    headings = list(_SERVER_HEADING.finditer(text, start, end))
    pieces = [Piece(start, headings[0].start() if headings else end, TOOLS_MCP, None, (), INSTRUCTIONS)]
    for index, heading in enumerate(headings):
        stop = headings[index + 1].start() if index + 1 < len(headings) else end
        server = heading.group(1).strip()
        record = facts.mcp_server(server)
        tally = ((record, "chars"), (record, "instructions_chars"))
        pieces.append(Piece(heading.start(), stop, TOOLS_MCP, server, tally,
                            Part(kind="instructions", tool_server=server)))
    return pieces
