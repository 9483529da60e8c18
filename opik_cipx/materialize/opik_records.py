"""The Opik records of a call, built from its call record (docs/ARCHITECTURE.md, "Spool records").

Pure builders: the call's own span (`llm_span`, or `count_tokens_span` for `/context`), the
span of an `Agent` call still running (`early_agent_span`), a finished tool call's span
(`tool_span`) and the turn's trace (`trace`). Every value comes from the `CallRecord` (and, for
the structure, the session state the materializer resolved); `metadata.cc` is its JSON shape
(docs/OPIK.md). `limit` is the largest input or output a record carries (`bounded`).
"""

import codecs
import json
from typing import Any, NamedTuple

from opik_cipx.materialize import cipx, cipx_session
from opik_cipx.materialize.attribution import redacted
from opik_cipx.materialize.call import CallRecord
from opik_cipx.materialize.session_state import PendingTool, Turn, span_name
from opik_cipx.materialize.spans import (
    LlmFields,
    Span,
    bounded,
    call_error_info,
    opik_usage,
    span_record,
    tool_error_info,
    trace_record,
)
from opik_cipx.materialize.turns import FinishedTool, result_text

PREVIEW_STEP = 32 * 1024  # bytes of a request decoded at once for a truncated input's preview
TOOL_TAGS = ("claude-code", "tool")


class PlacedTool(NamedTuple):
    """A finished tool call and where its span goes."""

    tool: FinishedTool
    span_id: str
    trace_id: str
    parent_span_id: str | None  # the llm span that asked for it
    issued_ns: int  # when that call's answer ended (its start when that call was not seen)


def tags(call: CallRecord) -> list[str]:
    out = ["claude-code", call.kind.kind]
    if call.identity.user_email:
        out.append(f"user:{call.identity.user_email}")
    return out


def llm_span(call: CallRecord, limit: int, capture_content: bool) -> dict:
    """The call's `llm` span: exact usage and cost, its request and answer, `metadata.cc`, and
    `metadata.cipx` (what Opik's Cost Intelligence reads: materialize/cipx.py), except on a call a
    spend cap kept from Anthropic: it spent nothing, so Cost Intelligence must not count it
    (docs/BUDGETS.md, "Recorded like any call")."""
    x, s, cost = call.exchange, call.response, call.cost
    assert cost is not None  # only count_tokens calls have no price, and they get count_tokens_span
    cc = _common_cc(call)
    meta = call_meta(call)
    if call.agent is not None:
        meta["subagent_type"] = call.agent.subagent_type
    cc.update(
        call=meta,
        usage=call.usage.original if call.usage else None,
        pricing=cost.to_json(),
        categories=categories(call, call.usage.prompt_tokens if call.usage else 0, cost.input_side_usd),
        output_categories=output_categories(call),
        compaction=call.compaction.to_json() if call.compaction else call.attribution.facts.get("compaction"),
    )
    if call.cache is not None:
        cc["cache"] = call.cache.to_json()
    if call.rate_limits is not None:
        cc["rate_limits"] = call.rate_limits.document
    facts = call.attribution.facts if capture_content else redacted(call.attribution.facts)
    for key, value in facts.items():
        if key != "compaction":
            cc.setdefault(key, value)
    return span_record(Span(
        span_id=call.span_id,
        trace_id=call.trace_id,
        parent_span_id=call.parent_span_id,
        project_name=call.project,
        name=span_name(call.kind),
        span_type="llm",
        start_ns=x.started_at_ns,
        end_ns=x.ended_at_ns,
        input=_bounded_input(call, limit),
        output=bounded(_llm_output(call), limit),
        metadata={"cc": cc} if call.kind.kind == "blocked" else {"cc": cc, "cipx": cipx.metadata(call)},
        tags=tags(call),
        updated_ns=x.ended_at_ns,
        error_info=call_error_info(s.error, s.error_event) if s.error else None,
        llm=LlmFields(
            model=call.model,
            usage=opik_usage(call.usage),
            total_estimated_cost=cost.total_usd,
            cost_version=cost.price_table_date,
            ttft_ms=(x.ttfb_ns - x.started_at_ns) / 1e6 if x.ttfb_ns else None,
        ),
    ))


