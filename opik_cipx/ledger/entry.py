"""One call's ledger rows, derived from its capture and the records the materializer made for it.

Pure: the same capture and records always give the same entry (the local day aside, which
follows the machine's time zone), so re-materializing a capture rewrites identical rows.
Everything comes from the call's span (`metadata.cc.call`, `.usage`, `.pricing`,
`.categories`, `.output_categories`, `.session`, `.identity`, `.cache`, `.rate_limits`) and its
`total_estimated_cost`; the ledger never re-prices, re-attributes or re-diagnoses.

Detail rows split the call's cost over buckets: each request bucket (and each labelled part
of one) gets its character share of the input-side tokens and cost; `output` holds the output
tokens and cost (labelled thinking / text / tool_use by character share); `web_search` the
search fees. So the `''` rows of one call add up to its total cost. Labels are kept for every
bucket except `system_prompt` sections and `tools_builtin` tool definitions, which are the
same in every call (the call page paints them while the raw capture is stored).
"""

from dataclasses import dataclass
from typing import Any

from opik_cipx.ledger.periods import local_day
from opik_cipx.materialize.pricing import token_counts
from opik_cipx.materialize.turns import AGENT_TOOLS
from opik_cipx.wire.capture import Capture

OUTPUT = "output"
WEB_SEARCH = "web_search"
UNLABELLED_BUCKETS = frozenset({"system_prompt", "tools_builtin"})
_MTOK = 1_000_000


@dataclass(frozen=True)
class Detail:
    """One bucket (`detail == ""`) or one labelled part of it, within one call."""

    bucket: str
    detail: str
    chars: int
    tokens: float
    cost_usd: float | None


@dataclass(frozen=True)
class Entry:
    """`call`: column -> value of the `calls` row; `details`: its bucket rows; `launches`:
    (Agent tool span id, id of the llm span whose response asked for it) seen in the records;
    `rate_limits`: a row of `schema.RATE_LIMIT_COLUMNS` per window its response carried."""

    call: dict[str, Any]
    details: tuple[Detail, ...]
    launches: tuple[tuple[str, str], ...]
    rate_limits: tuple[tuple, ...] = ()


def ledger_entry(capture: Capture, records: list[dict]) -> Entry | None:
    """The ledger rows of one exchange; None when it made no Messages API call span."""
    span = next((body for body in _bodies(records) if _call_meta(body).get("capture_id") == capture.id), None)
    if span is None:
        return None
    cc = span["metadata"]["cc"]
    call, usage, pricing = cc.get("call") or {}, cc.get("usage") or {}, cc.get("pricing") or {}
    session = cc.get("session") or {}
    git = session.get("git") if isinstance(session.get("git"), dict) else {}
    identity = cc.get("identity") if isinstance(cc.get("identity"), dict) else {}
    tokens = token_counts(usage)
    breakdown = pricing.get("breakdown") or {}
    cost = span.get("total_estimated_cost")
    error = span.get("error_info") or {}
    error_type = error.get("exception_type") or ("client_aborted" if capture.client_aborted else None)
    cache = cc.get("cache") if isinstance(cc.get("cache"), dict) else {}
    cache_break = cache.get("break") or {}
    started = capture.started_at_ns
    row = {
        "capture_id": capture.id,
        "started_at_ns": started,
        "ended_at_ns": capture.ended_at_ns or started,
        "day": local_day(started),
        "session_id": session.get("id"),
        "project_dir": session.get("cwd"),
        "git_branch": git.get("branch"),
        "git_remote": git.get("remote"),
        "user_email": identity.get("user_email"),
        "org_name": identity.get("org_name"),
        "model": span.get("model") or pricing.get("model") or (cc.get("count_tokens") or {}).get("model"),
        "kind": call.get("kind") or "unknown",
        "side_kind": call.get("side_kind"),
        "agent_id": call.get("agent_id"),
        "parent_agent_id": call.get("parent_agent_id"),
        "agent_type": call.get("subagent_type"),
        "trace_id": span.get("trace_id"),
        "span_id": span.get("id"),
        "parent_span_id": span.get("parent_span_id"),
        "status": capture.status,
        "error_type": error_type,
        "request_id": call.get("request_id"),
        "message_id": call.get("message_id"),
        "stop_reason": call.get("stop_reason"),
        "input_tokens": tokens["input"],
        "cache_creation_input_tokens": tokens["cache_write_5m"] + tokens["cache_write_1h"],
        "cache_write_5m_tokens": tokens["cache_write_5m"],
        "cache_write_1h_tokens": tokens["cache_write_1h"],
        "cache_read_input_tokens": tokens["cache_read"],
        "output_tokens": tokens["output"],
        "cost_usd": cost,
        "cost_input_usd": breakdown.get("input"),
        "cost_cache_write_5m_usd": breakdown.get("cache_write_5m"),
        "cost_cache_write_1h_usd": breakdown.get("cache_write_1h"),
        "cost_cache_read_usd": breakdown.get("cache_read"),
        "cost_output_usd": breakdown.get("output"),
        "cost_web_search_usd": breakdown.get("web_search"),
        "warm_cache_cost_usd": _warm_cache_cost(cost, tokens, breakdown, pricing.get("rates") or {}),
        # unpriced: a model the table does not know and could not estimate (an estimate has a cost)
        "unknown_model": int(bool(pricing.get("unknown_model")) and not pricing.get("estimated_from")),
        "price_estimated_from": pricing.get("estimated_from"),
        "price_table_date": pricing.get("price_table_date") or span.get("total_estimated_cost_version"),
        "request_chars": call.get("request_chars") or 0,
        "ttfb_ms": call.get("ttfb_ms"),
        "duration_ms": call.get("duration_ms"),
        "cache_previous_capture_id": (cache.get("previous") or {}).get("capture_id"),
        "cache_gap_s": (cache.get("previous") or {}).get("gap_s"),
        "cache_break_cause": cache_break.get("cause"),
        "cache_break_causes": ",".join(cache_break.get("causes") or ()) or None,
        "cache_break_bucket": (cache_break.get("where") or {}).get("bucket"),
        "cache_break_item": cache_break.get("item"),
        "cache_break_tokens": cache_break.get("lost_tokens") or 0,
        "cache_break_usd": cache_break.get("extra_cost_usd"),
    }
    details = _request_details(cc.get("categories") or {}, tokens, pricing.get("input_side_usd"))
    details += _output_details(cc.get("output_categories") or {}, tokens["output"], pricing.get("output_usd"))
    if pricing.get("web_search_usd"):
        details.append(Detail(WEB_SEARCH, "", 0, 0.0, pricing["web_search_usd"]))
    launches = tuple(
        (body["id"], body["parent_span_id"])
        for body in _bodies(records)
        if body.get("type") == "tool" and body.get("name") in AGENT_TOOLS and body.get("parent_span_id")
    )
    windows = ((cc.get("rate_limits") or {}).get("windows") or {}).items()
    rate_limits = tuple((name, w.get("source") or "unified", w.get("utilization"), w.get("resets_at"), w.get("status"),
                         w.get("surpassed_threshold"), w.get("limit"), w.get("remaining"))
                        for name, w in windows if isinstance(w, dict))
    return Entry(call=row, details=tuple(details), launches=launches, rate_limits=rate_limits)


