"""The dashboard the viewer serves: home, all calls, a session, a call (docs/ARCHITECTURE.md, "Ledger").

Everything comes from the ledger, so the pages show every call since install whatever the
daemon restarts; a call page also paints the raw request by bucket while its capture is still
stored. Pages are plain HTML with inline SVG charts (`views/charts.py`): no script and no
external resource, which the viewer's Content-Security-Policy enforces. Times are local.

`Dashboard.route(path)` answers one GET with (status, content type, body); each answer opens
its own read-only connection, so viewer threads never share one.
"""

import html
import json
import sqlite3
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.ids import is_uuid7, uuid7_unix_ms
from opik_cipx.ledger.db import open_reader
from opik_cipx.ledger.figures import UNKNOWN, cache_hit, input_side, label_of, unpriced_note
from opik_cipx.ledger.periods import day_start_ns, local_day
from opik_cipx.ledger.queries import (
    Selection,
    call_details,
    find_call,
    first_day,
    launchers,
    recent_calls,
    report,
    session_calls,
    session_projects,
)
from opik_cipx.ledger.schema import SchemaError
from opik_cipx.materialize.attribution import BUCKETS, categorize
from opik_cipx.store.captures import find_capture
from opik_cipx.views import charts
from opik_cipx.views.charts import PALETTE, SERIES, compact, tint, usd_axis
from opik_cipx.wire.capture import Capture

Response = tuple[int, str, bytes]
HTML = "text/html; charset=utf-8"
PAGE_CALLS = 100
TOP_N = 8
STYLE = (
    "body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#111;background:#fafafa}"
    "header{background:#111827;color:#fff;padding:10px 16px}header a{color:#fff;margin-right:16px;"
    "text-decoration:none}header b{margin-right:24px}main{max-width:1240px;margin:0 auto;padding:12px 16px}"
    "h1{font-size:22px;margin:8px 0}h2{font-size:17px;margin:22px 0 8px}"
    "section,.card{background:#fff;border:1px solid #e5e7eb;border-radius:6px;padding:12px;margin-bottom:14px}"
    ".cards{display:flex;flex-wrap:wrap;gap:12px}.card{flex:1 1 220px;margin:0}.card .big{font-size:26px;"
    "font-weight:600}.muted{color:#6b7280}.grid{display:grid;grid-template-columns:repeat(auto-fit,"
    "minmax(340px,1fr));gap:14px}.grid section{margin:0}.scroll{overflow-x:auto}"
    "table{border-collapse:collapse;width:100%}td,th{padding:4px 8px;border-bottom:1px solid #eee;"
    "text-align:left;vertical-align:top}th{background:#f3f4f6;font-weight:600;white-space:nowrap}"
    ".num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}a{color:#1d4ed8}"
    "tr.sub td:first-child{padding-left:28px}tr.group td{background:#f5f3ff}"
    ".bad{color:#b91c1c;font-weight:600}.mono{font-family:ui-monospace,monospace;font-size:12px}"
    "h1 .mono{word-break:break-all}.buckets td:first-child{white-space:nowrap}"
    "pre{white-space:pre-wrap;word-break:break-all;font:12px ui-monospace,monospace;border:1px solid #ddd;"
    "padding:8px;background:#fff}pre span{border-radius:2px}"
    "@media (max-width:700px){main{padding:8px}.card .big{font-size:20px}.grid{grid-template-columns:1fr}"
    "td,th{padding:3px 5px}.wide{display:none}}"
    + charts.CSS
)
TOKEN_CLASSES = (  # label, tokens column, cost column
    ("uncached input", "input_tokens", "cost_input_usd"),
    ("cache write, 5 min", "cache_write_5m_tokens", "cost_cache_write_5m_usd"),
    ("cache write, 1 hour", "cache_write_1h_tokens", "cost_cache_write_1h_usd"),
    ("cache read", "cache_read_input_tokens", "cost_cache_read_usd"),
    ("output", "output_tokens", "cost_output_usd"),
)


