"""The `opik-cipx` command: one argparse dispatcher for the daemon and every helper command.

Command modules are imported only when chosen, so a short-lived command such as `sync`
(run on every Claude Code session start) loads only what it needs; `statusline` without options
(run by Claude Code on every repaint) goes to its fast path before argparse or settings are
loaded. A `$CIPX_HOME` that cannot be used (a file, unreadable; read-only for a command that
writes there) is one line and exit 1 before the command runs; a command may handle it itself
(`on_home_error`, as `sync` does).

A bad setting stops a command with one line and exit 2, unless the command handles it
(`on_config_error`) or names the settings it reads (`config_keys`, the read-only `report`,
`viewer` and `prices`): such a command stops only on a bad setting it reads, and otherwise runs
with one warning line per bad setting on stderr (a running daemon keeps the settings it started
with; the next start would stop on that line).
"""

from __future__ import annotations

import os
import sys

from opik_cipx import __version__

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing; type checkers take it as True
if TYPE_CHECKING:
    import argparse

# name (also its module under opik_cipx.commands) -> one-line help
COMMANDS: dict[str, str] = {
    "status": "snapshot the running daemon (--json for the raw admin stats)",
    "sync": "install/refresh the supervisor, start the daemon, point Claude Code at it",
    "restart": "restart the daemon to pick up the binary on disk",
    "logs": "print and follow the gateway log",
    "viewer": "print (--open: launch) the URL of the dashboard: cost totals, charts, every call",
    "ship": "--retry-quarantine: send the records Opik refused once more, after fixing the cause",
    "purge": "stop the daemon and wipe the spool (drops unshipped spans); --all: raw captures and the ledger too",
    "uninstall": "stop the daemon, remove the supervisor and settings entry, delete ~/.opik-cipx",
    "proxy": "run the gateway in the foreground (normally started by the supervisor)",
    "supervise": "run the daemon and start it again when it dies (sync starts it where there is no systemd/launchd)",
    "replay": "re-derive spans from stored raw captures (offline; --ledger rebuilds ledger.db)",
    "report": "cost and tokens from the local ledger by day, session, project, model, bucket, ...",
    "advise": "what to change (unused MCP servers, skills, agents, memory files, cache, compaction, models) and "
              "what it would have saved",
    "budget": "spend caps: what each counted, what is left, when it resets; `budget allow` goes on past one",
    "prices": "the price table in use (rates, tiers, sources, overrides) and unknown models the daemon saw",
    "config": "print a config.toml example: every setting with its help and default (--example)",
    "install": "make this copy the installed executable and link opik-cipx on PATH (install.sh runs it)",
    "statusline": "one line for Claude Code's status bar: session and today's cost, context, cache hits, limits "
                  "(--install sets it up)",
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    import argparse
    import importlib

    parser = argparse.ArgumentParser(
        prog="opik-cipx",
        description="Local cost-intelligence proxy for Claude Code: where did my tokens go, and what did they cost?",
    )
    parser.add_argument("--version", action="version", version=f"opik-cipx {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    # A known command needs only its own parser (what it prints and parses is the same); the list
    # of all of them is built for the help, a bad command name and no command at all.
    for name, help_text in COMMANDS.items() if chosen not in COMMANDS else [(chosen, COMMANDS[chosen])]:
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(f"opik_cipx.commands.{name}")
            module.configure(command)
            command.set_defaults(run=module.run)
    return parser


NO_SQLITE = ("this Python ({python}) has no sqlite3 module, which opik-cipx needs for its local ledger: it was "
             "built without SQLite's headers. Reinstall with another Python 3.11+ (PYTHON=/usr/bin/python3 "
             "./install.sh), or rebuild this one after installing them (Debian/Ubuntu: apt install libsqlite3-dev)")


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit status. A reader that leaves early (`| head`, `| grep -q`)
    ends the command quietly with 141, as a shell reports a command killed by SIGPIPE; a Python
    without sqlite3 gets one line saying so (the status line: a short hint, exit 0)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        code = _dispatch(argv)
        sys.stdout.flush()  # a broken pipe shows here, not in the interpreter's own flush at exit
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 141
    except ModuleNotFoundError as exc:
        if exc.name not in ("sqlite3", "_sqlite3"):
            raise
        if argv == ["statusline"]:  # Claude Code's repaint: a hint, never a failure
            print("opik-cipx: this Python has no sqlite3 module")
            return 0
        print(f"opik-cipx: {NO_SQLITE.format(python=sys.executable)}", file=sys.stderr)
        return 1


def _dispatch(argv: list[str]) -> int:
    if argv == ["statusline"]:
        from opik_cipx.commands.statusline import main as statusline

        return statusline()
    from opik_cipx.config import ConfigError, is_truthy, load_settings
    from opik_cipx.home import default_home, home_problem

    if argv[:1] == ["proxy"]:
        from opik_cipx.link import WORK_FD_ENV

        if WORK_FD_ENV in os.environ:  # the daemon's work process: its settings come over the link, not from here
            return _work(home_problem(default_home(dict(os.environ)), write=False))
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "proxy" and is_truthy(os.environ.get("CIPX_DISABLED")):
        return 0  # the kill switch wins over everything, even a broken config file
    problem = home_problem(default_home(dict(os.environ)), write=getattr(args, "writes_home", False))
    if problem:
        if getattr(args, "on_home_error", None):
            return args.on_home_error(args, problem)
        print(f"opik-cipx: {problem}", file=sys.stderr)
        return 1
    reads = getattr(args, "config_keys", None)  # the settings a read-only command reads; None: any
    try:
        settings = load_settings(dict(os.environ), tolerant=reads is not None)
    except ConfigError as exc:
        if getattr(args, "on_config_error", None):
            return args.on_config_error(args, exc)  # lifecycle commands must work with a broken config
        print(f"opik-cipx: {exc}", file=sys.stderr)
        return 2
    for key, line in settings.unusable:
        if key in (reads or ()) or (key == "" and reads):
            print(f"opik-cipx: {line}", file=sys.stderr)
            return 2
    for _, line in settings.unusable:
        print(f"opik-cipx: warning: {line}; `{args.command}` does not use it, but the daemon will not start "
              "with it: fix it before `opik-cipx restart`", file=sys.stderr)
    try:
        return args.run(args, settings)
    except KeyboardInterrupt:
        return 130


def _work(problem: str | None) -> int:
    """The daemon's work process (work.py), started by the wire as its own command line run again:
    no parser and no settings of its own (a config file that no longer loads does not stop it)."""
    if problem:
        print(f"opik-cipx: {problem}", file=sys.stderr)
        return 1
    from opik_cipx.work import run_work

    return run_work()
