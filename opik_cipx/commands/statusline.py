"""`opik-cipx statusline [--install [--force]]`: one line for Claude Code's status bar.

Claude Code runs its `statusLine` command after each assistant message with a JSON document on
stdin (`session_id`, `model`, `context_window`, `rate_limits`, `cost`, `workspace`, ...;
https://code.claude.com/docs/en/statusline#available-data) and shows the first line it prints.
This prints, from the ledger (read directly: the daemon may be down):
- the session's exact cost so far, every call of the session id (subagents, side calls and
  compactions share it), `+?` when some call has no price;
- today's cost (the local day, every session);
- the context used: the prompt of the session's latest main-loop call, of the window size
  Claude Code reports (its own `used_percentage` until the ledger has a main call);
- the session's cache hit ratio, `cache hit` (cache read over input side: docs/REPORTS.md, "Words");
- each rate-limit window's utilization and time to reset (the latest values in the ledger;
  Claude Code's own `rate_limits` when it has none), `!` past a warning threshold;
- with a spend cap set (`[budget]`, docs/BUDGETS.md), what is left of the tightest cap of this
  session (`left $1.20 day`), yellow past `warn_at`, red once reached (`day cap reached`).
Coloured with ANSI (not with `NO_COLOR`), cut to `COLUMNS` (80): the least important parts go
first. It never fails Claude Code: on any problem it prints a short hint and exits 0.

It runs on every repaint, so its fast path (`main`) imports only the standard library,
`clock` and `ledger/figures` (which import nothing more): `cli.main` hands `statusline` without options to it
before loading settings (bench/bench_statusline.py). The caps (`caps`, `ledger/spent`) are
loaded only when the config file mentions a budget. It reads `$CIPX_HOME/ledger.db` as `ledger/schema.py` defines it,
read-only and at that schema's version alone: only the daemon migrates the file, so a ledger of
another version is a hint line.
`--install` sets `statusLine` in `~/.claude/settings.json` to run the installed executable,
only when none is set (or with `--force`, keeping the replaced one in `$CIPX_HOME/statusline-backup.json`);
`uninstall` removes it when it is ours, and puts the replaced one back (control/claude_settings.py).
"""

from __future__ import annotations  # argparse and Settings are imported by cli, never by the fast path

import json
import os
import sqlite3
import sys
import time

from opik_cipx.clock import SYSTEM
from opik_cipx.ledger.figures import CACHE_READ, CACHE_WRITE, UNCACHED, cache_hit  # imports nothing

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing; type checkers take it as True
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import TextIO

    from opik_cipx.caps import Budget
    from opik_cipx.config import Settings

DEFAULT_COLUMNS = 80
SEPARATOR = " · "
KNOWN_WINDOWS = ("5h", "7d")  # the subscription's own windows: shown before the others
GREEN, YELLOW, RED, DIM, RESET = "\033[32m", "\033[33m", "\033[31m", "\033[2m", "\033[0m"
BUSY_TIMEOUT_S = 0.2  # never hold Claude Code's repaint up behind a writer
SCHEMA_VERSION = 5  # the ledger version whose tables this reads (ledger/schema.LATEST; a test keeps them equal)
NO_CALLS = "opik-cipx: no calls recorded yet (`opik-cipx sync` routes Claude Code through it)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--install", action="store_true",
                        help="set statusLine in ~/.claude/settings.json to this command (only when none is set)")
    parser.add_argument("--force", action="store_true",
                        help="with --install: replace a statusLine set by something else")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.install:
        return install(settings, args.force)
    if args.force:
        print("opik-cipx: --force goes with --install", file=sys.stderr)
        return 2
    return main()


def main(stdin: TextIO | None = None, env: dict[str, str] | None = None, now: float | None = None) -> int:
    """Print the status line for the session on stdin; always 0."""
    env = dict(os.environ) if env is None else env
    stdin = sys.stdin if stdin is None else stdin
    try:
        line = render(stdin, env, SYSTEM.time() if now is None else now)
    except Exception as exc:  # never fail Claude Code's status bar
        line = f"opik-cipx: status line unavailable ({type(exc).__name__}); `opik-cipx report` still works"
    try:
        print(line, flush=True)
    except (BrokenPipeError, OSError):
        pass
    return 0


