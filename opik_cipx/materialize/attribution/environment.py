"""Where a session works: the directory and git state a Claude Code request names.

See ARCHITECTURE.md, *Workspace and repository*. Claude Code tells the model where it runs in
two sections of its prompt (docs/MARKERS.md):
- **the environment**: the main loop's `# Environment` section (`You have been invoked in the
  following environment:`, then ` - Primary working directory: <dir>`, ` - Is a git repository:
  true|false`, ` - Platform: <os>`, ... up to the first blank line), or the `<env>` block of
  subagent prompts and older builds (`Working directory: <dir>`, `Is directory a git repo:
  Yes|No`, `Platform: <os>`, ... up to `</env>`);
- **the git status**, only in a git repository: `This is the git status at the start of the
  conversation. ...`, then `Current branch: <b>`, `Main branch (you will usually use this for
  PRs): <m>`, `Git user: <name>`, `Status:` + `git status --short` lines or `(clean)`, and
  `Recent commits:` + `git log --oneline -n 5` lines. Claude Code has carried it as the system
  context entry `gitStatus: <text>` appended to the system prompt (2.1.x of early 2026), as the
  `# gitStatus` key of the context reminder at the start of the first user message (1.0.x, and
  again in later 2.1 builds), and as `<context name="gitStatus">` (early 2025). Its parts are
  separated by blank lines in some builds and by single line breaks in others.

`read_workspace(body)` reads both from a request body's `system` blocks and the context
reminders of its first message; `parse_workspace(texts)` from given texts; `carve(text, pieces)`
splits both sections off the system prompt and reminder pieces of an attribution (part kinds
`environment`, `git_status`: what Opik's Cost Intelligence calls `env_info`). Pure: any input
gives a `Workspace` or None, never an exception. Only what the text says is kept (None where it
says nothing); the git status is a snapshot Claude Code took when the session started, so it
names the branch and state of that moment, not of the call. The first environment section
counts (the main prompt comes before any text a user appends to it), the last git status (it
follows any CLAUDE.md text in the context reminder, which could quote one).
"""

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypedDict

from opik_cipx.materialize.attribution.model import SYSTEM_PROMPT, SYSTEM_REMINDER, Part, Piece


@dataclass(frozen=True)
class Workspace:
    """What a request says about where Claude Code runs; None = not said."""

    cwd: str | None = None  # the primary working directory
    is_git: bool | None = None  # whether Claude Code found a git repository there
    platform: str | None = None  # `linux`, `darwin`, `win32`
    branch: str | None = None  # the current branch (None on a detached head)
    main_branch: str | None = None  # the branch Claude Code takes for pull requests
    dirty: bool | None = None  # uncommitted or untracked files, when the session started
    head: str | None = None  # abbreviated id of the newest of the recent commits


class _Environment(TypedDict, total=False):
    """The `Workspace` fields an environment section gives."""

    cwd: str | None
    is_git: bool | None
    platform: str | None


class _GitStatus(TypedDict, total=False):
    """The `Workspace` fields a git status section gives."""

    branch: str | None
    main_branch: str | None
    dirty: bool | None
    head: str | None


CONTEXT_REMINDER = "<system-reminder>\nAs you answer the user's questions, you can use the following context:"
_ENV_INTRO = re.compile(r"^You have been invoked in the following environment: ?$", re.M)
_ENV_BLOCK = re.compile(r"^<env>$", re.M)
_ENV_KEY = re.compile(
    r"^[ \t]*(?:- )?(?P<key>Primary working directory|Working directory|Is a git repository|Is directory a git repo|"
    r"Platform):[ \t]*(?P<value>.*?)[ \t]*$",
    re.I,
)
_GIT_INTRO = re.compile(
    r"^(?:gitStatus: |# gitStatus\n|<context name=\"gitStatus\">)"
    r"This is the git status at the start of the conversation\.",
    re.M,
)
_BRANCH = re.compile(r"^Current branch:[ \t]*(.*?)[ \t]*$")
_MAIN_BRANCH = re.compile(r"^Main branch(?: \([^)\n]*\))?:[ \t]*(.*?)[ \t]*$")
_GIT_USER = re.compile(r"^Git user:")
_STATUS = re.compile(r"^Status:[ \t]*(.*?)[ \t]*$")
_COMMITS = re.compile(r"^Recent commits:[ \t]*$")
_COMMIT = re.compile(r"^([0-9a-f]{4,64})(?: |$)")
_CLEAN = "(clean)"
# An absolute path (POSIX, `~`, a Windows drive or share): not a placeholder such as `(none)`.
_PATH = re.compile(r"^(?:/|~|[A-Za-z]:[\\/]|\\\\)")
_TRUE, _FALSE = frozenset({"true", "yes"}), frozenset({"false", "no"})
_ENV_HEADING = "# Environment\n"
_ENV_BLOCK_INTRO = "Here is useful information about the environment you are running in:\n"
_LINE_BREAKS = re.compile(r"\n(?:[ \t]*\n)*")  # a line's end and the blank lines after it
_CONTEXT_END = "</context>"
ENVIRONMENT, GIT_STATUS = Part(kind="environment"), Part(kind="git_status")
_MARKERS = ("You have been invoked in the following environment:", "<env>", "This is the git status at the start")
CARVED = frozenset({SYSTEM_PROMPT, SYSTEM_REMINDER})


