"""`opik-cipx status [--verbose] [--json]`: a read-only snapshot of the running daemon.

Reads `state.json`, then `GET /admin/stats` (docs/ARCHITECTURE.md, "Admin stats"). It leads with
health (`healthy`, or how many `!` lines follow) and today's cost; problem counters show only
when not zero; `--verbose` adds the listeners, the queue, every counter and the materializer.
Exit 0 when the daemon is up or simply not running; exit 1 when `state.json` names a pid whose
admin listener does not answer (crashed, killed or wedged). Never starts, stops or writes anything.
"""

import argparse
import json
import os
import sys
from datetime import datetime
from typing import Any

from opik_cipx.caps import usd
from opik_cipx.clock import SYSTEM
from opik_cipx.config import ConfigError, Settings, load_settings
from opik_cipx.control import claude_settings
from opik_cipx.control.daemon_control import admin_port, fetch_stats, pid_alive, read_state
from opik_cipx.control.supervisor import Supervisor, SupervisorError, detect_mode
from opik_cipx.home import disk_full_or_read_only, layout_notes
from opik_cipx.materialize.rate_limits import warning
from opik_cipx.ship.destination import NOT_CONFIGURED
from opik_cipx.stats import COUNTER_NAMES, PROBLEM_COUNTERS
from opik_cipx.store.quarantine import QUARANTINE, quarantine_counts

