"""`env.ANTHROPIC_BASE_URL` and `statusLine` in Claude Code's user settings (`~/.claude/settings.json`).

The entry is ours when its value is exactly the URL we would write (the proxy's loopback
address). We only ever add, keep or remove our own value: a user's own `ANTHROPIC_BASE_URL`
pointing elsewhere is reported, never changed. Every other key, and the order of keys, is kept;
the file is rewritten atomically as plain 2-space-indented JSON. A file that does not parse
as a JSON object is left untouched.

`statusLine` is set only on request (`opik-cipx statusline --install`): when the user has none,
or replacing theirs with `force`, after keeping theirs in a backup file (`$CIPX_HOME/
statusline-backup.json`: the settings file and the value). It is ours when it runs
`<path>/opik-cipx statusline`; `uninstall` removes only ours, and puts the backed-up one back in its
place (so a file in Claude Code's 2-space layout reads byte for byte as before); `sync` never touches it.

`hooks`: for an install.sh user, a SessionStart and a UserPromptSubmit hook running our hook
launcher (what the plugin's `hooks/hooks.json` registers for a plugin user). Each is one group of
its own appended to the event's list, after the user's hooks, which are never changed or
reordered; a hook is ours when its command runs a file named `opik-cipx-hook-launcher` at a fixed
path. `set_hooks` says which of the `hooks` object and the event lists it had to make;
`remove_hooks` takes out our groups, and then those of them that this left empty (an empty list
or object the user had stays), so the user's file reads byte for byte as before.
`plugin_enabled` reads `enabledPlugins`, Claude Code's record of the plugins a settings file enables.

Also here: the managed-file marker, so `uninstall` removes our hook scripts from Claude Code's
`hooks/` directory and never a hand-written one; and `tidy`, which `uninstall` runs last: a
settings file our removals left as `{}` is deleted (Claude Code reads a missing file the same
way), and then `hooks/` and the configuration directory if that left them empty.
"""

import json
import os
import re
import shlex
import sys
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from opik_cipx.config import Settings
from opik_cipx.control.daemon_control import CLAUDE_CODE_PORT, listener_port
from opik_cipx.control.userfiles import remove_empty, replace_file
from opik_cipx.home import read_json, write_atomic

KEY = "ANTHROPIC_BASE_URL"


@dataclass(frozen=True)
class Change:
    """What happened to the entry: `set`, `kept`, `removed`, `absent`, `foreign` or `unusable`."""

    outcome: str  # statusLine also: `replaced` (someone else's, forced), `restored`; hooks also `updated`
    path: Path
    detail: str = ""  # the foreign value, or why the file is unusable
    created: tuple[str, ...] = ()  # hooks: what `set_hooks` made to hold them (`hooks`, event names)


def settings_path(env: dict[str, str]) -> Path:
    """`$CLAUDE_CONFIG_DIR/settings.json`, else `~/.claude/settings.json`."""
    config_dir = env.get("CLAUDE_CONFIG_DIR", "").strip()
    if config_dir:
        return Path(config_dir).expanduser() / "settings.json"
    return Path(env.get("HOME") or Path.home()) / ".claude" / "settings.json"


def proxy_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def our_url(settings: Settings, state: dict[str, Any] | None = None) -> str:
    """The URL `sync` writes: the running daemon's Claude Code port, else the configured one."""
    return proxy_url(listener_port(settings, state, "claude_code") or CLAUDE_CODE_PORT)


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
STATUS_LINE_BACKUP = "statusline-backup.json"  # in $CIPX_HOME: the user's statusLine that `--install --force` replaced


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


