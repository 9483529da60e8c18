"""The tables and sections the dashboard's pages are made of: the filter bar, top lists, calls
(subagents nested under the call that launched them), a call's tokens, cache and buckets, a
session's cache breaks.
"""

import sqlite3
from collections import defaultdict
from datetime import date, timedelta
from typing import Any

from opik_cipx.ledger.figures import (
    CACHE_READ,
    CACHE_WRITE_1H,
    CACHE_WRITE_5M,
    CACHE_WRITES,
    INPUT_SIDE,
    OUTPUT,
    TOKEN_CLASSES,
    UNCACHED,
    cache_hit,
    input_side,
    label_of,
)
from opik_cipx.ledger.periods import last_day_before, local_day
from opik_cipx.ledger.queries import LABELLED, Selection, launchers
from opik_cipx.views import charts
from opik_cipx.views.charts import PALETTE, usd_axis
from opik_cipx.views.filters import Filters
from opik_cipx.views.markup import account, call_cost, esc, kind_of, percent, session_link, tokens, usd, when

CALL_TOKENS = (  # label, tokens column, cost column
    (TOKEN_CLASSES[UNCACHED], UNCACHED, "cost_input_usd"),
    (CACHE_WRITES[CACHE_WRITE_5M], CACHE_WRITE_5M, "cost_cache_write_5m_usd"),
    (CACHE_WRITES[CACHE_WRITE_1H], CACHE_WRITE_1H, "cost_cache_write_1h_usd"),
    (TOKEN_CLASSES[CACHE_READ], CACHE_READ, "cost_cache_read_usd"),
    (TOKEN_CLASSES[OUTPUT], OUTPUT, "cost_output_usd"),
)


FILTER_WORDS = {"since": "from", "until": "to", "project": "project", "model": "model", "kind": "kind",
                "agent": "agent", "session": "session", "mcp": "MCP server", "skill": "skill", "tool": "tool"}


def filter_bar(path: str, filters: Filters, selection: Selection, today: str, options: dict[str, list[str]]) -> str:
    """The form that sets `path`'s range and filters (a GET: the URL keeps them), quick ranges,
    and each filter set with a link that drops it."""
    since = local_day(selection.since_ns) if selection.since_ns is not None else ""
    until = last_day_before(selection.until_ns) if selection.until_ns is not None else ""
    fields = [f"<label>from<input type=date name=since value='{since}'></label>",
              f"<label>to<input type=date name=until value='{until}'></label>"]
    for name in ("project", "model", "kind", "agent"):
        current = getattr(filters, name)
        values = options.get(name, []) + ([current] if current and current not in options.get(name, []) else [])
        choices = "".join(f"<option{' selected' if v == current else ''}>{esc(v)}</option>" for v in values)
        fields.append(f"<label>{name}<select name={name}><option value=''>any</option>{choices}</select></label>")
    fields.append(f"<label>session<input name=session size=12 placeholder='id or its start' "
                  f"value='{esc(filters.session)}'></label>")
    if filters.part:
        fields.append(f"<input type=hidden name={filters.part[0]} value='{esc(filters.part[1])}'>")
    fields.append(f"<button type=submit>Apply</button><a href='{esc(path)}'>clear all</a>")
    start = date.fromisoformat(today)
    ranges = [("today", today), ("7 days", (start - timedelta(days=6)).isoformat()),
              ("30 days", (start - timedelta(days=29)).isoformat())]
    quick = "".join(f"<a href='{filters.link(path, since=first, until='')}'>{label}</a>" for label, first in ranges)
    quick += f"<a href='{filters.link(path, since='', until='')}'>all time</a>"
    chips = "".join(
        f"<span>{FILTER_WORDS[name]} <b>{esc(value)}</b><a title='remove' href='"
        f"{filters.link(path, **({'part': None} if name in LABELLED else {name: ''}))}'>&times;</a></span>"
        for name, value in filters.items())
    return (f"<section id=filters><form class=filters method=get action='{esc(path)}'>{''.join(fields)}</form>"
            f"<p class=ranges>Range: {quick}</p>" + (f"<p class=chips>Showing: {chips}</p>" if chips else "")
            + "</section>")


