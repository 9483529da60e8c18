"""Opik's Cost Intelligence as a test oracle: what it ingests from the requests an Opik received,
and what its team views then show.

The contract is the product spec `opik-cost-intelligence.md` (shared reference set; issue 20).
Everything here is a pure function of the requests, in arrival order (`Received`): the bodies of
`POST /v1/private/spans/batch`, `PATCH /v1/private/spans/batch`, `POST /v1/private/traces`,
`POST /v1/private/traces/batch` and `PATCH /v1/private/traces/{id}`; any other request is a
`ValueError`, so nothing is ignored by accident. `ingest` builds Opik's three tables (spends,
their blocks, trace identities); `by_lane`, `breakdown`, `by_user`, `by_repository`, `users`
and `unattributed_input_share` read them as the team views do; `summary` gives the figures.

Where each rule was read, in comet-ml/opik's backend (`apps/opik-backend/src/main/`; the stored
copies of comet-ml/opik mix older and newer versions of a file, so the newest behaviour was read
in forks that carry upstream's later commits: mahenoorsalat/opik 7b71f9f and the translated
wanggebi19970203-cyber/opik-cn 17a9900):
- gates: `domain/CipxMetadata.java` (`metadata.cipx.call` an object; `cipx.session.identity`
  an object); `api/resources/v1/events/CostIntelligenceIngestionListener.java` (spans only on
  create, "no span update path"; identity on trace create and on trace update, where the trace
  must already be stored);
- a span's call: `domain/CipxSpendDAO.java`, `SpanRow.from` (missing numbers 0, strings "");
- allocation, lanes, labels: `domain/CipxSpendBlockDAO.java`, `BlockRow.from`, `lane`, `bdLane`,
  `label`, and the expectations of `CostIntelligenceIngestionTest.java`; rows keyed by span and
  block index, read without FINAL: migration `000098_create_cipx_spend_blocks.sql`;
- identity: `domain/CipxTraceIdentityDAO.java`, `TraceIdentityRow.from` (the later arrival wins:
  its version column is the event's publish time); the `schema_version >= 2` gate and the join
  to spends on (project, trace id): migrations `000093`/`000094`; agent counters as session
  running totals: `000118`/`000119`.
- `domain/AiSpendQueryBuilder.java` is the older read path, over `metadata.cc` of traces
  (`cc.identity.user_uuid`, `cc.billing.lanes`, `cc.git.repository`); the views over the cipx
  tables live in a separate Comet service. The roll-ups here follow the tables and the spec.

Where the Java and the spec disagree (this module follows the Java unless said otherwise):
- the span gate looks at `metadata.cipx.call` only, not at the span type: any span carrying it
  is ingested, not only `llm` spans;
- labels: `system_tools` / `system_tools_deferred` without `tool_name` are "(unattributed)";
  `system_prompt`, `env_info`, `agent_overhead`, `auto_classifier` are labelled with their
  category (the spec gives no label); output categories each have a lane of their own (the spec
  names them but not their lanes); `mcp_tool_calls` are labelled by server;
- older Java put `system_tools` in static_overhead and `agent_overhead` in unattributed: the spec
  and the newest Java agree, and so does this module;
- newest version of a trace's identity: by arrival (publish time), not by the trace's
  `last_updated_at` (000093 had said the latter): a re-sent older trace version wins here,
  unlike in Opik's trace table; the newest test says `user_uuid` is in that table's sort key, so
  a trace whose user changes keeps both rows; this module keeps the latest only, as the spec;
- a span created twice with a call counts twice until ClickHouse merges (block reads use no
  FINAL); after the merge the later arrival wins per block index, so a re-created span with
  fewer blocks keeps the earlier version's extra ones. `Ingested.repeated_creates` lists such
  spans; the tables here are the merged state;
- `identity.user_id` stands in for an empty `user_uuid` (Java only).
Deliberately stricter than Java (Jackson would coerce): a number given as a string or boolean
reads as 0, a non-string as "", a non-boolean `dirty` as false; counters outside [0, 2^32) as 0.
"""

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

