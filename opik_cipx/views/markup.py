"""The dashboard's page shell and how its values are written: dollars, tokens, times, links.

Plain HTML: one inline stylesheet, no script, nothing loaded from anywhere (the viewer's
Content-Security-Policy enforces it). Times are local.
"""

import html
import time
from typing import Any

from opik_cipx.ledger.figures import INPUT_SIDE, INPUT_SIDE_MEANS, OUTPUT, TOKEN_CLASSES, UNKNOWN, unpriced_note
from opik_cipx.views import charts
from opik_cipx.views.filters import Filters

HTML = "text/html; charset=utf-8"
LABEL_CHARS = 60  # a session's label in a table is cut to this
STYLE = (
    "body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#111;background:#fafafa}"
    "header{background:#111827;color:#fff;padding:10px 16px}header a{color:#fff;margin-right:16px;"
    "text-decoration:none}header b{margin-right:24px}main{max-width:1240px;margin:0 auto;padding:12px 16px}"
    "h1{font-size:22px;margin:8px 0}h2{font-size:17px;margin:22px 0 8px}"
    "section,.card{background:#fff;border:1px solid #e5e7eb;border-radius:6px;padding:12px;margin-bottom:14px}"
    ".cards{display:flex;flex-wrap:wrap;gap:12px;margin-bottom:14px}.card{flex:1 1 220px;margin:0}"
    ".card .big{font-size:26px;"
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
    "form.filters{display:flex;flex-wrap:wrap;gap:6px 12px;align-items:end;margin:0}form.filters label{"
    "display:flex;flex-direction:column;font-size:12px;color:#4b5563}form.filters input,form.filters select{"
    "font:13px system-ui,sans-serif;padding:3px 4px;max-width:230px}form.filters button{padding:4px 14px}"
    ".ranges a,.chips a{margin-right:12px}.chips span{display:inline-block;background:#eef2ff;border-radius:10px;"
    "padding:1px 8px;margin:2px 6px 2px 0}.chips span a{margin:0 0 0 6px;text-decoration:none}"
    ".export{font-size:12px;font-weight:400;margin-left:10px}h2 .export a{margin-left:6px}"
    ".notice{background:#fffbeb;border-color:#f59e0b}td .about{display:block;font-size:12px}"
    "details.part{margin:2px 0;border-left:4px solid var(--c);padding-left:6px}details.part>summary{cursor:pointer;"
    "font:12px ui-monospace,monospace;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}"
    "details.part pre{margin:4px 0}.jump td{padding:2px 6px}.jump a{margin-right:6px}"
    "@media (max-width:700px){main{padding:8px}.card .big{font-size:20px}.grid{grid-template-columns:1fr}"
    "td,th{padding:3px 5px}.wide{display:none}}"
    + charts.CSS
)


def page(title: str, body: str, filters: Filters = Filters()) -> bytes:
    """The whole page: its header links keep `filters` (the calls list also its part filter)."""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body><header><b>opik-cipx</b>"
        f"<a href='{filters.link('/', part=None)}'>Dashboard</a><a href='{filters.link('/calls')}'>All calls</a>"
        f"</header><main>{body}</main></body></html>"
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


def token_figures(figures: dict[str, Any]) -> str:
    """`input side 32,012 · output 120 tokens`, input side explained on hover."""
    return (f"<span title='{INPUT_SIDE_MEANS}'>{TOKEN_CLASSES[INPUT_SIDE]}</span> {tokens(figures[INPUT_SIDE])} "
            f"&middot; {TOKEN_CLASSES[OUTPUT]} {tokens(figures[OUTPUT])} tokens")


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


def session_name(session_id: str, label: str | None, project: str | None = None, started: str | None = None) -> str:
    """A session as people know it: its label (title or first prompt, cut to `LABEL_CHARS`), else
    the start of its id; then, muted, its project's last part, its start (`started`: local ISO
    8601, as reports give it) and the start of its id (what `--session` takes); the whole id and
    label on hover."""
    short = f"{session_id[:8]}&hellip;"
    if label:
        cut = label if len(label) <= LABEL_CHARS else label[:LABEL_CHARS - 1].rstrip() + "\u2026"
        name = f"<span title='{esc(label)}'>{esc(cut)}</span>"
    else:
        name = short
    about = [esc(project.rstrip("/").rsplit("/", 1)[-1]) if project else "",
             esc(started[5:16].replace("T", " ")) if started else "",
             f"<span class=mono title='{esc(session_id)}'>{esc(session_id[:8])}</span>" if label else ""]
    about = [part for part in about if part]
    return name + (f" <span class='muted about'>{' &middot; '.join(about)}</span>" if about else "")


def session_link(session_id: str | None, label: str | None, project: str | None, filters: Filters = Filters()) -> str:
    """A link to the session's page (keeping `filters` for the way back)."""
    if not session_id:
        return UNKNOWN
    href = filters.link("/session/" + session_id, session="", part=None)
    return f"<a href='{href}'>{session_name(session_id, label, project)}</a>"


def export_links(path_json: str, path_csv: str, label: str = "export") -> str:
    """`export: JSON · CSV` next to a heading (the hrefs already carry their query)."""
    return (f"<span class=export>{esc(label)}: <a href='{path_json}'>JSON</a> &middot; "
            f"<a href='{path_csv}'>CSV</a></span>")