def render(stdin: TextIO, env: dict[str, str], now: float) -> str:
    if stdin.isatty():
        return ("opik-cipx statusline: reads Claude Code's statusLine JSON on stdin; "
                "`opik-cipx statusline --install` sets it up")
    try:
        doc = json.loads(stdin.read(1 << 20) or "null")
    except (ValueError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("session_id"), str):
        return "opik-cipx: no Claude Code session on stdin (run by Claude Code's statusLine)"
    color = not env.get("NO_COLOR")
    ledger = _ledger_path(env)
    if not os.path.exists(ledger):
        return NO_CALLS
    try:
        figures = read_ledger(ledger, doc["session_id"], now, _budget(env), _directory(doc))
    except OtherSchema as exc:
        return str(exc)
    parts = _parts(doc, figures, now, color)
    return fit(parts, _columns(env))


def _budget(env: dict[str, str]) -> Budget | None:
    """The `[budget]` of the config file, loaded only when the file mentions one (`caps` and the
    TOML parser cost more than the rest of a repaint)."""
    path = os.path.expanduser(env["CIPX_CONFIG"]) if env.get("CIPX_CONFIG") else \
        os.path.join(os.path.dirname(_ledger_path(env)), "config.toml")
    try:
        with open(path, "rb") as fh:
            if b"budget" not in fh.read():
                return None
    except OSError:
        return None
    from opik_cipx.caps import read_budget

    budget = read_budget(path)
    return budget if budget is not None and budget.enabled else None


def _directory(doc: dict) -> str | None:
    """Where the session works: the directory Claude Code was started in."""
    workspace = found if isinstance(found := doc.get("workspace"), dict) else {}
    directory = workspace.get("project_dir") or doc.get("cwd")
    return directory if isinstance(directory, str) else None


def _ledger_path(env: dict[str, str]) -> str:
    """`$CIPX_HOME/ledger.db` (home.default_home, without importing it: this path stays light)."""
    home = env.get("CIPX_HOME", "").strip()
    if home:
        return os.path.join(os.path.expanduser(home), "ledger.db")
    return os.path.join(env.get("HOME") or os.path.expanduser("~"), ".opik-cipx", "ledger.db")


def _columns(env: dict[str, str]) -> int:
    try:
        columns = int(env.get("COLUMNS", ""))
    except ValueError:
        return DEFAULT_COLUMNS
    return columns if columns > 0 else DEFAULT_COLUMNS


class OtherSchema(Exception):
    """The ledger is not of `SCHEMA_VERSION`: the message is the line to show instead."""


def read_only_uri(path: str) -> str:
    """`ledger/db.read_only_uri` (not imported: it loads the schema; a test keeps them equal)."""
    escaped = os.path.abspath(path).replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    return f"file://{escaped}?mode=ro"


