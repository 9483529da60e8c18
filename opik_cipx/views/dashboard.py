"""The dashboard the viewer serves: home, all calls, a session, a call (docs/ARCHITECTURE.md, "Ledger").

Everything comes from the ledger, so the pages show every call since install whatever the
daemon restarts; a call page also paints the raw request by bucket while its capture is still
stored. Pages are plain HTML with inline SVG charts (`views/charts.py`), put together from
`views/markup.py` (the shell, values), `views/tables.py` and `views/request_view.py`: no
script and no external resource, which the viewer's Content-Security-Policy enforces.

`Dashboard.route(path)` answers one GET with (status, content type, body); each answer opens
its own read-only connection, so viewer threads never share one.
"""

import json
import sqlite3
import urllib.parse
from collections import defaultdict
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Iterator

from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.ids import is_uuid7, uuid7_unix_ms
from opik_cipx.ledger.db import open_reader
from opik_cipx.ledger.figures import cache_hit, input_side, label_of
from opik_cipx.ledger.periods import day_start_ns, local_day
from opik_cipx.ledger.queries import (
    Selection,
    call_details,
    find_call,
    first_day,
    recent_calls,
    report,
    session_calls,
    session_projects,
)
from opik_cipx.ledger.schema import SchemaError
from opik_cipx.materialize.attribution import categorize
from opik_cipx.store.captures import find_capture
from opik_cipx.views import charts
from opik_cipx.views.charts import SERIES, compact, usd_axis
from opik_cipx.views.markup import (
    HTML,
    account,
    esc,
    page,
    percent,
    session_link,
    short_path,
    token_figures,
    unpriced,
    usd,
    when,
)
from opik_cipx.views.request_view import painted_request
from opik_cipx.views.tables import (
    breaks_section,
    buckets_section,
    cache_section,
    call_header,
    call_labels,
    calls_table,
    nest,
    token_section,
    top_table,
)

Response = tuple[int, str, bytes]
PAGE_CALLS = 100
TOP_N = 8


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
                f"<div>{total['calls']:,} calls &middot; {token_figures(total)}</div>"
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
        if not calls:
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
            f"{token_figures(total)}"
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
            ("context size of main-loop calls (input side)", "#ff7f0e", context, "right", compact),
        ], label="cumulative cost and context size per call"))
        out.append(charts.legend(["cumulative cost (USD)", "context size of main-loop calls (input side)"],
                                 {"cumulative cost (USD)": "#1f77b4",
                                  "context size of main-loop calls (input side)": "#ff7f0e"}))
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
            out.append(f"<h1>{esc(capture.method)} {esc(capture.path)}</h1><p class=muted>Not in the ledger "
                       "(no Messages API call, or made before the ledger existed).</p>")
        if capture is not None:
            out.append(painted_request(capture, attribution))
        else:
            out.append("<section><p class=muted>The raw request is no longer stored (raw captures are kept "
                       "within captures.max_mb / captures.max_age_days), so it cannot be painted.</p></section>")
        return 200, HTML, page(f"call {capture_id}", "".join(out))
