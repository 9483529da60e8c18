"""Capture -> call record -> Opik records: the materializer, a thin driver over pure steps.

Runs on the follower's thread, one capture at a time, in capture-log order:
1. pure per call: the request read (`RequestReader`: each conversation's previous request is
   kept, bounded, so only what is new is parsed and attributed, with exactly the result of
   reading it from scratch; never in the checkpoint), its kind, the response summary, the price
   at the rates in force when the call started, the rate limits;
2. the session's state (`session_state.SessionStates`): its turn, the Agent call that launched
   a subagent call, the tool calls finished in this request, compaction sizes, and the cache
   diagnosis against the previous call of its conversation (`cache_diagnosis.CacheLanes`);
3. the call record (`call.CallRecord`), from which `opik_records` builds the spool records and
   the ledger its rows; then the call is folded into the state (its tool uses wait for their
   results, its turn's roll-up grows).
Ids are UUIDv7 derived from the log's content (docs/ARCHITECTURE.md, "Spool records"), so
materializing the same captures in the same order (after a restart from a checkpoint, or in
`replay`) yields the same ids, and Opik upserts. `snapshot()` / `restore()` carry the
per-session state across a restart (docs/ARCHITECTURE.md, "Materializer checkpoint").
"""

import dataclasses
import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.config import Settings
from opik_cipx.ids import derived_uuid7
from opik_cipx.materialize import opik_records
from opik_cipx.materialize.attribution import Attribution
from opik_cipx.materialize.attribution.incremental import RequestReader
from opik_cipx.materialize.cache_diagnosis import CacheDiagnosis, PrefixReader, lane_of
from opik_cipx.materialize.call import (
    AgentLink,
    CallConfig,
    CallRecord,
    Exchange,
    Git,
    Launch,
    Materialized,
    OutputSplit,
    Session,
    Size,
    Trigger,
    TurnRepository,
)
from opik_cipx.materialize.call_kind import CallKind, classify
from opik_cipx.materialize.identity import Identity, claude_json_path, read_identity, render_template
from opik_cipx.materialize.pricing import Cost, PriceTable, load_price_table, price_call
from opik_cipx.materialize.rate_limits import RateLimitObserver, RateLimits, parse_rate_limits
from opik_cipx.materialize.redaction import redact_records
from opik_cipx.materialize.response import ResponseSummary, counted_tokens, summarize_response
from opik_cipx.materialize.session_state import PendingTool, SessionState, SessionStates, Turn, tool_span_id
from opik_cipx.materialize.sessions import valid_session_id
from opik_cipx.materialize.turns import AGENT_TOOLS, continues_turn, turn_key, turn_prompt
from opik_cipx.materialize.unknown_models import UnknownModels
from opik_cipx.materialize.usage import Usage, read_usage
from opik_cipx.wire.capture import Capture, header_value

if TYPE_CHECKING:  # the work process passes one; replay, which runs no git, need not load it
    from opik_cipx.materialize.git_probe import GitProbe

log = logging.getLogger(__name__)

SPAN_ENDPOINTS = {"/v1/messages", "/v1/messages/count_tokens"}
NOTHING_USED = {"input_tokens": 0, "output_tokens": 0}  # a blocked call's: it costs exactly 0
TOOL_SPAN_KINDS = frozenset({"main", "subagent", "compaction"})
SESSION_FILE_RETRY_S = 5.0  # a session file not written yet is looked for again after this
IDENTITY_TTL_S = 60.0  # ~/.claude.json is re-read at most this often
LIVE_S = 120.0  # git is asked about a call only if it ended at most this long before it is materialized
AWAITING_MAX = 16  # turns whose latest call is kept for the trace version git's answer adds


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


class _Read(NamedTuple):
    """What one call says on its own (step 1: pure functions of the capture)."""

    body: dict  # the request body as JSON, {} when it is not a JSON object
    attribution: Attribution
    kind: CallKind
    summary: ResponseSummary
    model: str | None
    usage: Usage | None
    cost: Cost
    limits: RateLimits | None


class _Placed(NamedTuple):
    """Where a call goes in its session (step 2)."""

    turn: Turn
    agent_call: PendingTool | None  # the Agent call that launched a subagent call
    early_agent: PendingTool | None  # that Agent call, when its span must go out now (before its result)
    parent_span_id: str | None
    tools: list[opik_records.PlacedTool]  # tool calls finished in this request
    link_failure: str | None  # why a subagent call has no agent_call


