"""The debug viewer: recent calls with their cost, and each request body coloured by bucket.

Served by the daemon on the viewer port (127.0.0.1 only, loopback Host header required), and
only to a browser holding the viewer token (`access.py`).
The list comes from `RecentCalls`, a bounded in-memory ring the pipeline fills as captures are
materialized, so rendering it costs nothing on the wire's behalf. The detail page re-reads one
capture from the capture store and runs `categorize` on it, painting every region of the raw
body in its bucket's colour; unattributed characters are red (a categorizer gap or a new
Claude Code wire format).
"""

import html
import json
import threading
import urllib.parse
from collections import deque
from pathlib import Path
from typing import Any, Iterable

from opik_cipx.materialize.attribution import BUCKETS, categorize
from opik_cipx.materialize.spans import iso_z
from opik_cipx.store.captures import find_capture
from opik_cipx.views.access import ViewerAccess
from opik_cipx.wire.capture import Capture
from opik_cipx.wire.loopback import LoopbackHandler

COLOURS = {
    "system_prompt": "#dbeafe", "tools_builtin": "#e0e7ff", "tools_mcp": "#ede9fe", "skills": "#fae8ff",
    "memory": "#fef3c7", "agents": "#fce7f3", "user_prompt": "#dcfce7", "slash_command": "#d1fae5",
    "tool_io": "#ccfbf1", "prior_assistant": "#e0f2fe", "compaction": "#fde68a", "system_reminder": "#f5f5f4",
    "envelope": "#ffffff", "unattributed": "#fca5a5",
}
STYLE = """body{font:14px system-ui,sans-serif;margin:1.5em;color:#111}table{border-collapse:collapse}
td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
th{background:#f3f4f6}.num{text-align:right;font-variant-numeric:tabular-nums}
pre{white-space:pre-wrap;word-break:break-all;font:12px ui-monospace,monospace;border:1px solid #ddd;padding:8px}
.legend span{display:inline-block;padding:2px 6px;margin:2px;border:1px solid #ccc}a{color:#1d4ed8}
.bad{color:#b91c1c;font-weight:bold}"""


class RecentCalls:
    """The last `limit` exchanges as list rows, newest first; safe across threads."""

    def __init__(self, limit: int = 500):
        self._rows: deque[dict[str, Any]] = deque(maxlen=limit)
        self._lock = threading.Lock()

    def add(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._rows.appendleft(row)

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._rows)

    def get(self, capture_id: str) -> dict[str, Any] | None:
        with self._lock:
            return next((row for row in self._rows if row["capture_id"] == capture_id), None)


def call_row(capture: Capture, records: list[dict], segment: Path | None) -> dict[str, Any]:
    """A list row for one exchange, from its capture and the records it produced."""
    row: dict[str, Any] = {
        "capture_id": capture.id,
        "segment": str(segment) if segment else None,
        "started_at_ns": capture.started_at_ns,
        "method": capture.method,
        "path": capture.path.split("?", 1)[0],
        "status": capture.status,
        "request_bytes": len(capture.request_body),
        "client_aborted": capture.client_aborted,
        "upstream_error": capture.upstream_error,
    }
    span = next((r["body"] for r in records if r["kind"] == "span" and r["body"].get("type") == "llm"), None)
    if span:
        cc = span["metadata"]["cc"]
        usage = span.get("usage") or {}
        row.update(
            kind=cc["call"]["kind"],
            name=span["name"],
            model=span.get("model"),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            cost_usd=span.get("total_estimated_cost"),
            unknown_model=cc["pricing"].get("unknown_model"),
            buckets={name: entry["chars"] for name, entry in cc["categories"].items()},
            trace_id=span["trace_id"],
            span_id=span["id"],
        )
    return row


def _page(title: str, body: str) -> bytes:
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{body}</body></html>"
    ).encode()


def _fmt_cost(value: float | None, unknown: bool = False) -> str:
    if unknown:
        return '<span class=bad title="model not in the price table">unknown model</span>'
    return "" if value is None else f"${value:.4f}"


