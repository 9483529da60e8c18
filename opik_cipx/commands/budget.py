"""`opik-cipx budget [--json]` and `opik-cipx budget allow`: the spend caps, and going on past one.

`budget` shows each cap of `[budget]` (docs/BUDGETS.md): what it counted so far in its period
(read from the ledger, so it works with the daemon down), what is left, when it resets, and its
level (`over`: new calls are blocked; `warning`: past `warn_at` of it). Session caps are shown for
the session given (`--session`), else the Claude Code session that runs the command (Claude Code
gives its commands `CLAUDE_CODE_SESSION_ID`), else the sessions active today. Then the allowances
and, with the daemon up, what its guard did (blocked, unable to decide).

`budget allow` lets a session go on whatever the caps say: `--session ID` (a whole id or its
start), else the session that runs it, else the session blocked last; `--for 2h` lets every call
through for that long; `--clear` ends every allowance. The daemon applies it within a second;
the command waits until it has.
"""

import argparse
import json
import os
import sqlite3
import sys
import time
from dataclasses import replace
from typing import Any

from opik_cipx.caps import Budget, duration, period, usd
from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.config import Settings
from opik_cipx.control import budget_allow
from opik_cipx.control.daemon_control import admin_port, fetch_stats, read_state
from opik_cipx.ledger.db import open_reader
from opik_cipx.ledger.periods import RELATIVE, UNIT_S
from opik_cipx.ledger.queries import AmbiguousSession, SessionNotFound, find_session
from opik_cipx.ledger.schema import SchemaError
from opik_cipx.ledger.spent import (
    OVER,
    Standing,
    latest_blocked_session,
    recent_sessions,
    session_directory,
    standings,
)
from opik_cipx.stats import utc_iso

APPLY_WAIT_S = 5.0  # how long `allow` waits for the daemon to apply what it wrote
NO_CAP = ("no spend cap is set: add a [budget] table to {path} (e.g. `day_usd = 20`; docs/BUDGETS.md), "
          "then run `opik-cipx restart`")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=("allow",),
                        help="allow: let a session (or, with --for, every call) go on past the caps")
    parser.add_argument("--session", metavar="ID", help="the Claude Code session (its id, or the start of it)")
    parser.add_argument("--for", dest="duration", metavar="DURATION",
                        help="with allow: let every call through for this long (30m, 2h, 1d)")
    parser.add_argument("--clear", action="store_true", help="with allow: end every allowance")
    parser.add_argument("--json", action="store_true", help="print the caps as JSON")
    parser.set_defaults(config_keys=("budget",))


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "allow":
        return allow(args, settings, dict(os.environ), SYSTEM)
    if args.duration or args.clear:
        print("opik-cipx: --for and --clear go with `opik-cipx budget allow`", file=sys.stderr)
        return 2
    return show(args, settings, dict(os.environ), SYSTEM)


# ---- budget -----------------------------------------------------------------------------------

def show(args: argparse.Namespace, settings: Settings, env: dict[str, str], clock: Clock) -> int:
    budget: Budget = settings.budget
    now = clock.time_ns()
    if not budget.enabled:
        if args.json:
            print(json.dumps({"enabled": False, "caps": []}))
        else:
            print(f"opik-cipx: {NO_CAP.format(path=settings.config_path)}")
        return 0
    try:
        rows = _standings(settings, budget, args.session or env.get("CLAUDE_CODE_SESSION_ID"), now)
    except (sqlite3.Error, SchemaError, SessionNotFound, AmbiguousSession) as exc:
        print(f"opik-cipx: {exc}", file=sys.stderr)
        return 1
    allowed = budget_allow.read(settings.home)
    daemon = _daemon_budget(settings)
    if args.json:
        print(json.dumps(_as_json(budget, rows, allowed, daemon, now), indent=2))
        return 0
    print(_table(budget, rows, now))
    for line in _notes(budget, rows, allowed, daemon, now):
        print(line)
    return 0