PROJECT = "claude-code"  # the project the Cost Intelligence views read
DEFAULT_PROJECT = "Default Project"  # where Opik puts a record without project_name
BASE_TIERS = ("input", "cache_read", "cache_creation", "output")
INPUT_TIERS = BASE_TIERS[:3]
USAGE_FIELDS = dict(zip(BASE_TIERS, ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens",
                                     "output_tokens"), strict=True))
CACHE_STATUS_TIERS = {"fresh": "input", "read": "cache_read", "write": "cache_creation"}
RESIDUAL_INDEX = 65531  # + the tier's position in BASE_TIERS
UNATTRIBUTED = "unattributed"
LANES = {
    "user_prompts": "user_prompts", "prior_assistant": "prior_assistant",
    "system_tools": "built_in_tools", "system_tools_deferred": "built_in_tools",
    "mcp_tools_active": "mcp_servers", "mcp_tools_deferred": "mcp_servers", "mcp_server_instructions": "mcp_servers",
    "skills_menu": "skills", "skills_loaded": "skills", "custom_agents": "custom_agents", "memory": "memory",
    "file_attachments": "file_attachments",
    "system_prompt": "static_overhead", "env_info": "static_overhead", "agent_overhead": "static_overhead",
    "auto_classifier": "static_overhead",
    "thinking": "thinking", "assistant_text": "assistant_text", "built_in_tool_calls": "built_in_tool_calls",
    "mcp_tool_calls": "mcp_tool_calls", "skill_invocations": "skill_invocations",
}
NO_BREAKDOWN = frozenset({"mcp_tools_deferred", "mcp_server_instructions"})
LABELLED_BY_RESOURCE = frozenset({"file_attachments", "skills_menu", "skills_loaded", "custom_agents", "memory",
                                  "skill_invocations"})
LABELLED_BY_CATEGORY = frozenset({"system_prompt", "env_info", "auto_classifier", "agent_overhead", "thinking",
                                  "assistant_text"})
ROUTE = re.compile(r"/v1/private/(spans/batch|traces/batch|traces|traces/(?P<id>[0-9a-fA-F-]{36}))\Z")
ENDPOINTS = frozenset({"POST spans/batch", "PATCH spans/batch", "POST traces", "POST traces/batch",
                       "PATCH traces/{id}"})

Tally = dict[str, dict[str, float]]  # key -> stored tier -> tokens


@dataclass(frozen=True)
class Received:
    """One request as Opik received it: `path` may carry a base path (`/api/v1/...`) and a query."""

    method: str
    path: str
    body: Any


@dataclass(frozen=True)
class Block:
    """A row of `cipx_spend_blocks`: one block with its share of the span's tokens, or a residual."""

    index: int  # position in `cipx.blocks[]`; RESIDUAL_INDEX + tier position for a residual
    category: str
    side: str
    cache_status: str
    chars: int
    tool_name: str
    tool_server: str
    tool_use_id: str
    resource: str
    kind: str
    subcategory: str
    tier: str  # a BASE_TIERS name, cache_creation as `cache_creation_5m` / `_1h`; "" for no tier
    lane: str
    breakdown_lane: str  # "" when the block is in no breakdown
    label: str
    tokens: float
    residual: bool = False


@dataclass(frozen=True)
class Spend:
    """A row of `cipx_spends` (an ingested call) and its blocks."""

    span_id: str
    trace_id: str
    project: str
    model: str
    usage: dict[str, int]  # BASE_TIERS -> tokens
    cache_creation_5m: int
    cache_creation_1h: int
    effort: str
    thinking_type: str
    max_tokens: int
    context_management: str
    speed: str
    trigger: str
    trigger_detail: str
    turn_key: str
    parent_tool_use_id: str
    link_failure_reason: str
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class Identity:
    """A row of `cipx_trace_identities`: who ran a trace's turn, in which repository."""

    trace_id: str
    project: str
    user_uuid: str
    email: str
    display_name: str
    billing_mode: str
    plan: str
    plan_usage_status: str
    organization_type: str
    seat_tier: str
    billing_type: str
    repository: str  # `repository.remote`
    branch: str
    head_sha: str
    head_sha_end: str
    dirty: bool
    commits_in_trace: int
    files_added: int
    files_deleted: int
    lines_added: int
    lines_deleted: int
    schema_version: int
    harness: str
    session_id: str
    cipx_version: str
    agents_dispatched: int
    agents_linked: int
    agents_ambiguous: int

    @property
    def counted(self) -> bool:
        """Whether the views count this trace's user: schema 2 or later and a user uuid."""
        return self.schema_version >= 2 and self.user_uuid != ""


