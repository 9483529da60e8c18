"""Per-session state that puts calls into traces: turns, pending tool calls, agents, compaction sizes.

Owned by the materializer, on the follower's thread. Each method does one step of a call in
capture-log order; the state only depends on the captures before it, so the ids it hands out
are a function of the log's content (docs/ARCHITECTURE.md, "Spool records"):
- a turn per user prompt: a main call's prompt names its turn (a new prompt opens one), a
  compaction is its own, any other call joins the session's current turn while that is recent
  (`JOIN_WINDOW_S` after its last call ended), else opens one of its own;
- the `tool_use` blocks of each answer wait as pending tool calls until a request carries their
  results; each finished one gets its span once;
- a subagent call is matched to the `Agent` call that launched it (by its brief);
- the main loop's last size, to measure a compaction;
- where the session works, as its first main-loop request names it (`Workspace`), for sessions
  no hook described, and the session's running totals of subagent dispatches and links
  (`AgentCounts`), both for `metadata.cipx.session`.
Bounded (the checkpoint holds it all): `MAX_SESSIONS` sessions, a session idle for
`SESSION_IDLE_S` by the captures' clock forgotten, and per session `MAX_TURNS` turns,
`MAX_PENDING_TOOLS` pending tool calls, `MAX_AGENTS` agents. `snapshot()` / `restore()` carry it
across a restart (docs/ARCHITECTURE.md, "Materializer checkpoint").
"""

import dataclasses
import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from opik_cipx.ids import derived_uuid7
from opik_cipx.materialize.attribution.environment import Workspace, read_workspace
from opik_cipx.materialize.cache_diagnosis import CacheLanes
from opik_cipx.materialize.call import AMBIGUOUS, NO_DISPATCH, AgentCounts, CallRecord, Compaction, Git, Size
from opik_cipx.materialize.call_kind import CallKind
from opik_cipx.materialize.spans import bounded
from opik_cipx.materialize.turns import AGENT_TOOLS, FinishedTool, finished_tools, first_user_digests, text_digest

MAX_SESSIONS = 256
MAX_PENDING_TOOLS = 512
MAX_AGENTS = 64
MAX_TURNS = 8  # per session, by key: a prompt answered again later finds its turn
MAX_EMITTED = 4 * MAX_PENDING_TOOLS  # tool_use ids with a final span, per session
SESSION_IDLE_S = 86400.0  # a session with no call for this long (capture time) is forgotten
JOIN_WINDOW_S = 600.0  # a side or count_tokens call joins the current turn only this soon after it


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
    prompt_sha256: str = ""  # of the prompt that opened it, else of its key (a digest: kept in redacted mode too)


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
    last_main: Size | None = None  # the previous main-loop call
    before_compaction: Size | None = None
    last_ns: int = 0  # start of the session's latest call
    cache: CacheLanes = field(default_factory=CacheLanes)  # the previous call of each lane (cache_diagnosis)
    info: dict = field(default_factory=dict)  # sessions/<id>.json, once the hook has written it
    info_checked: float = float("-inf")
    workspace: Workspace | None = None  # where the session works, as a request of it names it
    workspace_main: bool = False  # its first main-loop request was read: no request of it is read again
    git_read: Git | None = None  # remote and head git first gave for a session no hook described
    agent_counts: AgentCounts = AgentCounts()  # running totals of subagent dispatches and links
    unlinked: "OrderedDict[str, None]" = field(default_factory=OrderedDict)  # agent ids counted as ambiguous


