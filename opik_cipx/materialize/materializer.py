"""Capture -> Opik records: exact usage and cost, attributed buckets, trace/span structure.

Runs on the follower's thread, one capture at a time, in capture-log order. Everything per call
is a pure function of the capture (response summary, price, attribution, call kind); the only
state is per Claude Code session, to put calls into traces:
- one trace per user turn (`thread_id` = session id), opened by the turn's first call;
- a `tool` span per finished tool call, under the llm span whose response asked for it;
- subagent calls under the span of the `Agent` tool call that started them; that span is
  emitted as soon as the first subagent call hangs under it and again, same id, with its result;
- `count_tokens` calls as `general` spans (no model, usage or cost) in the turn's trace;
- the previous call of each conversation of the session, for the cache diagnosis
  (`cache_diagnosis.CacheLanes`).
Ids are UUIDv7 derived from the log's content: an llm span from its capture, a tool span from
its `tool_use` id and the time of the call that issued it, a trace from the session, the turn's
key and the time of its first call. Materializing the same captures in the same order (after a
restart from a checkpoint, or in `replay`) yields the same ids, and Opik upserts.

Every version of a turn's trace carries at least what the one before had: the last main answer
as output, the name from its prompt, the union of its tags, the latest end of its calls, the
rolled-up metrics; `last_updated_at` only grows. A side, `count_tokens` or unmatched subagent
call joins the current turn while that turn is recent (its last call ended at most
`JOIN_WINDOW_S` before); otherwise it opens a trace of its own, named for its kind.

Request bodies are read through a `RequestReader`: it keeps the previous request of each
conversation (bounded, in memory) and parses and attributes only what is new in the next one,
with exactly the result of reading it from scratch; it never enters the checkpoint.

`snapshot()` / `restore()` carry the per-session state across a restart (the follower keeps
it in its checkpoint; docs/ARCHITECTURE.md, "Materializer checkpoint").
"""

import codecs
import dataclasses
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from opik_cipx.config import Settings
from opik_cipx.ids import derived_uuid7
from opik_cipx.materialize.attribution import redacted
from opik_cipx.materialize.attribution.incremental import RequestReader
from opik_cipx.materialize.cache_diagnosis import CacheLanes, lane_of
from opik_cipx.materialize.call_kind import CallKind, classify
from opik_cipx.materialize.identity import claude_json_path, read_identity, render_template, template_values
from opik_cipx.materialize.pricing import Cost, PriceTable, price_call
from opik_cipx.materialize.rate_limits import RateLimitObserver, parse_rate_limits
from opik_cipx.materialize.redaction import redact_records
from opik_cipx.materialize.response import ResponseSummary, counted_tokens, summarize_response
from opik_cipx.materialize.sessions import valid_session_id
from opik_cipx.materialize.spans import (
    bounded,
    call_error_info,
    opik_usage,
    prompt_tokens,
    span_record,
    tool_error_info,
    trace_record,
)
from opik_cipx.materialize.turns import (
    AGENT_TOOLS,
    FinishedTool,
    finished_tools,
    first_user_digests,
    request_digest,
    result_text,
    text_digest,
    turn_anchor,
)
from opik_cipx.materialize.unknown_models import UnknownModels
from opik_cipx.wire.capture import Capture, header_value

log = logging.getLogger(__name__)

SPAN_ENDPOINTS = {"/v1/messages", "/v1/messages/count_tokens"}
MAX_SESSIONS = 256
MAX_PENDING_TOOLS = 512
MAX_AGENTS = 64
MAX_TURNS = 8  # per session, by key: a prompt answered again later finds its turn
SESSION_IDLE_S = 86400.0  # a session with no call for this long (capture time) is forgotten
JOIN_WINDOW_S = 600.0  # a side or count_tokens call joins the current turn only this soon after it
TOOL_SPAN_KINDS = frozenset({"main", "subagent", "compaction"})
SESSION_FILE_RETRY_S = 5.0  # a session file not written yet is looked for again after this
IDENTITY_TTL_S = 60.0  # ~/.claude.json is re-read at most this often
OUTPUT_BLOCKS = ("thinking", "text", "tool_use")
PREVIEW_STEP = 32 * 1024  # bytes of a request decoded at once for a truncated input's preview


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
class Turn:
    key: str
    trace_id: str
    label: str  # what opened it: "main", "compaction", "count_tokens", "side_call:title", ...
    start_ns: int
    end_ns: int  # the latest end of a call of the turn
    prompt: str = ""
    output: Any = None  # the last main (or compaction) answer with text, bounded
    tags: list[str] = field(default_factory=list)  # every tag any of its calls had, first seen first
    updated_ns: int = 0  # `last_updated_at` of the last version emitted
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    unknown_cost_calls: int = 0
    count_tokens_calls: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


