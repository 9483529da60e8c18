"""`opik-cipx purge [--yes]`: stop the daemon and wipe the spool. Destructive.

Every record not yet shipped to Opik is dropped, and the quarantine file goes with it; how many
records were dropped is printed. Asks first; `--yes` skips the question, and without it a
stdin that is not a terminal is refused. A daemon that was running is started again on the
empty spool, so Claude Code is never left pointed at a proxy that is not there.
"""

import argparse
import os
import shutil
import sys

from opik_cipx.config import ConfigError, Settings
from opik_cipx.control import lifecycle
from opik_cipx.control.confirm import confirmed
from opik_cipx.control.daemon_control import admin_port, fetch_stats, paths_only_settings, read_state, stop_daemon
from opik_cipx.store.spool import unshipped_records


def configure(parser: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace, settings: Settings) -> int:
    consequences = (f"This stops opik-cipx and deletes {settings.spool_dir}: {_unshipped_now(settings)} record(s) "
                    "(spans and traces) not yet shipped to Opik are lost.")
    if not args.yes and not confirmed("purge", consequences, "Purge the spool?"):
        print("opik-cipx: nothing changed.", file=sys.stderr)
        return 1
    stopped = stop_daemon(settings)
    if stopped != "not running":
        print(f"opik-cipx: daemon {stopped}")
    dropped = unshipped_records(settings.spool_dir)
    shutil.rmtree(settings.spool_dir, ignore_errors=True)
    if settings.spool_dir.exists():
        print(f"opik-cipx: could not delete {settings.spool_dir}", file=sys.stderr)
        return 1
    print(f"opik-cipx: spool wiped: {dropped} unshipped record(s) (spans and traces) dropped")
    if stopped == "not running" or settings.disabled:
        return 0
    return lifecycle.bring_up_and_report(settings, dict(os.environ))