def _standings(settings: Settings, budget: Budget, session: str | None, now: int) -> list[Standing]:
    """Every cap: the period caps, global and per project; the session caps of `session`, else of
    the sessions active today."""
    conn = open_reader(settings.ledger_path)  # None: nothing recorded yet, every cap has counted $0
    try:
        if session and conn is not None:
            session = find_session(conn, session)
        directory = session_directory(conn, session) if session and conn is not None else None
        rows = standings(conn, budget, now, session_id=session, directory=directory, every_project=True)
        rows.sort(key=lambda row: row.scope != "session")
        if session is None and conn is not None and budget.has_session_caps:
            for sid, directory, _ in recent_sessions(conn, period("day", now).start_ns):
                rows += [row for row in standings(conn, budget, now, session_id=sid, directory=directory)
                         if row.scope == "session"]
        return rows
    finally:
        if conn is not None:
            conn.close()


def _table(budget: Budget, rows: list[Standing], now: int) -> str:
    head = ("cap", "spent", "of", "left", "level", "resets")
    body = [(r.name, usd(r.spent_usd), usd(r.cap_usd), usd(r.remaining_usd), r.level(budget.warn_at), r.resets(now))
            for r in rows]
    widths = [max(len(line[i]) for line in (head, *body)) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) if i in (0, 4, 5) else cell.rjust(w) for i, (cell, w) in
                       enumerate(zip(line, widths, strict=True))).rstrip() for line in (head, *body)]
    return "\n".join(lines)


def _notes(budget: Budget, rows: list[Standing], allowed: budget_allow.Allowances, daemon: dict | None,
           now: int) -> list[str]:
    out = [f"warning at {budget.warn_at:.0%} of a cap; at a cap, new calls are kept from Anthropic "
           "(`opik-cipx budget allow` lets a session go on)"]
    if any(r.level(budget.warn_at) == OVER for r in rows):
        out.append("! a cap is reached: `opik-cipx budget allow` (this session), `opik-cipx budget allow --for 2h`, "
                   "or raise it in config.toml and `opik-cipx restart`")
    if allowed.until_ns > now:
        out.append(f"allowed: every call until {time.strftime('%a %H:%M', time.localtime(allowed.until_ns / 1e9))} "
                   f"(in {duration(allowed.until_ns - now)})")
    if allowed.sessions:
        out.append(f"allowed sessions: {', '.join(sid[:8] for sid in allowed.sessions)}")
    if daemon is None:
        out.append("daemon: not running (caps are enforced while it runs)")
    elif not daemon.get("enabled"):
        out.append("daemon: ! running without these caps (started before they were set): `opik-cipx restart`")
    elif not daemon.get("deciding"):
        out.append(f"daemon: ! not enforcing the caps: {daemon.get('undecided_reason')}")
    else:
        out.append(f"daemon: enforcing; {daemon.get('blocked', 0)} request(s) blocked since it started")
    return out


def _as_json(budget: Budget, rows: list[Standing], allowed: budget_allow.Allowances, daemon: dict | None,
             now: int) -> dict[str, Any]:
    return {
        "enabled": True,
        "warn_at": budget.warn_at,
        "caps": [{"scope": r.scope, "project": r.project, "session_id": r.session_id, "cap_usd": r.cap_usd,
                  "spent_usd": round(r.spent_usd, 6), "remaining_usd": round(r.remaining_usd, 6),
                  "resets_at": utc_iso(r.resets_at_ns / 1e9) if r.resets_at_ns else None,
                  "level": r.level(budget.warn_at)} for r in rows],
        "allowed": {"sessions": sorted(allowed.sessions),
                    "until": utc_iso(allowed.until_ns / 1e9) if allowed.until_ns > now else None},
        "daemon": None if daemon is None else {key: daemon.get(key) for key in (
            "enabled", "deciding", "undecided_reason", "blocked", "errors", "undecided")},
    }