@dataclass(frozen=True)
class Ingested:
    """Opik's Cost Intelligence tables after the requests, merged."""

    spends: dict[str, Spend] = field(default_factory=dict)  # by span id
    identities: dict[str, Identity] = field(default_factory=dict)  # by trace id
    repeated_creates: tuple[str, ...] = ()  # span ids created with a call more than once


# --- reading JSON as Jackson's path(...).asX(default) does, strictly --------------------------

def _path(node: Any, *names: str) -> Any:
    for name in names:
        node = node.get(name) if isinstance(node, dict) else None
    return node


def _text(node: Any, *names: str) -> str:
    value = _path(node, *names)
    return value if isinstance(value, str) else ""


def _number(node: Any, *names: str) -> int:
    value = _path(node, *names)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _uint32(node: Any, *names: str) -> int:
    value = _path(node, *names)
    return value if type(value) is int and 0 <= value < 2**32 else 0


# --- gates ---------------------------------------------------------------------------------------

def has_spend_call(metadata: Any) -> bool:
    """The span gate: `metadata.cipx.call` is a JSON object."""
    return isinstance(_path(metadata, "cipx", "call"), dict)


def has_identity(metadata: Any) -> bool:
    """The trace gate: `metadata.cipx.session.identity` is a JSON object."""
    return isinstance(_path(metadata, "cipx", "session", "identity"), dict)


def project_of(body: dict) -> str:
    """The project a create request puts its record in."""
    name = body.get("project_name")
    return name if isinstance(name, str) and name.strip() else DEFAULT_PROJECT


# --- a span's blocks -----------------------------------------------------------------------------

def write_tier(usage: Any) -> str:
    """The name of the span's write tier: 5-minute only when 5m > 0 and 1h == 0."""
    fives, hours = _number(usage, "cache_creation", "ephemeral_5m_input_tokens"), _number(
        usage, "cache_creation", "ephemeral_1h_input_tokens")
    return "cache_creation_5m" if fives > 0 and hours == 0 else "cache_creation_1h"


def base_tier(side: str, cache_status: str) -> str:
    """The usage tier a block's tokens come from, "" for none (an input block without a status)."""
    if side == "output":
        return "output"
    return CACHE_STATUS_TIERS.get(cache_status, "") if side == "input" else ""


def lane(category: str, tool_server: str) -> str:
    """The composition lane of a category; a category with no lane is `unattributed`."""
    if category == "tool_io":
        return "mcp_servers" if tool_server else "built_in_tools"
    return LANES.get(category, UNATTRIBUTED)


def breakdown_lane(category: str, tool_server: str) -> str:
    """The lane whose breakdown lists the block, "" for none."""
    found = lane(category, tool_server)
    return "" if category in NO_BREAKDOWN or found == UNATTRIBUTED else found


def label(category: str, tool_server: str, tool_name: str, resource: str, kind: str, chars: int) -> str:
    """The block's row in its lane's breakdown ("" for none)."""
    if category == "user_prompts":
        return "small" if chars < 1_000 else "medium" if chars < 10_000 else "large" if chars < 100_000 else "xlarge"
    if category in LABELLED_BY_RESOURCE:
        return resource
    if category in LABELLED_BY_CATEGORY:
        return category
    if category in ("system_tools", "system_tools_deferred"):
        return tool_name or "(unattributed)"
    return {"tool_io": tool_server or tool_name, "prior_assistant": kind, "mcp_tools_active": tool_server,
            "mcp_tool_calls": tool_server, "built_in_tool_calls": tool_name}.get(category, "")


def _skipped(block: Any) -> bool:
    return _text(block, "category") == "identity_context" and _text(block, "parent_category") == "identity_context"