def set_status_line(path: Path, command: str, force: bool = False, backup: Path | None = None) -> Change:
    """Set `statusLine` to run `command` when there is none (or `force`); ours is updated in place.

    Someone else's, replaced with `force`, is first written to `backup` (`{"settings": path,
    "statusLine": value}`) for `remove_status_line` to put back; raises OSError, having changed
    nothing, when that file cannot be written."""
    doc, why = _load(path)
    if doc is None:
        return Change("unusable", path, why)
    current = doc.get(STATUS_LINE)
    wanted = {"type": "command", "command": command}
    if current == wanted:
        return Change("kept", path)
    foreign = current not in (None, "", {}) and not is_our_status_line(current)
    if foreign and not force:
        return Change("foreign", path, json.dumps(current, ensure_ascii=False))
    if foreign and backup is not None:  # its keys in their order, so it goes back as it was
        write_atomic(backup, json.dumps({"settings": str(path), STATUS_LINE: current}, ensure_ascii=False).encode())
    doc[STATUS_LINE] = {**(current if is_our_status_line(current) else {}), **wanted}
    _save(path, doc)
    return Change("replaced" if foreign else "set", path)


def remove_status_line(path: Path, backup: Path | None = None) -> Change:
    """Remove `statusLine` if it is ours (`removed`), or put back in its place the one `set_status_line`
    kept in `backup` for this settings file (`restored`); someone else's is `foreign` and stays."""
    doc, why = _load(path)
    if doc is None:
        return Change("unusable", path, why)
    if STATUS_LINE not in doc:
        return Change("absent", path)
    if not is_our_status_line(doc[STATUS_LINE]):
        return Change("foreign", path, json.dumps(doc[STATUS_LINE], ensure_ascii=False))
    kept = read_json(backup) if backup is not None else None
    if isinstance(kept, dict) and kept.get("settings") == str(path) and STATUS_LINE in kept:
        doc[STATUS_LINE] = kept[STATUS_LINE]  # the same key, so the same place in the file
        _save(path, doc)
        return Change("restored", path, json.dumps(kept[STATUS_LINE], ensure_ascii=False))
    del doc[STATUS_LINE]
    _save(path, doc)
    return Change("removed", path)


HOOKS = "hooks"
HOOK_EVENTS = ("SessionStart", "UserPromptSubmit")
HOOK_LAUNCHER = "opik-cipx-hook-launcher"
HOOK_TIMEOUT_S = 60  # as the plugin's hooks/hooks.json
PLUGIN_ID = "opik-cipx@opik-enterprise"
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*", re.DOTALL)


def hook_command(launcher: Path, event: str, variables: dict[str, str]) -> str:
    """The shell command of our hook for `event`: `launcher EVENT`, with `variables` set for it."""
    words = [f"{name}={shlex.quote(value)}" for name, value in sorted(variables.items())]
    return " ".join([*words, shlex.quote(str(launcher)), event])


def is_our_hook(handler: object) -> bool:
    """True for a hook handler whose command runs a file named `opik-cipx-hook-launcher` at a fixed path
    (optionally after `NAME=value` words): ours, not a plugin's `${CLAUDE_PLUGIN_ROOT}/...`."""
    if not isinstance(handler, dict) or handler.get("type") != "command" or not isinstance(handler.get("command"), str):
        return False
    try:
        words = shlex.split(handler["command"])
    except ValueError:
        return False
    while words and _ASSIGNMENT.fullmatch(words[0]):
        words = words[1:]
    return bool(words) and os.path.basename(words[0]) == HOOK_LAUNCHER and "$" not in words[0]


def _hook_lists(doc: dict) -> tuple[dict | None, str]:
    hooks = doc.get(HOOKS, {})
    if not isinstance(hooks, dict) or not all(isinstance(groups, list) for groups in hooks.values()):
        return None, f'"{HOOKS}" is not an object of lists, as Claude Code reads it'
    return hooks, ""


def _our_handlers(groups: list) -> list[dict]:
    return [h for g in groups if isinstance(g, dict) and isinstance(g.get("hooks"), list) for h in g["hooks"]
            if is_our_hook(h)]


def _without_ours(groups: list) -> list:
    """`groups` with our handlers taken out, and a group they leave empty with them."""
    out = []
    for group in groups:
        if isinstance(group, dict) and isinstance(group.get("hooks"), list) and _our_handlers([group]):
            rest = [h for h in group["hooks"] if not is_our_hook(h)]
            if rest:
                out.append({**group, "hooks": rest})
        else:
            out.append(group)
    return out


