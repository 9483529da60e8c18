"""`sessions/<session_id>.json`: who ran a Claude Code session, where, and on which commit.

`sync` writes it from the JSON a Claude Code hook passes on stdin; the materializer joins it
onto the session's spans. The schema (keep the materializer in step):

    {"session_id", "cwd", "transcript_path", "source", "hook_event_name",
     "git": {"remote", "branch", "commit"},
     "identity": {"user_email", "user_uuid", "display_name", "org_uuid", "org_name", "billing_type"},
     "written_at": "<ISO-8601 UTC>Z"}

Unknown values are null. SessionStart (re)writes the file, so a resumed session gets the
current branch and commit; other events (UserPromptSubmit) only write it when it is missing,
which covers sessions that started before opik-cipx was installed. Prompt text, which
UserPromptSubmit carries, is never read into the record. Git runs as `materialize/repository.py`
runs it (2 s for the whole reading); a failure only leaves the git fields null.
"""

import json
import os
import re
import select
from pathlib import Path
from typing import Any

from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.home import private_dir, write_json
from opik_cipx.materialize.identity import read_identity
from opik_cipx.materialize.repository import read_state
from opik_cipx.stats import utc_iso

SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
STDIN_LIMIT = 1 << 20


def read_hook_stdin(fd: int = 0, timeout_s: float = 2.0, clock: Clock = SYSTEM) -> bytes | None:
    """What a hook wrote to our stdin; None when stdin is a terminal, closed or empty.

    Bounded: a stdin pipe that stays open without data is given up on after `timeout_s` (on
    `clock`; each wait for data is a `select` for what is left of it).
    """
    try:
        if os.isatty(fd):
            return None
    except OSError:
        return None
    deadline = clock.monotonic() + timeout_s
    chunks, size = [], 0
    while size < STDIN_LIMIT:
        remaining = deadline - clock.monotonic()
        try:
            ready, _, _ = select.select([fd], [], [], max(remaining, 0))
            if not ready:
                break
            chunk = os.read(fd, 65536)
        except (OSError, ValueError):
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    data = b"".join(chunks)
    return data if data.strip() else None


def parse_hook_input(data: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def valid_session_id(value: object) -> bool:
    """A Claude Code session id usable as a file name: no separators, no leading dot."""
    return isinstance(value, str) and SESSION_ID.fullmatch(value) is not None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def git_info(cwd: str | None) -> dict[str, str | None]:
    """Remote URL (origin, else the first; credentials stripped), branch and commit of `cwd`."""
    state = read_state(cwd, dirty=False)
    return {"remote": state.remote, "branch": state.branch, "commit": state.head_sha}


def utc_now_iso(clock: Clock = SYSTEM) -> str:
    """Now on `clock`, as `written_at` carries it: ISO-8601 UTC, milliseconds, `Z`."""
    return utc_iso(clock.time())


def session_record(hook: dict[str, Any], identity: dict[str, str | None], git: dict[str, str | None]) -> dict[str, Any]:
    """The `sessions/<id>.json` document for one hook payload."""
    return {
        "session_id": hook["session_id"],
        "cwd": _text(hook.get("cwd")),
        "transcript_path": _text(hook.get("transcript_path")),
        "source": _text(hook.get("source")),
        "hook_event_name": _text(hook.get("hook_event_name")),
        "git": git,
        "identity": identity,
        "written_at": utc_now_iso(),
    }


def record_session(sessions_dir: Path, hook: dict[str, Any], claude_json: Path) -> Path | None:
    """Write `sessions/<session_id>.json` for `hook` when due; the path written, or None.

    Raises ValueError for a payload without a usable session id.
    """
    session_id = hook.get("session_id")
    if not valid_session_id(session_id):
        raise ValueError(f"hook input has no usable session_id ({session_id!r})")
    path = sessions_dir / f"{session_id}.json"
    if hook.get("hook_event_name") != "SessionStart" and path.exists():
        return None
    record = session_record(hook, read_identity(claude_json), git_info(_text(hook.get("cwd"))))
    private_dir(sessions_dir)
    write_json(path, record)
    return path
