"""Skills: the menu in the `role:"system"` message and skill bodies loaded into the conversation.

A skill body is the text block starting `Base directory for this skill: <dir>` that follows
a `Skill` tool_result (`Launching skill: <name>`) or a slash-invoked skill's command tags; its
label is the directory's last component, the skill's name.
"""

import re

from opik_cipx.materialize.attribution.facts import Facts, sha256
from opik_cipx.materialize.attribution.model import SKILLS, Piece

MENU = "The following skills are available for use with the Skill tool:"
BODY = "Base directory for this skill:"
LIST_ENTRY = re.compile(r"^- ([^\s:][^:\n]*):", re.M)


def menu(text: str, start: int, end: int, facts: Facts) -> list[Piece]:
    facts.skill_menu.extend(LIST_ENTRY.findall(text, start, end))
    return [Piece(start, end, SKILLS, "menu")]


def loaded(text: str, start: int, end: int, facts: Facts) -> list[Piece]:
    """The skill body text[start:end], which starts with `Base directory for this skill:`."""
    line_end = text.find("\n", start, end)
    directory = text[start + len(BODY) : end if line_end < 0 else line_end].strip()
    name = directory.rstrip("/").rsplit("/", 1)[-1] or "unknown"
    record = {"name": name, "path": directory, "chars": 0, "sha256": sha256(text[start:end])}
    facts.skills_loaded.append(record)
    return [Piece(start, end, SKILLS, name, ((record, "chars"),))]