def allocate(metadata: Any) -> tuple[Block, ...]:
    """The block rows of one span: every block (identity context skipped) with
    `chars x tier tokens / chars of the tier`, and a residual row for a tier with tokens and no
    block. A tier whose blocks have 0 characters allocates nothing; a block with no tier gets 0."""
    usage = _path(metadata, "cipx", "call", "usage")
    tokens = {tier: _number(usage, USAGE_FIELDS[tier]) for tier in BASE_TIERS}
    names = {**{tier: tier for tier in BASE_TIERS}, "cache_creation": write_tier(usage)}
    raw = _path(metadata, "cipx", "blocks")
    blocks = [(index, block) for index, block in enumerate(raw if isinstance(raw, list) else []) if not _skipped(block)]
    tier_chars: Counter[str] = Counter()
    for _, block in blocks:
        if tier := base_tier(_text(block, "side"), _text(block, "cache_status")):
            tier_chars[tier] += _number(block, "chars")
    rows = [_row(index, block, tokens, tier_chars, names) for index, block in blocks]
    rows += [_residual(position, names[tier], tokens[tier])
             for position, tier in enumerate(BASE_TIERS) if tier not in tier_chars and tokens[tier] > 0]
    return tuple(rows)


def _residual(position: int, tier: str, tokens: int) -> Block:
    empty = dict.fromkeys(("category", "side", "cache_status", "tool_name", "tool_server", "tool_use_id", "resource",
                           "kind", "subcategory", "breakdown_lane", "label"), "")
    return Block(index=RESIDUAL_INDEX + position, chars=0, tier=tier, lane=UNATTRIBUTED, tokens=float(tokens),
                 residual=True, **empty)


def _row(index: int, block: Any, tokens: dict[str, int], tier_chars: Counter, names: dict[str, str]) -> Block:
    fields = {name: _text(block, name) for name in ("category", "side", "cache_status", "tool_name", "tool_server",
                                                     "tool_use_id", "resource", "kind", "subcategory")}
    chars = _number(block, "chars")
    tier = base_tier(fields["side"], fields["cache_status"])
    share = chars * float(tokens[tier]) / tier_chars[tier] if tier and tier_chars[tier] > 0 else 0.0
    category, server = fields["category"], fields["tool_server"]
    return Block(index=index, chars=chars, tier=names[tier] if tier else "", lane=lane(category, server),
                 breakdown_lane=breakdown_lane(category, server), tokens=share,
                 label=label(category, server, fields["tool_name"], fields["resource"], fields["kind"], chars),
                 **fields)


def spend(span: dict) -> Spend:
    """The spend row of a span that passed the gate."""
    metadata = span.get("metadata")
    call = _path(metadata, "cipx", "call")
    usage = call.get("usage")
    return Spend(
        span_id=span.get("id"), trace_id=span.get("trace_id"), project=project_of(span),
        model=_text(call, "model"), usage={tier: _number(usage, USAGE_FIELDS[tier]) for tier in BASE_TIERS},
        cache_creation_5m=_number(usage, "cache_creation", "ephemeral_5m_input_tokens"),
        cache_creation_1h=_number(usage, "cache_creation", "ephemeral_1h_input_tokens"),
        effort=_text(call, "config", "effort"), thinking_type=_text(call, "config", "thinking_type"),
        max_tokens=_number(call, "config", "max_tokens"),
        context_management=_text(call, "config", "context_management"), speed=_text(call, "config", "speed"),
        trigger=_text(call, "trigger"), trigger_detail=_text(call, "trigger_detail"), turn_key=_text(call, "turn_key"),
        parent_tool_use_id=_text(call, "parent_tool_use_id"), link_failure_reason=_text(call, "link_failure_reason"),
        blocks=allocate(metadata))


def allocated(row: Spend) -> dict[str, float]:
    """The tokens the span's block rows hold, per usage tier (both write TTLs as `cache_creation`)."""
    out = dict.fromkeys(BASE_TIERS, 0.0)
    for block in row.blocks:
        if block.tier:
            out[block.tier.removesuffix("_5m").removesuffix("_1h")] += block.tokens
    return out