class Dashboard:
    """The pages over one ledger and one capture store; `clock` says which day is today."""

    def __init__(self, ledger_path: Path, captures_dir: Path, clock: Clock = SYSTEM):
        self.ledger_path = ledger_path
        self.captures_dir = captures_dir
        self.clock = clock

    def route(self, target: str) -> Response:
        """Answer `GET target` (path and query)."""
        parts = urllib.parse.urlsplit(target)
        route = urllib.parse.unquote(parts.path)
        query = urllib.parse.parse_qs(parts.query)
        try:
            with self._reader() as conn:
                if route == "/":
                    return self._home(conn)
                if route == "/calls":
                    before = query.get("before", [""])[0]
                    return self._all_calls(conn, int(before) if before.isdigit() else None)
                if route == "/api/calls":
                    rows = recent_calls(conn, 500) if conn else []
                    return 200, "application/json", json.dumps(rows).encode()
                if route.startswith("/session/"):
                    return self._session(conn, route[len("/session/"):])
                if route.startswith("/capture/"):
                    return self._call(conn, route[len("/capture/"):])
        except (sqlite3.Error, SchemaError, OSError) as exc:
            message = f"{self.ledger_path} cannot be read: {exc}."
            if not isinstance(exc, SchemaError):
                message += (" If it is damaged, move it away and run `opik-cipx replay --ledger` to rebuild it "
                            "from the stored captures.")
            return 503, HTML, page("ledger unavailable", f"<p class=bad>{esc(message)}</p>")
        return 404, HTML, page("not found", "<p>Nothing here. <a href=/>The dashboard</a> lists every call.</p>")

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection | None]:
        conn = open_reader(self.ledger_path)
        try:
            yield conn
        finally:
            if conn is not None:
                conn.close()

    # -- home ----------------------------------------------------------------------------

    def _home(self, conn: sqlite3.Connection | None) -> Response:
        if conn is None:
            body = ("<h1>Claude Code cost</h1><section><p>No calls recorded yet. Use Claude Code as usual: every "
                    "call through opik-cipx lands here. `opik-cipx replay --ledger` adds the calls of the stored "
                    "raw captures.</p></section>")
            return 200, HTML, page("opik-cipx dashboard", body)
        today = local_day(self.clock.time_ns())
        days = [(date.fromisoformat(today) - timedelta(days=n)).isoformat() for n in range(29, -1, -1)]
        month = Selection(since_ns=day_start_ns(days[0]))
        everything = report(conn, ())
        out = [
            "<h1>Claude Code cost</h1>",
            f"<p class=muted>{everything.total['calls']:,} calls and {usd(everything.total['cost_usd'])} since "
            f"{esc(first_day(conn) or today)} (ledger.db; local days). Reports: <span class=mono>opik-cipx report"
            "</span>.</p>",
            "<div class=cards>",
        ]
        for label, first in (("Today", days[-1]), ("Last 7 days", days[-7]), ("Last 30 days", days[0])):
            total = report(conn, (), Selection(since_ns=day_start_ns(first))).total
            out.append(
                f"<div class=card id='total-{label.lower().replace(' ', '-')}'><div class=muted>{label}</div>"
                f"<div class=big>{usd(total['cost_usd'])}</div>"
                f"<div>{total['calls']:,} calls &middot; {tokens(input_side(total))} input tokens &middot; "
                f"{tokens(total['output_tokens'])} output tokens</div>"
                f"<div class=muted>cache hit {percent(cache_hit(total))}</div>{unpriced(total)}</div>")
        out.append("</div>")
        per_day: dict[str, dict[str, float]] = defaultdict(dict)
        for row in report(conn, ("day", "bucket"), month).rows:
            per_day[row["day"]][row["bucket"]] = row["cost_usd"]
        series = [s for s in SERIES if any(values.get(s) for values in per_day.values())]
        out.append("<section><h2>Cost per day, last 30 days, by bucket (USD)</h2>")
        out.append(charts.stacked_bars([(d[5:], per_day.get(d, {})) for d in days], series,
                                       label="cost per day for the last 30 days, stacked by bucket"))
        out.append(charts.legend(series) + "</section>")
        out.append("<h2>Top spenders, last 30 days</h2><div class=grid>")
        sessions = report(conn, ("session",), month).rows[:TOP_N]
        projects = session_projects(conn, [r["session"] for r in sessions if r["session"]])
        out.append(top_table("Sessions", "session", [
            (session_link(r["session"], projects.get(r["session"])), r) for r in sessions]))
        rows = report(conn, ("project",), month).rows[:TOP_N]
        out.append(top_table("Projects", "project", [(short_path(r["project"]), r) for r in rows]))
        for title, key in (("Models", "model"), ("MCP servers", "mcp"), ("Skills", "skill")):
            rows = report(conn, (key,), month).rows[:TOP_N]
            out.append(top_table(title, key, [(esc(label_of(r[key])), r) for r in rows]))
        agents = [r for r in report(conn, ("agent",), month).rows if r["agent"] != "main"][:TOP_N]
        out.append(top_table("Subagent types", "agent", [(esc(r["agent"]), r) for r in agents]))
        out.append("</div><section><h2>Latest calls</h2>")
        out.append(calls_table(recent_calls(conn, 20), show_session=True))
        out.append("<p><a href=/calls>All calls &rarr;</a></p></section>")
        return 200, HTML, page("opik-cipx dashboard", "".join(out))

    def _all_calls(self, conn: sqlite3.Connection | None, before: int | None) -> Response:
        rows = recent_calls(conn, PAGE_CALLS, before) if conn else []
        out = ["<h1>All calls</h1><p class=muted>Newest first, every call in the ledger.</p><section>",
               calls_table(rows, show_session=True)]
        if len(rows) == PAGE_CALLS:
            out.append(f"<p><a href='/calls?before={rows[-1]['started_at_ns']}'>Older calls &rarr;</a></p>")
        out.append("</section>")
        return 200, HTML, page("all calls", "".join(out))

    # -- session -------------------------------------------------------------------------

    def _session(self, conn: sqlite3.Connection | None, session_id: str) -> Response:
        calls = session_calls(conn, session_id) if conn else []
        if not calls or conn is None:
            return 404, HTML, page("unknown session", f"<p>No call of session {esc(session_id)} is in the ledger.</p>")
        selection = Selection(session=session_id)
        total = report(conn, (), selection).total
        first = calls[0]
        out = [
            f"<h1>Session <span class=mono>{esc(session_id)}</span></h1>",
            f"<p class=muted>{esc(first['project_dir'] or 'project unknown')}"
            f"{' &middot; branch ' + esc(first['git_branch']) if first['git_branch'] else ''}"
            f"{' &middot; ' + esc(first['git_remote']) if first['git_remote'] else ''}"
            f"{' &middot; ' + esc(account(first)) if account(first) else ''} &middot; "
            f"{when(first['started_at_ns'])} to {when(calls[-1]['started_at_ns'])}</p>",
            "<div class=cards><div class=card id=session-total><div class=muted>Session total</div>"
            f"<div class=big>{usd(total['cost_usd'])}</div><div>{total['calls']:,} calls &middot; "
            f"{tokens(input_side(total))} input tokens &middot; {tokens(total['output_tokens'])} output tokens"
            f"</div><div class=muted>cache hit {percent(cache_hit(total))}</div>{unpriced(total)}</div></div>",
        ]
        cumulative, context, running = {}, {}, 0.0
        for n, call in enumerate(calls, 1):
            running += call["cost_usd"] or 0.0
            cumulative[n] = running
            if call["kind"] in ("main", "compaction") and input_side(call):
                context[n] = input_side(call)
        out.append("<section><h2>Cumulative cost and context size, call by call</h2>")
        out.append(charts.line_chart(len(calls), [
            ("cumulative cost (USD)", "#1f77b4", cumulative, "left", usd_axis),
            ("context size of main-loop calls (input tokens)", "#ff7f0e", context, "right", compact),
        ], label="cumulative cost and context size per call"))
        out.append(charts.legend(["cumulative cost (USD)", "context size of main-loop calls (input tokens)"],
                                 {"cumulative cost (USD)": "#1f77b4",
                                  "context size of main-loop calls (input tokens)": "#ff7f0e"}))
        out.append("</section>")
        out.append(breaks_section(calls))
        out.append("<section><h2>Where the session's cost went</h2>")
        out.append(buckets_section(report(conn, ("bucket",), selection).rows, total["cost_usd"]))
        out.append("</section><section><h2>Calls</h2><p class=muted>In order; a subagent's calls are listed "
                   "under the call that launched it.</p>")
        out.append(calls_table(calls, show_session=False, nested=nest(conn, calls)))
        out.append("</section>")
        return 200, HTML, page(f"session {session_id}", "".join(out))

    # -- call ----------------------------------------------------------------------------

    def _call(self, conn: sqlite3.Connection | None, capture_id: str) -> Response:
        call = find_call(conn, capture_id) if conn else None
        if call:
            started = call["started_at_ns"]
        elif is_uuid7(capture_id):
            started = uuid7_unix_ms(capture_id) * 1_000_000
        else:
            started = 0
        capture = find_capture(self.captures_dir, capture_id, started) if (call or started) else None
        if call is None and capture is None:
            message = ("This call is neither in the ledger nor among the stored raw captures (deleted by "
                       "retention, or raw captures are off). The dashboard lists every call in the ledger.")
            return 404, HTML, page("not found", f"<p>{esc(message)} <a href=/>Dashboard</a></p>")
        attribution = categorize(capture.request_body) if capture else None
        out = []
        if call:
            assert conn is not None  # the call was read from it
            out += call_header(call)
            out.append(token_section(call))
            out.append(cache_section(call))
            details = call_details(conn, call["id"])
            out.append("<section><h2>Where this call's cost went</h2>")
            out.append(buckets_section([
                {"bucket": d["bucket"], "calls": 1, "chars": d["chars"], "tokens": d["tokens"],
                 "cost_usd": d["cost_usd"] or 0.0} for d in details if d["detail"] == ""],
                call["cost_usd"] or 0.0, labels=call_labels(details, attribution)))
            out.append("</section>")
        else:
            assert capture is not None  # a call or a capture: the page is a 404 without either
            out.append(f"<h1>{esc(capture.method)} {esc(capture.path)}</h1><p class=muted>Not in the ledger "
                       "(no Messages API call, or made before the ledger existed).</p>")
        if capture is not None:
            out.append(painted_request(capture, attribution))
        else:
            out.append("<section><p class=muted>The raw request is no longer stored (raw captures are kept "
                       "within captures.max_mb / captures.max_age_days), so it cannot be painted.</p></section>")
        return 200, HTML, page(f"call {capture_id}", "".join(out))


