"""Capture -> Opik records: exact usage and cost, attributed buckets, trace/span structure.

Runs on the pipeline thread, one capture at a time, in arrival order. Everything per call is
a pure function of the capture (response summary, price, attribution, call kind); the only
state is per Claude Code session, to put calls into traces:
- one trace per user turn (`thread_id` = session id), opened by the turn's first call;
- a `tool` span per finished tool call, under the llm span whose response asked for it;
- subagent calls under the span of the `Agent` tool call that started them.
Ids are UUIDv7 derived from the capture (and the turn / tool_use id), so materializing the
same captures again yields the same ids, and Opik upserts instead of duplicating.
"""

import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from opik_cipx.config import Settings
from opik_cipx.ids import derived_uuid7
from opik_cipx.materialize.attribution import categorize, redacted
from opik_cipx.materialize.call_kind import CallKind, classify
from opik_cipx.materialize.identity import claude_json_path, read_identity, render_template, template_values
from opik_cipx.materialize.pricing import Cost, PriceTable, price_call
from opik_cipx.materialize.redaction import redact_records
from opik_cipx.materialize.response import ResponseSummary, summarize_response
from opik_cipx.materialize.sessions import valid_session_id
from opik_cipx.materialize.spans import bounded, error_info, opik_usage, prompt_tokens, span_record, trace_record
from opik_cipx.materialize.turns import (
    AGENT_TOOLS,
    FinishedTool,
    finished_tools,
    first_user_text,
    result_text,
    turn_anchor,
)
from opik_cipx.wire.capture import Capture, header_value

log = logging.getLogger(__name__)

SPAN_ENDPOINTS = {"/v1/messages", "/v1/messages/count_tokens"}
MAX_SESSIONS = 256
MAX_PENDING_TOOLS = 512
MAX_AGENTS = 64
TOOL_SPAN_KINDS = frozenset({"main", "subagent", "compaction"})
SESSION_FILE_RETRY_S = 5.0  # a session file not written yet is looked for again after this
IDENTITY_TTL_S = 60.0  # ~/.claude.json is re-read at most this often
OUTPUT_BLOCKS = ("thinking", "text", "tool_use")


@dataclass(frozen=True)
class MaterializerConfig:
    project_template: str
    capture_content: bool
    max_io_chars: int
    sessions_dir: Path
    claude_json: Path
    parent_trace_id: str | None = None
    root_span_id: str | None = None


def materializer_config(settings: Settings, env: dict[str, str], project_template: str) -> MaterializerConfig:
    """The materializer's settings: the Opik project name template (from the destination) and
    the files of `env`'s user."""
    return MaterializerConfig(
        project_template=project_template,
        capture_content=settings.capture_content,
        max_io_chars=settings.spans_max_io_kb * 1024,
        sessions_dir=settings.sessions_dir,
        claude_json=claude_json_path(env),
        parent_trace_id=settings.opik_parent_trace_id or None,
        root_span_id=settings.opik_root_span_id or None,
    )


@dataclass
class PendingTool:
    span_id: str
    turn: "Turn"
    llm_span_id: str
    issued_ns: int
    name: str
    input: Any


@dataclass
class Turn:
    key: str
    trace_id: str
    start_ns: int
    prompt: str
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    unknown_cost_calls: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


@dataclass
class SessionState:
    turn: Turn | None = None
    pending: "OrderedDict[str, PendingTool]" = field(default_factory=OrderedDict)
    agents: "OrderedDict[str, PendingTool]" = field(default_factory=OrderedDict)  # agent id -> its Agent call
    emitted: "OrderedDict[str, None]" = field(default_factory=OrderedDict)  # tool_use ids with a tool span
    last_main: dict[str, int] | None = None  # size of the previous main-loop call
    before_compaction: dict[str, int] | None = None
    info: dict = field(default_factory=dict)  # sessions/<id>.json, once the hook has written it
    info_checked: float = float("-inf")