def count_tokens_span(call: CallRecord, limit: int) -> dict:
    """A `count_tokens` call (`/context`): a `general` span with the count, no model, usage or cost."""
    x, s, counted = call.exchange, call.response, call.counted_tokens
    cc = _common_cc(call)
    cc.update(call=call_meta(call), count_tokens={"model": call.model, "input_tokens": counted},
              categories=categories(call, counted or 0, None))
    if call.rate_limits is not None:
        cc["rate_limits"] = call.rate_limits.document
    return span_record(Span(
        span_id=call.span_id,
        trace_id=call.trace_id,
        parent_span_id=call.parent_span_id,
        project_name=call.project,
        name="count_tokens",
        span_type="general",
        start_ns=x.started_at_ns,
        end_ns=x.ended_at_ns,
        input=_bounded_input(call, limit),
        output={"input_tokens": counted} if counted is not None else None,
        metadata={"cc": cc},
        tags=tags(call),
        updated_ns=x.ended_at_ns,
        error_info=call_error_info(s.error, s.error_event) if s.error else None,
    ))


def early_agent_span(agent_call: PendingTool, call: CallRecord, limit: int) -> dict:
    """The span of a running `Agent` tool call, so the subagent calls under it name a record
    that exists; its result re-emits it under the same id, later `last_updated_at`."""
    kept = agent_call.input or {}
    tool_input = kept.get("input")
    meta = {"tool": {"name": agent_call.name, "tool_use_id": agent_call.tool_use_id, "running": True,
                     "subagent_type": kept.get("subagent_type")}}
    return span_record(Span(
        span_id=agent_call.span_id,
        trace_id=agent_call.turn.trace_id,
        parent_span_id=agent_call.llm_span_id,
        project_name=call.project,
        name=agent_call.name,
        span_type="tool",
        start_ns=agent_call.issued_ns,
        end_ns=None,
        input=bounded(tool_input, limit) if isinstance(tool_input, dict) else None,
        output=None,
        metadata={"cc": meta},
        tags=list(TOOL_TAGS),
        updated_ns=max(agent_call.issued_ns, call.exchange.ended_at_ns),
    ))


def tool_span(placed: PlacedTool, call: CallRecord, limit: int) -> dict:
    """A finished tool call, from its `tool_use` to the request that carries its result."""
    tool, x = placed.tool, call.exchange
    text = result_text(tool.result)
    meta = {
        "tool": {
            "name": tool.name,
            "tool_use_id": tool.tool_use_id,
            "is_error": tool.is_error,
            "mcp_server": _mcp_server(tool.name),
            "input_chars": len(json.dumps(tool.input, ensure_ascii=False)) if tool.input is not None else 0,
            "result_chars": len(text),
        }
    }
    return span_record(Span(
        span_id=placed.span_id,
        trace_id=placed.trace_id,
        parent_span_id=placed.parent_span_id,
        project_name=call.project,
        name=tool.name or "tool",
        span_type="tool",
        start_ns=placed.issued_ns,
        end_ns=x.started_at_ns,
        input=bounded(tool.input if isinstance(tool.input, dict) else {"input": tool.input}, limit),
        output=bounded({"result": text}, limit, size=len(text) + 14, preview=text),
        metadata={"cc": meta},
        tags=list(TOOL_TAGS),
        updated_ns=x.ended_at_ns,
        error_info=tool_error_info(tool.name or "tool", text) if tool.is_error else None,
    ))


def trace(call: CallRecord, turn: Turn, limit: int, capture_content: bool) -> dict:
    """The turn's trace as it stands after `call` (every version carries more: `SessionStates.tally`),
    with `metadata.cipx.session` (materialize/cipx_session.py)."""
    cc = _common_cc(call)
    cc["metrics_rollup"] = {
        "calls": turn.calls,
        "prompt_tokens": turn.prompt_tokens,
        "completion_tokens": turn.completion_tokens,
        "cost_usd": round(turn.cost_usd, 9),
        "calls_with_unknown_cost": turn.unknown_cost_calls,
        "calls_by_kind": dict(turn.by_kind),
        "count_tokens_calls": turn.count_tokens_calls,
    }
    name = f"claude-code {turn.label}"
    if capture_content and turn.prompt.strip():
        name = turn.prompt.strip().splitlines()[0][:80]
    return trace_record(
        trace_id=turn.trace_id,
        project_name=call.project,
        name=name,
        start_ns=turn.start_ns,
        end_ns=turn.end_ns,
        thread_id=call.session.id,
        input=bounded({"prompt": turn.prompt}, limit) if turn.prompt else None,
        output=turn.output,
        metadata={"cc": cc, "cipx": {"session": cipx_session.section(call)}},
        tags=list(turn.tags),
        updated_ns=turn.updated_ns,
    )