def read_workspace(body: object) -> Workspace | None:
    """The workspace a request body (parsed JSON) names, or None when it names none."""
    return parse_workspace(_texts(body)) if isinstance(body, dict) else None


def parse_workspace(texts: Iterable[str]) -> Workspace | None:
    """The workspace `texts` name (in request order), or None when no section is there."""
    environment: _Environment | None = None
    git: _GitStatus | None = None
    for text in texts:
        if not isinstance(text, str):
            continue
        if environment is None:
            environment = _environment(text)
        status = _git_status(text)
        git = status if status is not None else git
    if environment is None and git is None:
        return None
    return Workspace(**(environment or {}), **(git or {}))


def _texts(body: dict) -> list[str]:
    system = body.get("system")
    if isinstance(system, str):
        texts: list[object] = [system]
    else:
        texts = [block.get("text") for block in system if isinstance(block, dict)] if isinstance(system, list) else []
    messages = body.get("messages")
    first = messages[0] if isinstance(messages, list) and messages and isinstance(messages[0], dict) else {}
    content = first.get("content")
    blocks = [{"text": content}] if isinstance(content, str) else content if isinstance(content, list) else []
    reminders = [block.get("text") for block in blocks if isinstance(block, dict)]
    texts += [text for text in reminders if isinstance(text, str) and text.startswith(CONTEXT_REMINDER)]
    return [text for text in texts if isinstance(text, str)]


def _environment(text: str) -> _Environment | None:
    """Fields of the first environment section of `text`, or None when it has none."""
    starts = [match.end() for match in (_ENV_INTRO.search(text), _ENV_BLOCK.search(text)) if match]
    if not starts:
        return None
    fields: _Environment = {}
    for line in _lines_after(text, min(starts)):
        if not line.strip() or line.strip() == "</env>":
            break
        match = _ENV_KEY.match(line)
        if match is None:
            continue
        key, value = match.group("key").lower(), match.group("value")
        if key.endswith("working directory"):
            fields.setdefault("cwd", value if _PATH.match(value) else None)
        elif key.startswith("is "):
            fields.setdefault("is_git", _flag(value))
        else:
            fields.setdefault("platform", value or None)
    return fields


def _git_status(text: str) -> _GitStatus | None:
    """Fields of the last git status section of `text`, or None when it has none.

    The section runs to the end of its `Recent commits:` list; without one, to the first line
    that is none of its parts.
    """
    intros = list(_GIT_INTRO.finditer(text))
    if not intros:
        return None
    intro = intros[-1]
    fields: _GitStatus = {}
    status: list[str] = []
    has_status = in_status = False
    lines = _lines_after(text, intro.end())
    for line in lines:
        blank = not line.strip()
        if in_status and not blank and not _COMMITS.match(line):
            status.append(line.strip())
            continue
        in_status = False
        if blank:
            continue
        if _COMMITS.match(line):
            commit = _COMMIT.match(next(lines, ""))
            fields["head"] = commit.group(1) if commit else None
            break
        if match := _BRANCH.match(line):
            fields["branch"] = _branch(match.group(1))
        elif match := _MAIN_BRANCH.match(line):
            fields["main_branch"] = _branch(match.group(1))
        elif match := _STATUS.match(line):
            status, has_status = ([match.group(1)] if match.group(1) else []), True
            in_status = True
        elif not _GIT_USER.match(line):
            break
    if has_status:
        fields["dirty"] = bool(status) and status != [_CLEAN]
    return fields


def _lines_after(text: str, position: int) -> Iterator[str]:
    """The lines of `text` after the one holding `position`, read as they are asked for."""
    start = text.find("\n", position)
    while start >= 0:
        end = text.find("\n", start + 1)
        yield text[start + 1 : end if end >= 0 else len(text)]
        start = end


