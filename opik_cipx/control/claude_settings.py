"""`env.ANTHROPIC_BASE_URL` and `statusLine` in Claude Code's user settings (`~/.claude/settings.json`).

The entry is ours when its value is exactly the URL we would write (the proxy's loopback
address). We only ever add, keep or remove our own value: a user's own `ANTHROPIC_BASE_URL`
pointing elsewhere is reported, never changed. Every other key, and the order of keys, is kept;
the file is rewritten atomically as plain 2-space-indented JSON. A file that does not parse
as a JSON object is left untouched.

`statusLine` is set only on request (`opik-cipx statusline --install`): when the user has none,
or replacing theirs with `force`. It is ours when it runs `<path>/opik-cipx statusline`;
`uninstall` removes only ours, and `sync` never touches it.

Also here: the managed-file marker, so `uninstall` removes our hook scripts from Claude Code's
`hooks/` directory and never a hand-written one; and `tidy`, which `uninstall` runs last: a
settings file our removals left as `{}` is deleted (Claude Code reads a missing file the same
way), and then `hooks/` and the configuration directory if that left them empty.
"""

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

from opik_cipx.control.userfiles import remove_empty, replace_file

KEY = "ANTHROPIC_BASE_URL"


@dataclass(frozen=True)
class Change:
    """What happened to the entry: `set`, `kept`, `removed`, `absent`, `foreign` or `unusable`."""

    outcome: str  # statusLine also: `replaced` (someone else's, forced)
    path: Path
    detail: str = ""  # the foreign value, or why the file is unusable


def settings_path(env: dict[str, str]) -> Path:
    """`$CLAUDE_CONFIG_DIR/settings.json`, else `~/.claude/settings.json`."""
    config_dir = env.get("CLAUDE_CONFIG_DIR", "").strip()
    if config_dir:
        return Path(config_dir).expanduser() / "settings.json"
    return Path(env.get("HOME") or Path.home()) / ".claude" / "settings.json"


def proxy_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def _load(path: Path) -> tuple[dict | None, str]:
    """(document, "") — `{}` for a missing or blank file — or (None, why it is unusable)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, ""
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"cannot read it: {getattr(exc, 'strerror', None) or exc}"
    if not text.strip():
        return {}, ""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        return None, f"it is not valid JSON ({exc})"
    if not isinstance(doc, dict):
        return None, "it is not a JSON object"
    if not isinstance(doc.get("env", {}), dict):
        return None, '"env" is not an object'
    return doc, ""


def _save(path: Path, doc: dict) -> None:
    replace_file(path, (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def read_entry(path: Path) -> tuple[str | None, str]:
    """(our key's value or None, "") — or (None, why the file is unusable)."""
    doc, why = _load(path)
    value = (doc or {}).get("env", {}).get(KEY)
    return (value if isinstance(value, str) else None), why


def point_at_proxy(path: Path, url: str) -> Change:
    """Upsert `env.ANTHROPIC_BASE_URL = url` unless the user set it to something else."""
    doc, why = _load(path)
    if doc is None:
        return Change("unusable", path, why)
    env = doc.get("env", {})
    value = env.get(KEY)
    if value == url:
        return Change("kept", path)
    if value not in (None, ""):
        return Change("foreign", path, str(value))
    doc["env"] = {**env, KEY: url}
    _save(path, doc)
    return Change("set", path)


def stop_pointing_at_proxy(path: Path, url: str) -> Change:
    """Remove `env.ANTHROPIC_BASE_URL` if its value is `url` (drop `env` if it becomes empty)."""
    doc, why = _load(path)
    if doc is None:
        return Change("unusable", path, why)
    if not path.exists():
        return Change("absent", path)
    env = doc.get("env", {})
    if KEY not in env:
        return Change("absent", path)
    if env[KEY] != url:
        return Change("foreign", path, str(env[KEY]))
    rest = {key: value for key, value in env.items() if key != KEY}
    if rest:
        doc["env"] = rest
    else:
        del doc["env"]
    _save(path, doc)
    return Change("removed", path)


STATUS_LINE = "statusLine"


def status_line_command(executable: Path) -> str:
    """The statusLine command that runs `executable`'s status line (a shell command line)."""
    return f"{shlex.quote(str(executable))} statusline"


def is_our_status_line(value: object) -> TypeGuard[dict]:
    """True for a `statusLine` that runs an `opik-cipx` executable's `statusline` and nothing else."""
    if not isinstance(value, dict) or value.get("type") != "command" or not isinstance(value.get("command"), str):
        return False
    try:
        words = shlex.split(value["command"])
    except ValueError:
        return False
    return len(words) == 2 and os.path.basename(words[0]) == "opik-cipx" and words[1] == "statusline"


def set_status_line(path: Path, command: str, force: bool = False) -> Change:
    """Set `statusLine` to run `command` when there is none (or `force`); ours is updated in place."""
    doc, why = _load(path)
    if doc is None:
        return Change("unusable", path, why)
    current = doc.get(STATUS_LINE)
    wanted = {"type": "command", "command": command}
    if current == wanted:
        return Change("kept", path)
    if current not in (None, "", {}) and not is_our_status_line(current) and not force:
        return Change("foreign", path, json.dumps(current, ensure_ascii=False))
    doc[STATUS_LINE] = {**(current if is_our_status_line(current) else {}), **wanted}
    _save(path, doc)
    return Change("replaced" if current not in (None, "", {}) and not is_our_status_line(current) else "set", path)


def remove_status_line(path: Path) -> Change:
    """Remove `statusLine` if it is ours; someone else's is `foreign` and stays."""
    doc, why = _load(path)
    if doc is None:
        return Change("unusable", path, why)
    if STATUS_LINE not in doc:
        return Change("absent", path)
    if not is_our_status_line(doc[STATUS_LINE]):
        return Change("foreign", path, json.dumps(doc[STATUS_LINE], ensure_ascii=False))
    del doc[STATUS_LINE]
    _save(path, doc)
    return Change("removed", path)


# First line (after an optional `#!` line) of every script opik-cipx manages; `uninstall`
# deletes hook scripts carrying it and never any other.
MANAGED_MARKER = "opik-cipx: managed file"


def hooks_dir(env: dict[str, str]) -> Path:
    return settings_path(env).parent / "hooks"


def is_managed_script(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096).decode("utf-8", errors="replace").splitlines()[:2]
    except OSError:
        return False
    if head and head[0].startswith("#!"):
        head = head[1:]
    return bool(head) and MANAGED_MARKER in head[0]


def remove_managed_hook_scripts(env: dict[str, str]) -> list[Path]:
    """Delete the hook scripts in Claude Code's `hooks/` that carry our marker; the paths removed."""
    directory = hooks_dir(env)
    try:
        candidates = sorted(p for p in directory.iterdir() if p.is_file() and not p.is_symlink())
    except OSError:
        return []
    removed = []
    for path in candidates:
        if is_managed_script(path):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def tidy(env: dict[str, str]) -> list[Path]:
    """After our entries and scripts are gone: delete a settings file that reads exactly `{}`,
    then `hooks/` and the configuration directory if that left them empty; the paths removed."""
    path = settings_path(env)
    try:
        if path.is_symlink() or path.read_text(encoding="utf-8").strip() != "{}":
            return []
        path.unlink()
    except (OSError, UnicodeDecodeError):
        return []
    return [path, *remove_empty([hooks_dir(env), path.parent])]
