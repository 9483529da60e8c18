"""The dashboard the viewer serves: home, calls, a session, a call, and exports
(docs/ARCHITECTURE.md, "Ledger"; docs/REPORTS.md, "Dashboard").

Everything comes from the ledger, so the pages show every call since install whatever the
daemon restarts; a call page also shows the raw request, folded by bucket, while its capture is
still stored. Pages are plain HTML with inline SVG charts (`views/charts.py`), put together from
`views/markup.py` (the shell, values), `views/home.py`, `views/tables.py` and
`views/request_view.py`: no script and no external resource, which the viewer's
Content-Security-Policy enforces.

A URL's query sets a date range and filters (`views/filters.py`) that every link of the page
keeps; `session` there, and `/session/<id>`, take the start of an id (several sessions that
start so: a page listing them, status 300). `/report.json|csv?by=KEYS&...` exports what a
chart or a list shows as `report --json|--csv` would (`ledger/export.py`), `/calls.json|csv`
the calls of a selection (newest first, `limit`, `before`; `/api/calls`: the newest 500).

`Dashboard.route(path)` answers one GET with (status, content type, body); each answer opens
its own read-only connection, so viewer threads never share one.
"""

import io
import sqlite3
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from opik_cipx.caps import NO_BUDGET, Budget
from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.ids import is_uuid7, uuid7_unix_ms
from opik_cipx.ledger.db import open_reader
from opik_cipx.ledger.export import calls_json, dump_json, report_json, write_calls_csv, write_report_csv
from opik_cipx.ledger.figures import cache_hit, input_side
from opik_cipx.ledger.periods import day_start_ns, last_day_before, local_day
from opik_cipx.ledger.queries import (
    CALLS_MAX,
    AmbiguousSession,
    ReportError,
    Selection,
    SessionNotFound,
    call_details,
    dimension_values,
    find_call,
    find_session,
    first_day,
    last_day,
    parse_by,
    recent_calls,
    report,
    session_calls,
    why_empty,
)
from opik_cipx.ledger.reprice import Repricer
from opik_cipx.ledger.schema import SchemaError
from opik_cipx.ledger.sessions import SessionInfo, session_info
from opik_cipx.materialize.attribution import categorize
from opik_cipx.materialize.pricing import load_price_table
from opik_cipx.store.captures import find_capture
from opik_cipx.views import charts
from opik_cipx.views.caps import caps_section
from opik_cipx.views.charts import compact, usd_axis
from opik_cipx.views.filters import Filters, parse_filters, selection
from opik_cipx.views.home import DEFAULT_DAYS, Scope, days_between, home_body, savings
from opik_cipx.views.markup import (
    HTML,
    account,
    esc,
    export_links,
    page,
    percent,
    session_name,
    token_figures,
    unpriced,
    usd,
    when,
)
from opik_cipx.views.request_view import folded_request
from opik_cipx.views.tables import (
    FILTER_WORDS,
    breaks_section,
    buckets_section,
    cache_section,
    call_header,
    call_labels,
    calls_table,
    filter_bar,
    nest,
    token_section,
)

Response = tuple[int, str, bytes]
TEXT = "text/plain; charset=utf-8"
EXPORTS = {"/report.json", "/report.csv", "/calls.json", "/calls.csv", "/api/calls"}
PAGE_CALLS = 100
API_CALLS = 500
NO_CALLS = ("<h1>Claude Code cost</h1><section><p>No calls recorded yet. Use Claude Code as usual: every call through "
            "opik-cipx lands here. `opik-cipx replay --ledger` adds the calls of the stored raw captures."
            "</p></section>")


SAVINGS_REUSE_S = 300  # the home page's Savings section is computed again after this long