# -- building blocks ---------------------------------------------------------------------

def page(title: str, body: str) -> bytes:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body><header><b>opik-cipx</b>"
        "<a href=/>Dashboard</a><a href=/calls>All calls</a></header>"
        f"<main>{body}</main></body></html>"
    ).encode()


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def usd(value: float | None) -> str:
    """Dollars; None is a call with no usage to price (count_tokens, a failed call)."""
    if value is None:
        return "<span class=muted title='no usage reported: nothing billed'>&ndash;</span>"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    return f"${value:.6f}" if 0 < abs(value) < 0.001 else f"${value:.4f}"


def call_cost(call: dict[str, Any]) -> str:
    if call["unknown_model"]:
        return "<span class=bad title='model missing from the price table'>unknown model</span>"
    return usd(call["cost_usd"])


def tokens(value: float) -> str:
    return f"{round(value):,}"


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))


def unpriced(total: dict[str, Any]) -> str:
    """A warning when some calls used a model the price table does not know."""
    note = unpriced_note(total.get("unpriced_calls") or 0)
    return f"<div class=bad>{esc(note)}</div>" if note else ""


def account(call: dict[str, Any]) -> str:
    """The Claude account that made the call: `user@example.com (Org)`, or ''."""
    email, org = call["user_email"], call["org_name"]
    return f"{email or ''}{f' ({org})' if org else ''}".strip()


