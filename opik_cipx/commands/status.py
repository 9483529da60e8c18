"""`opik-cipx status [--json]`: a read-only snapshot of the running daemon.

Reads `state.json`, then `GET /admin/stats` (docs/ARCHITECTURE.md, "Admin stats"). Exit 0 when the
daemon is up or simply not running; exit 1 when `state.json` names a pid whose admin listener
does not answer (crashed, killed or wedged). Never starts, stops or writes anything.
"""

import argparse
import json
import os
import sys
import time
from datetime import datetime
from typing import Any

from opik_cipx.config import ConfigError, Settings
from opik_cipx.control import claude_settings, lifecycle
from opik_cipx.control.daemon_control import admin_port, fetch_stats, paths_only_settings, pid_alive, read_state
from opik_cipx.home import disk_full_or_read_only
from opik_cipx.stats import COUNTER_NAMES, PROBLEM_COUNTERS

PROBLEM_HINTS = {
    "materializer_errors_total": "captures the materializer could not turn into spans; see `opik-cipx logs`",
    "raw_captures_dropped": "raw captures not written to disk (disk full or unwritable?)",
    "requests_dropped_queue_full": "the materializer fell behind and captures were dropped",
    "spans_dropped_term": "spans lost at shutdown before they reached the spool",
    "unknown_endpoints": "routes opik-cipx does not recognise: often a Claude Code wire-format change ahead of an opik-cipx update",
    "panics_recovered": "a bug in opik-cipx: please report it with the log",
    "requests_refused": "requests from a web page or not addressed to localhost were refused; see `opik-cipx logs`",
    "connections_refused": "more clients at once than client_max_connections; some were turned away",
    "requests_timed_out": "clients stalled mid-request past client_header_timeout_s / client_body_timeout_s",
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the raw /admin/stats document")
    parser.set_defaults(on_config_error=on_config_error)


def on_config_error(args: argparse.Namespace, exc: ConfigError) -> int:
    print(f"opik-cipx: warning: {exc}", file=sys.stderr)
    return run(args, paths_only_settings(dict(os.environ)))


def run(args: argparse.Namespace, settings: Settings) -> int:
    state = read_state(settings)
    pointing = _claude_code_line(settings, state)
    if state is None:
        if args.json:
            print(json.dumps({"running": False}))
        else:
            print("opik-cipx: not running — run `opik-cipx sync` to start it")
            print(f"  claude code  {pointing}")
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
        if args.json:
            print(json.dumps({"running": False, "wedged": True, "pid": pid}))
        return 1
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
    else:
        print(render(stats, pointing, str(settings.logs_dir / "cipx.log")))
    return 0


def _claude_code_line(settings: Settings, state: dict[str, Any] | None) -> str:
    path = claude_settings.settings_path(dict(os.environ))
    url = lifecycle.our_url(settings, state)
    value = claude_settings.current_value(path)
    if value == url:
        suffix = "" if state else " — but nothing listens there: run `opik-cipx sync`"
        return f"-> {url} ({path}){suffix}"
    if value:
        return f"bypasses opik-cipx: {path} sets {claude_settings.KEY}={value}"
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


def render(stats: dict[str, Any], claude_code: str | None = None, log_path: str = "", now: float | None = None) -> str:
    """The admin stats as the human-readable report."""
    now = time.time() if now is None else now
    def section(name: str) -> dict[str, Any]:
        value = stats.get(name)
        return value if isinstance(value, dict) else {}

    listeners, queue, wal = section("listeners"), section("queue"), section("wal")
    counters, materializer = section("counters"), section("materializer")
    opik, telemetry = section("opik"), section("telemetry")
    out = [f"opik-cipx {stats.get('version', '?')}: running (pid {stats.get('pid', '?')})"]
    for name in ("claude_code", "admin", "viewer"):
        out.append(f"  {name:<12} {listeners.get(name) or 'not listening'}")
    out.append(f"  {'uptime':<12} {duration(stats.get('uptime_s') or 0)} (since {stats.get('started_at', '?')})")
    out.append(f"  {'project':<12} {stats.get('project') or '(not set)'}")
    if claude_code:
        out.append(f"  {'claude code':<12} {claude_code}")
    home_problems = section("home").get("problems") or []
    if home_problems:
        out.append("degraded: the disk under CIPX_HOME refuses writes (full or read-only?); the proxy still runs")
        out += [f"  ! {problem}" for problem in home_problems]
    out.append("queue")
    out.append(f"  {'in-memory':<12} {queue.get('in_memory', 0)}")
    out.append(f"  {'ready':<12} {queue.get('ready', 0)}")
    out.append(f"  {'inflight':<12} {queue.get('inflight', 0)}")
    out.append(f"  {'wal hot':<12} {size(wal.get('hot_bytes'))} in {wal.get('segments', 0)} segment(s)")
    out.append(f"  {'last sync':<12} {age(wal.get('last_sync_at'), now)}")
    if wal.get("degraded") or wal.get("last_write_error"):
        out.append(f"  ! wal degraded: {bool(wal.get('degraded'))} — disk writes to the spool are failing")
        out.append(f"  ! last error: {wal.get('last_write_error') or '(none recorded)'}")
    dropped_mem, dropped_disk = wal.get("dropped_events_inmem") or 0, wal.get("dropped_events_disk") or 0
    if dropped_mem or dropped_disk:
        out.append(f"  ! dropped events: {dropped_mem} in memory, {dropped_disk} on disk")
    out.append("counters")
    problems = []
    for name in (*COUNTER_NAMES, *sorted(set(counters) - set(COUNTER_NAMES))):
        value = counters.get(name, 0)
        flagged = name in PROBLEM_COUNTERS and value
        out.append(f"  {name:<28} {value:>8}" + (f"  ! {PROBLEM_HINTS.get(name, 'see the log')}" if flagged else ""))
        if flagged:
            problems.append(name)
    out.append("materializer")
    for name in ("lag_events", "inflight_raw", "ready_raw"):
        out.append(f"  {name:<12} {materializer.get(name, 0)}")
    out.append("opik")
    if opik.get("configured"):
        out.append(f"  {'base url':<12} {opik.get('base_url') or '?'}")
        out.append(f"  {'last ok':<12} {age(opik.get('last_ok_at'), now)}")
        if opik.get("last_error"):
            out.append(f"  ! last error: {opik['last_error']}")
    else:
        out.append(f"  {opik.get('last_error') or 'Opik is not configured: spans stay in the local spool.'}")
    out.append(f"telemetry      {telemetry.get('reason') or ('on' if telemetry.get('enabled') else 'off')}")
    if problems:
        out.append(f"! {len(problems)} problem counter(s) nonzero: {', '.join(problems)}"
                   + (f" — see {log_path}" if log_path else ""))
    return "\n".join(out)
