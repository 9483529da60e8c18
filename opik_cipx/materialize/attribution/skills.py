"""Skills: the menu in the `role:"system"` message and skill bodies loaded into the conversation.

The menu is one piece per skill listed (`- <name>: <description>` to the next entry; the text
before the first entry on its own), all labelled `menu`. A skill body is the text block starting
`Base directory for this skill: <dir>` that follows a `Skill` tool_result (`Launching skill:
<name>`) or a slash-invoked skill's command tags; its label is the directory's last component, the
skill's name.
"""

import re

from opik_cipx.materialize.attribution.facts import Facts, sha256
from opik_cipx.materialize.attribution.model import SKILLS, Part, Piece

MENU = "The following skills are available for use with the Skill tool:"
BODY = "Base directory for this skill:"
LIST_ENTRY = re.compile(r"^- ([^\s:][^:\n]*):", re.M)
_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n)+")


def menu(text: str, start: int, end: int, facts: Facts) -> list[Piece]:
    names, pieces = listing(text, start, end, SKILLS, "menu")
    facts.skill_menu.extend(names)
    return pieces


def listing(text: str, start: int, end: int, bucket: str, label: str) -> tuple[list[str], list[Piece]]:
    """The names of the `- <name>:` entries of the list text[start:end], and its pieces: the text
    before the first entry, then one per entry (its `resource` the name) up to the next entry or
    past the first blank line, and any text after the last entry on its own."""
    entries = list(LIST_ENTRY.finditer(text, start, end))
    pieces = [Piece(start, entries[0].start() if entries else end, bucket, label)]
    for index, entry in enumerate(entries):
        stop = entries[index + 1].start() if index + 1 < len(entries) else end
        blank = _BLANK_LINES.search(text, entry.start(), stop)
        cut = blank.end() if blank else stop
        pieces.append(Piece(entry.start(), cut, bucket, label, (), Part(resource=entry.group(1))))
        if cut < stop:
            pieces.append(Piece(cut, stop, bucket, label))
    return [entry.group(1) for entry in entries], pieces


def loaded(text: str, start: int, end: int, facts: Facts) -> list[Piece]:
    """The skill body text[start:end], which starts with `Base directory for this skill:`."""
    line_end = text.find("\n", start, end)
    directory = text[start + len(BODY) : end if line_end < 0 else line_end].strip()
    name = directory.rstrip("/").rsplit("/", 1)[-1] or "unknown"
    record = {"name": name, "path": directory, "chars": 0, "sha256": sha256(text[start:end])}
    facts.skills_loaded.append(record)
    return [Piece(start, end, SKILLS, name, ((record, "chars"),), Part(resource=name))]