def short_path(path: str | None) -> str:
    """The last two parts of a directory, the whole path on hover."""
    if not path:
        return UNKNOWN
    tail = "/".join(path.rstrip("/").split("/")[-2:])
    return f"<span title='{esc(path)}'>{'&hellip;/' if tail != path.strip('/') else ''}{esc(tail)}</span>"


def kind_of(call: dict[str, Any]) -> str:
    kind = call["kind"] + (f":{call['side_kind']}" if call["side_kind"] else "")
    if call["agent_type"]:
        kind += f" ({call['agent_type']})"
    return kind


def session_link(session_id: str | None, project: str | None) -> str:
    if not session_id:
        return UNKNOWN
    name = f"{session_id[:8]}&hellip;" + (f" {esc(project.rstrip('/').rsplit('/', 1)[-1])}" if project else "")
    return f"<a href='/session/{urllib.parse.quote(session_id)}'>{name}</a>"


def top_table(title: str, key: str, rows: list[tuple[str, dict]]) -> str:
    if not rows:
        return f"<section id='top-{key}'><h2>{esc(title)}</h2><p class=muted>None in the last 30 days.</p></section>"
    peak = max(r["cost_usd"] for _, r in rows)
    lines = [f"<section id='top-{key}'><h2>{esc(title)}</h2><table><tr><th>{esc(key)}</th><th class=num>calls</th>"
             "<th class=num>cost (USD)</th><th class=wide></th></tr>"]
    for name, r in rows:
        lines.append(f"<tr><td>{name}</td><td class=num>{r['calls']:,}</td><td class=num>{usd(r['cost_usd'])}</td>"
                     f"<td class=wide>{charts.meter(r['cost_usd'], peak)}</td></tr>")
    lines.append("</table></section>")
    return "".join(lines)