def call_meta(call: CallRecord) -> dict[str, Any]:
    """`metadata.cc.call`."""
    x, s, k = call.exchange, call.response, call.kind
    return {
        "capture_id": x.capture_id,
        "kind": k.kind,
        "side_kind": k.side_kind,
        "agent_id": k.agent_id,
        "parent_agent_id": k.parent_agent_id,
        "endpoint": x.endpoint,
        "status": x.status,
        "stream": bool(x.request.get("stream")),
        "request_id": s.request_id,
        "message_id": s.message_id,
        "stop_reason": s.stop_reason,
        "retry_count": k.retry_count,
        "partial": s.partial,
        "client_aborted": x.client_aborted,
        "upstream_error": x.upstream_error,
        "ttfb_ms": x.ttfb_ms,
        "duration_ms": x.duration_ms,
        "request_chars": call.attribution.total_chars,
        "user_agent": x.user_agent,
    }


def categories(call: CallRecord, tokens: int, usd: float | None) -> dict[str, Any]:
    """`metadata.cc.categories`: per bucket, chars (exact) and the bucket's share of the input
    side's `tokens` and `usd`, and the same per labelled part of it."""
    attribution = call.attribution
    total = attribution.total_chars
    out: dict[str, Any] = {}
    for bucket, chars in attribution.buckets.items():
        entry: dict[str, Any] = {"chars": chars, "tokens": _tokens(chars, total, tokens),
                                 "cost_usd": _usd(chars, total, usd)}
        labels = attribution.by_label.get(bucket)
        if labels:
            entry["by"] = {label: {"chars": n, "tokens": _tokens(n, total, tokens), "cost_usd": _usd(n, total, usd)}
                           for label, n in labels.items()}
        out[bucket] = entry
    return out


def output_categories(call: CallRecord) -> dict[str, Any]:
    """`metadata.cc.output_categories`: output tokens and cost split over thinking / text / tool_use."""
    split = call.output.items()
    total = sum(n for _, n in split)
    tokens = call.usage.output if call.usage else 0
    usd = call.cost.output_usd if call.cost else None
    return {name: {"chars": n, "tokens": _tokens(n, total, tokens), "cost_usd": _usd(n, total, usd)}
            for name, n in split}


def _common_cc(call: CallRecord) -> dict[str, Any]:
    session, identity = call.session, call.identity
    return {
        "session": {
            "id": session.id,
            "cwd": session.cwd,
            "git": session.git.to_json() if session.git else None,
            "transcript_path": session.transcript_path,
        },
        "identity": {"user_email": identity.user_email, "user_uuid": identity.user_uuid,
                     "org_uuid": identity.org_uuid, "org_name": identity.org_name},
    }


def _bounded_input(call: CallRecord, limit: int) -> Any:
    """The request as span input, sized from the attribution instead of re-serialized."""
    buckets = call.attribution.buckets
    size = call.attribution.total_chars - buckets["tools_builtin"] - buckets["tools_mcp"]
    request = _llm_input(call.exchange.request)
    if size <= limit:
        return request
    return bounded(request, limit, size=size, preview=_decoded_start(call.exchange.request_bytes, limit))


def _llm_input(body: Any) -> dict[str, Any]:
    """The request as span input; tool definitions (static and large) listed by name only."""
    out = {k: v for k, v in body.items() if k != "tools"}
    if "tools" in body and isinstance(body["tools"], list):
        out["tools"] = [t.get("name") for t in body["tools"] if isinstance(t, dict)]
    return out


def _llm_output(call: CallRecord) -> dict[str, Any] | None:
    s = call.response
    if s.kind == "empty" and not s.error:
        return None
    out: dict[str, Any] = {"role": "assistant", "content": s.content}
    if s.stop_reason:
        out["stop_reason"] = s.stop_reason
    if s.error:
        out["error"] = s.error
    return out


def _decoded_start(raw: bytes, limit: int) -> str:
    """`raw[:limit].decode("utf-8", "ignore")`, decoded a window at a time (a long one in one call
    holds the interpreter for a millisecond or more)."""
    decoder = codecs.getincrementaldecoder("utf-8")("ignore")
    view = memoryview(raw)[:limit]
    pieces = [decoder.decode(view[at : at + PREVIEW_STEP], at + PREVIEW_STEP >= len(view))
              for at in range(0, len(view), PREVIEW_STEP)]
    return "".join(pieces)


def _mcp_server(tool_name: str) -> str | None:
    if not tool_name.startswith("mcp__"):
        return None
    rest = tool_name[len("mcp__"):]
    return rest.split("__", 1)[0] if "__" in rest else None


def _tokens(part: int, whole: int, tokens: int) -> float:
    """`part` characters' share of `tokens` out of `whole` characters."""
    return round(tokens * part / whole if whole else 0.0, 2)


def _usd(part: int, whole: int, usd: float | None) -> float | None:
    """`part` characters' share of `usd` (None: unpriced) out of `whole` characters."""
    return None if usd is None else round(usd * part / whole if whole else 0.0, 9)