# --- a trace's identity ------------------------------------------------------------------------

def identity(trace_id: str, project: str, metadata: Any) -> Identity:
    """The identity row of a trace version that passed the gate."""
    session = _path(metadata, "cipx", "session")
    who, repo = session.get("identity"), session.get("repository")
    text = {name: _text(who, name) for name in ("email", "display_name", "billing_mode", "plan", "plan_usage_status",
                                                "organization_type", "seat_tier", "billing_type")}
    return Identity(
        trace_id=trace_id, project=project, user_uuid=_text(who, "user_uuid") or _text(who, "user_id"), **text,
        repository=_text(repo, "remote"), branch=_text(repo, "branch"), head_sha=_text(repo, "head_sha"),
        head_sha_end=_text(repo, "head_sha_end"), dirty=_path(repo, "dirty") is True,
        commits_in_trace=_uint32(repo, "commits_in_trace"), files_added=_uint32(repo, "files_added"),
        files_deleted=_uint32(repo, "files_deleted"), lines_added=_uint32(repo, "lines_added"),
        lines_deleted=_uint32(repo, "lines_deleted"), schema_version=_number(session, "schema_version"),
        harness=_text(session, "harness"), session_id=_text(session, "session_id"),
        cipx_version=_text(session, "cipx_version"), agents_dispatched=_uint32(session, "agents_dispatched"),
        agents_linked=_uint32(session, "agents_linked"), agents_ambiguous=_uint32(session, "agents_ambiguous"))


# --- ingestion -----------------------------------------------------------------------------------

def route(request: Received) -> tuple[str, str | None]:
    """(endpoint, the trace id of a trace update) of a request; ValueError for any other endpoint."""
    match = ROUTE.search(request.path.split("?", 1)[0])
    endpoint = match and f"{request.method.upper()} {'traces/{id}' if match.group('id') else match.group(1)}"
    if endpoint not in ENDPOINTS:
        raise ValueError(f"not a write endpoint Cost Intelligence reads: {request.method} {request.path}")
    return endpoint, match.group("id")


def ingest(received: Iterable[Received]) -> Ingested:
    """What Cost Intelligence keeps of the requests, in arrival order."""
    spends: dict[str, Spend] = {}
    identities: dict[str, Identity] = {}
    trace_projects: dict[str, str] = {}
    creates: Counter[str] = Counter()
    for request in received:
        endpoint, updated_trace = route(request)
        if endpoint == "POST spans/batch":
            for span in request.body["spans"]:
                if has_spend_call(span.get("metadata")):
                    creates[span["id"]] += 1
                    spends[span["id"]] = _merged(spends.get(span["id"]), spend(span))
        elif endpoint in ("POST traces", "POST traces/batch"):
            for trace in request.body["traces"] if endpoint == "POST traces/batch" else [request.body]:
                trace_projects[trace["id"]] = project_of(trace)
                if has_identity(trace.get("metadata")):
                    identities[trace["id"]] = identity(trace["id"], project_of(trace), trace["metadata"])
        elif endpoint == "PATCH traces/{id}" and updated_trace in trace_projects:
            if has_identity(request.body.get("metadata")):
                identities[updated_trace] = identity(updated_trace, trace_projects[updated_trace],
                                                     request.body["metadata"])
        # PATCH spans/batch: span updates never reach Cost Intelligence
    return Ingested(spends, identities, tuple(span_id for span_id, count in creates.items() if count > 1))


def _merged(earlier: Spend | None, later: Spend) -> Spend:
    """A span created again: the later row wins, block by block index (earlier extra blocks stay)."""
    if earlier is None:
        return later
    by_index = {block.index: block for block in earlier.blocks} | {block.index: block for block in later.blocks}
    return replace(later, blocks=tuple(by_index[index] for index in sorted(by_index)))


# --- the team views ------------------------------------------------------------------------------

def _add(tally: Tally, key: str, block: Block) -> None:
    tiers = tally.setdefault(key, {})
    tiers[block.tier] = tiers.get(block.tier, 0.0) + block.tokens