class Materializer:
    """Turns captures into spool records; keeps bounded per-session state between calls."""

    def __init__(self, config: MaterializerConfig, prices: PriceTable, pause: Callable[[], None] | None = None):
        """`pause()` is called between the expensive steps of a capture: the daemon passes one
        that waits while an exchange is in flight, so the work runs in slices between calls."""
        self.config = config
        self.prices = prices
        self._pause = pause or (lambda: None)
        self._sessions: OrderedDict[str, SessionState] = OrderedDict()
        self._account: dict[str, str | None] = {}
        self._account_read = float("-inf")

    def materialize(self, capture: Capture) -> list[dict]:
        """The spool records for one exchange (empty for routes that carry no model call)."""
        route = capture.path.split("?", 1)[0]
        if capture.method != "POST" or route not in SPAN_ENDPOINTS:
            return []
        body = _json_or_none(capture.request_body)
        kind = classify(capture.method, capture.path, capture.request_headers, body)
        self._pause()
        summary = summarize_response(capture)
        model = summary.model or (body or {}).get("model")
        cost = price_call(model, summary.usage, self.prices)
        self._pause()
        attribution = categorize(capture.request_body)
        self._pause()
        session_id = kind.session_id or "unknown-session"
        state = self._session(session_id)
        info = self._session_info(state, session_id)
        identity = info.get("identity") if isinstance(info.get("identity"), dict) else self._account_identity()
        project = render_template(self.config.project_template, template_values(identity))
        call = _Call(capture, body or {}, kind, summary, cost, attribution, session_id, info, identity, project)
        records = self._build(call, state)
        if not self.config.capture_content:
            records = redact_records(records, applied_ns=capture.ended_at_ns or capture.started_at_ns)
        return records

    # -- structure ---------------------------------------------------------------------

    def _session(self, session_id: str) -> SessionState:
        state = self._sessions.pop(session_id, None) or SessionState()
        self._sessions[session_id] = state
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return state

    def _session_info(self, state: SessionState, session_id: str) -> dict:
        """`sessions/<id>.json` written by the SessionStart hook ({} until it exists)."""
        now = time.monotonic()
        if not valid_session_id(session_id):
            return state.info  # never a path: the id comes from request headers or the body
        if not state.info and now - state.info_checked > SESSION_FILE_RETRY_S:
            state.info_checked = now
            try:
                info = json.loads((self.config.sessions_dir / f"{session_id}.json").read_text())
            except (OSError, ValueError):
                info = None
            state.info = info if isinstance(info, dict) else {}
        return state.info

    def _account_identity(self) -> dict[str, str | None]:
        """The Claude Code account of this machine's user (`~/.claude.json`), briefly cached."""
        now = time.monotonic()
        if now - self._account_read > IDENTITY_TTL_S:
            self._account_read = now
            self._account = read_identity(self.config.claude_json)
        return self._account

    def _build(self, call: "_Call", state: SessionState) -> list[dict]:
        c = call.capture
        started, ended = c.started_at_ns, c.ended_at_ns or c.started_at_ns
        ms = started // 1_000_000
        span_id = derived_uuid7(ms, "llm", c.id)
        records: list[dict] = []
        agent_call = self._agent_call(call, state) if call.kind.kind == "subagent" else None
        # A subagent belongs to the turn that launched it, even after the user moved on.
        turn = agent_call.turn if agent_call else self._turn_for(call, state)
        parent = agent_call.span_id if agent_call else self.config.root_span_id
        if call.kind.kind in TOOL_SPAN_KINDS:
            records += self._tool_spans(call, state, turn, parent)
        compaction = self._compaction_sizes(call, state)
        records.append(self._llm_span(call, span_id, turn.trace_id, parent, compaction, agent_call))
        self._remember_tool_uses(call, state, span_id, turn, ended)
        self._tally(turn, call)
        if not self.config.parent_trace_id:
            records.insert(0, self._trace(call, turn))
        return records

    def _turn_for(self, call: "_Call", state: SessionState) -> Turn:
        """The turn this call belongs to, opening a new one when a new prompt starts."""
        c, kind = call.capture, call.kind.kind
        anchor = None
        if kind == "compaction":
            key = f"compaction:{c.id}"  # /compact is its own user action
        elif kind == "main":
            anchor = turn_anchor(call.body.get("messages") or [])
            key = f"main:{anchor.index}:{anchor.digest}" if anchor else f"call:{c.id}"
        elif state.turn is not None:
            return state.turn  # subagent and side calls join the turn in progress
        else:
            key = f"call:{c.id}"
        if state.turn is None or state.turn.key != key:
            trace_id = self.config.parent_trace_id or derived_uuid7(
                c.started_at_ns // 1_000_000, "trace", call.session_id, key
            )
            state.turn = Turn(key=key, trace_id=trace_id, start_ns=c.started_at_ns, prompt=_prompt(call.attribution.facts))
        return state.turn

    def _tool_spans(self, call: "_Call", state: SessionState, turn: Turn, parent: str | None) -> list[dict]:
        """A span per tool call finished in this request, once per tool call: a retried or
        repeated request carries the same results again."""
        out = []
        for tool in finished_tools(call.body.get("messages") or []):
            if tool.tool_use_id in state.emitted:
                continue
            out.append(self._tool_span(tool, state.pending.pop(tool.tool_use_id, None), call, turn, parent))
            state.emitted[tool.tool_use_id] = None
            while len(state.emitted) > 4 * MAX_PENDING_TOOLS:
                state.emitted.popitem(last=False)
        return out

    def _agent_call(self, call: "_Call", state: SessionState) -> PendingTool | None:
        """The `Agent` tool call that started this subagent (matched by its brief)."""
        agent_id = call.kind.agent_id or ""
        if agent_id in state.agents:
            return state.agents[agent_id]
        agents = [p for p in state.pending.values() if p.name in AGENT_TOOLS]
        brief = first_user_text(call.body.get("messages") or [])
        match = next(
            (p for p in agents if isinstance(p.input, dict) and p.input.get("prompt") and p.input["prompt"] in brief),
            agents[0] if len(agents) == 1 else None,
        )
        if match is None:
            return None
        if agent_id:
            state.agents[agent_id] = match
            while len(state.agents) > MAX_AGENTS:
                state.agents.popitem(last=False)
        return match

    def _remember_tool_uses(self, call: "_Call", state: SessionState, span_id: str, turn: Turn, ended: int) -> None:
        for block in call.summary.content:
            if block.get("type") != "tool_use" or not block.get("id"):
                continue
            tool_use_id = str(block["id"])
            state.pending[tool_use_id] = PendingTool(
                span_id=derived_uuid7(ended // 1_000_000, "tool", call.session_id, tool_use_id),
                turn=turn,
                llm_span_id=span_id,
                issued_ns=ended,
                name=str(block.get("name", "")),
                input=block.get("input"),
            )
        while len(state.pending) > MAX_PENDING_TOOLS:
            state.pending.popitem(last=False)

    def _compaction_sizes(self, call: "_Call", state: SessionState) -> dict[str, Any] | None:
        facts = call.attribution.facts.get("compaction") or {}
        size = {
            "chars": call.attribution.total_chars,
            "messages": len(call.body.get("messages") or []),
            "prompt_tokens": prompt_tokens(call.summary.usage or {}),
        }
        result = None
        if call.kind.kind == "compaction":
            state.before_compaction = state.last_main or size
            result = {"request": True, "before": state.before_compaction}
        elif facts.get("continued_summary") and state.before_compaction:
            before = state.before_compaction
            result = {
                "continued": True,
                "before": before,
                "after": size,
                "delta_chars": size["chars"] - before["chars"],
                "delta_prompt_tokens": size["prompt_tokens"] - before["prompt_tokens"],
            }
            state.before_compaction = None
        if call.kind.kind == "main":
            state.last_main = size
        return result

    def _tally(self, turn: Turn, call: "_Call") -> None:
        usage = call.summary.usage or {}
        turn.calls += 1
        turn.prompt_tokens += prompt_tokens(usage)
        turn.completion_tokens += int(usage.get("output_tokens") or 0)
        if call.cost.total_usd is None:
            turn.unknown_cost_calls += usage != {}
        else:
            turn.cost_usd += call.cost.total_usd
        label = call.kind.kind if call.kind.kind != "side" else f"side:{call.kind.side_kind}"
        turn.by_kind[label] = turn.by_kind.get(label, 0) + 1

    # -- records -----------------------------------------------------------------------

    def _tags(self, call: "_Call") -> list[str]:
        tags = ["claude-code", call.kind.kind]
        email = call.identity.get("user_email")
        if email:
            tags.append(f"user:{email}")
        return tags

    def _common_cc(self, call: "_Call") -> dict[str, Any]:
        info, identity = call.info, call.identity
        return {
            "session": {
                "id": call.session_id,
                "cwd": info.get("cwd"),
                "git": info.get("git"),
                "transcript_path": info.get("transcript_path"),
            },
            "identity": {k: identity.get(k) for k in ("user_email", "user_uuid", "org_uuid", "org_name")},
        }

    def _llm_span(self, call: "_Call", span_id: str, trace_id: str, parent: str | None,
                  compaction: dict[str, Any] | None, agent_call: PendingTool | None) -> dict:
        c, s, cost = call.capture, call.summary, call.cost
        ended = c.ended_at_ns or c.started_at_ns
        cc = self._common_cc(call)
        meta = _call_meta(call)
        if agent_call and isinstance(agent_call.input, dict):
            meta["subagent_type"] = agent_call.input.get("subagent_type")
        cc.update(
            call=meta,
            usage=s.usage,
            pricing=cost.to_json(),
            categories=_categories(call),
            output_categories=_output_categories(call),
            compaction=compaction or call.attribution.facts.get("compaction"),
        )
        facts = call.attribution.facts if self.config.capture_content else redacted(call.attribution.facts)
        for key, value in facts.items():
            if key != "compaction":
                cc.setdefault(key, value)
        err = None
        if s.error:
            err = error_info(str(s.error.get("type", "error")), str(s.error.get("message", "")))
        elif c.upstream_error:
            err = error_info("upstream_error", c.upstream_error)
        return span_record(
            span_id=span_id,
            trace_id=trace_id,
            parent_span_id=parent,
            project_name=call.project,
            name=_span_name(call.kind),
            span_type="llm",
            start_ns=c.started_at_ns,
            end_ns=ended,
            input=self._bounded_input(call),
            output=bounded(_llm_output(s), self.config.max_io_chars),
            metadata={"cc": cc},
            tags=self._tags(call),
            updated_ns=ended,
            model=s.model or call.body.get("model"),
            usage=opik_usage(s.usage),
            total_estimated_cost=cost.total_usd,
            cost_version=cost.price_table_date,
            ttft_ms=(c.ttfb_ns - c.started_at_ns) / 1e6 if c.ttfb_ns else None,
            error_info=err,
        )

    def _bounded_input(self, call: "_Call") -> Any:
        """The request as span input, sized from the attribution instead of re-serialized."""
        buckets = call.attribution.buckets
        size = call.attribution.total_chars - buckets["tools_builtin"] - buckets["tools_mcp"]
        limit = self.config.max_io_chars
        if size <= limit:
            return _llm_input(call.body)
        preview = call.capture.request_body[:limit].decode("utf-8", "ignore")
        return bounded(_llm_input(call.body), limit, size=size, preview=preview)

    def _tool_span(self, tool: FinishedTool, pending: PendingTool | None, call: "_Call", turn: Turn,
                   parent: str | None) -> dict:
        c = call.capture
        issued = pending.issued_ns if pending else c.started_at_ns
        span_id = pending.span_id if pending else derived_uuid7(issued // 1_000_000, "tool", call.session_id, tool.tool_use_id)
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
        return span_record(
            span_id=span_id,
            trace_id=pending.turn.trace_id if pending else turn.trace_id,
            parent_span_id=pending.llm_span_id if pending else parent,
            project_name=call.project,
            name=tool.name or "tool",
            span_type="tool",
            start_ns=issued,
            end_ns=c.started_at_ns,
            input=bounded(tool.input if isinstance(tool.input, dict) else {"input": tool.input}, self.config.max_io_chars),
            output=bounded({"result": text}, self.config.max_io_chars, size=len(text) + 14, preview=text),
            metadata={"cc": meta},
            tags=["claude-code", "tool"],
            updated_ns=c.ended_at_ns or c.started_at_ns,
            error_info=error_info("tool_error", text[:500]) if tool.is_error else None,
        )

    def _trace(self, call: "_Call", turn: Turn) -> dict:
        c = call.capture
        ended = c.ended_at_ns or c.started_at_ns
        cc = self._common_cc(call)
        cc["metrics_rollup"] = {
            "calls": turn.calls,
            "prompt_tokens": turn.prompt_tokens,
            "completion_tokens": turn.completion_tokens,
            "cost_usd": round(turn.cost_usd, 9),
            "calls_with_unknown_cost": turn.unknown_cost_calls,
            "calls_by_kind": dict(turn.by_kind),
        }
        output = None
        if call.kind.kind in ("main", "compaction"):
            text = "\n".join(b.get("text", "") for b in call.summary.content if b.get("type") == "text")
            output = {"response": text} if text else None
        name = f"claude-code {call.kind.kind}"
        if self.config.capture_content and turn.prompt.strip():
            name = turn.prompt.strip().splitlines()[0][:80]
        return trace_record(
            trace_id=turn.trace_id,
            project_name=call.project,
            name=name,
            start_ns=turn.start_ns,
            end_ns=ended,
            thread_id=call.session_id,
            input=bounded({"prompt": turn.prompt}, self.config.max_io_chars) if turn.prompt else None,
            output=bounded(output, self.config.max_io_chars),
            metadata={"cc": cc},
            tags=self._tags(call),
            updated_ns=ended,
        )


@dataclass
class _Call:
    capture: Capture
    body: dict
    kind: CallKind
    summary: ResponseSummary
    cost: Cost
    attribution: Any
    session_id: str
    info: dict
    identity: dict
    project: str


def _json_or_none(raw: bytes) -> dict | None:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _prompt(facts: dict) -> str:
    """What the user typed to open the turn: the prompt text, else the slash command."""
    text = (facts.get("user_prompt") or {}).get("text")
    if text:
        return text
    commands = (facts.get("slash_commands") or {}).get("by_command") or []
    if commands:
        last = commands[-1]
        return f"/{last.get('name')} {last.get('args') or ''}".strip()
    return ""


def _span_name(kind: CallKind) -> str:
    if kind.kind == "side" and kind.side_kind:
        return f"side_call:{kind.side_kind}"
    return kind.kind


def _mcp_server(tool_name: str) -> str | None:
    if not tool_name.startswith("mcp__"):
        return None
    rest = tool_name[len("mcp__"):]
    return rest.split("__", 1)[0] if "__" in rest else None


def _call_meta(call: _Call) -> dict[str, Any]:
    c, s, k = call.capture, call.summary, call.kind
    return {
        "capture_id": c.id,
        "kind": k.kind,
        "side_kind": k.side_kind,
        "agent_id": k.agent_id,
        "parent_agent_id": k.parent_agent_id,
        "endpoint": c.path.split("?", 1)[0],
        "status": c.status,
        "stream": bool(call.body.get("stream")),
        "request_id": s.request_id,
        "message_id": s.message_id,
        "stop_reason": s.stop_reason,
        "retry_count": k.retry_count,
        "partial": s.partial,
        "client_aborted": c.client_aborted,
        "upstream_error": c.upstream_error,
        "ttfb_ms": round((c.ttfb_ns - c.started_at_ns) / 1e6, 3) if c.ttfb_ns else None,
        "duration_ms": round(((c.ended_at_ns or c.started_at_ns) - c.started_at_ns) / 1e6, 3),
        "request_chars": call.attribution.total_chars,
        "user_agent": header_value(c.request_headers, "user-agent"),
    }


def _share(part: float, whole: float, amount: float | None) -> float | None:
    if amount is None:
        return None
    return amount * part / whole if whole else 0.0


def _categories(call: _Call) -> dict[str, Any]:
    """Per bucket: chars (exact), tokens and cost (the bucket's share of the input side)."""
    attribution = call.attribution
    total = attribution.total_chars
    tokens = prompt_tokens(call.summary.usage or {})
    usd = call.cost.input_side_usd
    out: dict[str, Any] = {}
    for bucket, chars in attribution.buckets.items():
        entry: dict[str, Any] = {
            "chars": chars,
            "tokens": round(_share(chars, total, tokens), 2),
            "cost_usd": _round(_share(chars, total, usd)),
        }
        labels = attribution.by_label.get(bucket)
        if labels:
            entry["by"] = {
                label: {"chars": n, "tokens": round(_share(n, total, tokens), 2), "cost_usd": _round(_share(n, total, usd))}
                for label, n in labels.items()
            }
        out[bucket] = entry
    return out


def _output_categories(call: _Call) -> dict[str, Any]:
    """Output tokens and cost split over the response's thinking / text / tool_use blocks."""
    chars = dict.fromkeys(OUTPUT_BLOCKS, 0)
    for block in call.summary.content:
        kind = block.get("type")
        if kind == "thinking":
            chars["thinking"] += len(block.get("thinking", ""))
        elif kind == "text":
            chars["text"] += len(block.get("text", ""))
        elif kind == "tool_use":
            chars["tool_use"] += len(json.dumps(block.get("input"), ensure_ascii=False))
    total = sum(chars.values())
    tokens = int((call.summary.usage or {}).get("output_tokens") or 0)
    usd = call.cost.output_usd
    return {
        name: {"chars": n, "tokens": round(_share(n, total, tokens), 2), "cost_usd": _round(_share(n, total, usd))}
        for name, n in chars.items()
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 9)


def _llm_input(body: dict) -> dict[str, Any]:
    """The request as span input; tool definitions (static and large) listed by name only."""
    out = {k: v for k, v in body.items() if k != "tools"}
    if "tools" in body and isinstance(body["tools"], list):
        out["tools"] = [t.get("name") for t in body["tools"] if isinstance(t, dict)]
    return out


def _llm_output(summary: ResponseSummary) -> dict[str, Any] | None:
    if summary.kind == "empty" and not summary.error:
        return None
    out: dict[str, Any] = {"role": "assistant", "content": summary.content}
    if summary.stop_reason:
        out["stop_reason"] = summary.stop_reason
    if summary.error:
        out["error"] = summary.error
    return out
