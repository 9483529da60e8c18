"""A repository's facts, read with `git` off the wire: its state, and what a turn delivered.

See ARCHITECTURE.md, *Workspace and repository*. The one way opik-cipx runs git:
`git -C <dir> ...` with no shell, stdin closed, in a process group of its own, with the user's
environment minus the variables that point git at one particular repository (git's own list,
`git rev-parse --local-env-vars`: GIT_DIR, GIT_WORK_TREE, GIT_INDEX_FILE, GIT_COMMON_DIR, ...)
and with GIT_TERMINAL_PROMPT=0 (never ask for a password), GIT_OPTIONAL_LOCKS=0 (never write the
index) and LC_ALL=C (output in one language). The git calls of one reading share a deadline
(`timeout_s`); at the deadline git and everything it started are killed. Output beyond 1 MiB
counts as a failure too. A failure of any kind (no git, not a repository, a detached head, an
empty repository, a timeout, too much output) leaves the fields it would have read None: these
functions never raise and never wait past their deadline.

The directory may come off the wire (a request's system prompt names it), so git runs as for a
directory it does not trust: `core.fsmonitor` off, so a repository's config cannot make a read
run a program, and diffs without external diff tools or textconv filters; git itself (2.35.2
and later) refuses a repository another user owns.

**What a turn delivered** (`read_changes`) is its committed work: the commits reachable from the
turn's end head and not from its start head, and the diff between the two heads' trees (without
rename detection: a moved file is one file deleted and one added). Uncommitted edits count in
the turn whose commit carries them, not when they are typed, so no line is counted twice; a turn
that only edits delivers nothing yet, and `RepoState.dirty` says that work is waiting.
"""

import os
import re
import selectors
import signal
import subprocess
from dataclasses import dataclass
from typing import TypeGuard

from opik_cipx.clock import SYSTEM
from opik_cipx.urls import strip_credentials

GIT_TIMEOUT_S = 2.0
OUTPUT_LIMIT = 1 << 20
# `git rev-parse --local-env-vars` (git 2.39): what ties git to one repository, e.g. inside a hook.
LOCAL_ENV = frozenset({
    "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_CONFIG", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT",
    "GIT_OBJECT_DIRECTORY", "GIT_DIR", "GIT_WORK_TREE", "GIT_IMPLICIT_WORK_TREE", "GIT_GRAFT_FILE",
    "GIT_INDEX_FILE", "GIT_NO_REPLACE_OBJECTS", "GIT_REPLACE_REF_BASE", "GIT_PREFIX",
    "GIT_INTERNAL_SUPER_PREFIX", "GIT_SHALLOW_FILE", "GIT_COMMON_DIR",
})
_SAFE = ("-c", "core.fsmonitor=false")
_DIFF = ("diff", "--shortstat", "--no-renames", "--no-ext-diff", "--no-textconv", "--no-color")
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_SHORTSTAT = re.compile(r"(\d+) files? changed(?:, (\d+) insertions?\(\+\))?(?:, (\d+) deletions?\(-\))?")


@dataclass(frozen=True)
class RepoState:
    """A working directory's repository at one moment; None = not known."""

    remote: str | None = None  # origin's URL (else the first remote's), `user:password@` removed
    branch: str | None = None  # None on a detached head
    head_sha: str | None = None  # None in an empty repository
    dirty: bool | None = None  # tracked changes, staged or not, or untracked files not ignored


@dataclass(frozen=True)
class RepoChanges:
    """What happened between two heads of a repository; None = could not be read."""

    commits: int | None = None  # reachable from the end head and not from the start head
    files_added: int | None = None
    files_deleted: int | None = None
    lines_added: int | None = None
    lines_deleted: int | None = None


def read_state(cwd: str | None, timeout_s: float = GIT_TIMEOUT_S, dirty: bool = True) -> RepoState:
    """The repository state of `cwd`; `dirty=False` skips `git status` (None), the slowest read."""
    if not cwd or not os.path.isdir(cwd):
        return RepoState()
    deadline = SYSTEM.monotonic() + timeout_s
    head_sha = branch = None
    head = _run(cwd, ("rev-parse", "HEAD", "--abbrev-ref", "HEAD"), deadline)
    if head is not None and len(head.split()) == 2:
        head_sha, name = head.split()
        branch = name if name != "HEAD" else None  # detached
    elif head is None:  # no commit yet (its branch is still named), or not a repository
        ref = _run(cwd, ("symbolic-ref", "-q", "--short", "HEAD"), deadline)
        if ref is None:
            return RepoState()
        branch = ref.strip() or None
    status = _run(cwd, ("status", "--porcelain", "--untracked-files=normal"), deadline) if dirty else None
    return RepoState(remote=_remote(cwd, deadline), branch=branch, head_sha=head_sha,
                     dirty=None if status is None else bool(status.strip()))