# Why a problem counter is nonzero and what fixes it; `{config}`, `{captures}` name the files.
PROBLEM_HINTS = {
    "materializer_errors_total": "captures the materializer could not turn into spans (a bug): `opik-cipx logs` "
                                 "has each traceback; please report it",
    "raw_captures_dropped": "captures the capture log could not take, materialized from memory but not "
                            "crash-safe or replayable: free disk space or fix the permissions of {captures}",
    "requests_dropped_queue_full": "calls lost before reaching the capture log (the tee queue was full): raise "
                                   "tee_queue_max in {config} (or tee_queue_max_mb), then run `opik-cipx restart`",
    "captures_dropped_budget": "captures deleted by the disk budget before they were materialized: raise "
                               "captures.max_mb in {config}, then run `opik-cipx restart`",
    "spans_dropped_term": "spans lost at shutdown before they reached the spool: `opik-cipx logs` says why",
    "unknown_endpoints": "routes opik-cipx does not know, often a newer Claude Code: update opik-cipx "
                         "(install.sh or the plugin); `opik-cipx logs` names them",
    "panics_recovered": "a bug in opik-cipx: `opik-cipx logs` has the traceback; please report it",
    "ledger_write_errors": "ledger.db could not be written (locked, disk full, corrupt?): `opik-cipx logs` says why",
    "ledger_calls_dropped": "calls missing from ledger.db: run `opik-cipx replay --ledger` to add them from the "
                            "stored captures",
    "ledger_values_clamped": "calls whose numbers exceed what ledger.db holds (a usage value off the wire such as "
                             "10**30): recorded with them clamped; `opik-cipx logs` names each capture",
    "calls_flagged": "calls whose usage from upstream held a field that is no token count (a word, a negative or "
                     "absurd number): recorded and shipped with the fields as read; `opik-cipx logs` names each "
                     "capture and field",
    "requests_refused": "requests refused (a web page, not addressed to localhost, malformed, or the viewer "
                        "without its token); nothing was forwarded: `status --json` counts them by listener "
                        "(`refusals`), `opik-cipx logs` names them",
    "connections_refused": "more requests at once than client_max_connections, or more request bytes than "
                           "client_buffer_max_mb: raise it in {config}, then run `opik-cipx restart`",
    "requests_timed_out": "clients stalled mid-request past client_header_timeout_s / client_body_timeout_s "
                          "({config}); `opik-cipx logs` has each",
    "connections_not_owner": "connections from another local user, refused: `opik-cipx logs` names their uid",
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the raw /admin/stats document")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="also the listeners, the spool's queue, every counter and the materializer")
    parser.set_defaults(on_config_error=on_config_error)


def on_config_error(args: argparse.Namespace, exc: ConfigError) -> int:
    """A setting that does not load: one line naming each, and the status of the settings as they are
    (the config file's other values, its path), each bad one at its default."""
    settings = load_settings(dict(os.environ), tolerant=True)
    for _, line in settings.unusable:
        print(f"opik-cipx: warning: {line}; no daemon starts with it: fix it, then run `opik-cipx restart`",
              file=sys.stderr)
    return run(args, settings)


def run(args: argparse.Namespace, settings: Settings) -> int:
    state = read_state(settings)
    pointing = _claude_code_line(settings, state)
    if state is None:
        if args.json:
            print(json.dumps({"running": False}))
        else:
            print("opik-cipx: not running — run `opik-cipx sync` to start it")
            print(f"  today        {today_line(settings)}")
            print(f"  claude code  {pointing}")
            if supervision := supervision_line(settings, running=False):
                print(f"  supervisor   {supervision}")
            for line in quarantine_lines(quarantine_counts(settings.spool_dir)):
                print(line)
            for note in layout_notes(settings.home):
                print(f"  ! {note}")
            full = disk_full_or_read_only(settings.home)
            if full:
                print(f"  ! CIPX_HOME {settings.home} {full}: a daemon started there cannot record where it "
                      "listens, so this command cannot find it; free some space, then run `opik-cipx restart`")
        return 0
    port = admin_port(settings, state)
    stats = fetch_stats(port)
    if stats is None:
        pid = state["pid"]
        why = "the daemon is wedged" if pid_alive(pid) else f"process {pid} is gone (it crashed or was killed)"
        print(f"opik-cipx: state.json names pid {pid}, but its admin listener (127.0.0.1:{port}) does not answer: "
              f"{why}. Run `opik-cipx restart` (or `opik-cipx sync`); `opik-cipx logs` shows what happened.",
              file=sys.stderr)
        if (supervision := supervision_line(settings, running=False)).startswith("!"):  # it gave up, say
            print(f"  supervisor   {supervision}", file=sys.stderr)
        if args.json:
            print(json.dumps({"running": False, "wedged": True, "pid": pid}))
        return 1
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
    else:
        print(render(stats, settings, pointing, today=today_line(settings), verbose=args.verbose,
                     supervision=supervision_line(settings, running=True)))
    return 0


def supervision_line(settings: Settings, running: bool) -> str:
    """What supervises the daemon and what happens when it dies (control/supervisor.py)."""
    env = dict(os.environ)
    try:
        return Supervisor(detect_mode(env), settings, env).describe(running)
    except SupervisorError as exc:
        return f"! {exc}"


def today_line(settings: Settings, now_ns: int | None = None) -> str:
    """Today's calls and cost (the local day) from the ledger; read directly, so it works with
    the daemon down."""
    try:
        import sqlite3
    except ModuleNotFoundError:
        return "! no ledger: this Python has no sqlite3 module (`opik-cipx report` says what to do)"

    from opik_cipx.ledger.db import open_reader
    from opik_cipx.ledger.figures import unpriced_note
    from opik_cipx.ledger.periods import day_start_ns, local_day
    from opik_cipx.ledger.queries import Selection, report
    from opik_cipx.ledger.schema import SchemaError

    since = day_start_ns(local_day(SYSTEM.time_ns() if now_ns is None else now_ns))
    try:
        conn = open_reader(settings.ledger_path)
        if conn is None:
            return "no calls recorded yet"
        try:
            total = report(conn, (), Selection(since_ns=since)).total
        finally:
            conn.close()
    except SchemaError as exc:
        return f"! {exc}"
    except (sqlite3.Error, OSError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return (f"! cannot read {settings.ledger_path} ({why}): "
                "`opik-cipx logs` may say why; `opik-cipx replay --ledger` rebuilds it from the stored captures")
    line = f"{total['calls']} call(s), ${total['cost_usd'] or 0:,.4f}"
    if unpriced := unpriced_note(total.get("unpriced_calls") or 0):
        line += f"; {unpriced}"
    return line + " (`opik-cipx report` for more)"


def quarantine_lines(counts: dict[str, Any]) -> list[str]:
    """What waits in the quarantine and how to send it again; nothing when it is empty."""
    out = []
    if counts.get("quarantined"):
        out.append(f"  ! quarantine: {counts['quarantined']} record(s) Opik refused wait in spool/{QUARANTINE} "
                   "(with Opik's reason); fix the cause, then run `opik-cipx ship --retry-quarantine`")
    if counts.get("retry_pending"):
        out.append(f"  retry pending: {counts['retry_pending']} record(s) handed back, not yet in the queue")
    return out


def _claude_code_line(settings: Settings, state: dict[str, Any] | None) -> str:
    path = claude_settings.settings_path(dict(os.environ))
    url = claude_settings.our_url(settings, state)
    value, unusable = claude_settings.read_entry(path)
    if unusable:
        return f"! cannot tell: {path} is unusable ({unusable}); fix that file, then run `opik-cipx sync`"
    if value == url:
        suffix = "" if state else " — but nothing listens there: run `opik-cipx sync`"
        return f"-> {url} ({path}){suffix}"
    if value:
        return (f"! bypasses opik-cipx: {path} sets {claude_settings.KEY}={value}; remove that entry (or set it to "
                f"{url}), then run `opik-cipx sync`")
    return f"not pointed at opik-cipx (no {claude_settings.KEY} in {path}); run `opik-cipx sync`"


def duration(seconds: float) -> str:
    s = int(max(seconds, 0))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {s:02d}s"
    return f"{s}s"


def size(n: Any) -> str:
    value = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def age(iso: Any, now: float) -> str:
    if not isinstance(iso, str) or not iso:
        return "never"
    try:
        then = datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return iso
    return f"{duration(now - then)} ago"


def unknown_model_lines(section: dict[str, Any]) -> list[str]:
    """The model ids the price table does not know (the `unknown_models` stats section), or nothing."""
    ids = [entry for entry in section.get("ids") or [] if isinstance(entry, dict) and entry.get("id")]
    if not ids:
        return []
    out = [f"unknown models ({section.get('calls', 0)} call(s) not in the price table; `opik-cipx prices` shows it)"]
    for entry in ids:
        model, calls = entry["id"], entry.get("calls", 0)
        if entry.get("priced_as"):
            out.append(f"  ! {model}: {calls} call(s) priced as {entry['priced_as']} (estimated); "
                       f"add [prices.\"{model}\"] to config.toml for its exact price")
        else:
            out.append(f"  ! {model}: {calls} call(s) with no cost: {entry.get('reason') or 'no price'}")
    return out


def budget_lines(section: dict[str, Any]) -> list[str]:
    """The spend caps the daemon enforces (the `budget` stats section; none without a cap), and why
    it cannot, when it cannot (docs/BUDGETS.md)."""
    if not section.get("enabled"):
        return []
    caps = [f"{cap['scope']} {usd(cap['spent_usd'])} of {usd(cap['cap_usd'])}" if cap.get("spent_usd") is not None
            else f"{cap['scope']} cap {usd(cap['cap_usd'])}" for cap in section.get("caps") or []]
    if section.get("project_caps"):
        caps.append(f"{section['project_caps']} project(s) with caps of their own")
    out = [f"budget         {' · '.join(caps) or 'caps set'}; {section.get('blocked', 0)} request(s) blocked "
           "(`opik-cipx budget` shows every cap)"]
    if not section.get("deciding"):
        out.append(f"  ! not enforcing the caps: {section.get('undecided_reason')}; {section.get('undecided', 0)} "
                   "request(s) let through unchecked. It retries every 30s; `opik-cipx logs` says more")
    if section.get("errors"):
        out.append(f"  ! {section['errors']} request(s) let through because the guard failed to decide: "
                   "`opik-cipx logs` has the traceback; please report it")
    return out


def render(stats: dict[str, Any], settings: Settings, claude_code: str = "", now: float | None = None,
           today: str = "", verbose: bool = False, supervision: str = "") -> str:
    """The admin stats as the human-readable report: health and today's cost first, then what
    needs doing, every `!` line naming what fixes it; the listeners, queue, every counter and
    the materializer only `verbose`. `supervision`: what starts the daemon again if it dies: shown
    always when it is a problem (`!`), else only `verbose`."""
    now = SYSTEM.time() if now is None else now
    def section(name: str) -> dict[str, Any]:
        value = stats.get(name)
        return value if isinstance(value, dict) else {}

    listeners = section("listeners")
    out = [f"  {label:<12} {value}" for label, value in (("today", today), ("claude code", claude_code)) if value]
    leading = len(out)  # their problems are counted below, not by their `!`
    if supervision.startswith("!"):
        out.append(f"  {'supervisor':<12} {supervision}")
    if verbose:
        for name in ("claude_code", "admin", "viewer"):
            out.append(f"  {name:<12} {listeners.get(name) or 'not listening'}")
        out.append(f"  {'uptime':<12} {duration(stats.get('uptime_s') or 0)} (since {stats.get('started_at', '?')})")
        out.append(f"  {'upstream':<12} {_upstream(section('upstream'))}")
        out.append(f"  {'project':<12} {stats.get('project') or '(not set)'}")
        if supervision and not supervision.startswith("!"):
            out.append(f"  {'supervisor':<12} {supervision}")
    out += work_lines(section("work"), section("materializer"), now, verbose)
    lock = stats.get("home_lock")
    if isinstance(lock, dict) and not lock.get("held", True):
        out.append(f"  ! home lock not held ({lock.get('error') or 'unknown reason'}): a second "
                   f"`opik-cipx proxy` on this home would not be refused; free disk space or fix {settings.home}, "
                   "then `opik-cipx restart`")
    top, out = out, [f"  ! {note}" for note in section("home").get("layout") or []]
    home_problems = section("home").get("problems") or []
    if home_problems:
        out.append("degraded: the disk under CIPX_HOME refuses writes (full or read-only?); the proxy still runs")
        out += [f"  ! {problem}" for problem in home_problems]
    out += queue_lines(section("queue"), section("wal"), settings, now, verbose)
    counters, problems = counter_lines(section("counters"), settings, verbose)
    out += counters
    out += materializer_lines(section("materializer"), verbose)
    out.extend(unknown_model_lines(section("unknown_models")))
    out.extend(budget_lines(section("budget")))
    out.extend(opik_lines(section("opik"), settings, now))
    out.extend(destination_lines(section("opik"), settings))
    out += quarantine_lines(section("opik"))
    out.extend(telemetry_lines(section("telemetry"), settings))
    flagged = (sum(_flagged(line) for line in top[leading:] + out) + today.startswith("!")
               + bool(claude_code and not claude_code.startswith("->")))
    if problems:
        out.append(f"! {len(problems)} problem counter(s) nonzero: {', '.join(problems)} — see "
                   f"{settings.logs_dir / 'cipx.log'}")
    health = "healthy" if not flagged else f"{flagged} problem(s): each `!` line says what fixes it"
    head = f"opik-cipx {stats.get('version', '?')}: running (pid {stats.get('pid', '?')}), {health}"
    return "\n".join([head, *top, *rate_limit_lines(section("rate_limits"), now), *out])


def _flagged(line: str) -> bool:
    """A line that names a problem (and its fix): `! ...`, or `... ! ...` indented."""
    return line.lstrip().startswith("!") or "  ! " in line


def queue_lines(queue: dict[str, Any], wal: dict[str, Any], settings: Settings, now: float, verbose: bool) -> list[str]:
    """The spool's queue (only `verbose`) and its problems (always)."""
    out = []
    if verbose:
        out.append("queue")
        out.append(f"  {'in-memory':<12} {queue.get('in_memory', 0)}")
        out.append(f"  {'ready':<12} {queue.get('ready', 0)}")
        out.append(f"  {'inflight':<12} {queue.get('inflight', 0)}")
        out.append(f"  {'wal hot':<12} {size(wal.get('hot_bytes'))} in {wal.get('segments', 0)} segment(s)")
        out.append(f"  {'last commit':<12} {age(wal.get('last_sync_at'), now)}")
    problems = []
    if wal.get("degraded") or wal.get("last_write_error"):
        problems.append(f"  ! spool degraded: writing {settings.spool_dir} fails "
                        f"({wal.get('last_write_error') or 'no detail'}); "
                        "records wait in memory and are written once it works: free disk space or fix that "
                        "directory's permissions")
    dropped_mem, dropped_disk = wal.get("dropped_events_inmem") or 0, wal.get("dropped_events_disk") or 0
    if dropped_mem or dropped_disk:
        problems.append(f"  ! dropped records: {dropped_mem} in memory, {dropped_disk} on disk: get shipping to Opik "
                        f"going, or raise spool.inmem_max / spool.max_mb in {settings.config_path} and run "
                        "`opik-cipx restart`")
    return out + (["spool"] if problems and not verbose else []) + problems


def counter_lines(counters: dict[str, Any], settings: Settings, verbose: bool) -> tuple[list[str], list[str]]:
    """The counters (`verbose`: all of them; else the problem counters that are not zero), each
    problem with what fixes it; and the names of those problems."""
    paths = {"config": settings.config_path, "captures": settings.captures_dir}
    out, problems = [], []
    for name in (*COUNTER_NAMES, *sorted(set(counters) - set(COUNTER_NAMES))):
        value = counters.get(name, 0)
        flagged = name in PROBLEM_COUNTERS and value
        if flagged:
            problems.append(name)
        if flagged or verbose:
            hint = PROBLEM_HINTS.get(name, "`opik-cipx logs` says why").format(**paths)
            out.append(f"  {name:<28} {value:>8}" + (f"  ! {hint}" if flagged else ""))
    return (["counters", *out] if out else []), problems


def work_lines(work: dict[str, Any], materializer: dict[str, Any], now: float, verbose: bool) -> list[str]:
    """The work process the daemon runs beside its wire (docs/LIFECYCLE.md, "When the work process
    dies"): its pid, restarts and lag (`verbose`); its last death once it died (the wire restarted
    it); a `!` line while it is down."""
    if not work:
        return []
    lag = materializer.get("lag_events") or 0
    restarts = work.get("restarts") or 0
    deaths = work.get("deaths") or []
    out = []
    if verbose:
        out.append(f"  {'work':<12} pid {work.get('pid') or '-'}, {work.get('state', '?')} since "
                   f"{work.get('started_at') or '?'}, {restarts} restart(s), {lag} capture(s) behind")
    if deaths and isinstance(deaths[-1], dict):
        last = deaths[-1]
        out.append(f"  {'work died':<12} {restarts} time(s), last {age(last.get('at'), now)} ({last.get('how')}); "
                   "the wire started it again and nothing was lost (`opik-cipx logs` says why)")
    state = work.get("state")
    if state not in ("running", "starting", "stopping"):
        wait = work.get("next_start_in_s")
        out.append(f"  ! work process {state}" + (f" (next start in {wait:g}s)" if wait else "")
                   + ": calls still go through and wait in the capture log; if it keeps dying, "
                   "`opik-cipx logs` says why and `opik-cipx restart` starts both processes afresh")
    return out


def materializer_lines(materializer: dict[str, Any], verbose: bool) -> list[str]:
    """What the materializer has yet to do (`verbose`: always; else only calls it is catching up on)."""
    meanings = (("ready_raw", "finished calls in memory, not yet in the capture log"),
                ("lag_events", "captures in the log, not yet materialized"),
                ("inflight_raw", "being materialized"))
    if verbose:
        return ["materializer",
                *(f"  {name:<12} {materializer.get(name, 0):>8}  {meaning}" for name, meaning in meanings)]
    lag = materializer.get("lag_events") or 0
    if not lag:
        return []
    return [f"materializer   catching up: {lag} capture(s) in the log, not yet materialized (lag_events)"]


def rate_limit_lines(section: dict[str, Any], now: float) -> list[str]:
    """The latest value of every rate-limit window (the `rate_limits` stats section), or nothing:
    utilization and time to reset, `!` past the surpassed threshold or when its status warns or
    rejects; a window without a utilization (overage, fallback) shows its status and details."""
    windows = section.get("windows") or {}
    if not windows:
        return []
    overall = [f"status {section['status']}" if section.get("status") else "",
               f"binding {section['representative_claim']}" if section.get("representative_claim") else "",
               f"seen {age(section.get('observed_at'), now)}"]
    out = [f"limits         {', '.join(part for part in overall if part)} (docs/RATE_LIMITS.md)"]
    for name, window in windows.items():
        if not isinstance(window, dict):
            continue
        parts = []
        if window.get("utilization") is not None:
            parts.append(f"{window['utilization']:.0%} used")
            if window.get("limit") is not None and window.get("remaining") is not None:
                parts[-1] += f" ({window['remaining']:,} of {window['limit']:,} left)"
        elif window.get("status"):
            parts.append(str(window["status"]))
        details = ", ".join(f"{k}: {v}" for k, v in (window.get("other") or {}).items())
        if details:
            parts.append(details)
        reset = window.get("resets_at")
        if isinstance(reset, (int, float)):
            parts.append(f"resets in {duration(reset - now)}" if reset > now else f"reset {duration(now - reset)} ago")
        line = f"  {name:<12} {', '.join(parts)}"
        if window.get("utilization") is not None and warning(window):
            threshold = window.get("surpassed_threshold")
            why = (f"past the {threshold:.0%} warning threshold" if threshold is not None
                   else f"status {window.get('status')}")
            line += f"  ! {why}"
        out.append(line)
    return out


def _upstream(upstream: dict[str, Any]) -> str:
    url = upstream.get("url") or "?"
    return f"{url} via {upstream['proxy']}" if upstream.get("proxy") else url


def opik_lines(opik: dict[str, Any], settings: Settings, now: float) -> list[str]:
    """Where records go and when Opik last accepted some (not the spool's own disk writes)."""
    if not opik.get("configured"):
        return ["opik", f"  {opik.get('last_error') or NOT_CONFIGURED}"]
    where = opik.get("base_url") or "?"
    if opik.get("workspace"):
        where += f", workspace {opik['workspace']}"
    out = ["opik", f"  {'destination':<12} {where}", f"  {'last shipped':<12} {age(opik.get('last_ok_at'), now)}"]
    if opik.get("last_error"):
        out.append(f"  ! {opik['last_error']}")
        if opik.get("paused"):
            out.append(f"    fix: opik.base_url / opik.api_key / opik.workspace in {settings.config_path} (or "
                       "OPIK_CIPX_* or ~/.opik.config), then run `opik-cipx restart`")
        else:
            out.append(f"    shipping retries by itself; if it persists, check that Opik answers at opik.base_url "
                       f"({settings.config_path}); `opik-cipx logs` shows each attempt")
    return out


def destination_lines(opik: dict[str, Any], settings: Settings) -> list[str]:
    """Whether Opik's Cost Intelligence sees what is shipped, and why not (docs/OPIK.md, "The
    destination Cost Intelligence reads"): a problem only where it is meant to (a device token, an
    AI Spend workspace); records crossing the network in clear, always a problem."""
    out = []
    verdict = opik.get("cost_intelligence")
    if opik.get("configured") and isinstance(verdict, dict):
        device = opik.get("endpoints") == "device_token"
        workspace = str(opik.get("workspace") or "")
        where = (f"project {verdict.get('project')}, workspace {workspace}, "
                 f"{'device-token endpoints (traces one by one)' if device else 'batch endpoints'}")
        why = "; ".join(verdict.get("why_not") or [])
        if not why:
            out.append(f"  {'cost intel.':<12} sees it: {where}")
        elif device or workspace.startswith("__ai_spend_"):
            out.append(f"  ! Cost Intelligence does not see what is shipped ({where}): {why}")
            out.append(f'    fix: opik.project = "claude-code" and opik.workspace = the AI Spend workspace in '
                       f"{settings.config_path} (or OPIK_CIPX_PROJECT / OPIK_CIPX_WORKSPACE), then run "
                       "`opik-cipx restart`")
        else:
            out.append(f"  {'cost intel.':<12} does not see it ({where}): {why}")
    if opik.get("cleartext"):
        out.append(f"  ! {opik['cleartext']}")
    return out


def telemetry_lines(telemetry: dict[str, Any], settings: Settings) -> list[str]:
    """On or off and why (README's words), what was sent, and what fixes a failing DSN."""
    line = f"telemetry      {telemetry.get('reason') or ('on' if telemetry.get('enabled') else 'off')}"
    counts = [f"{telemetry[key]} {key}" for key in ("sent", "dropped", "suppressed") if telemetry.get(key)]
    out = [line + (f": {', '.join(counts)}" if counts else "")]
    if telemetry.get("last_error"):
        out.append(f"  ! last report failed: {telemetry['last_error']}; check telemetry.sentry_dsn in "
                   f"{settings.config_path} (or CIPX_SENTRY_DSN)")
    return out