def nest(conn: sqlite3.Connection, calls: list[dict]) -> dict[str, list[list[dict]]]:
    """Launching call's capture id -> the groups of subagent calls (one per agent) it launched;
    groups whose launch is not known yet are keyed by their own first call."""
    groups: dict[str, list[dict]] = {}
    for call in calls:
        if call["kind"] == "subagent" or call["agent_id"]:
            groups.setdefault(call["agent_id"] or call["parent_span_id"] or call["capture_id"], []).append(call)
    spans = [g[0]["parent_span_id"] for g in groups.values() if g[0]["parent_span_id"]]
    launched_by = launchers(conn, spans)
    by_span = {c["span_id"]: c for c in calls if c["span_id"]}
    out: dict[str, list[list[dict]]] = defaultdict(list)
    for group in groups.values():
        launcher = by_span.get(launched_by.get(group[0]["parent_span_id"] or ""))
        out[launcher["capture_id"] if launcher else group[0]["capture_id"]].append(group)
    return out


def calls_table(calls: list[dict], show_session: bool, nested: dict[str, list[list[dict]]] | None = None) -> str:
    if not calls:
        return "<p class=muted>No calls.</p>"
    head = ["time", "call", "<span class=wide>model</span>"] + (["session"] if show_session else []) + ["status"]
    figures = ["input tok", "cache hit", "output tok", "cost (USD)"]
    out = ["<div class=scroll><table class=calls><tr>" + "".join(f"<th>{h}</th>" for h in head)
           + "".join(f"<th class=num>{h}</th>" for h in figures) + "</tr>"]
    head += figures

    def row(call: dict, cls: str = "") -> str:
        status = esc(call["status"] or "")
        if call["error_type"]:
            status += f" <span class=bad>{esc(call['error_type'])}</span>"
        cells = [
            when(call["started_at_ns"]),
            f"<a href='/capture/{esc(call['capture_id'])}'>{esc(kind_of(call))}</a>",
            f"<span class=wide>{esc(call['model'] or '')}</span>",
            *([session_link(call["session_id"], call["project_dir"])] if show_session else []),
            status,
        ]
        hit = percent(cache_hit(call))
        if call["cache_break_cause"]:
            hit = (f"<span class=bad title='cache break: {esc(call['cache_break_cause'])}: "
                   f"{esc(call['cache_break_item'] or '')}'>&#9888; {hit}</span>")
        numbers = [tokens(input_side(call)), hit, tokens(call["output_tokens"]), call_cost(call)]
        return (f"<tr class='{cls}'>" + "".join(f"<td>{c}</td>" for c in cells)
                + "".join(f"<td class=num>{n}</td>" for n in numbers) + "</tr>")

    placed = {c["capture_id"] for groups in (nested or {}).values() for g in groups for c in g}
    for call in calls:
        if call["capture_id"] in placed and not any(call is g[0] for g in (nested or {}).get(call["capture_id"], [])):
            continue
        if call["capture_id"] not in placed:
            out.append(row(call))
        for group in (nested or {}).get(call["capture_id"], []):
            cost = sum(c["cost_usd"] or 0.0 for c in group)
            agent = group[0]["agent_type"] or "subagent"
            out.append(f"<tr class=group><td colspan={len(head)}>&#8627; {esc(agent)} subagent "
                       f"<span class=mono>{esc(group[0]['agent_id'] or '')}</span>: {len(group)} calls, "
                       f"{usd(cost)}</td></tr>")
            out += [row(c, "sub") for c in group]
    out.append("</table></div>")
    return "".join(out)