def _daemon_budget(settings: Settings) -> dict | None:
    """The running daemon's `budget` stats ({} when it runs without a guard); None when it is down."""
    stats = fetch_stats(admin_port(settings, read_state(settings)))
    if stats is None:
        return None
    section = stats.get("budget")
    return section if isinstance(section, dict) else {}


# ---- budget allow -------------------------------------------------------------------------------

def allow(args: argparse.Namespace, settings: Settings, env: dict[str, str], clock: Clock) -> int:
    now = clock.time_ns()
    current = budget_allow.read(settings.home)
    if args.clear:
        wanted, said = budget_allow.Allowances(), "every allowance ended: the caps apply to every call again"
    elif args.duration:
        seconds = _duration_s(args.duration)
        if seconds is None:
            print(f"opik-cipx: cannot read --for {args.duration!r}: use e.g. 30m, 2h or 1d", file=sys.stderr)
            return 2
        until = now + int(seconds * 1e9)
        wanted = replace(current, until_ns=until)
        said = (f"every call goes through whatever the caps say until "
                f"{time.strftime('%a %H:%M', time.localtime(until / 1e9))} (for {duration(until - now)})")
    else:
        session, problem = _session_to_allow(args.session, settings, env)
        if session is None:
            print(f"opik-cipx: {problem}", file=sys.stderr)
            return 1
        wanted = replace(current, sessions={**current.sessions, session: now})
        said = f"session {session[:8]} goes on whatever the caps say (for the rest of its life)"
    try:
        written = budget_allow.write(settings.home, wanted, now)
    except OSError as exc:
        print(f"opik-cipx: cannot write {budget_allow.path(settings.home)}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"opik-cipx: {said}; {_applied(settings, written.serial, clock)}")
    return 0


def _duration_s(text: str) -> float | None:
    match = RELATIVE.match(text.strip())
    return float(match.group(1)) * UNIT_S[match.group(2)] if match else None


def _session_to_allow(asked: str | None, settings: Settings, env: dict[str, str]) -> tuple[str | None, str]:
    """The session `allow` means: asked by id or its start, else the one that runs the command,
    else the one blocked last (the daemon's, else the ledger's); or why there is none."""
    try:
        conn = open_reader(settings.ledger_path)
    except (sqlite3.Error, SchemaError) as exc:
        conn, reason = None, str(exc)
    else:
        reason = "no call is recorded yet"
    try:
        if asked:
            if conn is None:
                return (asked, "") if len(asked) == 36 else (None, f"cannot find session {asked}: {reason}")
            try:
                return find_session(conn, asked), ""
            except (SessionNotFound, AmbiguousSession) as exc:
                return None, str(exc)
        if env.get("CLAUDE_CODE_SESSION_ID"):
            return env["CLAUDE_CODE_SESSION_ID"], ""
        blocked = (_daemon_budget(settings) or {}).get("blocked_sessions") or []
        if blocked:
            return str(blocked[-1]), ""
        latest = latest_blocked_session(conn) if conn is not None else None
        if latest:
            return latest, ""
        return None, ("no session was blocked: name one with `--session ID` (`opik-cipx report --by session` lists "
                      "them), or let every call through for a while with `--for 2h`")
    finally:
        if conn is not None:
            conn.close()


def _applied(settings: Settings, serial: str | None, clock: Clock) -> str:
    """Wait until the running daemon applied the allowances with `serial`; what to tell the user."""
    deadline = clock.monotonic() + APPLY_WAIT_S
    while True:
        section = _daemon_budget(settings)
        if section is None:
            return "the daemon is not running: it applies this when it starts"
        if not section.get("enabled"):
            return "the daemon enforces no cap"
        if section.get("allow_serial") == serial:
            return "the daemon applied it"
        if clock.monotonic() >= deadline:
            return "the daemon has not applied it yet (it looks once a second): `opik-cipx status` shows it"
        clock.sleep(0.1)

