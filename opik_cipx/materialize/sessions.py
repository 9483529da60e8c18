"""`sessions/<session_id>.json`: who ran a Claude Code session, where, and on which commit.

`sync` writes it from the JSON a Claude Code hook passes on stdin; the materializer joins it
onto the session's spans. The schema (keep the materializer in step):

    {"session_id", "cwd", "transcript_path", "source", "hook_event_name",
     "git": {"remote", "branch", "commit"},
     "identity": {"user_email", "user_uuid", "display_name", "org_uuid", "org_name"},
     "written_at": "<ISO-8601 UTC>Z"}

Unknown values are null. SessionStart (re)writes the file, so a resumed session gets the
current branch and commit; other events (UserPromptSubmit) only write it when it is missing,
which covers sessions that started before opik-cipx was installed. Prompt text, which
UserPromptSubmit carries, is never read into the record. Git runs with a short timeout and a
failure only leaves the git fields null.
"""

import json
import os
import re
import select
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from opik_cipx.home import private_dir, write_json
from opik_cipx.materialize.identity import read_identity
from opik_cipx.urls import strip_credentials

SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
STDIN_LIMIT = 1 << 20
GIT_TIMEOUT_S = 2.0
_GIT_ENV_DROP = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR")


def read_hook_stdin(fd: int = 0, timeout_s: float = 2.0) -> bytes | None:
    """What a hook wrote to our stdin; None when stdin is a terminal, closed or empty.

    Bounded: a stdin pipe that stays open without data is given up on after `timeout_s`.
    """
    try:
        if os.isatty(fd):
            return None
    except OSError:
        return None
    deadline = time.monotonic() + timeout_s
    chunks, size = [], 0
    while size < STDIN_LIMIT:
        remaining = deadline - time.monotonic()
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


def _git(cwd: str, *args: str) -> str | None:
    env = {key: value for key, value in os.environ.items() if key not in _GIT_ENV_DROP}
    env.update(GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0", LC_ALL="C")
    try:
        done = subprocess.run(
            ["git", "-C", cwd, *args], stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=GIT_TIMEOUT_S, env=env,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_info(cwd: str | None) -> dict[str, str | None]:
    """Remote URL (origin, else the first; credentials stripped), branch and commit of `cwd`."""
    info: dict[str, str | None] = {"remote": None, "branch": None, "commit": None}
    if not cwd or not os.path.isdir(cwd):
        return info
    head = _git(cwd, "rev-parse", "HEAD", "--abbrev-ref", "HEAD")
    if head is not None:
        lines = head.split()
        if len(lines) == 2:
            info["commit"] = lines[0]
            info["branch"] = lines[1] if lines[1] != "HEAD" else None  # detached HEAD
    else:
        branch = _git(cwd, "symbolic-ref", "-q", "--short", "HEAD")  # a branch with no commit yet
        info["branch"] = _text(branch.strip()) if branch else None
        if branch is None:
            return info  # not a repository
    remotes = _git(cwd, "config", "--get-regexp", r"^remote\..*\.url$") or ""
    urls = dict(line.split(" ", 1) for line in remotes.splitlines() if " " in line)
    url = urls.get("remote.origin.url") or next(iter(urls.values()), None)
    info["remote"] = strip_credentials(url) if url else None
    return info


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


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
