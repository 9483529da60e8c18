"""The dashboard's home page under a URL's range and filters (`Scope`): total cards, cost per
day by bucket, the top lists (each row a link to the view filtered by it), the latest calls, and
an export beside each of them; then what would have saved most (`savings`, docs/ADVICE.md).

Without a range the cards are today, 7 and 30 days, and the chart and lists cover the last 30
days; with one, a card for the range, and the chart and lists cover its days (by week beyond
`MAX_DAY_COLUMNS` days).
"""

import sqlite3
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path

from opik_cipx.ledger.advice import advise
from opik_cipx.ledger.figures import cache_hit, label_of
from opik_cipx.ledger.periods import day_start_ns, week_of
from opik_cipx.ledger.queries import Selection, recent_calls, report
from opik_cipx.ledger.reprice import Repricer
from opik_cipx.views import charts
from opik_cipx.views.charts import SERIES
from opik_cipx.views.filters import Filters
from opik_cipx.views.markup import (
    esc,
    export_links,
    percent,
    session_name,
    short_path,
    token_figures,
    unpriced,
    usd,
)
from opik_cipx.views.tables import calls_table, top_table

TOP_N = 8
SAVINGS_SHOWN = 5
WHOLE_PROJECTS = ("since", "until", "project")  # the filters `advise` takes
LATEST = 20
DEFAULT_DAYS = 30
MAX_DAY_COLUMNS = 92


@dataclass(frozen=True)
class Scope:
    """What one request's URL selects, read against the ledger and the clock."""

    filters: Filters
    selection: Selection  # as asked (without a range: all time)
    listed: Selection  # what the chart and the lists cover: as asked, or the last 30 days
    days: tuple[str, ...]  # the local days the chart covers, in order
    today: str

    @property
    def listed_filters(self) -> Filters:
        """`filters` that select `listed` (the default range made explicit): what exports take."""
        if self.filters.with_range() or not self.days:
            return self.filters
        return replace(self.filters, since=self.days[0])


def days_between(first: str, last: str) -> tuple[str, ...]:
    """Every local day from `first` to `last`, both included (none when `first` is later)."""
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return tuple((start + timedelta(days=n)).isoformat() for n in range((end - start).days + 1))


def home_body(conn: sqlite3.Connection, scope: Scope) -> str:
    """Everything below the filter bar."""
    return "".join([cards(conn, scope), cost_chart(conn, scope), top_lists(conn, scope), latest(conn, scope)])


def _card(card_id: str, label: str, total: dict) -> str:
    return (f"<div class=card id='{card_id}'><div class=muted>{esc(label)}</div><div class=big>{usd(total['cost_usd'])}"
            f"</div><div>{total['calls']:,} calls &middot; {token_figures(total)}</div>"
            f"<div class=muted>cache hit {percent(cache_hit(total))}</div>{unpriced(total)}</div>")


def cards(conn: sqlite3.Connection, scope: Scope) -> str:
    if scope.filters.with_range():
        span = f"{scope.days[0]} to {scope.days[-1]}" if scope.days else "no day"
        return ("<div class=cards>" + _card("total-range", f"Selected range, {span}",
                                            report(conn, (), scope.selection).total) + "</div>")
    today = date.fromisoformat(scope.today)
    out = ["<div class=cards>"]
    for label, back in (("Today", 0), ("Last 7 days", 6), ("Last 30 days", DEFAULT_DAYS - 1)):
        since = day_start_ns((today - timedelta(days=back)).isoformat())
        total = report(conn, (), replace(scope.selection, since_ns=since)).total
        out.append(_card(f"total-{label.lower().replace(' ', '-')}", label, total))
    return "".join(out) + "</div>"


def cost_chart(conn: sqlite3.Connection, scope: Scope) -> str:
    """Cost per day (per week for a long range) stacked by bucket: wide bars on a screen, one
    row per period on a phone."""
    by_week = len(scope.days) > MAX_DAY_COLUMNS
    periods = list(dict.fromkeys(week_of(d) for d in scope.days)) if by_week else list(scope.days)
    key = "week" if by_week else "day"
    per_period: dict[str, dict[str, float]] = defaultdict(dict)
    for row in report(conn, (key, "bucket"), scope.listed).rows:
        per_period[row[key]][row["bucket"]] = row["cost_usd"]
    series = [s for s in SERIES if any(values.get(s) for values in per_period.values())]
    what = "week" if by_week else "day"
    span = "last 30 days" if not scope.filters.with_range() else "the selected range"
    query = scope.listed_filters.query()
    export = export_links(f"/report.json{_with(query, 'by=' + what + ',bucket')}",
                          f"/report.csv{_with(query, 'by=' + what + ',bucket')}")
    columns = [(p if by_week else p[5:], per_period.get(p, {})) for p in periods]
    return (f"<section id=chart><h2>Cost per {what}, {span}, by bucket (USD){export}</h2>"
            f"<div class=only-wide>{charts.stacked_bars(columns, series, label=f'cost per {what}, stacked by bucket')}"
            f"</div><div class=only-narrow>{charts.stacked_rows(columns, series, label=f'cost per {what} by bucket')}"
            f"</div>{charts.legend(series)}</section>")