def _spends(ingested: Ingested, project: str) -> list[Spend]:
    return [row for row in ingested.spends.values() if row.project == project]


def _owner(ingested: Ingested, row: Spend) -> Identity | None:
    """The counted identity of the span's trace in the same project, if any."""
    found = ingested.identities.get(row.trace_id)
    return found if found is not None and found.project == row.project and found.counted else None


def by_lane(ingested: Ingested, project: str = PROJECT, user_uuid: str | None = None) -> Tally:
    """The composition: tokens per lane and tier (residuals in `unattributed`), for one user if given."""
    out: Tally = {}
    for row in _spends(ingested, project):
        owner = _owner(ingested, row)
        if user_uuid is None or owner is not None and owner.user_uuid == user_uuid:
            for block in row.blocks:
                if block.tier:
                    _add(out, block.lane, block)
    return out


def breakdown(ingested: Ingested, lane_name: str, project: str = PROJECT) -> Tally:
    """One lane's breakdown (e.g. `mcp_servers`, `skills`, `custom_agents`, `memory`): tokens per
    label and tier; blocks without a label are left out, as are blocks with no tier."""
    out: Tally = {}
    for row in _spends(ingested, project):
        for block in row.blocks:
            if block.breakdown_lane == lane_name and block.label and block.tier:
                _add(out, block.label, block)
    return out


def users(ingested: Ingested, project: str = PROJECT) -> dict[str, Identity]:
    """The users the views count: user uuid -> the identity of the latest trace version naming it."""
    return {row.user_uuid: row for row in ingested.identities.values() if row.project == project and row.counted}


def by_user(ingested: Ingested, project: str = PROJECT) -> Tally:
    """Tokens per user uuid and tier: the spans whose trace names a counted user."""
    return _by_owner(ingested, project, lambda owner: owner.user_uuid)


def by_repository(ingested: Ingested, project: str = PROJECT) -> Tally:
    """Tokens per repository (`repository.remote`) and tier, for traces of counted users."""
    return _by_owner(ingested, project, lambda owner: owner.repository)


def _by_owner(ingested: Ingested, project: str, key: Callable[[Identity], str]) -> Tally:
    out: Tally = {}
    for row in _spends(ingested, project):
        owner = _owner(ingested, row)
        if owner is not None and key(owner):
            for block in row.blocks:
                if block.tier:
                    _add(out, key(owner), block)
    return out


def unattributed_input_share(ingested: Ingested, project: str = PROJECT) -> float:
    """Input-side tokens in `unattributed` (residuals included) over all input-side tokens billed."""
    rows = _spends(ingested, project)
    billed = sum(row.usage[tier] for row in rows for tier in INPUT_TIERS)
    lost = sum(block.tokens for row in rows for block in row.blocks
               if block.lane == UNATTRIBUTED and block.tier and block.tier != "output")
    return lost / billed if billed else 0.0


def summary(ingested: Ingested, project: str = PROJECT) -> dict[str, Any]:
    """The figures of what the views show: spans, users, repositories, tokens per lane."""
    lanes = by_lane(ingested, project)
    return {
        "spans_ingested": len(_spends(ingested, project)),
        "spans_in_other_projects": len(ingested.spends) - len(_spends(ingested, project)),
        "repeated_creates": len(ingested.repeated_creates),
        "traces_with_identity": sum(row.project == project for row in ingested.identities.values()),
        "users": len(users(ingested, project)),
        "repositories": sorted(by_repository(ingested, project)),
        "tokens_by_lane": {name: round(sum(tiers.values()), 2) for name, tiers in sorted(lanes.items())},
        "unattributed_input_share": round(unattributed_input_share(ingested, project), 4),
    }


def received_from_spool(records: Iterable[dict]) -> list[Received]:
    """Spool records (`{"kind", "body"}`, in order) as the creates that carry them: one
    `POST .../traces/batch` or `.../spans/batch` per record. Today's shipper groups them (traces
    before spans within a batch, each id once), which changes nothing Cost Intelligence keeps."""
    return [Received("POST", f"/v1/private/{record['kind']}s/batch", {f"{record['kind']}s": [record["body"]]})
            for record in records]