def set_hooks(path: Path, commands: dict[str, str]) -> Change:
    """Our hook for each event of `commands` (event -> command): added as a group of its own after the
    user's (`set`), an existing one of ours given that command (`updated`), or `kept`."""
    doc, why = _load(path)
    if doc is None:
        return Change("unusable", path, why)
    hooks, shape = _hook_lists(doc)
    if hooks is None:
        return Change("unusable", path, shape)
    new_hooks, outcome = dict(hooks), "kept"
    created = tuple([HOOKS] if HOOKS not in doc else []) + tuple(event for event in commands if event not in hooks)
    for event, command in commands.items():
        groups = hooks.get(event, [])
        wanted = {"type": "command", "command": command, "timeout": HOOK_TIMEOUT_S}
        ours = _our_handlers(groups)
        if not ours:
            new_hooks[event] = [*groups, {"hooks": [wanted]}]
            outcome = "set"
        elif ours != [{**ours[0], **wanted}]:  # another command, or ours twice: one, where the first was
            first = next(i for i, g in enumerate(groups) if isinstance(g, dict) and _our_handlers([g]))
            mine = next(h for h in groups[first]["hooks"] if is_our_hook(h))
            handlers = [wanted if h is mine else h for h in groups[first]["hooks"] if h is mine or not is_our_hook(h)]
            after = _without_ours(groups[first + 1:])
            new_hooks[event] = [*groups[:first], {**groups[first], "hooks": handlers}, *after]
            outcome = "set" if outcome == "set" else "updated"
    if outcome == "kept":
        return Change("kept", path)
    doc[HOOKS] = new_hooks
    _save(path, doc)
    return Change(outcome, path, created=created)


def remove_hooks(path: Path, created: Collection[str] | None = None) -> Change:
    """Take our hooks out (`removed`; `absent` when there were none), then those of the event lists
    and the `hooks` object named in `created` (what `set_hooks` made; None: any) that this left
    empty. Everything else stays as it is, in its order."""
    doc, why = _load(path)
    if doc is None:
        return Change("unusable", path, why)
    hooks = doc.get(HOOKS)
    if not isinstance(hooks, dict) or not any(isinstance(g, list) and _our_handlers(g) for g in hooks.values()):
        return Change("absent", path)
    made = (lambda name: True) if created is None else (lambda name: name in created)
    new_hooks = {}
    for event, groups in hooks.items():
        kept = _without_ours(groups) if isinstance(groups, list) else groups
        if kept or not groups or not made(event):  # an event list we emptied goes, if we made it
            new_hooks[event] = kept
    if new_hooks or not made(HOOKS):
        doc[HOOKS] = new_hooks
    else:
        del doc[HOOKS]
    _save(path, doc)
    return Change("removed", path)


def hooks_registered(path: Path) -> bool:
    doc, _ = _load(path)
    hooks = (doc or {}).get(HOOKS)
    return isinstance(hooks, dict) and any(isinstance(g, list) and _our_handlers(g) for g in hooks.values())


def settings_files(env: dict[str, str], project_dir: str | None) -> list[Path]:
    """The settings files Claude Code reads for a session in `project_dir`, the weakest first: the
    user's, the project's, the project's local ones, the machine's managed settings."""
    paths = [settings_path(env)]
    if project_dir:
        paths += [Path(project_dir) / ".claude" / "settings.json",
                  Path(project_dir) / ".claude" / "settings.local.json"]
    if sys.platform == "darwin":
        paths.append(Path("/Library/Application Support/ClaudeCode/managed-settings.json"))
    else:
        paths.append(Path("/etc/claude-code/managed-settings.json"))
    return paths


def plugin_enabled(paths: list[Path]) -> bool:
    """Whether our plugin is enabled: `enabledPlugins["opik-cipx@opik-enterprise"]` as the last of
    `paths` (the weakest first) that names it says."""
    enabled = False
    for path in paths:
        doc, _ = _load(path)
        plugins = (doc or {}).get("enabledPlugins")
        if isinstance(plugins, dict) and PLUGIN_ID in plugins:
            enabled = plugins[PLUGIN_ID] is True
    return enabled


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
