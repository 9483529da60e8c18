"""Compaction: the summary request, the continued-session summary, and re-attached files.

`/compact` (or auto-compaction) appends a text block holding `Your task is to create a
detailed summary of the conversation so far` to the last user message. The next requests
open with `This session is being continued from a previous conversation…` and carry the files
Claude Code re-read after compacting as `Called the <Tool> tool with the following input:`
sections of a `role:"system"` message; those count to compaction (label `reattached_files`)
because they exist only because of the compaction. Without a continued-session summary in
the request, such a section counts to tool_io under the tool's name.
"""

from opik_cipx.materialize.attribution import tools
from opik_cipx.materialize.attribution.facts import Facts
from opik_cipx.materialize.attribution.model import COMPACTION, Part, Piece

SUMMARY_PROMPT = "Your task is to create a detailed summary of the conversation so far"
CONTINUED = "This session is being continued from a previous conversation"
REATTACHED = r"Called the (\S+) tool with the following input:"


TEXT = Part(kind="text")


def summary_prompt(start: int, end: int, facts: Facts) -> Piece:
    facts.compaction["request"] = True
    return Piece(start, end, COMPACTION, "summary_prompt", ((facts.compaction, "prompt_chars"),), TEXT)


def continued_summary(start: int, end: int, facts: Facts) -> Piece:
    facts.compaction["continued_summary"] = True
    return Piece(start, end, COMPACTION, "continued_summary", ((facts.compaction, "summary_chars"),), TEXT)


def reattached(start: int, end: int, tool: str, facts: Facts) -> Piece:
    """A file re-attached after the compaction: the result of calling `tool` on it."""
    return Piece(start, end, COMPACTION, "reattached_files", ((facts.compaction, "reattached_chars"),),
                 tools.part(tool, kind="tool_result"))
