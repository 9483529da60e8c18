"""Memory files: the `# claudeMd` context reminder, split into one section per file.

Claude Code injects every CLAUDE.md-like file as `Contents of <path> (<description>):` followed
by the trimmed file content, all inside one `<system-reminder>` that also carries other
context keys (`# currentDate`). Each file section (its header line included) is memory under
its path; the reminder's wrapper text is system_reminder.
"""

import re

from opik_cipx.materialize.attribution.facts import Facts, sha256
from opik_cipx.materialize.attribution.model import MEMORY, SYSTEM_REMINDER, Part, Piece

CLAUDE_MD = "# claudeMd\n"
KINDS = {
    "user's private global instructions for all projects": "user",
    "project instructions, checked into the codebase": "project",
    "user's private project instructions, not checked in": "local",
    "user's auto-memory, persists across conversations": "auto-memory",
    "shared team memory, synced across the organization": "team-memory",
    "organization-managed policy instructions": "managed",
}
_HEADER = re.compile(
    r"^Contents of (?P<path>.+?)(?: \((?P<kind>"
    + "|".join(re.escape(text) for text in KINDS)
    + r"|[^()\n]*)\))?:$",
    re.M,
)
# The context key after claudeMd, e.g. "\n# currentDate\n": keys are camelCase words.
_NEXT_KEY = re.compile(r"\n# [a-z]+[A-Z][A-Za-z]*\n")
_TRAILERS = ("\n\n      IMPORTANT: this context may or may not be relevant", "</system-reminder>")


def kind_of(description: str | None, path: str) -> str:
    """project / user / local / auto-memory / team-memory / managed, from the text or the path."""
    if description in KINDS:
        return KINDS[description]
    if path.endswith("CLAUDE.local.md"):
        return "local"
    if "/memory/" in path:
        return "auto-memory"
    return "unknown"


def claude_md(text: str, start: int, end: int, facts: Facts) -> list[Piece]:
    """Pieces of the claudeMd reminder text[start:end]."""
    headers = list(_HEADER.finditer(text, max(start, text.find(CLAUDE_MD, start, end)), end))
    if not headers:
        return [Piece(start, end, SYSTEM_REMINDER, "claudeMd")]
    stop = _end_of_files(text, headers[-1].end(), end)
    pieces = [Piece(start, headers[0].start(), SYSTEM_REMINDER, "claudeMd")]
    for index, header in enumerate(headers):
        section_end = headers[index + 1].start() if index + 1 < len(headers) else stop
        path = header.group("path")
        part = Part(resource=path, subcategory=kind_of(header.group("kind"), path),
                    sha256=sha256(text[header.end() : section_end].strip()))
        record = {"path": path, "kind": part.subcategory, "chars": 0, "sha256": part.sha256}
        facts.memory_files.append(record)
        pieces.append(Piece(header.start(), section_end, MEMORY, path, ((record, "chars"),), part))
    pieces.append(Piece(stop, end, SYSTEM_REMINDER, "claudeMd"))
    return pieces


def _end_of_files(text: str, start: int, end: int) -> int:
    found = _NEXT_KEY.search(text, start, end)
    if found:
        return found.start()
    for trailer in _TRAILERS:
        at = text.find(trailer, start, end)
        if at >= 0:
            return at
    return end