def read_changes(cwd: str | None, start_sha: str | None, end_sha: str | None,
                 timeout_s: float = GIT_TIMEOUT_S) -> RepoChanges:
    """What the commits from `start_sha` to `end_sha` changed (see the module docstring)."""
    if not cwd or not os.path.isdir(cwd) or not _is_sha(start_sha) or not _is_sha(end_sha):
        return RepoChanges()
    deadline = SYSTEM.monotonic() + timeout_s
    count = _run(cwd, ("rev-list", "--count", f"{start_sha}..{end_sha}"), deadline)
    if count is None or not count.strip().isdigit():
        return RepoChanges()  # a head this repository does not have, or no time left
    lines = _shortstat(_run(cwd, (*_DIFF, start_sha, end_sha), deadline))
    added = _shortstat(_run(cwd, (*_DIFF, "--diff-filter=A", start_sha, end_sha), deadline))
    deleted = _shortstat(_run(cwd, (*_DIFF, "--diff-filter=D", start_sha, end_sha), deadline))
    return RepoChanges(
        commits=int(count),
        files_added=added[0] if added else None,
        files_deleted=deleted[0] if deleted else None,
        lines_added=lines[1] if lines else None,
        lines_deleted=lines[2] if lines else None,
    )


def _remote(cwd: str, deadline: float) -> str | None:
    remotes = _run(cwd, ("config", "--get-regexp", r"^remote\..*\.url$"), deadline) or ""
    urls = dict(line.split(" ", 1) for line in remotes.splitlines() if " " in line)
    url = urls.get("remote.origin.url") or next(iter(urls.values()), None)
    return strip_credentials(url) if url else None


def _shortstat(output: str | None) -> tuple[int, int, int] | None:
    """(files, lines added, lines deleted) of `git diff --shortstat`; an empty diff prints nothing."""
    if output is None:
        return None
    if not output.strip():
        return 0, 0, 0
    match = _SHORTSTAT.search(output)
    if match is None:
        return None
    files, added, deleted = (int(group or 0) for group in match.groups())
    return files, added, deleted


def _is_sha(value: str | None) -> TypeGuard[str]:
    """A full object id, so nothing read elsewhere can reach git as an option."""
    return isinstance(value, str) and _SHA.fullmatch(value) is not None


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in LOCAL_ENV}
    env.update(GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0", LC_ALL="C")
    return env


def _run(cwd: str, args: tuple[str, ...], deadline: float) -> str | None:
    """What `git -C cwd args...` printed, or None when it could not run, failed, was still running
    at `deadline` or printed more than OUTPUT_LIMIT bytes."""
    if SYSTEM.monotonic() >= deadline:
        return None
    try:
        process = subprocess.Popen(
            ["git", "-C", cwd, *_SAFE, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=_env(), start_new_session=True,
        )
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    try:
        output = _read(process, deadline, OUTPUT_LIMIT)
        if output is None or process.wait(max(deadline - SYSTEM.monotonic(), 0.001)) != 0:
            return None
    except subprocess.TimeoutExpired:
        return None
    finally:
        _end(process)
    return output.decode("utf-8", "replace")


def _read(process: subprocess.Popen, deadline: float, max_bytes: int) -> bytes | None:
    """All of `process`'s stdout, or None at the deadline or past `max_bytes`."""
    assert process.stdout is not None
    chunks: list[bytes] = []
    size = 0
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while True:
            remaining = deadline - SYSTEM.monotonic()
            if remaining <= 0:
                return None
            if not selector.select(remaining):
                continue
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > max_bytes:
                return None
            chunks.append(chunk)


def _end(process: subprocess.Popen) -> None:
    """Kill what is left of git's process group (only while git itself runs: its id is still the
    group's), then reap git and close the pipe."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except OSError:
            pass
        process.wait()
    if process.stdout is not None:
        process.stdout.close()