def top_table(title: str, key: str, rows: list[tuple[str, str, dict]], export: str = "", empty: str = "") -> str:
    """A top list: each row (name as HTML, the href of its filtered view or '', its figures) a link,
    its calls, cost and a bar; `export` beside the heading, `empty` when there is no row."""
    heading = f"<h2>{esc(title)}{export}</h2>"
    if not rows:
        return f"<section id='top-{key}'>{heading}<p class=muted>{esc(empty or 'None.')}</p></section>"
    peak = max(r["cost_usd"] for _, _, r in rows)
    lines = [f"<section id='top-{key}'>{heading}<table><tr><th>{esc(key)}</th><th class=num>calls</th>"
             "<th class=num>cost (USD)</th><th class=wide></th></tr>"]
    for name, href, r in rows:
        cell = f"<a href='{href}'>{name}</a>" if href else name
        lines.append(f"<tr><td>{cell}</td><td class=num>{r['calls']:,}</td>"
                     f"<td class=num>{usd(r['cost_usd'])}</td>"
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


def calls_table(calls: list[dict], show_session: bool, nested: dict[str, list[list[dict]]] | None = None,
                filters: Filters = Filters()) -> str:
    """Calls, one a row (each a link to its page, keeping `filters`), subagent calls `nested`
    under the call that launched them."""
    if not calls:
        return "<p class=muted>No calls.</p>"
    head = ["time", "call", "<span class=wide>model</span>"] + (["session"] if show_session else []) + ["status"]
    figures = [TOKEN_CLASSES[INPUT_SIDE], "cache hit", TOKEN_CLASSES[OUTPUT], "cost (USD)"]
    out = ["<div class=scroll><table class=calls><tr>" + "".join(f"<th>{h}</th>" for h in head)
           + "".join(f"<th class=num>{h}</th>" for h in figures) + "</tr>"]
    head += figures

    def row(call: dict, cls: str = "") -> str:
        status = esc(call["status"] or "")
        if call["error_type"]:
            status += f" <span class=bad>{esc(call['error_type'])}</span>"
        cells = [
            when(call["started_at_ns"]),
            f"<a href='{filters.link('/capture/' + call['capture_id'], part=None)}'>{esc(kind_of(call))}</a>",
            f"<span class=wide>{esc(call['model'] or '')}</span>",
            *([session_link(call["session_id"], call["session_label"], call["project_dir"], filters)]
              if show_session else []),
            status,
        ]
        hit = percent(cache_hit(call))
        if call["cache_break_cause"]:
            hit = (f"<span class=bad title='cache break: {esc(call['cache_break_cause'])}: "
                   f"{esc(call['cache_break_item'] or '')}'>&#9888; {hit}</span>")
        numbers = [tokens(call[INPUT_SIDE]), hit, tokens(call[OUTPUT]), call_cost(call)]
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


def call_header(call: dict, filters: Filters = Filters()) -> list[str]:
    error = f" &middot; <span class=bad>{esc(call['error_type'])}</span>" if call["error_type"] else ""
    estimated = (f" &middot; priced from {esc(call['price_estimated_from'])} (estimate)"
                 if call["price_estimated_from"] else "")
    return [
        f"<h1>{esc(kind_of(call))} call &middot; {esc(call['model'] or 'model unknown')}</h1>",
        f"<p class=muted>{when(call['started_at_ns'])} &middot; session "
        f"{session_link(call['session_id'], call['session_label'], call['project_dir'], filters)}"
        f"{' &middot; ' + esc(account(call)) if account(call) else ''} &middot; HTTP {esc(call['status'])}{error}"
        f" &middot; request {esc(call['request_id'] or 'n/a')} &middot; capture "
        f"<span class=mono>{esc(call['capture_id'])}</span>{estimated}</p>",
    ]


def token_section(call: dict) -> str:
    out = ["<section id=tokens><h2>Tokens and cost</h2><div class=scroll><table><tr><th>token class</th>"
           "<th class=num>tokens</th><th class=num>cost (USD)</th></tr>"]
    for label, tokens_column, cost_column in CALL_TOKENS:
        out.append(f"<tr><td>{label}</td><td class=num>{tokens(call[tokens_column])}</td>"
                   f"<td class=num>{usd(call[cost_column]) if call[cost_column] is not None else ''}</td></tr>")
    if call["cost_web_search_usd"]:
        out.append(f"<tr><td>web search fees</td><td></td><td class=num>{usd(call['cost_web_search_usd'])}</td></tr>")
    total_tokens = call[INPUT_SIDE] + call[OUTPUT]
    out.append(f"<tr><th>total</th><th class=num>{tokens(total_tokens)}</th><th class=num>{call_cost(call)}</th>"
               "</tr></table></div>")
    written = call["cache_write_5m_tokens"] + call["cache_write_1h_tokens"]
    out.append(f"<p>Cache: {tokens(written)} tokens written, {tokens(call[CACHE_READ])} read, "
               f"{tokens(call[UNCACHED])} uncached; cache hit {percent(cache_hit(call))}.</p>")
    warm = call["warm_cache_cost_usd"]
    if written and warm is not None and call["cost_usd"]:
        saved = 1 - warm / call["cost_usd"]
        out.append(f"<p id=warm>With a warm cache (the {tokens(written)} tokens it wrote read from the cache "
                   f"instead) this call would have cost <b>{usd(warm)}</b>, {saved:.0%} less.</p>")
    elif call["cost_usd"] is not None:
        out.append("<p id=warm>Nothing was written to the cache: a warm cache would not have made it cheaper.</p>")
    out.append("</section>")
    return "".join(out)


def cache_section(call: dict, filters: Filters = Filters()) -> str:
    """The call's cache shares and, against the previous call of its conversation, its break."""
    whole = input_side(call)
    if not whole:
        return ""
    written = call["cache_write_5m_tokens"] + call["cache_write_1h_tokens"]
    out = [f"<section id=cache><h2>Prompt cache</h2><p>Of the input side: {call[CACHE_READ] / whole:.1%} "
           f"read from the cache, {written / whole:.1%} written to it, {call[UNCACHED] / whole:.1%} uncached."]
    previous = call["cache_previous_capture_id"]
    if previous:
        out.append(f" Compared with <a href='{filters.link('/capture/' + previous)}'>"
                   "the previous call of this conversation</a>, "
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


def breaks_section(calls: list[dict], filters: Filters = Filters()) -> str:
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
        out.append(f"<tr><td>{when(c['started_at_ns'])}</td>"
                   f"<td><a href='{filters.link('/capture/' + c['capture_id'])}'>"
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
        key = next((k for k, b in LABELLED.items() if b == bucket), "")
        out[bucket] = ", ".join(f"{esc(label_of(label, key))} {n:,} chars"
                                + (f" {usd(cost)}" if cost is not None else "")
                                for label, n, cost in items[:6])
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
        tok = r["tokens"] if "tokens" in r else r[INPUT_SIDE] + r[OUTPUT]
        share = (r["cost_usd"] or 0.0) / total_cost if total_cost else 0.0
        out.append(
            f"<tr><td><i class=sw style='background:{PALETTE[r['bucket']]}'></i>{esc(r['bucket'])}</td>"
            + (f"<td class=num>{r['chars']:,}</td>" if has_chars else f"<td class=num>{r['calls']:,}</td>")
            + f"<td class=num>{tokens(tok)}</td><td class=num>{usd(r['cost_usd'])}</td>"
            f"<td class=num>{share:.1%}</td>"
            + (f"<td>{labels.get(r['bucket'], '')}</td>" if labels is not None else "") + "</tr>")
    out.append("</table></div>")
    return "".join(out)