class Materializer:
    """Turns captures into call records and spool records; keeps bounded per-session state between calls."""

    def __init__(self, config: MaterializerConfig, prices: PriceTable, pause: Callable[[], None] | None = None,
                 clock: Clock = SYSTEM, git: "GitProbe | None" = None):
        """`pause()` is called between the steps of a capture (between the messages of a request
        walked): the daemon passes one that waits while an exchange is in flight, so the work runs
        in slices between calls. `clock` times the re-reading of session and account files, and
        says which calls are live; `git` reads their repositories off the wire (none: no git)."""
        self.config = config
        self.prices = prices
        self.unknown_models = UnknownModels()  # model ids the price table does not know
        self.rate_limits = RateLimitObserver()  # the latest value of every rate-limit window
        self._pause = pause or (lambda: None)
        self._clock = clock
        self._requests = RequestReader()  # what the previous request of each conversation had
        self._prefixes = PrefixReader()  # digests of the tool definitions and messages that repeat
        self._states = SessionStates(config.capture_content, config.max_io_chars, config.parent_trace_id)
        self._account = Identity()
        self._account_read = float("-inf")
        self._git = git
        # turn id -> (its latest call asked git about, as its trace's latest version carries it; the
        # turn; its session's state)
        self._awaiting: OrderedDict[str, tuple[CallRecord, Turn, SessionState]] = OrderedDict()

    def materialize(self, capture: Capture) -> Materialized:
        """The call record and spool records of one exchange (none for routes that carry no model call)."""
        route = capture.path.split("?", 1)[0]
        if capture.method != "POST" or route not in SPAN_ENDPOINTS:
            return Materialized([])
        read = self._read(capture)
        session_id = read.kind.session_id or "unknown-session"
        state = self._states.session(session_id, capture.started_at_ns)
        self._states.note_workspace(state, read.kind.kind, read.body)
        self._states.count_dispatches(state, read.summary.content)
        placed = self._place(capture, read, state, session_id)
        call = self._call_record(capture, read, state, session_id, placed)
        limit = self.config.max_io_chars
        records = [opik_records.early_agent_span(placed.early_agent, call, limit)] if placed.early_agent else []
        records += [opik_records.tool_span(tool, call, limit) for tool in placed.tools]
        if call.kind.kind == "count_tokens":
            records.append(opik_records.count_tokens_span(call, limit))
        else:
            records.append(opik_records.llm_span(call, limit, self.config.capture_content))
        self._states.remember_tool_uses(state, call, placed.turn)
        self._states.tally(placed.turn, call, opik_records.tags(call))
        self._ask_git(capture, call, placed.turn, state)
        if not self.config.parent_trace_id:
            records.insert(0, opik_records.trace(call, placed.turn, limit, self.config.capture_content))
        if not self.config.capture_content:
            records = redact_records(records, applied_ns=call.exchange.ended_at_ns)
        return Materialized(records, call)

    def _read(self, capture: Capture) -> _Read:
        request = self._requests.read(_conversation(capture), capture.request_body, self._pause)
        body = request.body or {}
        kind = classify(capture.method, capture.path, capture.request_headers, request.body, capture.blocked)
        self._pause()
        summary = summarize_response(capture)
        model = summary.model or body.get("model")
        model = model if isinstance(model, str) and model else None
        used = NOTHING_USED if capture.blocked else summary.usage
        cost = price_call(model, used, self.prices, at_ns=capture.started_at_ns)  # rates in force then
        self.unknown_models.note(cost)
        limits = parse_rate_limits(capture.response_headers)
        self.rate_limits.note(limits, capture.started_at_ns)
        self._pause()
        return _Read(body, request.attribution, kind, summary, model, read_usage(summary.usage), cost,
                     RateLimits.of(limits) if limits else None)

    def _place(self, capture: Capture, read: _Read, state: SessionState, session_id: str) -> _Placed:
        """The call's turn and parent; a subagent call belongs to the turn of the Agent call that
        launched it, even after the user moved on."""
        kind, started = read.kind, capture.started_at_ns
        messages = read.body.get("messages") or []
        agent_call, link_failure = self._states.agent_call(state, kind.agent_id or "", messages) \
            if kind.kind == "subagent" else (None, None)
        if agent_call:
            turn = agent_call.turn
        else:
            # Only a main call carries its turn's prompt (a compaction's belongs to the turn before it).
            prompt = turn_prompt(read.attribution.facts) if kind.kind == "main" else ""
            turn = self._states.turn_for(state, session_id, kind, turn_key(kind.kind, messages, capture.id),
                                         capture.id, started, prompt)
        parent = agent_call.span_id if agent_call else self.config.root_span_id
        early = agent_call if agent_call and not agent_call.shown and agent_call.tool_use_id not in state.emitted \
            else None
        if early:
            early.shown = True  # the parent this call names goes out with it
        tools = []
        if kind.kind in TOOL_SPAN_KINDS:
            for tool, pending in self._states.finished_tools(state, messages):
                issued = pending.issued_ns if pending else started
                tools.append(opik_records.PlacedTool(
                    tool, pending.span_id if pending else tool_span_id(issued, session_id, tool.tool_use_id),
                    pending.turn.trace_id if pending else turn.trace_id,
                    pending.llm_span_id if pending else parent, issued))
        return _Placed(turn, agent_call, early, parent, tools, link_failure)

    def _call_record(self, capture: Capture, read: _Read, state: SessionState, session_id: str,
                     placed: _Placed) -> CallRecord:
        kind, attribution, usage = read.kind, read.attribution, read.usage
        compacted = bool((attribution.facts.get("compaction") or {}).get("continued_summary"))
        size = Size(attribution.total_chars, len(read.body.get("messages") or []), usage.prompt_tokens if usage else 0)
        compaction = self._states.compaction_sizes(state, kind.kind, size, compacted)
        info = self._session_info(state, session_id)
        hooked = info.get("identity")
        identity = Identity.of(hooked) if isinstance(hooked, dict) else self._account_identity()
        agent, early = placed.agent_call, placed.early_agent
        link = AgentLink(agent.tool_use_id, _text(agent.input.get("subagent_type"))) \
            if agent is not None and isinstance(agent.input, dict) else None
        launches = [Launch(early.span_id, early.llm_span_id)] if early else []
        launches += [Launch(t.span_id, t.parent_span_id) for t in placed.tools
                     if t.tool.name in AGENT_TOOLS and t.parent_span_id]
        return CallRecord(
            exchange=_exchange(capture, read.body),
            kind=kind,
            session=_session(session_id, info, state),
            identity=identity,
            project=render_template(self.config.project_template, identity.template_values()),
            trace_id=placed.turn.trace_id,
            span_id=derived_uuid7(capture.started_at_ns // 1_000_000, "llm", capture.id),
            parent_span_id=placed.parent_span_id,
            turn_key=placed.turn.key,
            model=read.model,
            response=read.summary,
            usage=usage,
            cost=read.cost if kind.kind != "count_tokens" else None,
            attribution=attribution,
            output=OutputSplit.of(read.summary.content),
            cache=self._cache(capture, read, state, compacted),
            rate_limits=read.limits,
            compaction=compaction,
            agent=link,
            counted_tokens=counted_tokens(capture) if kind.kind == "count_tokens" else None,
            launches=tuple(launches),
            config=CallConfig.of(read.body, usage),
            trigger=Trigger.of(kind, continues_turn(read.body.get("messages") or []), link),
            turn_digest=placed.turn.prompt_sha256,
            link_failure=placed.link_failure,
            agent_counts=state.agent_counts,
            repository=self._git.turn(placed.turn.trace_id) if self._git else None,
        )

    def _ask_git(self, capture: Capture, call: CallRecord, turn: Turn, state: SessionState) -> None:
        """Ask git about the turn's repository, for a live call only: a replay, or a capture
        materialized long after it ended, must not get the repository as it is now."""
        if self._git is None or not call.session.cwd or self.config.parent_trace_id:
            return
        if self._clock.time_ns() - call.exchange.ended_at_ns > LIVE_S * 1e9:
            return
        self._git.ask(turn.trace_id, call.session.cwd)
        self._awaiting.pop(turn.trace_id, None)
        self._awaiting[turn.trace_id] = (call, turn, state)
        while len(self._awaiting) > AWAITING_MAX:
            self._awaiting.popitem(last=False)

    def late_records(self) -> list[dict]:
        """One more version of each trace git has answered about since its latest call (docs/OPIK.md,
        "Repository state"): what that call's version could not carry yet. A session no hook
        described keeps git's first remote and head as its own."""
        if self._git is None:
            return []
        records = []
        for turn_id in self._git.answered():
            kept = self._awaiting.get(turn_id)
            found = self._git.turn(turn_id)
            if kept is None or found is None:
                continue
            call, turn, state = kept
            wire = not state.info
            if wire and state.git_read is None and (found.remote or found.head_sha):
                state.git_read = Git(remote=found.remote, commit=found.head_sha)
            session = _with_git(call.session, found) if wire else call.session
            if found == call.repository and session == call.session:
                continue  # (a call made after git answered has the answer, but not yet the session's git)
            call = dataclasses.replace(call, repository=found, session=session)
            self._awaiting[turn_id] = (call, turn, state)  # what its trace now carries
            turn.updated_ns += 1000  # 1 us: the resolution Opik keeps
            version = [opik_records.trace(call, turn, self.config.max_io_chars, self.config.capture_content)]
            records += version if self.config.capture_content else redact_records(version, call.exchange.ended_at_ns)
        return records

    def _cache(self, capture: Capture, read: _Read, state: SessionState, compacted: bool) -> CacheDiagnosis | None:
        """The call against the previous call of its conversation; None for a call without usage
        (it read and wrote nothing) or of no conversation (count_tokens)."""
        lane = lane_of(read.kind)
        if lane is None or read.usage is None:
            return None
        return state.cache.observe(lane, self._prefixes.prefix(read.body), read.usage, read.cost.rates,
                                   capture.started_at_ns, capture.id, compacted=compacted,
                                   attribution=read.attribution, raw_body=capture.request_body)

    def _session_info(self, state: SessionState, session_id: str) -> dict:
        """`sessions/<id>.json` written by the SessionStart hook ({} until it exists)."""
        now = self._clock.monotonic()
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

    def _account_identity(self) -> Identity:
        """The Claude Code account of this machine's user (`~/.claude.json`), briefly cached."""
        now = self._clock.monotonic()
        if now - self._account_read > IDENTITY_TTL_S:
            self._account_read = now
            self._account = Identity.of(read_identity(self.config.claude_json))
        return self._account

    def snapshot(self) -> dict[str, Any]:
        """The per-session state as plain JSON values (a copy: later calls do not change it)."""
        return self._states.snapshot()

    def restore(self, doc: dict[str, Any]) -> None:
        """Take back the state `snapshot` returned; ValueError (state unchanged) when it is not one."""
        self._states.restore(doc)


def _session(session_id: str, info: dict, state: SessionState) -> Session:
    """The call's session: the hook's record when there is one (it wins), else where the
    session's requests say it works (docs/ARCHITECTURE.md, "Workspace and repository")."""
    if info:
        return Session.of(session_id, info)
    workspace, read = state.workspace, state.git_read
    if workspace is None:
        return Session(session_id)
    git = Git(remote=read.remote if read else None, branch=workspace.branch, commit=read.commit if read else None)
    return Session(session_id, cwd=workspace.cwd, git=git if git != Git() else None)


def _with_git(session: Session, found: TurnRepository) -> Session:
    """A session no hook described, with the remote and head git gave where it knew none."""
    git = session.git or Git()
    return dataclasses.replace(session, git=Git(remote=git.remote or found.remote, branch=git.branch,
                                                commit=git.commit or found.head_sha))


def _exchange(capture: Capture, body: dict) -> Exchange:
    return Exchange(
        capture_id=capture.id,
        started_at_ns=capture.started_at_ns,
        ended_at_ns=capture.ended_at_ns or capture.started_at_ns,
        ttfb_ns=capture.ttfb_ns,
        endpoint=capture.path.split("?", 1)[0],
        status=capture.status,
        client_aborted=capture.client_aborted,
        upstream_error=capture.upstream_error,
        user_agent=header_value(capture.request_headers, "user-agent"),
        request=body,
        request_bytes=capture.request_body,
    )


def _conversation(capture: Capture) -> tuple:
    """The requests one conversation sends (its session, agent and route): the key under which the
    request reader compares a request with the one before it."""
    return (header_value(capture.request_headers, "x-claude-code-session-id"),
            header_value(capture.request_headers, "x-claude-code-agent-id"), capture.path.split("?", 1)[0])


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def build_materializer(settings: Settings, env: dict[str, str], project_template: str,
                       git: "GitProbe | None" = None) -> Materializer:
    """The materializer the work process runs (`replay` builds the same one, so the ids match).

    Raises ValueError, one line naming the config file, when a `[prices]` override cannot be
    applied to the packaged table."""
    try:
        prices = load_price_table(settings.prices)
    except ValueError as exc:
        raise ValueError(f"bad setting in config file {settings.config_path}: {exc}") from None
    return Materializer(materializer_config(settings, env, project_template), prices, git=git)
