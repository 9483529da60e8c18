"""`opik-cipx purge [--all] [--yes]`: stop the daemon and wipe what it recorded. Destructive.

Every record not yet shipped to Opik is dropped (the spool, quarantine file included); how many
is printed. Raw captures (`captures/`: whole prompts and responses, for `replay` and the viewer)
are kept and said to be kept; `--all` deletes them too, and the local ledger (`ledger.db` and
its `-wal` / `-shm` files) when there is one. `config.toml`, `logs/` and `sessions/` are always
kept. Asks first, saying exactly what goes and what stays; `--yes` skips the question, and
without it a stdin that is not a terminal is refused. A daemon that was running is started
again on the empty state, so Claude Code is never left pointed at a proxy that is not there.
A path of the wrong type in the home (`spool` a file, `ledger.db` a directory: `home.LAYOUT`)
stops it before anything changes, with one line naming it; a starting daemon moves such paths
aside.
"""

import argparse
import os
import shutil
import sys
from pathlib import Path

from opik_cipx.commands.status import size
from opik_cipx.config import ConfigError, Settings
from opik_cipx.control import lifecycle
from opik_cipx.control.confirm import confirmed
from opik_cipx.control.daemon_control import admin_port, fetch_stats, paths_only_settings, read_state, stop_daemon
from opik_cipx.home import layout_problems
from opik_cipx.store.spool import unshipped_records

LEDGER_FILES = ("ledger.db", "ledger.db-wal", "ledger.db-shm")  # the local cost ledger, once there is one


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all", action="store_true",
                        help="also delete the raw captures (captures/) and the local ledger (ledger.db)")
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    parser.set_defaults(on_config_error=on_config_error, writes_home=True)


def on_config_error(args: argparse.Namespace, exc: ConfigError) -> int:
    print(f"opik-cipx: warning: {exc} (purging anyway)", file=sys.stderr)
    return run(args, paths_only_settings(dict(os.environ)))


def _unshipped_now(settings: Settings) -> int:
    """What a purge would drop: from the running daemon's stats, else from the spool on disk."""
    stats = fetch_stats(admin_port(settings, read_state(settings)))
    if stats and isinstance(stats.get("queue"), dict):
        return sum(int(stats["queue"].get(key) or 0) for key in ("in_memory", "ready", "inflight"))
    return unshipped_records(settings.spool_dir)


def _bytes_under(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _ledger_files(settings: Settings) -> list[Path]:
    return [path for path in (settings.home / name for name in LEDGER_FILES) if path.exists()]


def run(args: argparse.Namespace, settings: Settings) -> int:
    problems = layout_problems(settings.home)
    for problem in problems:
        print(f"opik-cipx: {problem}; nothing was purged. `opik-cipx restart` moves it aside (or move it away "
              "yourself), then run `opik-cipx purge` again", file=sys.stderr)
    if problems:
        return 1
    captures = f"{settings.captures_dir} ({size(_bytes_under(settings.captures_dir))} of raw captures: whole " \
               "prompts and responses)"
    lost = [f"{settings.spool_dir}: {_unshipped_now(settings)} record(s) (spans and traces) not yet shipped to Opik"]
    kept = ["config.toml, logs/ and sessions/"]
    if args.all:
        lost.append(captures)
        lost += [str(path) for path in _ledger_files(settings)]
    else:
        kept.insert(0, f"{captures}; `opik-cipx purge --all` deletes them too")
    consequences = ("This stops opik-cipx and deletes, for good:\n" + "".join(f"  - {line}\n" for line in lost)
                    + "It keeps:\n" + "\n".join(f"  - {line}" for line in kept))
    if not args.yes and not confirmed("purge", consequences, "Purge?"):
        print("opik-cipx: nothing changed.", file=sys.stderr)
        return 1
    stopped = stop_daemon(settings)
    if stopped != "not running":
        print(f"opik-cipx: daemon {stopped}")
    dropped = unshipped_records(settings.spool_dir)
    ledger = _ledger_files(settings) if args.all else []
    doomed = [settings.spool_dir, *([settings.captures_dir, *ledger] if args.all else [])]
    captured = _bytes_under(settings.captures_dir)
    for path in doomed:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    left = [path for path in doomed if path.exists()]
    if left:
        print(f"opik-cipx: could not delete {', '.join(map(str, left))}", file=sys.stderr)
        return 1
    print(f"opik-cipx: spool wiped: {dropped} unshipped record(s) (spans and traces) dropped")
    if args.all:
        print(f"opik-cipx: raw captures deleted ({size(captured)})" + (", and the ledger" if ledger else ""))
    else:
        print(f"opik-cipx: kept {settings.captures_dir} ({size(captured)} of raw captures); "
              "`opik-cipx purge --all` deletes them too")
    if stopped == "not running" or settings.disabled:
        return 0
    return lifecycle.bring_up_and_report(settings, dict(os.environ))