class SessionStates:
    """The state of every recent session, and each step a call takes through it."""

    def __init__(self, capture_content: bool, max_io_chars: int, parent_trace_id: str | None = None):
        """`capture_content` False: no prompt or answer text is kept (a turn's name and output
        come from its kind); `parent_trace_id`: every turn is that one trace."""
        self.capture_content = capture_content
        self.max_io_chars = max_io_chars
        self.parent_trace_id = parent_trace_id
        self._sessions: OrderedDict[str, SessionState] = OrderedDict()

    def session(self, session_id: str, now_ns: int) -> SessionState:
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

    def turn_for(self, state: SessionState, session_id: str, kind: CallKind, key: str | None, capture_id: str,
                 started_ns: int, prompt: str) -> Turn:
        """The turn a call belongs to. `key` names it (`turn_key`); None for a call that names
        none: it joins the current turn while that is recent, else opens `<kind>:<capture id>`.
        `prompt` is what a new turn is named after (a main call's)."""
        if key is None:
            current = state.current
            if current is not None and started_ns - current.end_ns <= JOIN_WINDOW_S * 1e9:
                return current
            key = f"{kind.kind}:{capture_id}"
        turn = state.turns.pop(key, None)
        if turn is None:
            trace_id = self.parent_trace_id or derived_uuid7(started_ns // 1_000_000, "trace", session_id, key)
            turn = Turn(key=key, trace_id=trace_id, label=span_name(kind), start_ns=started_ns, end_ns=started_ns,
                        prompt=prompt if self.capture_content else "",
                        prompt_sha256=prompt_digest(prompt, key))
        state.turns[key] = turn
        while len(state.turns) > MAX_TURNS:
            state.turns.popitem(last=False)
        state.current = turn
        return turn

    @staticmethod
    def agent_call(state: SessionState, agent_id: str, messages: list) -> tuple[PendingTool | None, str | None]:
        """The `Agent` tool call that started a subagent (its brief is the Agent call's prompt), or
        None and why: no Agent call is waiting (`NO_DISPATCH`), or several are and none has this
        brief (`AMBIGUOUS`). A new agent id linked, or first found ambiguous, is counted in the
        session's `agent_counts`."""
        if agent_id in state.agents:
            return state.agents[agent_id], None
        agents = [p for p in state.pending.values() if p.name in AGENT_TOOLS]
        briefs = first_user_digests(messages)
        match = next(
            (p for p in agents if isinstance(p.input, dict) and p.input.get("brief") in briefs),
            agents[0] if len(agents) == 1 else None,
        )
        if match is None:
            if agents and agent_id and agent_id not in state.unlinked:
                state.agent_counts = state.agent_counts._replace(ambiguous=state.agent_counts.ambiguous + 1)
                state.unlinked[agent_id] = None
                while len(state.unlinked) > MAX_AGENTS:
                    state.unlinked.popitem(last=False)
            return None, AMBIGUOUS if agents else NO_DISPATCH
        if agent_id:
            state.agent_counts = state.agent_counts._replace(linked=state.agent_counts.linked + 1)
            state.agents[agent_id] = match
            while len(state.agents) > MAX_AGENTS:
                state.agents.popitem(last=False)
        return match, None

    @staticmethod
    def finished_tools(state: SessionState, messages: list) -> list[tuple[FinishedTool, PendingTool | None]]:
        """Each tool call finished in this request, once per tool call (a retried or repeated
        request carries the same results again), with its pending call when it was seen."""
        out = []
        for tool in finished_tools(messages):
            if tool.tool_use_id in state.emitted:
                continue
            out.append((tool, state.pending.pop(tool.tool_use_id, None)))
            state.emitted[tool.tool_use_id] = None
            while len(state.emitted) > MAX_EMITTED:
                state.emitted.popitem(last=False)
        return out

    @staticmethod
    def count_dispatches(state: SessionState, content: list[dict]) -> None:
        """Add the `Agent`/`Task` calls of an answer not seen before to the session's dispatches."""
        new = sum(1 for block in content if block.get("type") == "tool_use" and block.get("name") in AGENT_TOOLS
                  and str(block.get("id")) not in state.pending and str(block.get("id")) not in state.emitted)
        if new:
            state.agent_counts = state.agent_counts._replace(dispatched=state.agent_counts.dispatched + new)

    @staticmethod
    def note_workspace(state: SessionState, kind: str, body: dict) -> None:
        """Where the session works, from its first main-loop request (a subagent's until then; a
        subagent request is read only while the session has none); side calls and `count_tokens`
        name none and are not read. So a session's requests are read once, whatever they say."""
        if state.workspace_main or kind != "main" and (kind != "subagent" or state.workspace is not None):
            return
        found = read_workspace(body)
        if found is not None and found.cwd:
            state.workspace = found
        state.workspace_main = kind == "main"

    def remember_tool_uses(self, state: SessionState, call: CallRecord, turn: Turn) -> None:
        """The answer's `tool_use` blocks wait for their results (their spans hang under its llm span)."""
        ended = call.exchange.ended_at_ns
        for block in call.response.content:
            if block.get("type") != "tool_use" or not block.get("id"):
                continue
            tool_use_id, name = str(block["id"]), str(block.get("name", ""))
            state.pending[tool_use_id] = PendingTool(
                tool_use_id=tool_use_id,
                span_id=tool_span_id(ended, call.session.id, tool_use_id),
                turn=turn,
                llm_span_id=call.span_id,
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
        if self.capture_content:
            kept["input"] = value
        return kept

    @staticmethod
    def compaction_sizes(state: SessionState, kind: str, size: Size, continued_summary: bool) -> Compaction | None:
        """The sizes of a compaction request (the main loop's last before it) or of the first call
        continuing from its summary (before and after); the main loop's size is kept."""
        result = None
        if kind == "compaction":
            state.before_compaction = state.last_main or size
            result = Compaction(before=state.before_compaction)
        elif continued_summary and state.before_compaction:
            result = Compaction(before=state.before_compaction, after=size)
            state.before_compaction = None
        if kind == "main":
            state.last_main = size
        return result

    def tally(self, turn: Turn, call: CallRecord, tags: list[str]) -> None:
        """Fold one call into its turn: everything here only grows, so each version of the trace
        carries at least what the one before had."""
        started, ended = call.exchange.started_at_ns, call.exchange.ended_at_ns
        turn.start_ns = min(turn.start_ns, started)
        turn.end_ns = max(turn.end_ns, ended)
        turn.updated_ns = max(turn.updated_ns + 1000, ended)  # 1 us: the resolution Opik keeps
        turn.tags += [tag for tag in tags if tag not in turn.tags]
        kind = call.kind.kind
        if kind == "count_tokens":
            turn.count_tokens_calls += 1
            return
        if kind in ("main", "compaction") and self.capture_content:
            text = "\n".join(b.get("text", "") for b in call.response.content if b.get("type") == "text")
            if text:
                turn.output = bounded({"response": text}, self.max_io_chars)
        turn.calls += 1
        if call.usage is not None:
            turn.prompt_tokens += call.usage.prompt_tokens
            turn.completion_tokens += call.usage.output
        if call.cost is None or call.cost.total_usd is None:
            turn.unknown_cost_calls += call.usage is not None
        else:
            turn.cost_usd += call.cost.total_usd
        label = kind if kind != "side" else f"side:{call.kind.side_kind}"
        turn.by_kind[label] = turn.by_kind.get(label, 0) + 1

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
                "last_main": state.last_main.to_json() if state.last_main else None,
                "before_compaction": state.before_compaction.to_json() if state.before_compaction else None,
                "last_ns": state.last_ns,
                "cache": state.cache.snapshot(),
                "workspace": dataclasses.asdict(state.workspace) if state.workspace else None,
                "workspace_main": state.workspace_main,
                "git_read": state.git_read.to_json() if state.git_read else None,
                "agent_counts": list(state.agent_counts),
                "unlinked": list(state.unlinked),
            })
        return {"turns": turns, "sessions": sessions}

    def restore(self, doc: dict[str, Any]) -> None:
        """Take back the state `snapshot` returned; ValueError (state unchanged) when it is not one."""
        try:
            turns = [Turn(**t) for t in doc["turns"]]
            for turn in turns:  # a checkpoint of an older version has none: its prompt is not kept
                turn.prompt_sha256 = turn.prompt_sha256 or prompt_digest("", turn.key)
            sessions: OrderedDict[str, SessionState] = OrderedDict()
            for s in doc["sessions"]:
                workspace, git = s.get("workspace"), s.get("git_read")  # none in an older checkpoint
                state = SessionState(last_main=_size(s["last_main"]), before_compaction=_size(s["before_compaction"]),
                                     last_ns=int(s["last_ns"]), cache=CacheLanes.restore(s.get("cache")),
                                     workspace=Workspace(**workspace) if workspace else None,
                                     workspace_main=bool(s.get("workspace_main")),
                                     git_read=Git(**git) if git else None,
                                     agent_counts=AgentCounts(*map(int, s.get("agent_counts") or ())),
                                     unlinked=OrderedDict.fromkeys(s.get("unlinked") or ()))
                for i in s["turns"]:
                    state.turns[turns[i].key] = turns[i]
                state.current = turns[s["current"]] if s["current"] is not None else None
                tools: dict[str, PendingTool] = {}  # one object per tool call, as before the snapshot

                def tool(p: dict) -> PendingTool:  # called only in this iteration: `tools` is this one's
                    return tools.setdefault(p["tool_use_id"], PendingTool(**{**p, "turn": turns[p["turn"]]}))  # noqa: B023

                for p in s["pending"]:
                    state.pending[p["tool_use_id"]] = tool(p)
                for agent_id, p in s["agents"]:
                    state.agents[agent_id] = tool(p)
                state.emitted = OrderedDict.fromkeys(s["emitted"])
                sessions[s["id"]] = state
        except (KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ValueError(f"not a materializer snapshot: {exc!r}") from None
        self._sessions = sessions


def prompt_digest(prompt: str, key: str) -> str:
    """A turn's `prompt_sha256`: SHA-256 hex of the prompt that opened it, of its key when none did
    (a compaction, a side call's own turn)."""
    return hashlib.sha256((prompt or key).encode("utf-8", "surrogatepass")).hexdigest()


def tool_span_id(issued_ns: int, session_id: str, tool_use_id: str) -> str:
    """A tool call's span id: from the end of the llm call whose answer issued it (the request's
    start when that call was not seen), the session and the `tool_use` id."""
    return derived_uuid7(issued_ns // 1_000_000, "tool", session_id, tool_use_id)


def span_name(kind: CallKind) -> str:
    """The name of a call's span, and of a turn it opens: its kind, `side_call:<kind>` for a side call."""
    if kind.kind == "side" and kind.side_kind:
        return f"side_call:{kind.side_kind}"
    return kind.kind


def _size(doc: dict | None) -> Size | None:
    return Size(**doc) if doc else None
