"""The call record: one Messages API call, typed, made once by the materializer (docs/ARCHITECTURE.md, "Call record").

Everything a stage needs to know about a call is here, read once from its capture and the
session state: the exchange, its kind, session, identity and project, where its span hangs
(trace, span, parent, turn), its exact usage and cost, the attribution of its request, the split
of its output, the cache diagnosis and the rate limits. The Opik records (`opik_records`) and the
ledger's rows (`ledger/entry.py`) are both built from it alone, so a name changes in one place
and every reader sees it. JSON appears only where a record leaves for the spool: the parts keep
what came off the wire as it came (the request body, the response content, the usage mapping,
the attribution facts; read-only), and give typed values for everything a reader computes with.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from opik_cipx.materialize.attribution import Attribution
from opik_cipx.materialize.cache_diagnosis import CacheDiagnosis
from opik_cipx.materialize.call_kind import CallKind
from opik_cipx.materialize.identity import Identity
from opik_cipx.materialize.pricing import Cost
from opik_cipx.materialize.rate_limits import RateLimits
from opik_cipx.materialize.response import ResponseSummary
from opik_cipx.materialize.spans import exception_type
from opik_cipx.materialize.usage import Usage

OUTPUT_KINDS = ("thinking", "text", "tool_use")


@dataclass(frozen=True)
class Git:
    remote: str | None = None
    branch: str | None = None
    commit: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {"remote": self.remote, "branch": self.branch, "commit": self.commit}


@dataclass(frozen=True)
class Session:
    """The Claude Code session a call belongs to, with what its hook wrote (`sessions/<id>.json`;
    None until it exists): the working directory, git, the transcript."""

    id: str
    cwd: str | None = None
    git: Git | None = None
    transcript_path: str | None = None

    @classmethod
    def of(cls, session_id: str, info: Mapping[str, Any]) -> "Session":
        """From a session file's document; a value of the wrong type is None."""
        git = info.get("git")
        return cls(
            id=session_id,
            cwd=_text(info.get("cwd")),
            git=Git(*(_text(git.get(key)) for key in ("remote", "branch", "commit"))) if isinstance(git, dict)
            else None,
            transcript_path=_text(info.get("transcript_path")),
        )


@dataclass(frozen=True)
class TurnRepository:
    """What git said of the repository of the call's session during its turn (read off the wire by
    `materialize/git_probe`; None = not known): the state at the turn's first call (`head_sha`)
    and at its latest call probed (`head_sha_end`, `dirty`), and what the commits between the two
    changed (ARCHITECTURE.md, "Workspace and repository")."""

    remote: str | None = None
    branch: str | None = None
    head_sha: str | None = None
    head_sha_end: str | None = None
    dirty: bool | None = None
    commits: int | None = None
    files_added: int | None = None
    files_deleted: int | None = None
    lines_added: int | None = None
    lines_deleted: int | None = None


@dataclass(frozen=True)
class Exchange:
    """What the wire saw of the call (the capture's scalars and its request)."""

    capture_id: str
    started_at_ns: int
    ended_at_ns: int  # its start when the exchange never ended
    ttfb_ns: int | None
    endpoint: str  # the route, without the query
    status: int | None
    client_aborted: bool
    upstream_error: str | None
    user_agent: str | None
    request: Mapping[str, Any]  # the request body as JSON ({} when it was not a JSON object); read-only
    request_bytes: bytes = field(repr=False, default=b"")  # the body as sent (for a truncated input's preview)

    @property
    def ttfb_ms(self) -> float | None:
        return round((self.ttfb_ns - self.started_at_ns) / 1e6, 3) if self.ttfb_ns else None

    @property
    def duration_ms(self) -> float:
        return round((self.ended_at_ns - self.started_at_ns) / 1e6, 3)


@dataclass(frozen=True)
class OutputSplit:
    """Characters of the response's content by kind: thinking, text, and tool calls (their input as JSON)."""

    thinking: int = 0
    text: int = 0
    tool_use: int = 0

    @classmethod
    def of(cls, content: list[dict]) -> "OutputSplit":
        chars = dict.fromkeys(OUTPUT_KINDS, 0)
        for block in content:
            kind = block.get("type")
            if kind == "thinking":
                chars["thinking"] += len(block.get("thinking", ""))
            elif kind == "text":
                chars["text"] += len(block.get("text", ""))
            elif kind == "tool_use":
                chars["tool_use"] += len(json.dumps(block.get("input"), ensure_ascii=False))
        return cls(**chars)

    def items(self) -> tuple[tuple[str, int], ...]:
        return tuple((kind, getattr(self, kind)) for kind in OUTPUT_KINDS)


@dataclass(frozen=True)
class Size:
    """A request's size: what a compaction is measured with."""

    chars: int
    messages: int
    prompt_tokens: int

    def to_json(self) -> dict[str, int]:
        return {"chars": self.chars, "messages": self.messages, "prompt_tokens": self.prompt_tokens}


@dataclass(frozen=True)
class Compaction:
    """Sizes around a compaction: the compaction request (`after` None: `before` is the main
    loop's last call before it) or the first call that continues from its summary."""

    before: Size
    after: Size | None = None

    def to_json(self) -> dict[str, Any]:
        if self.after is None:
            return {"request": True, "before": self.before.to_json()}
        return {"continued": True, "before": self.before.to_json(), "after": self.after.to_json(),
                "delta_chars": self.after.chars - self.before.chars,
                "delta_prompt_tokens": self.after.prompt_tokens - self.before.prompt_tokens}