def read_ledger(path: str, session_id: str, now: float, budget: Budget | None = None,
                directory: str | None = None) -> dict:
    """The session's figures, today's cost, the latest rate-limit windows and, given a budget,
    each cap of the session's, read without writing anything (only the daemon migrates the
    ledger). Raises OtherSchema."""
    conn = sqlite3.connect(read_only_uri(path), uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            raise OtherSchema(NO_CALLS)
        if version < SCHEMA_VERSION:
            raise OtherSchema("opik-cipx: ledger.db is from an older opik-cipx; `opik-cipx restart` upgrades it")
        if version > SCHEMA_VERSION:
            raise OtherSchema("opik-cipx: ledger.db is from a newer opik-cipx; upgrade this one")
        session = conn.execute(
            "SELECT total(cost_usd), sum(unknown_model), total(input_tokens), "
            "total(cache_creation_input_tokens), total(cache_read_input_tokens) FROM calls WHERE session_id = ?",
            (session_id,)).fetchone()
        context = conn.execute(
            "SELECT input_tokens + cache_creation_input_tokens + cache_read_input_tokens FROM calls "
            "WHERE session_id = ? AND kind = 'main' AND agent_id IS NULL AND input_tokens + "
            "cache_creation_input_tokens + cache_read_input_tokens > 0 ORDER BY started_at_ns DESC LIMIT 1",
            (session_id,)).fetchone()
        today = conn.execute("SELECT total(cost_usd) FROM daily_calls WHERE day = ?",
                             (time.strftime("%Y-%m-%d", time.localtime(now)),)).fetchone()
        windows = conn.execute(
            "SELECT window_name, utilization, resets_at, status, surpassed_threshold FROM latest_rate_limits "
            "WHERE utilization IS NOT NULL AND (resets_at IS NULL OR resets_at > ?)", (now,)).fetchall()
        caps = []
        if budget is not None:
            from opik_cipx.ledger.spent import standings

            caps = [(s.scope, s.cap_usd, s.spent_usd, s.level(budget.warn_at))
                    for s in standings(conn, budget, int(now * 1e9), session_id, directory)]
    finally:
        conn.close()
    cost, unpriced, uncached, written, read = session
    return {
        "cost": cost, "unpriced": unpriced or 0, "today": today[0],
        "cache_hit": cache_hit({UNCACHED: uncached, CACHE_WRITE: written, CACHE_READ: read}),
        "context": context[0] if context else None,
        "windows": [{"name": n, "utilization": u, "resets_at": r, "warning": s in ("allowed_warning", "rejected")
                     or t is not None} for n, u, r, s, t in windows],
        "caps": caps,
    }


def _parts(doc: dict, figures: dict, now: float, color: bool) -> list[tuple[int, str, str]]:
    """(importance, plain text, coloured text) of each part, in display order."""
    def paint(text: str, code: str) -> tuple[str, str]:
        return text, f"{code}{text}{RESET}" if color else text

    out = []
    cost = f"${_usd(figures['cost'])}{'+?' if figures['unpriced'] else ''}"
    out.append((100, *paint(cost, "\033[1m")))
    out.append((40, *paint(f"today ${_usd(figures['today'])}", DIM)))
    context = _context(doc, figures)
    if context:
        text, share = context
        out.append((80, *paint(text, _level(share, 0.6, 0.85))))
    hit = figures["cache_hit"]
    if hit is not None:
        out.append((50, *paint(f"cache hit {hit:.0%}", GREEN if hit >= 0.8 else YELLOW if hit >= 0.5 else RED)))
    windows = figures["windows"] or _claude_code_windows(doc, now)
    order = sorted(windows, key=lambda w: (KNOWN_WINDOWS.index(w["name"]) if w["name"] in KNOWN_WINDOWS
                                           else len(KNOWN_WINDOWS), w["name"]))
    for rank, window in enumerate(order):
        used = window["utilization"]
        text = f"{window['name']} {used:.0%}{'!' if window['warning'] else ''}"
        if window.get("resets_at"):
            text += f" {_until(window['resets_at'] - now)}"
        importance = 90 if window["warning"] or used >= 0.8 else 70 - rank
        out.append((importance, *paint(text, RED if window["warning"] else _level(used, 0.5, 0.8))))
    if figures.get("caps"):
        out.insert(1, _cap_part(figures["caps"], paint))
    return out


def _cap_part(caps: list[tuple[str, float, float, str]],
              paint: Callable[[str, str], tuple[str, str]]) -> tuple[int, str, str]:
    """What is left of the tightest spend cap: (importance, plain, coloured)."""
    scope, cap, spent, level = min(caps, key=lambda c: c[1] - c[2])
    if level == "over":
        return (95, *paint(f"{scope} cap reached", RED))
    return (95 if level == "warning" else 60, *paint(f"left ${_usd(cap - spent)} {scope}",
                                                      YELLOW if level == "warning" else GREEN))


def _context(doc: dict, figures: dict) -> tuple[str, float | None] | None:
    window = found if isinstance(found := doc.get("context_window"), dict) else {}
    size = window.get("context_window_size")
    size = size if isinstance(size, (int, float)) and size > 0 else None
    used = figures["context"]
    if used is None:
        percent = window.get("used_percentage")
        if not isinstance(percent, (int, float)):
            return None
        return f"ctx {percent:.0f}%", percent / 100
    if size is None:
        return f"ctx {_tokens(used)}", None
    return f"ctx {_tokens(used)}/{_tokens(size)} {used / size:.0%}", used / size


def _claude_code_windows(doc: dict, now: float) -> list[dict]:
    """Claude Code's own `rate_limits` (five_hour, seven_day), when the ledger has none."""
    limits = found if isinstance(found := doc.get("rate_limits"), dict) else {}
    out = []
    for key, name in (("five_hour", "5h"), ("seven_day", "7d")):
        window = limits.get(key)
        if isinstance(window, dict) and isinstance(window.get("used_percentage"), (int, float)):
            reset = window.get("resets_at") if isinstance(window.get("resets_at"), (int, float)) else None
            if reset is None or reset > now:
                out.append({"name": name, "utilization": window["used_percentage"] / 100, "resets_at": reset,
                            "warning": False})
    return out


def fit(parts: list[tuple[int, str, str]], columns: int) -> str:
    """The parts joined, the least important dropped until the plain text fits `columns`."""
    kept = list(parts)
    while len(kept) > 1 and len(SEPARATOR.join(plain for _, plain, _ in kept)) > columns:
        kept.remove(min(kept, key=lambda part: part[0]))
    if len(kept[0][1]) > columns:  # even the cost alone does not fit
        return kept[0][1][:columns]
    return SEPARATOR.join(painted for _, _, painted in kept)


def _level(share: float | None, warn: float, alarm: float) -> str:
    if share is None:
        return DIM
    return RED if share >= alarm else YELLOW if share >= warn else GREEN


def _usd(value: float | None) -> str:
    value = value or 0.0
    return f"{value:,.2f}" if value >= 1 else f"{value:.4f}"


def _tokens(n: float) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e3 else f"{n:.0f}"


def _until(seconds: float) -> str:
    s = int(max(seconds, 0))
    days, hours, minutes = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m" if minutes else f"{s}s"


def install(settings: Settings, force: bool) -> int:
    """Point Claude Code's `statusLine` at the installed executable."""
    from opik_cipx.control import claude_settings
    from opik_cipx.control.install import installed_path

    env = dict(os.environ)
    executable = installed_path(settings, env)
    if not executable.exists():
        print(f"opik-cipx: not installed yet (no {executable}): run `opik-cipx install` (or `opik-cipx sync`) "
              "first, then `opik-cipx statusline --install`", file=sys.stderr)
        return 1
    path = claude_settings.settings_path(env)
    backup = settings.home / claude_settings.STATUS_LINE_BACKUP
    try:
        change = claude_settings.set_status_line(path, claude_settings.status_line_command(executable), force, backup)
    except OSError as exc:
        print(f"opik-cipx: cannot keep a backup of your statusLine in {backup} ({exc.strerror or exc}); nothing "
              "changed", file=sys.stderr)
        return 1
    if change.outcome == "unusable":
        print(f"opik-cipx: {path} is unusable ({change.detail}); fix that file, then run "
              "`opik-cipx statusline --install` again", file=sys.stderr)
        return 1
    if change.outcome == "foreign":
        print(f"opik-cipx: {path} already has a statusLine ({change.detail}); left as is. "
              "`opik-cipx statusline --install --force` replaces it", file=sys.stderr)
        return 1
    said = {"set": "set", "kept": "already set", "replaced": "replaced the previous"}[change.outcome]
    print(f"opik-cipx: {said} statusLine in {path}: Claude Code shows the line from its next message")
    if change.outcome == "replaced":
        print(f"opik-cipx: yours is kept in {backup}; `opik-cipx uninstall` puts it back")
    return 0