def _with(query: str, extra: str) -> str:
    """`query` (`?...` or '') with one more `name=value`, HTML-escaped."""
    return ((query + "&" if query else "?") + extra).replace("&", "&amp;")


def top_lists(conn: sqlite3.Connection, scope: Scope) -> str:
    """The largest sessions, projects, models, call kinds, subagent types, MCP servers and
    skills of what is listed, each row a link to the view it filters."""
    f, listed, query = scope.filters, scope.listed, scope.listed_filters.query()
    span = "last 30 days" if not f.with_range() else "the selected range"
    out = [f"<h2>Top spenders, {span}</h2><div class=grid>"]

    def table(title: str, key: str, rows: list[tuple[str, str, dict]]) -> str:
        export = export_links(f"/report.json{_with(query, 'by=' + key)}", f"/report.csv{_with(query, 'by=' + key)}",
                              "all rows")
        return top_table(title, key, rows, export, empty=f"None in {span}.")

    out.append(table("Sessions", "session", [
        (session_name(r["session"], r["session_label"], r["session_project"], r["session_started_at"])
         if r["session"] else label_of(None), f.link("/", session=r["session"]) if r["session"] else "", r)
        for r in report(conn, ("session",), listed).rows[:TOP_N]]))
    out.append(table("Projects", "project", [
        (short_path(r["project"]), f.link("/", project=r["project"]) if r["project"] else "", r)
        for r in report(conn, ("project",), listed).rows[:TOP_N]]))
    for title, key in (("Models", "model"), ("Call kinds", "kind")):
        out.append(table(title, key, [(esc(label_of(r[key])), f.link("/", **{key: r[key]}) if r[key] else "", r)
                                      for r in report(conn, (key,), listed).rows[:TOP_N]]))
    agents = [r for r in report(conn, ("agent",), listed).rows if r["agent"] != "main"][:TOP_N]
    out.append(table("Subagent types", "agent", [(esc(r["agent"]), f.link("/", agent=r["agent"]), r) for r in agents]))
    for title, key in (("MCP servers", "mcp"), ("Skills", "skill")):
        out.append(table(title, key, [(esc(label_of(r[key], key)), f.link("/calls", part=(key, r[key])), r)
                                      for r in report(conn, (key,), listed).rows[:TOP_N] if r[key]]))
    out.append("</div>")
    return "".join(out)


def latest(conn: sqlite3.Connection, scope: Scope) -> str:
    query = scope.listed_filters.query()
    export = export_links(f"/calls.json{_with(query, f'limit={LATEST}')}",
                          f"/calls.csv{_with(query, f'limit={LATEST}')}")
    return (f"<section id=latest><h2>Latest calls{export}</h2>"
            + calls_table(recent_calls(conn, LATEST, selection=scope.listed), show_session=True, filters=scope.filters)
            + f"<p><a href='{scope.filters.link('/calls')}'>All calls &rarr;</a></p></section>")


def savings(conn: sqlite3.Connection, scope: Scope, repricer: Repricer, now_ns: int, captures_dir: Path) -> str:
    """`opik-cipx advise` over what the chart covers (docs/ADVICE.md): the findings that would have
    saved most, with their action. `advise` selects by project alone, so other filters hide it."""
    span = "last 30 days" if not scope.filters.with_range() else "the selected range"
    head = f"<section id=savings><h2>Savings, {span}</h2>"
    others = [name for name, _ in scope.filters.items() if name not in WHOLE_PROJECTS]
    if others:
        return (head + f"<p class=muted>Savings cover whole projects: without the {esc(', '.join(others))} "
                "filter they show here.</p></section>")
    listed = scope.listed
    found = advise(conn, Selection(since_ns=listed.since_ns, until_ns=listed.until_ns, project=listed.project),
                   repricer, now_ns, captures_dir).findings
    if not found:
        return head + "<p class=muted>Nothing in this period would have saved anything.</p></section>"
    rows = "".join(
        f"<tr><td class=num>{'not computable' if f.saving_usd is None else usd(f.saving_usd)}</td>"
        f"<td>{esc(f.kind)}</td><td>{esc(f.subject)}</td><td class=num>{f.calls:,}</td><td>{esc(f.action)}</td></tr>"
        for f in found[:SAVINGS_SHOWN])
    return (head + "<div class=scroll><table class=savings><tr><th class=num>saving</th><th>finding</th>"
            "<th>subject</th><th class=num>calls</th><th>what to change</th></tr>" + rows + "</table></div>"
            f"<p class=muted>{min(len(found), SAVINGS_SHOWN)} of {len(found)} findings: each saving is the period's "
            "calls priced again without the change (docs/ADVICE.md); <span class=mono>opik-cipx advise --json</span> "
            "lists them all with their evidence.</p></section>")