def call_header(call: dict) -> list[str]:
    error = f" &middot; <span class=bad>{esc(call['error_type'])}</span>" if call["error_type"] else ""
    estimated = (f" &middot; priced from {esc(call['price_estimated_from'])} (estimate)"
                 if call["price_estimated_from"] else "")
    return [
        f"<h1>{esc(kind_of(call))} call &middot; {esc(call['model'] or 'model unknown')}</h1>",
        f"<p class=muted>{when(call['started_at_ns'])} &middot; session "
        f"{session_link(call['session_id'], call['project_dir'])}"
        f"{' &middot; ' + esc(account(call)) if account(call) else ''} &middot; HTTP {esc(call['status'])}{error}"
        f" &middot; request {esc(call['request_id'] or 'n/a')} &middot; capture "
        f"<span class=mono>{esc(call['capture_id'])}</span>{estimated}</p>",
    ]


def token_section(call: dict) -> str:
    out = ["<section id=tokens><h2>Tokens and cost</h2><div class=scroll><table><tr><th>token class</th>"
           "<th class=num>tokens</th><th class=num>cost (USD)</th></tr>"]
    for label, tokens_column, cost_column in TOKEN_CLASSES:
        out.append(f"<tr><td>{label}</td><td class=num>{tokens(call[tokens_column])}</td>"
                   f"<td class=num>{usd(call[cost_column]) if call[cost_column] is not None else ''}</td></tr>")
    if call["cost_web_search_usd"]:
        out.append(f"<tr><td>web search fees</td><td></td><td class=num>{usd(call['cost_web_search_usd'])}</td></tr>")
    total_tokens = input_side(call) + call["output_tokens"]
    out.append(f"<tr><th>total</th><th class=num>{tokens(total_tokens)}</th><th class=num>{call_cost(call)}</th>"
               "</tr></table></div>")
    written = call["cache_write_5m_tokens"] + call["cache_write_1h_tokens"]
    out.append(f"<p>Cache: {tokens(written)} tokens written, {tokens(call['cache_read_input_tokens'])} read, "
               f"{tokens(call['input_tokens'])} uncached; cache hit {percent(cache_hit(call))}.</p>")
    warm = call["warm_cache_cost_usd"]
    if written and warm is not None and call["cost_usd"]:
        saved = 1 - warm / call["cost_usd"]
        out.append(f"<p id=warm>With a warm cache (the {tokens(written)} tokens it wrote read from the cache "
                   f"instead) this call would have cost <b>{usd(warm)}</b>, {saved:.0%} less.</p>")
    elif call["cost_usd"] is not None:
        out.append("<p id=warm>Nothing was written to the cache: a warm cache would not have made it cheaper.</p>")
    out.append("</section>")
    return "".join(out)