def render_index(rows: list[dict[str, Any]]) -> bytes:
    lines = [
        "<h1>opik-cipx: recent Claude Code calls</h1>",
        f"<p>{len(rows)} most recent exchanges since the daemon started, newest first. "
        "Click a call to see where its request bytes went.</p>",
        "<table><tr><th>time (UTC)</th><th>call</th><th>model</th><th>status</th><th class=num>request</th>"
        "<th class=num>prompt tok</th><th class=num>output tok</th><th class=num>cost</th><th>top buckets</th></tr>",
    ]
    for row in rows:
        when = _time(row["started_at_ns"])
        label = row.get("name") or f"{row['method']} {row['path']}"
        link = f"<a href=/capture/{html.escape(row['capture_id'])}>{html.escape(label)}</a>"
        status = html.escape(str(row["status"] or row.get("upstream_error") or ""))
        if row.get("client_aborted"):
            status += " (client aborted)"
        buckets = sorted((row.get("buckets") or {}).items(), key=lambda kv: -kv[1])[:3]
        top = ", ".join(f"{html.escape(name)} {chars:,}" for name, chars in buckets if chars)
        lines.append(
            f"<tr><td>{when}</td><td>{link}</td><td>{html.escape(str(row.get('model') or ''))}</td>"
            f"<td>{status}</td><td class=num>{row['request_bytes']:,}</td>"
            f"<td class=num>{_int(row.get('prompt_tokens'))}</td><td class=num>{_int(row.get('completion_tokens'))}</td>"
            f"<td class=num>{_fmt_cost(row.get('cost_usd'), bool(row.get('unknown_model')))}</td><td>{top}</td></tr>"
        )
    lines.append("</table>")
    return _page("opik-cipx viewer", "\n".join(lines))


def render_capture(capture: Capture, row: dict[str, Any] | None) -> bytes:
    """One exchange: its numbers, then the request body painted by bucket."""
    attribution = categorize(capture.request_body)
    text = capture.request_body.decode("utf-8", "replace")
    parts = [
        "<p><a href=/>&larr; all calls</a></p>",
        f"<h1>{html.escape(capture.method)} {html.escape(capture.path)}</h1>",
        f"<p>capture {html.escape(capture.id)} &middot; {_time(capture.started_at_ns)} UTC &middot; status "
        f"{html.escape(str(capture.status))} &middot; {attribution.total_chars:,} chars</p>",
    ]
    if row and row.get("span_id"):
        parts.append(
            f"<p>model {html.escape(str(row.get('model')))} &middot; prompt tokens {_int(row.get('prompt_tokens'))}"
            f" &middot; output tokens {_int(row.get('completion_tokens'))} &middot; cost "
            f"{_fmt_cost(row.get('cost_usd'), bool(row.get('unknown_model')))} &middot; trace {html.escape(row['trace_id'])}</p>"
        )
    parts.append("<table><tr><th>bucket</th><th class=num>chars</th><th class=num>share</th><th>largest parts</th></tr>")
    for bucket in BUCKETS:
        chars = attribution.buckets[bucket]
        if not chars:
            continue
        labels = sorted(attribution.by_label.get(bucket, {}).items(), key=lambda kv: -kv[1])[:6]
        detail = ", ".join(f"{html.escape(label)} {n:,}" for label, n in labels)
        share = chars / attribution.total_chars if attribution.total_chars else 0
        parts.append(
            f"<tr><td style='background:{COLOURS[bucket]}'>{bucket}</td><td class=num>{chars:,}</td>"
            f"<td class=num>{share:.1%}</td><td>{detail}</td></tr>"
        )
    parts.append("</table><p class=legend>")
    parts += [f"<span style='background:{COLOURS[b]}'>{b}</span>" for b in BUCKETS]
    parts.append("</p><pre>")
    for region in attribution.regions:
        title = region.bucket + (f": {region.label}" if region.label else "")
        parts.append(
            f"<span style='background:{COLOURS[region.bucket]}' title='{html.escape(title, quote=True)}'>"
            f"{html.escape(text[region.start:region.end])}</span>"
        )
    parts.append("</pre>")
    return _page(f"capture {capture.id}", "".join(parts))


def _time(ns: int) -> str:
    return iso_z(ns)[:19].replace("T", " ")


def _int(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else ""


class ViewerHandler(LoopbackHandler):
    calls: RecentCalls  # set on the subclass the daemon builds, like `access`
    access: ViewerAccess

    def do_GET(self) -> None:
        answer = self.access.check(self.path, self.headers, self.server.port)
        if answer is not None:
            self._send(answer.status, answer.content_type, answer.body, answer.headers)
            return
        route = urllib.parse.unquote(self.path.split("?", 1)[0])
        if route == "/":
            self._send(200, "text/html; charset=utf-8", render_index(self.calls.rows()))
        elif route == "/api/calls":
            self._send(200, "application/json", json.dumps(self.calls.rows()).encode())
        elif route.startswith("/capture/"):
            self._capture(route[len("/capture/"):])
        else:
            self._send(404, "text/plain", b"not found; the call list is at /\n")

    def _capture(self, capture_id: str) -> None:
        row = self.calls.get(capture_id)
        capture = find_capture(Path(row["segment"]), capture_id) if row and row.get("segment") else None
        if capture is None:
            message = ("This capture is no longer stored (raw captures disabled, or deleted by retention). "
                       "`opik-cipx replay` lists what is still on disk.")
            self._send(404, "text/html; charset=utf-8", _page("not found", f"<p>{html.escape(message)}</p>"))
            return
        self._send(200, "text/html; charset=utf-8", render_capture(capture, row))

    def _send(self, status: int, content_type: str, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.send_response_only(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
        self.end_headers()
        self.wfile.write(body)
