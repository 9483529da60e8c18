"""`env.ANTHROPIC_BASE_URL` in Claude Code's user settings (`~/.claude/settings.json`).

The entry is ours when its value is exactly the URL we would write (the proxy's loopback
address). We only ever add, keep or remove our own value: a user's own `ANTHROPIC_BASE_URL`
pointing elsewhere is reported, never changed. Every other key, and the order of keys, is kept;
the file is rewritten atomically as plain 2-space-indented JSON. A file that does not parse
as a JSON object is left untouched.

Also here: the managed-file marker, so `uninstall` removes our hook scripts from Claude Code's
`hooks/` directory and never a hand-written one.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from opik_cipx.control.userfiles import replace_file

KEY = "ANTHROPIC_BASE_URL"


@dataclass(frozen=True)
class Change:
    """What happened to the entry: `set`, `kept`, `removed`, `absent`, `foreign` or `unusable`."""

    outcome: str
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


def current_value(path: Path) -> str | None:
    return read_entry(path)[0]


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
