"""`opik-cipx uninstall [--yes] [--keep-ledger]`: remove everything opik-cipx put on this machine. Destructive.

Asks first (`--yes` skips it; without it a stdin that is not a terminal is refused), listing what
goes: `ledger.db` (the whole cost history, with its calls, cost and first day), the raw captures, the
spool, the rest of `$CIPX_HOME`, and what it takes out of Claude Code's settings and PATH.
Then it holds the home (control/lifecycle.py: `uninstalling`; a `sync` under way is waited for, and
one run meanwhile, by a Claude Code hook, does nothing), stops the daemon, saying so before the wait
(calls in flight may take `drain_timeout_s`) and `daemon stopped` only once the daemon and its
supervisor are gone (control/daemon_control.stop_daemon);
removes the supervisor unit, our `ANTHROPIC_BASE_URL` (only if it is ours), our `statusLine` (only
one running `opik-cipx statusline`; a user's that `statusline --install --force` replaced is put back
in its place), our Claude Code hooks (those running `opik-cipx-hook-launcher`, which install.sh
added), the hook scripts that carry our managed-file marker and the `opik-cipx` link on PATH (only
a symlink to our executable) with the directories made for it if empty, then deletes `$CIPX_HOME`,
and last a Claude Code settings file left as `{}`, and its `hooks/` and directory if left empty.
`--keep-ledger` keeps `ledger.db` and its `-wal` and `-shm` files (the `-wal` may hold calls not yet
copied into `ledger.db`), alone in `$CIPX_HOME`: the next install's daemon and `report` read them
as they are (an older ledger is migrated by the daemon, docs/LIFECYCLE.md).
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
import sqlite3
import sys
import zipfile
from contextlib import ExitStack
from pathlib import Path

from opik_cipx.commands.purge import LEDGER_FILES
from opik_cipx.commands.status import size
from opik_cipx.config import OPTIONS, ConfigError, Settings
from opik_cipx.control import claude_settings, install, lifecycle
from opik_cipx.control.confirm import confirmed
from opik_cipx.control.daemon_control import find_processes, paths_only_settings
from opik_cipx.control.userfiles import remove_empty
from opik_cipx.home import home_problem
from opik_cipx.ledger import queries
from opik_cipx.ledger.db import open_reader
from opik_cipx.ledger.schema import SchemaError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--keep-ledger", action="store_true",
                        help="keep ledger.db, the cost history, in $CIPX_HOME: the next install reads it again")
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


def ledger_summary(path: Path) -> str:
    """What `ledger.db` holds, for the question: `1,234 calls, $56.78, since 2026-11-24`, else its size."""
    try:
        conn = open_reader(path)
        if conn is None:
            return "no calls yet"
        try:
            total, first = queries.report(conn, ()).total, queries.first_day(conn)
        finally:
            conn.close()
    except (sqlite3.Error, SchemaError):  # locked, damaged, or of another version: its size says enough
        return size(sum(p.stat().st_size for p in _ledger_files(path.parent)))
    return f"{total['calls']:,} calls, ${total['cost_usd'] or 0:,.2f}" + (f", since {first}" if first else "")


def _ledger_files(home: Path) -> list[Path]:
    return [home / name for name in LEDGER_FILES if (home / name).is_file() and not (home / name).is_symlink()]


def consequences(settings: Settings, env: dict[str, str], keep_ledger: bool) -> str:
    """What uninstalling deletes and removes, and what it keeps, as the question states it."""
    home, ledger = settings.home, settings.ledger_path
    gone = []
    if ledger.is_file() and not keep_ledger:
        gone.append(f"{ledger}: the whole cost history ({ledger_summary(ledger)}) that `report`, the dashboard and "
                    "the status line show; `--keep-ledger` keeps it")
    if settings.captures_dir.is_dir():
        gone.append(f"{settings.captures_dir}: raw captures (whole prompts and responses)")
    if settings.spool_dir.is_dir():
        gone.append(f"{settings.spool_dir}: records not yet shipped to Opik, if any")
    gone.append(f"the rest of {home}: the executable, config.toml, logs and session files")
    text = ("This stops opik-cipx and deletes, for good:\n" + "".join(f"  - {line}\n" for line in gone)
            + f"It removes our ANTHROPIC_BASE_URL, statusLine and hooks from {claude_settings.settings_path(env)} "
            "(a statusLine of yours that `statusline --install --force` replaced is put back), the supervisor "
            "unit, our hook scripts and the `opik-cipx` link on PATH.")
    if keep_ledger and ledger.is_file():
        text += (f"\nIt keeps {ledger} ({ledger_summary(ledger)}), alone in {home}: the next install reads it "
                 "again.")
    return text


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
    if not args.yes and not confirmed("uninstall", consequences(settings, env, args.keep_ledger),
                                      "Uninstall opik-cipx?"):
        print("opik-cipx: nothing changed.", file=sys.stderr)
        return 1
    with ExitStack() as held:
        try:
            held.enter_context(lifecycle.uninstalling(settings, waiting=lambda: print(
                "opik-cipx: waiting for the `opik-cipx sync` under way to finish", flush=True)))
        except TimeoutError as exc:
            print(f"opik-cipx: nothing changed: {exc}. Run `opik-cipx uninstall` again.", file=sys.stderr)
            return 1
        return _uninstall(args, settings, env)


def _uninstall(args: argparse.Namespace, settings: Settings, env: dict[str, str]) -> int:
    """Stop, remove and delete, holding the home (no `sync` brings anything up meanwhile)."""
    home = settings.home
    for line in lifecycle.tear_down(settings, env):
        print(f"opik-cipx: {line}", flush=True)  # as it happens: a drain can take a while
    running = find_processes(settings)
    if running:
        print(f"opik-cipx: {running.describe()} still runs, so {home} was left in place: run `opik-cipx "
              "uninstall` again", file=sys.stderr)
        return 1
    _clear_claude_code(settings, env)
    made = install.made_dirs(home, env)  # read before $CIPX_HOME goes
    for link in install.remove_link(install.installed_path(settings, env), env):
        print(f"opik-cipx: removed {link}")
    copy = _installed_copy(env, home)
    if copy is not None:
        copy.unlink(missing_ok=True)
        print(f"opik-cipx: removed {copy}")
    if home.exists():
        _delete_home(settings, args.keep_ledger)
    for path in remove_empty(made) + claude_settings.tidy(env):
        print(f"opik-cipx: removed {path} (left empty)")
    print("opik-cipx: uninstalled. If the Claude Code plugin is installed, remove it too "
          "(/plugin uninstall opik-cipx@opik-enterprise), or its next session start installs opik-cipx again.")
    return 0


def _clear_claude_code(settings: Settings, env: dict[str, str]) -> None:
    """Our statusLine (a replaced one of the user's put back), hooks and hook scripts out of Claude Code's
    configuration."""
    path = claude_settings.settings_path(env)
    status_line = claude_settings.remove_status_line(path, settings.home / claude_settings.STATUS_LINE_BACKUP)
    if status_line.outcome == "removed":
        print(f"opik-cipx: removed our statusLine from {path}")
    elif status_line.outcome == "restored":
        print(f"opik-cipx: put back your statusLine in {path} ({status_line.detail})")
    hooks = claude_settings.remove_hooks(path, install.hooks_created(settings.home))
    if hooks.outcome == "removed":
        print(f"opik-cipx: removed our Claude Code hooks from {hooks.path}")
    for script in claude_settings.remove_managed_hook_scripts(env):
        print(f"opik-cipx: removed hook script {script}")


def _delete_home(settings: Settings, keep_ledger: bool) -> None:
    """Delete `$CIPX_HOME`, or with `keep_ledger` everything in it but the ledger's files."""
    home = settings.home
    if not keep_ledger or not _ledger_files(home):
        shutil.rmtree(home)
        print(f"opik-cipx: deleted {home}")
        return
    kept = _ledger_files(home)
    for entry in os.scandir(home):
        path = Path(entry.path)
        if path in kept:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path)
        else:
            path.unlink()
    print(f"opik-cipx: deleted everything in {home} but {', '.join(p.name for p in kept)} "
          f"({ledger_summary(settings.ledger_path)}): the next install reads it again")
    retention = next(option.default for option in OPTIONS if option.key == "ledger.retention_days")
    if settings.ledger_retention_days > retention:
        print(f"opik-cipx: the deleted config.toml kept {settings.ledger_retention_days:g} days of calls: put "
              f"`ledger.retention_days = {settings.ledger_retention_days:g}` in the next install's config.toml "
              f"before its daemon starts, or it deletes the calls older than {retention:g} days")
