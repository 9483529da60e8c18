"""Slash commands, as Claude Code writes them into user messages.

Prompt commands and slash-invoked skills: `<command-message>X</command-message>`,
`<command-name>/X</command-name>`, optional `<command-args>…</command-args>`, then the
expansion in the next text block. Local commands (`/compact`, `/context`): a
`<local-command-caveat>` block, the tags with `<command-name>` first, and a
`<local-command-stdout>` block, which can arrive in a later message than its command.
Everything of a command — tags, caveat, output, expansion — is slash_command under its name.
"""

import re

from opik_cipx.materialize.attribution.facts import Facts
from opik_cipx.materialize.attribution.model import SLASH_COMMAND, Part, Piece

CAVEAT = "<local-command-caveat>"
OUTPUTS = ("<local-command-stdout>", "<local-command-stderr>")
NAME_TAG = "<command-name>"
MESSAGE_TAG = "<command-message>"
KINDS = {"local": Part(kind="local"), "prompt": Part(kind="prompt")}  # a piece's part, by the command's kind
_NAME = re.compile(r"<command-name>(.*?)</command-name>", re.S)
_ARGS = re.compile(r"<command-args>(.*?)</command-args>", re.S)


def is_command(text: str) -> bool:
    return NAME_TAG in text or text.startswith(MESSAGE_TAG)


def command(text: str, start: int, end: int, after_caveat: bool, facts: Facts) -> tuple[dict, list[Piece]]:
    """The record and pieces of the command tags in text[start:end]."""
    name = _NAME.search(text, start, end)
    args = _ARGS.search(text, start, end)
    local = after_caveat or text[start:end].lstrip().startswith(NAME_TAG)
    label = name.group(1).strip().lstrip("/") if name else "unknown"
    kind = KINDS["local" if local else "prompt"]
    record = {
        "name": label,
        "kind": kind.kind,
        "args": args.group(1) if args else None,
        "args_chars": 0,
        "stdout_chars": 0,
        "chars": 0,
    }
    facts.commands.append(record)
    whole = ((record, "chars"),)
    if not args or args.start(1) == args.end(1):
        return record, [Piece(start, end, SLASH_COMMAND, label, whole, kind)]
    return record, [
        Piece(start, args.start(1), SLASH_COMMAND, label, whole, kind),
        Piece(args.start(1), args.end(1), SLASH_COMMAND, label, ((record, "chars"), (record, "args_chars")), kind),
        Piece(args.end(1), end, SLASH_COMMAND, label, whole, kind),
    ]


def part(start: int, end: int, record: dict | None, output: bool = False) -> Piece:
    """A caveat, output or expansion text[start:end] of the command `record` (None: not known)."""
    if record is None:
        return Piece(start, end, SLASH_COMMAND, "unknown")
    tally = ((record, "chars"), (record, "stdout_chars")) if output else ((record, "chars"),)
    return Piece(start, end, SLASH_COMMAND, record["name"], tally, KINDS[record["kind"]])