def _bodies(records: list[dict]) -> list[dict]:
    return [r["body"] for r in records if r.get("kind") == "span" and isinstance(r.get("body"), dict)]


def _call_meta(body: dict) -> dict:
    cc = (body.get("metadata") or {}).get("cc") or {}
    call = cc.get("call")
    return call if isinstance(call, dict) else {}


def _warm_cache_cost(cost: float | None, tokens: dict[str, int], breakdown: dict, rates: dict) -> float | None:
    """What the call would have cost had every token it wrote to the cache been read from it."""
    if cost is None or "cache_read" not in rates:
        return None
    written = tokens["cache_write_5m"] + tokens["cache_write_1h"]
    write_cost = (breakdown.get("cache_write_5m") or 0.0) + (breakdown.get("cache_write_1h") or 0.0)
    return cost - write_cost + written * rates["cache_read"] / _MTOK


def _request_details(categories: dict, tokens: dict[str, int], input_usd: float | None) -> list[Detail]:
    """Each request bucket, and each labelled part of it, with its share of the input side."""
    total = sum(int(entry.get("chars") or 0) for entry in categories.values())
    prompt = tokens["input"] + tokens["cache_write_5m"] + tokens["cache_write_1h"] + tokens["cache_read"]
    out = []

    def detail(bucket: str, label: str, chars: int) -> Detail:
        share = chars / total
        return Detail(bucket, label, chars, prompt * share, None if input_usd is None else input_usd * share)

    for bucket, entry in categories.items():
        chars = int(entry.get("chars") or 0)
        if not chars:
            continue
        out.append(detail(bucket, "", chars))
        if bucket not in UNLABELLED_BUCKETS:
            for label, part in (entry.get("by") or {}).items():
                if part.get("chars"):
                    out.append(detail(bucket, label, int(part["chars"])))
    return out


def _output_details(categories: dict, output_tokens: int, output_usd: float | None) -> list[Detail]:
    """The output: all of it, then thinking / text / tool_use by character share."""
    chars = {label: int(entry.get("chars") or 0) for label, entry in categories.items()}
    total = sum(chars.values())
    if not output_tokens and not total:
        return []
    out = [Detail(OUTPUT, "", total, float(output_tokens), output_usd)]
    for label, n in chars.items():
        if n:
            share = n / total
            out.append(Detail(OUTPUT, label, n, output_tokens * share, None if output_usd is None else output_usd * share))
    return out