def cache_section(call: dict) -> str:
    """The call's cache shares and, against the previous call of its conversation, its break."""
    whole = input_side(call)
    if not whole:
        return ""
    written = call["cache_write_5m_tokens"] + call["cache_write_1h_tokens"]
    out = ["<section id=cache><h2>Prompt cache</h2><p>Of the input side: "
           f"{call['cache_read_input_tokens'] / whole:.1%} "
           f"read from the cache, {written / whole:.1%} written to it, {call['input_tokens'] / whole:.1%} uncached."]
    previous = call["cache_previous_capture_id"]
    if previous:
        out.append(f" Compared with <a href='/capture/{esc(previous)}'>the previous call of this conversation</a>, "
                   f"{esc(_gap(call['cache_gap_s']))} earlier.")
    else:
        out.append(" The first call of its conversation in the ledger: nothing to compare it with.")
    out.append("</p>")
    if call["cache_break_cause"]:
        causes = (call["cache_break_causes"] or call["cache_break_cause"]).split(",")
        bucket, item = call["cache_break_bucket"], call["cache_break_item"] or ""
        where = f" ({esc(bucket)})" if bucket and bucket not in item else ""
        extra = (f": {usd(call['cache_break_usd'])} more than reading them"
                 if call["cache_break_usd"] is not None else "")
        out.append(f"<p class=bad id=cache-break>Cache break: {esc(causes[0].replace('_', ' '))}, "
                   f"{esc(item)}{where}. {tokens(call['cache_break_tokens'])} tokens "
                   f"written again (or sent uncached) that the cache held{extra}.</p>")
        if len(causes) > 1:
            out.append(f"<p class=muted>Also: {esc(', '.join(c.replace('_', ' ') for c in causes[1:]))}.</p>")
    elif previous:
        out.append("<p id=cache-break>No cache break: it read what the previous call cached.</p>")
    out.append("<p class=muted>How this is worked out: docs/CACHE_DIAGNOSTICS.md.</p></section>")
    return "".join(out)


def _gap(seconds: float | None) -> str:
    if seconds is None:
        return "some time"
    return (f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200
            else f"{seconds / 3600:.1f} h")


def breaks_section(calls: list[dict]) -> str:
    """The session's cache breaks: when, why, where and what each cost."""
    breaks = [c for c in calls if c["cache_break_cause"]]
    if not breaks:
        return ("<section id=breaks><h2>Cache breaks</h2>"
                "<p>None: every call read what the call before it cached.</p></section>")
    cost = sum(c["cache_break_usd"] or 0.0 for c in breaks)
    out = [f"<section id=breaks><h2>Cache breaks</h2><p>{len(breaks):,} call(s) paid to write what the cache "
           f"should have held: {usd(cost)} more than reading it.</p><div class=scroll><table><tr><th>time</th>"
           "<th>call</th><th>cause</th><th>what changed</th><th class=num>tokens again</th>"
           "<th class=num>extra (USD)</th></tr>"]
    for c in breaks:
        out.append(f"<tr><td>{when(c['started_at_ns'])}</td><td><a href='/capture/{esc(c['capture_id'])}'>"
                   f"{esc(kind_of(c))}</a></td><td>{esc(c['cache_break_cause'].replace('_', ' '))}</td>"
                   f"<td>{esc(c['cache_break_item'] or '')}</td><td class=num>{tokens(c['cache_break_tokens'])}</td>"
                   f"<td class=num>{usd(c['cache_break_usd'])}</td></tr>")
    out.append("</table></div></section>")
    return "".join(out)