@dataclass
class PendingTool:
    tool_use_id: str
    span_id: str
    turn: Turn
    llm_span_id: str
    issued_ns: int
    name: str
    input: Any  # kept for Agent/Task calls only: brief matching, subagent type, the early span
    shown: bool = False  # its span went out before its result, because a subagent hangs under it


@dataclass
class SessionState:
    turns: "OrderedDict[str, Turn]" = field(default_factory=OrderedDict)  # recent turns by key
    current: Turn | None = None  # the turn side calls join while it is recent
    pending: "OrderedDict[str, PendingTool]" = field(default_factory=OrderedDict)
    agents: "OrderedDict[str, PendingTool]" = field(default_factory=OrderedDict)  # agent id -> its Agent call
    emitted: "OrderedDict[str, None]" = field(default_factory=OrderedDict)  # tool_use ids with a final tool span
    last_main: dict[str, int] | None = None  # size of the previous main-loop call
    before_compaction: dict[str, int] | None = None
    last_ns: int = 0  # start of the session's latest call
    cache: CacheLanes = field(default_factory=CacheLanes)  # the previous call of each lane (cache_diagnosis)
    info: dict = field(default_factory=dict)  # sessions/<id>.json, once the hook has written it
    info_checked: float = float("-inf")


class Materializer:
    """Turns captures into spool records; keeps bounded per-session state between calls."""

    def __init__(self, config: MaterializerConfig, prices: PriceTable, pause: Callable[[], None] | None = None):
        """`pause()` is called between the steps of a capture (between the messages of a request
        walked): the daemon passes one that waits while an exchange is in flight, so the work runs
        in slices between calls."""
        self.config = config
        self.prices = prices
        self.unknown_models = UnknownModels()  # model ids the price table does not know
        self.rate_limits = RateLimitObserver()  # the latest value of every rate-limit window
        self._pause = pause or (lambda: None)
        self._requests = RequestReader()  # what the previous request of each conversation had
        self._sessions: OrderedDict[str, SessionState] = OrderedDict()
        self._account: dict[str, str | None] = {}
        self._account_read = float("-inf")

    def materialize(self, capture: Capture) -> list[dict]:
        """The spool records for one exchange (empty for routes that carry no model call)."""
        route = capture.path.split("?", 1)[0]
        if capture.method != "POST" or route not in SPAN_ENDPOINTS:
            return []
        request = self._requests.read(_conversation(capture), capture.request_body, self._pause)
        body, attribution = request.body, request.attribution
        kind = classify(capture.method, capture.path, capture.request_headers, body)
        self._pause()
        summary = summarize_response(capture)
        model = summary.model or (body or {}).get("model")
        cost = price_call(model, summary.usage, self.prices, at_ns=capture.started_at_ns)  # rates in force then
        self.unknown_models.note(cost)
        limits = parse_rate_limits(capture.response_headers)
        self.rate_limits.note(limits, capture.started_at_ns)
        self._pause()
        session_id = kind.session_id or "unknown-session"
        state = self._session(session_id, capture.started_at_ns)
        info = self._session_info(state, session_id)
        identity = info.get("identity") if isinstance(info.get("identity"), dict) else self._account_identity()
        project = render_template(self.config.project_template, template_values(identity))
        call = _Call(capture, body or {}, kind, summary, cost, attribution, session_id, info, identity, project,
                     rate_limits=limits)
        records = self._build(call, state)
        if not self.config.capture_content:
            records = redact_records(records, applied_ns=capture.ended_at_ns or capture.started_at_ns)
        return records

    # -- structure ---------------------------------------------------------------------

    def _session(self, session_id: str, now_ns: int) -> SessionState:
        """The session's state, most recently used last; the least recently used beyond
        `MAX_SESSIONS`, or idle for `SESSION_IDLE_S` by the captures' clock, are forgotten (so the
        state, and the checkpoint holding it, stay small, and replay forgets them just the same)."""
        state = self._sessions.pop(session_id, None) or SessionState()
        state.last_ns = max(state.last_ns, now_ns)
        while self._sessions and (
            len(self._sessions) >= MAX_SESSIONS
            or next(iter(self._sessions.values())).last_ns < now_ns - SESSION_IDLE_S * 1e9
        ):
            self._sessions.popitem(last=False)
        self._sessions[session_id] = state
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
        span_id = derived_uuid7(started // 1_000_000, "llm", c.id)
        records: list[dict] = []
        agent_call = self._agent_call(call, state) if call.kind.kind == "subagent" else None
        # A subagent belongs to the turn that launched it, even after the user moved on.
        turn = agent_call.turn if agent_call else self._turn_for(call, state)
        parent = agent_call.span_id if agent_call else self.config.root_span_id
        if agent_call and not agent_call.shown and agent_call.tool_use_id not in state.emitted:
            records.append(self._early_agent_span(agent_call, call))  # the parent this call names
            agent_call.shown = True
        if call.kind.kind in TOOL_SPAN_KINDS:
            records += self._tool_spans(call, state, turn, parent)
        compaction = self._compaction_sizes(call, state)
        cache = state.cache.observe(
            lane_of(call.kind), call.body, call.summary.usage, call.cost.rates, c.started_at_ns, c.id,
            compacted=bool((call.attribution.facts.get("compaction") or {}).get("continued_summary")),
            attribution=call.attribution, raw_body=c.request_body)
        if call.kind.kind == "count_tokens":
            records.append(self._count_tokens_span(call, span_id, turn.trace_id, parent))
        else:
            records.append(self._llm_span(call, span_id, turn.trace_id, parent, compaction, agent_call, cache))
        self._remember_tool_uses(call, state, span_id, turn, ended)
        self._tally(turn, call)
        if not self.config.parent_trace_id:
            records.insert(0, self._trace(call, turn))
        return records

    def _turn_for(self, call: "_Call", state: SessionState) -> Turn:
        """The turn this call belongs to: a main call's prompt names it (a new prompt opens one);
        a compaction is its own; any other call joins the current turn while that is recent."""
        c, kind = call.capture, call.kind.kind
        messages = call.body.get("messages") or []
        if kind == "main":
            anchor = turn_anchor(messages)
            key = f"main:{anchor.index}:{anchor.digest}" if anchor else f"call:{c.id}"
        elif kind == "compaction":
            key = f"compaction:{request_digest(messages)}"  # /compact is its own user action
        else:
            current = state.current
            if current is not None and c.started_at_ns - current.end_ns <= JOIN_WINDOW_S * 1e9:
                return current
            key = f"{kind}:{c.id}"
        turn = state.turns.pop(key, None)
        if turn is None:
            trace_id = self.config.parent_trace_id or derived_uuid7(
                c.started_at_ns // 1_000_000, "trace", call.session_id, key
            )
            # Only a main call carries the turn's prompt (a compaction request's last slash
            # command or prompt belongs to the turn before it).
            prompt = _prompt(call.attribution.facts) if kind == "main" else ""
            turn = Turn(key=key, trace_id=trace_id, label=_span_name(call.kind), start_ns=c.started_at_ns,
                        end_ns=c.started_at_ns, prompt=prompt if self.config.capture_content else "")
        state.turns[key] = turn
        while len(state.turns) > MAX_TURNS:
            state.turns.popitem(last=False)
        state.current = turn
        return turn

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
        """The `Agent` tool call that started this subagent (its brief is the Agent call's prompt)."""
        agent_id = call.kind.agent_id or ""
        if agent_id in state.agents:
            return state.agents[agent_id]
        agents = [p for p in state.pending.values() if p.name in AGENT_TOOLS]
        briefs = first_user_digests(call.body.get("messages") or [])
        match = next(
            (p for p in agents if isinstance(p.input, dict) and p.input.get("brief") in briefs),
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
            tool_use_id, name = str(block["id"]), str(block.get("name", ""))
            state.pending[tool_use_id] = PendingTool(
                tool_use_id=tool_use_id,
                span_id=derived_uuid7(ended // 1_000_000, "tool", call.session_id, tool_use_id),
                turn=turn,
                llm_span_id=span_id,
                issued_ns=ended,
                name=name,
                input=self._agent_input(block.get("input")) if name in AGENT_TOOLS else None,
            )
        while len(state.pending) > MAX_PENDING_TOOLS:
            state.pending.popitem(last=False)

    def _agent_input(self, value: Any) -> dict[str, Any] | None:
        """What an Agent call's input is kept for: the digest of its brief, its subagent type, and
        (only when content is captured) the input itself, for the span shown while it runs."""
        if not isinstance(value, dict):
            return None
        kept: dict[str, Any] = {
            "brief": text_digest(str(value.get("prompt") or "").strip()),
            "subagent_type": value.get("subagent_type"),
        }
        if self.config.capture_content:
            kept["input"] = value
        return kept

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
        """Fold one call into its turn: everything here only grows, so each version of the trace
        carries at least what the one before had."""
        c = call.capture
        ended = c.ended_at_ns or c.started_at_ns
        turn.start_ns = min(turn.start_ns, c.started_at_ns)
        turn.end_ns = max(turn.end_ns, ended)
        turn.updated_ns = max(turn.updated_ns + 1000, ended)  # 1 us: the resolution Opik keeps
        turn.tags += [tag for tag in self._tags(call) if tag not in turn.tags]
        if call.kind.kind == "count_tokens":
            turn.count_tokens_calls += 1
            return
        if call.kind.kind in ("main", "compaction") and self.config.capture_content:
            text = "\n".join(b.get("text", "") for b in call.summary.content if b.get("type") == "text")
            if text:
                turn.output = bounded({"response": text}, self.config.max_io_chars)
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
                  compaction: dict[str, Any] | None, agent_call: PendingTool | None,
                  cache: dict[str, Any] | None) -> dict:
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
            categories=_categories(call, prompt_tokens(s.usage or {}), cost.input_side_usd),
            output_categories=_output_categories(call),
            compaction=compaction or call.attribution.facts.get("compaction"),
        )
        if cache is not None:
            cc["cache"] = cache
        if call.rate_limits:
            cc["rate_limits"] = call.rate_limits
        facts = call.attribution.facts if self.config.capture_content else redacted(call.attribution.facts)
        for key, value in facts.items():
            if key != "compaction":
                cc.setdefault(key, value)
        err = None
        if s.error:
            err = call_error_info(s.error, s.error_event)
        elif c.upstream_error:
            err = call_error_info({"type": "upstream_error", "message": c.upstream_error}, None)
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

    def _count_tokens_span(self, call: "_Call", span_id: str, trace_id: str, parent: str | None) -> dict:
        """A `count_tokens` call (`/context`): a `general` span with the count, no model, usage or cost."""
        c, s = call.capture, call.summary
        ended = c.ended_at_ns or c.started_at_ns
        counted = counted_tokens(c)
        cc = self._common_cc(call)
        cc.update(call=_call_meta(call), count_tokens={"model": call.body.get("model"), "input_tokens": counted},
                  categories=_categories(call, counted or 0, None))
        if call.rate_limits:
            cc["rate_limits"] = call.rate_limits
        err = call_error_info(s.error, s.error_event) if s.error else None
        return span_record(
            span_id=span_id,
            trace_id=trace_id,
            parent_span_id=parent,
            project_name=call.project,
            name="count_tokens",
            span_type="general",
            start_ns=c.started_at_ns,
            end_ns=ended,
            input=self._bounded_input(call),
            output={"input_tokens": counted} if counted is not None else None,
            metadata={"cc": cc},
            tags=self._tags(call),
            updated_ns=ended,
            error_info=err,
        )

    def _early_agent_span(self, agent_call: PendingTool, call: "_Call") -> dict:
        """The span of a running `Agent` tool call, so the subagent calls under it name a record
        that exists; its result re-emits it under the same id, later `last_updated_at`."""
        kept = agent_call.input or {}
        tool_input = kept.get("input")
        meta = {"tool": {"name": agent_call.name, "tool_use_id": agent_call.tool_use_id, "running": True,
                         "subagent_type": kept.get("subagent_type")}}
        return span_record(
            span_id=agent_call.span_id,
            trace_id=agent_call.turn.trace_id,
            parent_span_id=agent_call.llm_span_id,
            project_name=call.project,
            name=agent_call.name,
            span_type="tool",
            start_ns=agent_call.issued_ns,
            end_ns=None,
            input=bounded(tool_input, self.config.max_io_chars) if isinstance(tool_input, dict) else None,
            output=None,
            metadata={"cc": meta},
            tags=["claude-code", "tool"],
            updated_ns=max(agent_call.issued_ns, call.capture.ended_at_ns or call.capture.started_at_ns),
        )

    def _bounded_input(self, call: "_Call") -> Any:
        """The request as span input, sized from the attribution instead of re-serialized."""
        buckets = call.attribution.buckets
        size = call.attribution.total_chars - buckets["tools_builtin"] - buckets["tools_mcp"]
        limit = self.config.max_io_chars
        if size <= limit:
            return _llm_input(call.body)
        return bounded(_llm_input(call.body), limit, size=size, preview=_decoded_start(call.capture.request_body, limit))

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
            error_info=tool_error_info(tool.name or "tool", text) if tool.is_error else None,
        )

    def _trace(self, call: "_Call", turn: Turn) -> dict:
        """The turn's trace as it stands now (see `_tally`: every version carries more)."""
        cc = self._common_cc(call)
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
        if self.config.capture_content and turn.prompt.strip():
            name = turn.prompt.strip().splitlines()[0][:80]
        return trace_record(
            trace_id=turn.trace_id,
            project_name=call.project,
            name=name,
            start_ns=turn.start_ns,
            end_ns=turn.end_ns,
            thread_id=call.session_id,
            input=bounded({"prompt": turn.prompt}, self.config.max_io_chars) if turn.prompt else None,
            output=turn.output,
            metadata={"cc": cc},
            tags=list(turn.tags),
            updated_ns=turn.updated_ns,
        )

    # -- checkpoint --------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The per-session state as plain JSON values (a copy: later calls do not change it)."""
        turns: list[dict] = []
        index: dict[int, int] = {}

        def ref(turn: Turn) -> int:
            if id(turn) not in index:
                index[id(turn)] = len(turns)
                turns.append(json.loads(json.dumps(dataclasses.asdict(turn))))
            return index[id(turn)]

        def tool(p: PendingTool) -> dict:
            doc = {f.name: getattr(p, f.name) for f in dataclasses.fields(p) if f.name != "turn"}
            return {**json.loads(json.dumps(doc)), "turn": ref(p.turn)}

        sessions = []
        for session_id, state in self._sessions.items():
            sessions.append({
                "id": session_id,
                "turns": [ref(t) for t in state.turns.values()],
                "current": ref(state.current) if state.current is not None else None,
                "pending": [tool(p) for p in state.pending.values()],
                "agents": [[agent_id, tool(p)] for agent_id, p in state.agents.items()],
                "emitted": list(state.emitted),
                "last_main": state.last_main,
                "before_compaction": state.before_compaction,
                "last_ns": state.last_ns,
                "cache": state.cache.snapshot(),
            })
        return {"turns": turns, "sessions": sessions}

    def restore(self, doc: dict[str, Any]) -> None:
        """Take back the state `snapshot` returned; ValueError (state unchanged) when it is not one."""
        try:
            turns = [Turn(**t) for t in doc["turns"]]
            sessions: OrderedDict[str, SessionState] = OrderedDict()
            for s in doc["sessions"]:
                state = SessionState(last_main=s["last_main"], before_compaction=s["before_compaction"],
                                     last_ns=int(s["last_ns"]), cache=CacheLanes.restore(s.get("cache")))
                for i in s["turns"]:
                    state.turns[turns[i].key] = turns[i]
                state.current = turns[s["current"]] if s["current"] is not None else None
                tools: dict[str, PendingTool] = {}  # one object per tool call, as before the snapshot

                def tool(p: dict) -> PendingTool:
                    return tools.setdefault(p["tool_use_id"], PendingTool(**{**p, "turn": turns[p["turn"]]}))

                for p in s["pending"]:
                    state.pending[p["tool_use_id"]] = tool(p)
                for agent_id, p in s["agents"]:
                    state.agents[agent_id] = tool(p)
                state.emitted = OrderedDict.fromkeys(s["emitted"])
                sessions[s["id"]] = state
        except (KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ValueError(f"not a materializer snapshot: {exc!r}") from None
        self._sessions = sessions


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
    rate_limits: dict | None = None  # parse_rate_limits of the response headers


def _conversation(capture: Capture) -> tuple:
    """The requests one conversation sends (its session, agent and route): the key under which the
    request reader compares a request with the one before it."""
    return (header_value(capture.request_headers, "x-claude-code-session-id"),
            header_value(capture.request_headers, "x-claude-code-agent-id"), capture.path.split("?", 1)[0])


def _decoded_start(raw: bytes, limit: int) -> str:
    """`raw[:limit].decode("utf-8", "ignore")`, decoded a window at a time (a long one in one call
    holds the interpreter for a millisecond or more)."""
    decoder = codecs.getincrementaldecoder("utf-8")("ignore")
    view = memoryview(raw)[:limit]
    pieces = [decoder.decode(view[at : at + PREVIEW_STEP], at + PREVIEW_STEP >= len(view))
              for at in range(0, len(view), PREVIEW_STEP)]
    return "".join(pieces)


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


def _categories(call: _Call, tokens: int, usd: float | None) -> dict[str, Any]:
    """Per bucket: chars (exact), and the bucket's share of the input side's `tokens` and `usd`."""
    attribution = call.attribution
    total = attribution.total_chars
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
