"""The dashboard's page shell and how its values are written: dollars, tokens, times, links.

Plain HTML: one inline stylesheet, no script, nothing loaded from anywhere (the viewer's
Content-Security-Policy enforces it). Times are local.
"""

import html
import time
import urllib.parse
from typing import Any

from opik_cipx.ledger.figures import INPUT_SIDE, INPUT_SIDE_MEANS, OUTPUT, TOKEN_CLASSES, UNKNOWN, unpriced_note
from opik_cipx.views import charts

HTML = "text/html; charset=utf-8"
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


def session_link(session_id: str | None, project: str | None) -> str:
    if not session_id:
        return UNKNOWN
    name = f"{session_id[:8]}&hellip;" + (f" {esc(project.rstrip('/').rsplit('/', 1)[-1])}" if project else "")
    return f"<a href='/session/{urllib.parse.quote(session_id)}'>{name}</a>"