def _branch(value: str) -> str | None:
    """A branch name; None for nothing or `HEAD` (what git names a detached head)."""
    return value if value and value != "HEAD" else None


def _flag(value: str) -> bool | None:
    lowered = value.lower()
    return True if lowered in _TRUE else False if lowered in _FALSE else None


# --- where the sections are, for the attribution ---------------------------------------------------


def carve(text: str, pieces: list[Piece]) -> list[Piece]:
    """`pieces` with each environment and git status section inside a system prompt or reminder
    piece split off as a piece of its own: same bucket, label and tally, part `ENVIRONMENT` or
    `GIT_STATUS`. A section runs from its intro (the `# Environment` heading or the `<env>` intro
    line just before it included) to the end of what `parse_workspace` reads of it, with the blank
    lines after it."""
    out: list[Piece] = []
    for piece in pieces:
        found = sections(text, piece.start, piece.end) if piece.bucket in CARVED else []
        at = piece.start
        for start, end, part in found:
            if start > at:
                out.append(piece._replace(start=at, end=start))
            out.append(piece._replace(start=start, end=end, part=part))
            at = end
        if at < piece.end or not found:
            out.append(piece._replace(start=at))
    return out


def sections(text: str, start: int, end: int) -> list[tuple[int, int, Part]]:
    """The environment and git status sections within text[start:end], in order, not overlapping."""
    if not any(text.find(marker, start, end) >= 0 for marker in _MARKERS):
        return []
    found = []
    for match in _ENV_INTRO.finditer(text, start, end):
        heading = match.start() - len(_ENV_HEADING)
        first = heading if heading >= start and text.startswith(_ENV_HEADING, heading) else match.start()
        found.append((first, _env_end(text, match.end(), end, "\n"), ENVIRONMENT))
    for match in _ENV_BLOCK.finditer(text, start, end):
        intro = match.start() - len(_ENV_BLOCK_INTRO)
        first = intro if intro >= start and text.startswith(_ENV_BLOCK_INTRO, intro) else match.start()
        found.append((first, _env_end(text, match.end(), end, "</env>"), ENVIRONMENT))
    for match in _GIT_INTRO.finditer(text, start, end):
        found.append((match.start(), _git_end(text, match.end(), end), GIT_STATUS))
    out: list[tuple[int, int, Part]] = []
    for section in sorted(found, key=lambda item: item[0]):
        if not out or section[0] >= out[-1][1]:
            out.append(section)
    return out


def _env_end(text: str, position: int, limit: int, closing: str) -> int:
    """Where the environment section whose intro ends at `position` ends: at the first blank line
    (after the `</env>` line for that form)."""
    closed = closing == "\n"
    end = _line_end(text, position, limit)
    for line, line_end in _lines_between(text, end, limit):
        if closed and not line.strip():
            break
        closed = closed or line.strip() == closing
        end = line_end
    return _after_blank_lines(text, end, limit)


def _git_end(text: str, position: int, limit: int) -> int:
    """Where the git status section whose intro ends at `position` ends, as `_git_status` reads it."""
    end = _line_end(text, position, limit)
    in_status = commits = False
    for line, line_end in _lines_between(text, end, limit):
        blank = not line.strip()
        if commits and not _COMMIT.match(line) or line.strip() == _CONTEXT_END:
            end = line_end if line.strip() == _CONTEXT_END else end
            break
        if commits or in_status and not blank and not _COMMITS.match(line):
            end = line_end
            continue
        in_status = False
        if blank:
            continue
        if _COMMITS.match(line):
            commits, end = True, line_end
        elif _BRANCH.match(line) or _MAIN_BRANCH.match(line) or _GIT_USER.match(line) or _STATUS.match(line):
            in_status, end = bool(_STATUS.match(line)), line_end
        else:
            break
    return _after_blank_lines(text, end, limit)


def _lines_between(text: str, end: int, limit: int) -> Iterator[tuple[str, int]]:
    """(line, its end) for each line after the one ending at `end`, within `limit`."""
    while end < limit:
        start = end + 1
        end = _line_end(text, start, limit)
        yield text[start:end], end


def _line_end(text: str, position: int, limit: int) -> int:
    found = text.find("\n", position, limit)
    return limit if found < 0 else found


def _after_blank_lines(text: str, end: int, limit: int) -> int:
    match = _LINE_BREAKS.match(text, end, limit)
    return match.end() if match else end