class Dashboard:
    """The pages over one ledger and one capture store; `clock` says which day is today."""

    def __init__(self, ledger_path: Path, captures_dir: Path, clock: Clock = SYSTEM, budget: Budget = NO_BUDGET,
                 prices: dict[str, dict[str, Any]] | None = None):
        self.ledger_path = ledger_path
        self.captures_dir = captures_dir
        self.clock = clock
        self.budget = budget  # the spend caps, shown as bars on the home page
        self.prices = prices  # the `[prices]` overrides the savings are priced with (the daemon checked them)
        self._repricer: Repricer | None = None
        self._savings: tuple[tuple, int, str] | None = None  # the latest Savings section: its key, when, its HTML

    def route(self, target: str) -> Response:
        """Answer `GET target` (path and query)."""
        parts = urllib.parse.urlsplit(target)
        route = urllib.parse.unquote(parts.path)
        filters = parse_filters(parts.query)
        params = dict(urllib.parse.parse_qsl(parts.query))
        try:
            with self._reader() as conn:
                try:
                    if route == "/":
                        return self._home(conn, filters)
                    if route == "/calls":
                        return self._calls(conn, filters, _number(params.get("before")))
                    if route in EXPORTS:
                        return self._export(conn, route, filters, params)
                    if route.startswith("/session/"):
                        return self._session(conn, route[len("/session/"):], filters)
                    if route.startswith("/capture/"):
                        return self._call(conn, route[len("/capture/"):], filters, params.get("unfold") == "1")
                except (AmbiguousSession, SessionNotFound) as exc:
                    return self._no_session(conn, route, filters, exc)
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

    def _scope(self, conn: sqlite3.Connection, filters: Filters) -> tuple[Scope, list[str]]:
        """What `filters` select today, and one line per range bound that could not be read.
        Raises AmbiguousSession or SessionNotFound for a `session` that names not one."""
        session_id = find_session(conn, filters.session) if filters.session else None
        now_ns = self.clock.time_ns()
        asked, errors = selection(filters, now_ns / 1e9, session_id)
        today = local_day(now_ns)
        if filters.with_range():
            first, last = first_day(conn) or today, max(last_day(conn) or today, today)
            if asked.since_ns is not None:
                first = max(first, local_day(asked.since_ns))
            if asked.until_ns is not None:
                last = min(last, last_day_before(asked.until_ns))
            days, listed = days_between(first, last), asked
        else:
            start = (date.fromisoformat(today) - timedelta(days=DEFAULT_DAYS - 1)).isoformat()
            days, listed = days_between(start, today), replace(asked, since_ns=day_start_ns(start))
        return Scope(filters, asked, listed, days, today), errors

    def _notices(self, conn: sqlite3.Connection, scope: Scope, errors: list[str], path: str) -> str:
        """Bounds that could not be read, the session a view is narrowed to, and why it is empty."""
        out = [f"<p class=bad>{esc(e)}: left out.</p>" for e in errors]
        if scope.selection.session and path == "/":
            known = session_info(conn, [scope.selection.session]).get(scope.selection.session)
            name = f"<b>{esc(known.label)}</b> " if known and known.label else ""
            out.append(f"<p>Session {name}<span class=mono>{esc(scope.selection.session)}</span>: "
                       f"<a href='{scope.filters.link('/session/' + scope.selection.session, session='')}'>"
                       "its page, call by call &rarr;</a></p>")
        if (scope.filters.items() and path == "/" and not report(conn, (), scope.listed).total["calls"]):
            out.append(f"<p class=bad id=empty>Nothing to show: {esc(why_empty(conn, scope.listed)[0])}.</p>")
        return f"<section class=notice>{''.join(out)}</section>" if out else ""

    def _no_session(self, conn: sqlite3.Connection | None, route: str, filters: Filters,
                    exc: ReportError) -> Response:
        """A session filter or page that names no session, or several: say so, list them (with
        what each is known by)."""
        if route in EXPORTS:
            return (400 if isinstance(exc, AmbiguousSession) else 404), TEXT, f"{exc}\n".encode()
        on_page = route.startswith("/session/")
        href: Callable[[str], str] = ((lambda c: filters.link("/session/" + c, session="")) if on_page
                                      else (lambda c: filters.link(route, session=c)))
        if isinstance(exc, AmbiguousSession):
            known = session_info(conn, exc.candidates) if conn is not None else {}
            items = "".join(
                f"<li><a href='{href(c)}'><span class=mono>{esc(c)}</span></a>"
                + (f" {session_name(c, known[c].label, known[c].project, known[c].started_at)}" if c in known else "")
                + "</li>" for c in exc.candidates)
            body = f"<h1>Which session?</h1><p>{esc(exc)}:</p><ul id=candidates>{items}</ul>"
            return 300, HTML, page("which session?", body, filters)
        back = "" if on_page else f" <a href='{filters.link(route, session='')}'>Without this session filter</a>"
        return 404, HTML, page("unknown session", f"<p class=bad>{esc(exc)}.</p><p>{back}</p>", filters)

    def _savings_section(self, conn: sqlite3.Connection, scope: Scope) -> str:
        """`home.savings`, reused for `SAVINGS_REUSE_S` for the same range and filters (it prices the
        period's calls again: up to a second on 100,000 calls; bench/bench_report.py)."""
        key, now = (scope.listed, tuple(scope.filters.items())), self.clock.time_ns()
        kept = self._savings
        if kept is not None and kept[0] == key and now - kept[1] < SAVINGS_REUSE_S * 10**9:
            return kept[2]
        html = savings(conn, scope, self.repricer(), now, self.captures_dir)
        self._savings = (key, now, html)
        return html

    def repricer(self) -> Repricer:
        """The price table in use (the packaged one and the `[prices]` overrides), loaded once."""
        if self._repricer is None:
            self._repricer = Repricer(load_price_table(self.prices))
        return self._repricer

    # -- home and calls ------------------------------------------------------------------

    def _home(self, conn: sqlite3.Connection | None, filters: Filters) -> Response:
        if conn is None:
            return 200, HTML, page("opik-cipx dashboard", NO_CALLS)
        scope, errors = self._scope(conn, filters)
        everything = report(conn, ()).total
        out = [
            "<h1>Claude Code cost</h1>",
            f"<p class=muted>{everything['calls']:,} calls and {usd(everything['cost_usd'])} since "
            f"{esc(first_day(conn) or scope.today)} (ledger.db; local days). Reports: <span class=mono>opik-cipx "
            "report</span>; the words: docs/REPORTS.md.</p>",
            caps_section(conn, self.budget, self.clock.time_ns()),
            filter_bar("/", filters, scope.selection, scope.today, dimension_values(conn)),
            self._notices(conn, scope, errors, "/"),
            home_body(conn, scope),
            self._savings_section(conn, scope),
        ]
        return 200, HTML, page("opik-cipx dashboard", "".join(out), filters)

    def _calls(self, conn: sqlite3.Connection | None, filters: Filters, before: int | None) -> Response:
        if conn is None:
            return 200, HTML, page("calls", "<h1>Calls</h1><p class=muted>No calls.</p>", filters)
        scope, errors = self._scope(conn, filters)
        rows = recent_calls(conn, PAGE_CALLS, before, scope.selection, filters.part)
        what = ", ".join(f"{FILTER_WORDS[name]} {value}" for name, value in filters.items())
        query = filters.query().replace("&", "&amp;")
        out = [f"<h1>Calls</h1><p class=muted>Newest first{': ' + esc(what) if what else ', every call in the ledger'}"
               f"{' (carried in the request)' if filters.part else ''}.</p>",
               filter_bar("/calls", filters, scope.selection, scope.today, dimension_values(conn)),
               self._notices(conn, scope, errors, "/calls"),
               f"<section><h2>{'Calls' if not before else 'Older calls'}"
               + export_links(f"/calls.json{query}", f"/calls.csv{query}", f"all of them (up to {CALLS_MAX:,})")
               + "</h2>",
               calls_table(rows, show_session=True, filters=filters)]
        if len(rows) == PAGE_CALLS:
            older = (filters.link("/calls") + ("&amp;" if filters.items() else "?")
                     + f"before={rows[-1]['started_at_ns']}")
            out.append(f"<p><a href='{older}'>Older calls &rarr;</a></p>")
        out.append("</section>")
        return 200, HTML, page("calls", "".join(out), filters)

    def _export(self, conn: sqlite3.Connection | None, route: str, filters: Filters,
                params: dict[str, str]) -> Response:
        """A report (`by`) or the calls of what `filters` select, as JSON or CSV."""
        csv_out = route.endswith(".csv")
        kind = "application/json" if not csv_out else "text/csv; charset=utf-8"
        scope, errors = self._scope(conn, filters) if conn else (None, [])
        if errors:
            return 400, TEXT, ("\n".join(errors) + "\n").encode()
        if route.startswith("/report"):
            try:
                by = parse_by(params.get("by", ""))
            except ReportError as exc:
                return 400, TEXT, f"{exc}\n".encode()
            result = report(conn, by, scope.selection) if conn and scope else None
            if result is None:
                return 200, kind, b"" if csv_out else b'{"rows": [], "total": {}}'
            if not csv_out:
                return 200, kind, dump_json(report_json(result)).encode()
            stream = io.StringIO()
            write_report_csv(result, stream)
            return 200, kind, stream.getvalue().encode()
        limit = _number(params.get("limit")) or (API_CALLS if route == "/api/calls" else CALLS_MAX)
        calls = (recent_calls(conn, limit, _number(params.get("before")), scope.selection, filters.part)
                 if conn and scope else [])
        if not csv_out:
            return 200, kind, calls_json(calls).encode()
        stream = io.StringIO()
        write_calls_csv(calls, stream)
        return 200, kind, stream.getvalue().encode()

    # -- session -------------------------------------------------------------------------

    def _session(self, conn: sqlite3.Connection | None, prefix: str, filters: Filters) -> Response:
        """One session (named by its id or the start of it), call by call."""
        if conn is None:
            raise SessionNotFound(f"no session in the ledger has an id starting with {prefix!r}")
        session_id = find_session(conn, prefix)
        calls = session_calls(conn, session_id)
        selection = Selection(session=session_id)
        total = report(conn, (), selection).total
        first = calls[0]
        only = Filters(session=session_id)
        known = session_info(conn, [session_id]).get(session_id)
        out = [
            *_session_heading(session_id, known),
            f"<p><a href='{filters.link('/', session=session_id)}'>This session on the dashboard</a> (cost per day, "
            "models, MCP servers, skills) &middot; "
            f"{export_links(only.link('/calls.json'), only.link('/calls.csv'), 'its calls')}</p>",
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
        out.append(breaks_section(calls, filters))
        by_bucket = Filters(session=session_id).query() + "&amp;by=bucket"
        out.append(f"<section><h2>Where the session's cost went"
                   f"{export_links(f'/report.json{by_bucket}', f'/report.csv{by_bucket}')}</h2>")
        out.append(buckets_section(report(conn, ("bucket",), selection).rows, total["cost_usd"]))
        out.append("</section><section><h2>Calls</h2><p class=muted>In order; a subagent's calls are listed "
                   "under the call that launched it.</p>")
        out.append(calls_table(calls, show_session=False, nested=nest(conn, calls), filters=filters))
        out.append("</section>")
        return 200, HTML, page(f"session {session_id}", "".join(out), filters)

    # -- call ----------------------------------------------------------------------------

    def _call(self, conn: sqlite3.Connection | None, capture_id: str, filters: Filters, unfold: bool) -> Response:
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
            return 404, HTML, page("not found", f"<p>{esc(message)} <a href='{filters.link('/')}'>Dashboard</a></p>",
                                   filters)
        attribution = categorize(capture.request_body) if capture else None
        out = []
        if call:
            assert conn is not None  # the call was read from it
            out += call_header(call, filters)
            out.append(token_section(call))
            out.append(cache_section(call, filters))
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
            here = filters.link("/capture/" + capture_id)
            out.append(folded_request(capture, attribution, unfold, here))
        else:
            out.append("<section><p class=muted>The raw request is no longer stored (raw captures are kept "
                       "within captures.max_mb / captures.max_age_days), so it cannot be painted.</p></section>")
        return 200, HTML, page(f"call {capture_id}", "".join(out), filters)


def _session_heading(session_id: str, known: SessionInfo | None) -> list[str]:
    """The session's label as the heading (its id without one), its id, and both its title and its
    first prompt when it has both."""
    if known is None or not known.label:
        return [f"<h1>Session <span class=mono>{esc(session_id)}</span></h1>"]
    out = [f"<h1 id=session-label>{esc(known.label)}</h1>", f"<p class=mono>session {esc(session_id)}</p>"]
    if known.title and known.first_prompt:
        out.append(f"<p class=muted id=first-prompt>First prompt: {esc(known.first_prompt)}</p>")
    return out


def _number(raw: str | None) -> int | None:
    return int(raw) if raw and raw.isdigit() else None
