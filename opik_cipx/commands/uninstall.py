"""`opik-cipx uninstall [--yes]`: remove everything opik-cipx put on this machine. Destructive.

Stops the daemon, removes the supervisor unit, our `ANTHROPIC_BASE_URL` (only if it is ours),
our `statusLine` (only one running `opik-cipx statusline`), our Claude Code hooks (those running
`opik-cipx-hook-launcher`, which install.sh added), the hook scripts that carry our
managed-file marker and the `opik-cipx` link on PATH (only a symlink to our executable) with the
directories made for it if empty, then deletes `$CIPX_HOME` (the installed binary, logs,
captures, sessions and the spool with any spans not yet shipped), and last a Claude Code
settings file left as `{}`, and its `hooks/` and directory if left empty.
Nothing of the user's is touched: other settings keys, hand-written hooks, a foreign
`ANTHROPIC_BASE_URL` or `statusLine`. A `$CIPX_HOME` that is the home directory or one of its parents is
refused, and so is one that could not be deleted whole (read-only, not ours): that is checked
before anything is stopped or changed, so a failed uninstall leaves a working install. The Claude
Code plugin, if installed, stays until `/plugin uninstall`; its next session start would install
opik-cipx again.
"""

import argparse
import os
import shutil
import sys
import zipfile
from pathlib import Path

from opik_cipx.config import ConfigError, Settings
from opik_cipx.control import claude_settings, install, lifecycle
from opik_cipx.control.confirm import confirmed
from opik_cipx.control.daemon_control import paths_only_settings
from opik_cipx.control.userfiles import remove_empty
from opik_cipx.home import home_problem


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    parser.set_defaults(on_config_error=on_config_error, writes_home=True)


def on_config_error(args: argparse.Namespace, exc: ConfigError) -> int:
    print(f"opik-cipx: warning: {exc} (uninstalling anyway)", file=sys.stderr)
    return run(args, paths_only_settings(dict(os.environ)))


def unsafe_to_delete(home: Path, env: dict[str, str]) -> str | None:
    """Why `home` must not be deleted wholesale, or None."""
    target = home.resolve()
    user_home = Path(env.get("HOME") or Path.home()).resolve()
    if target == Path(target.anchor) or target == user_home or target in user_home.parents:
        return f"{home} is the root, your home directory or one of its parents"
    config_dir = claude_settings.settings_path(env).parent.resolve()
    if target == config_dir or target in config_dir.parents:
        return f"{home} is Claude Code's configuration directory or holds it"
    return None


def _installed_copy(env: dict[str, str], home: Path) -> Path | None:
    """`$CIPX_INSTALL_DIR/opik-cipx` when it is one of our zipapps outside `$CIPX_HOME`."""
    install_dir = env.get("CIPX_INSTALL_DIR", "").strip()
    if not install_dir:
        return None
    path = Path(install_dir).expanduser() / "opik-cipx"
    if home.resolve() in path.resolve().parents or not path.is_file():
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            return path if "opik_cipx/__init__.py" in archive.namelist() else None
    except (OSError, zipfile.BadZipFile):
        return None


def cannot_delete(home: Path) -> str | None:
    """Why `home` could not be deleted whole (checked before anything is touched), or None."""
    problem = home_problem(home, write=True)
    if problem or not home.exists():
        return problem
    if not os.access(home.parent, os.W_OK | os.X_OK):
        return f"cannot delete {home}: its parent directory {home.parent} is not writable by this user"
    for directory, subdirs, _ in os.walk(home, onerror=_raise):
        for name in subdirs:
            path = Path(directory, name)
            if not path.is_symlink() and not os.access(path, os.R_OK | os.W_OK | os.X_OK):
                return f"cannot delete {path}: not writable by this user; fix its owner or permissions"
    return None


def _raise(exc: OSError) -> None:
    raise exc


def run(args: argparse.Namespace, settings: Settings) -> int:
    env = dict(os.environ)
    home = settings.home
    refusal = unsafe_to_delete(home, env)
    if refusal:
        print(f"opik-cipx: refusing to uninstall: {refusal}. Check CIPX_HOME.", file=sys.stderr)
        return 1
    try:
        blocked = cannot_delete(home)
    except OSError as exc:
        blocked = f"cannot read {exc.filename}: {exc.strerror}"
    if blocked:
        print(f"opik-cipx: nothing changed: {blocked}. Fix that, then run `opik-cipx uninstall` again.",
              file=sys.stderr)
        return 1
    consequences = (f"This stops opik-cipx, removes its supervisor unit, Claude Code settings entries and hooks and "
                    f"`opik-cipx` link on PATH, and deletes {home}\n(logs, captures and any spans not yet shipped to "
                    "Opik).")
    if not args.yes and not confirmed("uninstall", consequences, "Uninstall opik-cipx?"):
        print("opik-cipx: nothing changed.", file=sys.stderr)
        return 1
    for line in lifecycle.tear_down(settings, env):
        print(f"opik-cipx: {line}")
    status_line = claude_settings.remove_status_line(claude_settings.settings_path(env))
    if status_line.outcome == "removed":
        print(f"opik-cipx: removed our statusLine from {status_line.path}")
    hooks = claude_settings.remove_hooks(claude_settings.settings_path(env), install.hooks_created(home))
    if hooks.outcome == "removed":
        print(f"opik-cipx: removed our Claude Code hooks from {hooks.path}")
    for path in claude_settings.remove_managed_hook_scripts(env):
        print(f"opik-cipx: removed hook script {path}")
    made = install.made_dirs(home, env)  # read before $CIPX_HOME goes
    for link in install.remove_link(install.installed_path(settings, env), env):
        print(f"opik-cipx: removed {link}")
    copy = _installed_copy(env, home)
    if copy is not None:
        copy.unlink(missing_ok=True)
        print(f"opik-cipx: removed {copy}")
    if home.exists():
        shutil.rmtree(home)
        print(f"opik-cipx: deleted {home}")
    for path in remove_empty(made) + claude_settings.tidy(env):
        print(f"opik-cipx: removed {path} (left empty)")
    print("opik-cipx: uninstalled. If the Claude Code plugin is installed, remove it too "
          "(/plugin uninstall opik-cipx@opik-enterprise), or its next session start installs opik-cipx again.")
    return 0