class AgentLink(NamedTuple):
    """The `Agent`/`Task` tool call that launched a subagent call."""

    tool_use_id: str
    subagent_type: str | None  # as the Agent call named it


NO_DISPATCH, AMBIGUOUS = "no_dispatch_captured", "ambiguous_prompt"  # why a subagent call has no AgentLink


class AgentCounts(NamedTuple):
    """A session's running totals: `Agent`/`Task` calls its answers made, subagents linked to one
    (by agent id), subagents whose link was ambiguous (several waiting, none with their brief)."""

    dispatched: int = 0
    linked: int = 0
    ambiguous: int = 0


@dataclass(frozen=True)
class CallConfig:
    """How the request asked to be answered: `output_config.effort`, `thinking.type`, `max_tokens`,
    the `context_management.edits[].type` values (comma-separated), and `speed` (`fast` when the
    usage or the request says so). "" / 0 where the request says nothing."""

    effort: str = ""
    thinking_type: str = ""
    max_tokens: int = 0
    context_management: str = ""
    speed: str = ""

    @classmethod
    def of(cls, request: Mapping[str, Any], usage: Usage | None) -> "CallConfig":
        output, thinking = request.get("output_config"), request.get("thinking")
        edits = request.get("context_management")
        edits = edits.get("edits") if isinstance(edits, dict) else None
        max_tokens = request.get("max_tokens")
        fast = (usage is not None and usage.original.get("speed") == "fast") or request.get("speed") == "fast"
        return cls(
            effort=(_text(output.get("effort")) or "") if isinstance(output, dict) else "",
            thinking_type=(_text(thinking.get("type")) or "") if isinstance(thinking, dict) else "",
            max_tokens=max_tokens if type(max_tokens) is int else 0,
            context_management=",".join(edit["type"] for edit in edits if isinstance(edit, dict)
                                        and isinstance(edit.get("type"), str)) if isinstance(edits, list) else "",
            speed="fast" if fast else "",
        )


TRIGGERS = ("user_turn", "tool_continuation", "subagent", "automated", "unknown")


class Trigger(NamedTuple):
    """What made the call: `name` one of `TRIGGERS`; `detail` the subagent type of a subagent call,
    the kind of an automated one (`compaction`, a side call's kind)."""

    name: str
    detail: str = ""

    @classmethod
    def of(cls, kind: CallKind, continues_turn: bool | None, agent: AgentLink | None) -> "Trigger":
        """`continues_turn`: a main call follows an answer of its turn (None: it names no turn)."""
        if kind.kind == "main":
            return cls("unknown" if continues_turn is None else "tool_continuation" if continues_turn
                       else "user_turn")
        if kind.kind == "subagent":
            return cls("subagent", (agent.subagent_type or "") if agent else "")
        if kind.kind == "compaction":
            return cls("automated", "compaction")
        if kind.kind == "side":
            return cls("automated", kind.side_kind or "unknown")
        return cls("unknown")


class Launch(NamedTuple):
    """An `Agent`/`Task` tool span emitted with this call, and the llm span that asked for it."""

    tool_span_id: str
    llm_span_id: str


@dataclass(frozen=True)
class CallRecord:
    """One Messages API call (`count_tokens` included: `kind.kind == "count_tokens"`, no usage or
    cost, `counted_tokens` instead)."""

    exchange: Exchange
    kind: CallKind
    session: Session
    identity: Identity
    project: str  # the Opik project its records go to
    trace_id: str
    span_id: str
    parent_span_id: str | None  # the Agent span of a subagent call, else the configured root span
    turn_key: str
    model: str | None  # the response's, else the request's
    response: ResponseSummary
    usage: Usage | None  # None: the response reported none
    cost: Cost | None  # None for count_tokens, which is free
    attribution: Attribution  # where every character of the request went (read-only)
    output: OutputSplit
    cache: CacheDiagnosis | None = None  # None without usage, or for calls that read no cache
    rate_limits: RateLimits | None = None
    compaction: Compaction | None = None
    agent: AgentLink | None = None  # a subagent call linked to the Agent call that launched it
    counted_tokens: int | None = None  # a count_tokens answer
    launches: tuple[Launch, ...] = ()
    config: CallConfig = CallConfig()
    trigger: Trigger = Trigger("unknown")
    turn_digest: str = ""  # SHA-256 hex of the prompt that opened the turn (of its key when no prompt did)
    link_failure: str | None = None  # a subagent call without `agent`: NO_DISPATCH or AMBIGUOUS
    agent_counts: AgentCounts = AgentCounts()  # its session's, this call's answer included
    repository: TurnRepository | None = None  # git's view of its turn, when the probe has answered

    @property
    def error_type(self) -> str | None:
        """The error the call ended with (the API's error type, `upstream_error`, `client_aborted`,
        `incomplete_stream`, `http_error`, ...), as its span's `error_info.exception_type`; None
        when it succeeded."""
        error = self.response.error
        return exception_type(str(error.get("type") or "api_error")) if error else None


@dataclass(frozen=True)
class Materialized:
    """What one capture gave: its spool records (JSON-ready dicts, in spool order) and its call
    record (None for an exchange that is no model call: a preconnect, another route)."""

    records: list[dict]
    call: CallRecord | None = None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