def call_labels(details: list[dict], attribution: Any) -> dict[str, str]:
    """Bucket -> its largest labelled parts, from the ledger (else from the painted request)."""
    out: dict[str, str] = {}
    parts: dict[str, list[tuple[str, int, float | None]]] = defaultdict(list)
    for d in details:
        if d["detail"]:
            parts[d["bucket"]].append((d["detail"], d["chars"], d["cost_usd"]))
    if attribution is not None:
        for bucket, labels in attribution.by_label.items():
            if bucket not in parts:
                parts[bucket] = [(label, n, None) for label, n in labels.items()]
    for bucket, items in parts.items():
        items.sort(key=lambda item: -item[1])
        out[bucket] = ", ".join(
            f"{esc(label)} {n:,} chars" + (f" {usd(cost)}" if cost is not None else "") for label, n, cost in items[:6])
    return out


def buckets_section(rows: list[dict], total_cost: float, labels: dict[str, str] | None = None) -> str:
    """A share bar and a table: each bucket's tokens and dollars (and chars, for one call)."""
    rows = sorted((r for r in rows if r["cost_usd"] or r.get("chars")), key=lambda r: -(r["cost_usd"] or 0.0))
    if not rows:
        return "<p class=muted>No cost recorded.</p>"
    out = [charts.share_bar([(r["bucket"], r["cost_usd"]) for r in rows], label="cost by bucket", fmt=usd_axis),
           charts.legend([r["bucket"] for r in rows])]
    has_chars = "chars" in rows[0]
    out.append("<div class=scroll><table class=buckets><tr><th>bucket</th>" + ("<th class=num>chars</th>" if has_chars
               else "<th class=num>calls</th>") + "<th class=num>tokens</th><th class=num>cost (USD)</th>"
               "<th class=num>share</th>" + ("<th>largest parts</th>" if labels is not None else "") + "</tr>")
    for r in rows:
        tok = r["tokens"] if "tokens" in r else input_side(r) + r["output_tokens"]
        share = (r["cost_usd"] or 0.0) / total_cost if total_cost else 0.0
        out.append(
            f"<tr><td><i class=sw style='background:{PALETTE[r['bucket']]}'></i>{esc(r['bucket'])}</td>"
            + (f"<td class=num>{r['chars']:,}</td>" if has_chars else f"<td class=num>{r['calls']:,}</td>")
            + f"<td class=num>{tokens(tok)}</td><td class=num>{usd(r['cost_usd'])}</td>"
            f"<td class=num>{share:.1%}</td>"
            + (f"<td>{labels.get(r['bucket'], '')}</td>" if labels is not None else "") + "</tr>")
    out.append("</table></div>")
    return "".join(out)


def painted_request(capture: Capture, attribution: Any) -> str:
    """The raw request body, every region in its bucket's colour; unattributed ones are red."""
    text = capture.request_body.decode("utf-8", "replace")
    out = [f"<section><h2>The request, painted by bucket ({attribution.total_chars:,} chars)</h2>",
           charts.legend([b for b in BUCKETS if attribution.buckets[b]], {b: tint(PALETTE[b]) for b in BUCKETS}),
           "<pre>"]
    for region in attribution.regions:
        title = region.bucket + (f": {region.label}" if region.label else "")
        out.append(f"<span style='background:{tint(PALETTE[region.bucket])}' title='{esc(title)}'>"
                   f"{html.escape(text[region.start:region.end])}</span>")
    out.append("</pre></section>")
    return "".join(out)
