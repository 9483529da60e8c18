"""Opik's Cost Intelligence rules as the test oracle tests/cost_intelligence.py implements them,
on hand-made span and trace bodies whose expected numbers are worked out here."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests import cost_intelligence as ci
from tests.cost_intelligence import Received, allocated, ingest

T1, T2, T3, T4, T5, T9 = (f"01a20b41-ef23-7d25-a352-80856a6255f{n}" for n in "123459")
S1, S2, S3, S4 = (f"01a20b41-ef23-7d4e-9d6b-85191069cb2{n}" for n in "1234")
START = "2026-11-24T01:53:20.163000Z"
HAIKU = "claude-haiku-4-5"


def block(category: str, side: str = "input", cache_status: str | None = "read", chars: int = 0, **fields) -> dict:
    out = {"category": category, "side": side, "chars": chars, **fields}
    return out if cache_status is None else {**out, "cache_status": cache_status}


def usage(fresh: int = 0, read: int = 0, write: int = 0, output: int = 0, **split: int) -> dict:
    out = {"input_tokens": fresh, "cache_read_input_tokens": read, "cache_creation_input_tokens": write,
           "output_tokens": output}
    return {**out, "cache_creation": split} if split else out


def call(used: dict, blocks: list[dict], **fields) -> dict:
    return {"cc": {"call": {"kind": "main"}}, "cipx": {"call": {"model": HAIKU, "usage": used, **fields},
                                                       "blocks": blocks}}


def span(span_id: str, trace_id: str, metadata: object, project: str | None = "claude-code", kind="llm") -> dict:
    body = {"id": span_id, "trace_id": trace_id, "name": "main", "type": kind, "start_time": START,
            "metadata": metadata}
    return body if project is None else {**body, "project_name": project}


def session(user_uuid: str = "", remote: str = "", schema_version: object = 2, **identity) -> dict:
    return {"cipx": {"session": {"schema_version": schema_version, "harness": "claude_code", "session_id": "s1",
                                 "identity": {"user_uuid": user_uuid, **identity},
                                 "repository": {"remote": remote}}}}


def trace(trace_id: str, metadata: object, project: str = "claude-code") -> dict:
    return {"id": trace_id, "project_name": project, "name": "say hello", "start_time": START, "metadata": metadata}


def spans_created(*spans: dict) -> Received:
    return Received("POST", "/api/v1/private/spans/batch", {"spans": list(spans)})


def traces_created(*traces: dict) -> Received:
    return Received("POST", "/api/v1/private/traces/batch", {"traces": list(traces)})


# --- allocation ------------------------------------------------------------------------------

WORKED = call(usage(fresh=6, read=1000, write=300, output=50, ephemeral_5m_input_tokens=300,
                    ephemeral_1h_input_tokens=0), [
    block("system_prompt", chars=3000),
    block("identity_context", chars=5000, parent_category="identity_context"),
    block("memory", chars=1000, resource="/home/dev/code/acme-api/CLAUDE.md", subcategory="project_instructions",
          sha256="ab12"),
    block("tool_io", cache_status="write", chars=400, tool_name="mcp__github__search_issues", tool_server="github",
          tool_use_id="toolu_1", kind="tool_result"),
    block("tool_io", cache_status="write", chars=200, tool_name="Bash", tool_use_id="toolu_2", kind="tool_result"),
    block("user_prompts", cache_status="fresh", chars=0),
    block("slash_command", cache_status="write", chars=0),
    block("prior_assistant", cache_status=None, chars=500, kind="text"),
    block("thinking", side="output", cache_status=None, chars=300),
    block("mcp_tool_calls", side="output", cache_status="none", chars=100, tool_server="github",
          tool_name="mcp__github__search_issues"),
], trigger="user_turn", turn_key="9f" * 32, config={"effort": "high", "max_tokens": 32000, "speed": ""})


def test_each_tier_is_shared_by_characters_among_its_blocks():
    row = ingest([spans_created(span(S1, T1, WORKED))]).spends[S1]
    got = {b.index: (b.tier, b.lane, b.label, b.tokens) for b in row.blocks}
    assert got == {
        # read tier: 3000 + 1000 characters share 1000 tokens (the identity context block is skipped)
        0: ("cache_read", "static_overhead", "system_prompt", 750.0),
        2: ("cache_read", "memory", "/home/dev/code/acme-api/CLAUDE.md", 250.0),
        # write tier (5-minute only): 400 + 200 + 0 characters share 300 tokens
        3: ("cache_creation_5m", "mcp_servers", "github", 200.0),
        4: ("cache_creation_5m", "built_in_tools", "Bash", 100.0),
        6: ("cache_creation_5m", "unattributed", "", 0.0),
        # fresh tier: its only block has 0 characters, so its 6 tokens are lost (no residual)
        5: ("input", "user_prompts", "small", 0.0),
        # an input block without a cache status is in no tier: it gets nothing
        7: ("", "prior_assistant", "text", 0.0),
        # output: 300 + 100 characters share 50 tokens, whatever the cache status says
        8: ("output", "thinking", "thinking", 37.5),
        9: ("output", "mcp_tool_calls", "github", 12.5),
    }
    assert allocated(row) == {"input": 0.0, "cache_read": 1000.0, "cache_creation": 300.0, "output": 50.0}
    assert row.usage == {"input": 6, "cache_read": 1000, "cache_creation": 300, "output": 50}
    memory = next(b for b in row.blocks if b.category == "memory")
    assert (memory.subcategory, memory.chars, memory.side, memory.cache_status) == (
        "project_instructions", 1000, "input", "read")
    assert (row.model, row.trigger, row.turn_key, row.effort, row.max_tokens, row.thinking_type) == (
        HAIKU, "user_turn", "9f" * 32, "high", 32000, "")


def test_a_tier_with_tokens_and_no_block_goes_to_one_residual_row():
    metadata = call(usage(fresh=10, read=0, write=20, output=5), [block("assistant_text", side="output", chars=10)])
    row = ingest([spans_created(span(S1, T1, metadata))]).spends[S1]
    got = [(b.index, b.residual, b.tier, b.lane, b.label, b.tokens) for b in row.blocks]
    assert got == [(0, False, "output", "assistant_text", "assistant_text", 5.0),
                   (65531, True, "input", "unattributed", "", 10.0),
                   (65533, True, "cache_creation_1h", "unattributed", "", 20.0)]  # no split reported: 1h
    assert allocated(row) == {"input": 10.0, "cache_read": 0.0, "cache_creation": 20.0, "output": 5.0}


def test_a_span_without_blocks_is_all_residual():
    row = ingest([spans_created(span(S1, T1, {"cipx": {"call": {"usage": usage(fresh=3, output=4)}}}))]).spends[S1]
    assert [(b.tier, b.tokens) for b in row.blocks] == [("input", 3.0), ("output", 4.0)]
    assert row.model == "" and row.trigger == ""


@pytest.mark.parametrize("split, expected", [
    ({"ephemeral_5m_input_tokens": 300, "ephemeral_1h_input_tokens": 0}, "cache_creation_5m"),
    ({"ephemeral_5m_input_tokens": 300}, "cache_creation_5m"),
    ({"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200}, "cache_creation_1h"),
    ({"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 300}, "cache_creation_1h"),
    ({"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}, "cache_creation_1h"),
    (None, "cache_creation_1h"),
])
def test_the_write_tier_is_5_minutes_only_when_nothing_was_written_for_an_hour(split, expected):
    used = usage(write=300) if split is None else {**usage(write=300), "cache_creation": split}
    assert ci.write_tier(used) == expected
    row = ingest([spans_created(span(S1, T1, call(used, [block("memory", cache_status="write", chars=7)])))])
    assert [(b.tier, b.tokens) for b in row.spends[S1].blocks] == [(expected, 300.0)]


@pytest.mark.parametrize("category, fields, lane, breakdown_lane, label", [
    ("user_prompts", {"chars": 999}, "user_prompts", "user_prompts", "small"),
    ("user_prompts", {"chars": 1000}, "user_prompts", "user_prompts", "medium"),
    ("user_prompts", {"chars": 10_000}, "user_prompts", "user_prompts", "large"),
    ("user_prompts", {"chars": 100_000}, "user_prompts", "user_prompts", "xlarge"),
    ("prior_assistant", {"kind": "tool_use"}, "prior_assistant", "prior_assistant", "tool_use"),
    ("tool_io", {"tool_name": "Read"}, "built_in_tools", "built_in_tools", "Read"),
    ("tool_io", {"tool_name": "mcp__linear__get", "tool_server": "linear"}, "mcp_servers", "mcp_servers", "linear"),
    ("system_tools", {"tool_name": "Bash"}, "built_in_tools", "built_in_tools", "Bash"),
    ("system_tools_deferred", {}, "built_in_tools", "built_in_tools", "(unattributed)"),
    ("mcp_tools_active", {"tool_name": "mcp__github__x", "tool_server": "github"}, "mcp_servers", "mcp_servers",
     "github"),
    ("mcp_tools_deferred", {"tool_server": "github"}, "mcp_servers", "", ""),
    ("mcp_server_instructions", {"tool_server": "github"}, "mcp_servers", "", ""),
    ("skills_menu", {"resource": "pdf"}, "skills", "skills", "pdf"),
    ("skills_loaded", {"resource": "pdf"}, "skills", "skills", "pdf"),
    ("custom_agents", {"resource": "code-reviewer"}, "custom_agents", "custom_agents", "code-reviewer"),
    ("memory", {"resource": "/r/CLAUDE.md"}, "memory", "memory", "/r/CLAUDE.md"),
    ("file_attachments", {"resource": "shot.png"}, "file_attachments", "file_attachments", "shot.png"),
    ("system_prompt", {}, "static_overhead", "static_overhead", "system_prompt"),
    ("env_info", {}, "static_overhead", "static_overhead", "env_info"),
    ("agent_overhead", {}, "static_overhead", "static_overhead", "agent_overhead"),
    ("auto_classifier", {}, "static_overhead", "static_overhead", "auto_classifier"),
    ("slash_command", {"resource": "/review"}, "unattributed", "", ""),
    ("system_reminder", {}, "unattributed", "", ""),
    ("envelope", {}, "unattributed", "", ""),
    ("", {}, "unattributed", "", ""),
    ("thinking", {}, "thinking", "thinking", "thinking"),
    ("assistant_text", {}, "assistant_text", "assistant_text", "assistant_text"),
    ("built_in_tool_calls", {"tool_name": "Edit"}, "built_in_tool_calls", "built_in_tool_calls", "Edit"),
    ("mcp_tool_calls", {"tool_name": "mcp__github__x", "tool_server": "github"}, "mcp_tool_calls", "mcp_tool_calls",
     "github"),
    ("skill_invocations", {"resource": "pdf"}, "skill_invocations", "skill_invocations", "pdf"),
])
def test_each_category_has_its_lane_and_breakdown_label(category, fields, lane, breakdown_lane, label):
    metadata = call(usage(read=10), [block(category, **{"chars": 5, **fields})])
    (row,) = ingest([spans_created(span(S1, T1, metadata))]).spends[S1].blocks
    assert (row.lane, row.breakdown_lane, row.label) == (lane, breakdown_lane, label)


TIERS = ("input", "cache_read", "cache_creation", "output")
blocks_strategy = st.lists(st.fixed_dictionaries({
    "category": st.sampled_from(["memory", "tool_io", "identity_context", "slash_command", "thinking"]),
    "side": st.sampled_from(["input", "output", ""]),
    "cache_status": st.sampled_from(["fresh", "read", "write", "", "none"]),
    "parent_category": st.sampled_from(["", "identity_context"]),
    "chars": st.integers(0, 100_000),
}), max_size=12)


@given(st.tuples(*(st.integers(0, 10**6) for _ in TIERS)), blocks_strategy)
def test_a_tier_keeps_its_tokens_unless_its_blocks_are_all_empty(tokens, blocks):
    used = usage(*tokens)
    row = ingest([spans_created(span(S1, T1, call(used, blocks)))]).spends[S1]
    counted = [b for b in blocks if (b["category"], b["parent_category"]) != ("identity_context",) * 2]
    for tier, billed in zip(TIERS, tokens, strict=True):
        in_tier = [b for b in counted if ci.base_tier(b["side"], b["cache_status"]) == tier]
        expected = 0 if in_tier and not any(b["chars"] for b in in_tier) else billed
        assert math.isclose(allocated(row)[tier], expected, rel_tol=1e-9, abs_tol=1e-6)
        assert sum(b.residual for b in row.blocks if b.tier.startswith(tier)) == (not in_tier and billed > 0)
    assert len([b for b in row.blocks if not b.residual]) == len(counted)
    assert all(b.tokens == 0 for b in row.blocks if not b.tier)


# --- gates -----------------------------------------------------------------------------------

def test_only_spans_created_with_a_call_object_are_ingested_and_updates_add_nothing():
    small = call(usage(read=10), [block("memory", chars=1, resource="m")])
    received = [
        spans_created(span(S1, T1, small), span(S2, T1, {"cc": {"call": {"kind": "main"}}}),
                      span(S3, T1, {"cipx": {"call": "not an object"}}),
                      span(S4, T1, '{"cipx": {"call": {}}}')),  # metadata may be a string: not an object
        Received("PATCH", "/api/v1/private/spans/batch",
                 {"ids": [S2, S3], "update": {"trace_id": T1, "metadata": small}}),
    ]
    ingested = ingest(received)
    assert set(ingested.spends) == {S1}
    assert ingested.repeated_creates == ()


def test_the_gate_looks_at_the_call_not_the_span_type():
    ingested = ingest([spans_created(span(S1, T1, call(usage(output=3), []), kind="tool"))])
    assert set(ingested.spends) == {S1}


def test_a_span_created_twice_is_listed_and_keeps_blocks_the_second_version_lacks():
    first = call(usage(read=40), [block("memory", chars=100, resource="a"), block("memory", chars=300, resource="b")])
    second = call(usage(read=40), [block("memory", chars=100, resource="a")])
    ingested = ingest([spans_created(span(S1, T1, first)), spans_created(span(S1, T1, second))])
    assert ingested.repeated_creates == (S1,)
    # index 0 from the second version (100 of 100 chars: 40), index 1 left from the first (300 of 400: 30)
    assert [(b.resource, b.tokens) for b in ingested.spends[S1].blocks] == [("a", 40.0), ("b", 30.0)]
    assert allocated(ingested.spends[S1])["cache_read"] == 70.0


def test_the_views_read_only_the_claude_code_project():
    metadata = call(usage(output=8), [block("assistant_text", side="output", chars=1)])
    ingested = ingest([
        spans_created(span(S1, T1, metadata), span(S2, T1, metadata, project="claude-code-alice"),
                      span(S3, T1, metadata, project=None)),
        traces_created(trace(T1, session("u1")), trace(T2, session("u2"), project="claude-code-alice")),
    ])
    assert {row.project for row in ingested.spends.values()} == {"claude-code", "claude-code-alice", "Default Project"}
    assert ci.by_lane(ingested) == {"assistant_text": {"output": 8.0}}
    assert set(ci.users(ingested)) == {"u1"} and set(ci.users(ingested, "claude-code-alice")) == {"u2"}
    assert ci.summary(ingested)["spans_ingested"] == 1 and ci.summary(ingested)["spans_in_other_projects"] == 2


@pytest.mark.parametrize("method, path", [
    ("POST", "/v1/private/spans"),
    ("PATCH", f"/v1/private/spans/{S1}"),
    ("PATCH", "/v1/private/traces/batch"),
    ("POST", "/v1/private/traces/batch/extra"),
    ("GET", "/v1/private/traces"),
    ("POST", f"/v1/private/traces/{T1}"),
])
def test_a_request_to_any_other_endpoint_is_refused(method, path):
    with pytest.raises(ValueError, match="not a write endpoint"):
        ingest([Received(method, path, {})])


def test_the_five_endpoints_are_recognised_with_a_base_path_and_a_query():
    assert ci.route(Received("POST", "/api/v1/private/traces/batch?x=1", {})) == ("POST traces/batch", None)
    assert ci.route(Received("patch", f"/opik/api/v1/private/traces/{T1}", {})) == ("PATCH traces/{id}", T1)
    assert ci.route(Received("POST", "/v1/private/traces", {})) == ("POST traces", None)
    assert ci.route(Received("PATCH", "/v1/private/spans/batch", {}))[0] == "PATCH spans/batch"


# --- identity --------------------------------------------------------------------------------

def test_the_newest_trace_version_with_an_identity_wins():
    created = [
        traces_created(trace(T1, session("u1", email="old@acme.test"))),
        Received("POST", "/v1/private/traces", trace(T1, session("u1", email="new@acme.test"))),
        traces_created(trace(T1, {"cc": {"metrics_rollup": {}}})),  # a version without identity changes nothing
    ]
    assert ingest(created).identities[T1].email == "new@acme.test"
    ingested = ingest([
        *created,
        Received("PATCH", f"/v1/private/traces/{T1}", {"metadata": session("u1", email="patched@acme.test")}),
        Received("PATCH", f"/v1/private/traces/{T1}", {"name": "renamed"}),
        Received("PATCH", f"/v1/private/traces/{T9}", {"metadata": session("u9")}),  # never created: dropped
        traces_created(trace(T2, session("u2", schema_version=1)), trace(T3, session("", user_id="u3")),
                       trace(T4, session("", email="nobody@acme.test")), trace(T5, session("u5", schema_version="2"))),
    ])
    assert ingested.identities[T1].email == "patched@acme.test"
    assert T9 not in ingested.identities
    assert set(ingested.identities) == {T1, T2, T3, T4, T5}
    assert {uuid: row.trace_id for uuid, row in ci.users(ingested).items()} == {"u1": T1, "u3": T3}


def test_every_identity_field_is_read_and_bad_counters_read_as_zero():
    metadata = session(
        "u1", "git@github.com:acme/api.git", email="dev@acme.test", display_name="Dev", billing_mode="subscription",
        plan="max", plan_usage_status="within", organization_type="team", seat_tier="priority",
        billing_type="stripe_subscription")
    metadata["cipx"]["session"]["repository"].update(
        branch="main", head_sha="a" * 40, head_sha_end="b" * 40, dirty=True, commits_in_trace=2, files_added=2**32 - 1,
        files_deleted=-1, lines_added=3.0, lines_deleted="5")
    metadata["cipx"]["session"].update(cipx_version="0.3.0", agents_dispatched=4, agents_linked=2**32,
                                       agents_ambiguous=True)
    row = ingest([traces_created(trace(T1, metadata))]).identities[T1]
    assert row == ci.Identity(
        trace_id=T1, project="claude-code", user_uuid="u1", email="dev@acme.test", display_name="Dev",
        billing_mode="subscription", plan="max", plan_usage_status="within", organization_type="team",
        seat_tier="priority", billing_type="stripe_subscription", repository="git@github.com:acme/api.git",
        branch="main", head_sha="a" * 40, head_sha_end="b" * 40, dirty=True, commits_in_trace=2,
        files_added=2**32 - 1, files_deleted=0, lines_added=0, lines_deleted=0, schema_version=2,
        harness="claude_code", session_id="s1", cipx_version="0.3.0", agents_dispatched=4, agents_linked=0,
        agents_ambiguous=0)
    metadata["cipx"]["session"]["repository"]["dirty"] = "true"
    assert ingest([traces_created(trace(T1, metadata))]).identities[T1].dirty is False


# --- the team views --------------------------------------------------------------------------

API, WEB = "https://github.com/acme/api.git", "https://github.com/acme/web.git"


@pytest.fixture
def team() -> ci.Ingested:
    """u1 in api: MCP schemas and the skills menu; u2 in web: memory, agents and an uncovered fresh
    tier; a span of a trace without identity; a span of u1 in another project."""
    a = call(usage(read=100, output=10), [
        block("mcp_tools_active", chars=60, tool_name="mcp__github__x", tool_server="github"),
        block("mcp_tools_active", chars=20, tool_name="mcp__linear__y", tool_server="linear"),
        block("skills_menu", chars=20, resource="pdf"),
        block("assistant_text", side="output", chars=4)])
    b = call(usage(fresh=50, read=200), [
        block("memory", chars=100, resource="~/.claude/CLAUDE.md", subcategory="user_global"),
        block("memory", chars=50, resource="/w/CLAUDE.md", subcategory="project_instructions"),
        block("custom_agents", chars=50, resource="code-reviewer")])
    c = call(usage(write=30, ephemeral_1h_input_tokens=30), [
        block("skills_loaded", cache_status="write", chars=10, resource="pdf"),
        block("mcp_tools_deferred", cache_status="write", chars=0, tool_server="github")])
    return ingest([
        traces_created(trace(T1, session("u1", API, email="one@acme.test")), trace(T2, session("u2", WEB)),
                       trace(T3, {"cc": {}}), trace(T4, session("u1", API), project="other")),
        spans_created(span(S1, T1, a), span(S2, T2, b), span(S3, T3, c), span(S4, T4, a, project="other")),
    ])


def test_the_composition_per_lane(team):
    assert ci.by_lane(team) == {
        "mcp_servers": {"cache_read": 80.0, "cache_creation_1h": 0.0},
        "skills": {"cache_read": 20.0, "cache_creation_1h": 30.0},
        "assistant_text": {"output": 10.0},
        "memory": {"cache_read": 150.0},
        "custom_agents": {"cache_read": 50.0},
        "unattributed": {"input": 50.0},
    }
    assert ci.by_lane(team, user_uuid="u2") == {"memory": {"cache_read": 150.0}, "custom_agents": {"cache_read": 50.0},
                                                "unattributed": {"input": 50.0}}


def test_the_mcp_skills_agents_and_memory_breakdowns(team):
    assert ci.breakdown(team, "mcp_servers") == {"github": {"cache_read": 60.0}, "linear": {"cache_read": 20.0}}
    assert ci.breakdown(team, "skills") == {"pdf": {"cache_read": 20.0, "cache_creation_1h": 30.0}}
    assert ci.breakdown(team, "custom_agents") == {"code-reviewer": {"cache_read": 50.0}}
    assert ci.breakdown(team, "memory") == {"~/.claude/CLAUDE.md": {"cache_read": 100.0},
                                            "/w/CLAUDE.md": {"cache_read": 50.0}}


def test_per_user_and_per_repository(team):
    assert ci.by_user(team) == {"u1": {"cache_read": 100.0, "output": 10.0}, "u2": {"cache_read": 200.0, "input": 50.0}}
    assert ci.by_repository(team) == {API: {"cache_read": 100.0, "output": 10.0},
                                      WEB: {"cache_read": 200.0, "input": 50.0}}
    assert ci.users(team)["u1"].email == "one@acme.test"


def test_the_unattributed_share_and_the_summary(team):
    # unattributed input-side tokens: the 50 fresh tokens of u2's span with no fresh block;
    # input-side tokens billed in the project: 100 + (50 + 200) + 30
    assert ci.unattributed_input_share(team) == 50 / 380
    assert ci.summary(team) == {
        "spans_ingested": 3, "spans_in_other_projects": 1, "repeated_creates": 0, "traces_with_identity": 2,
        "users": 2, "repositories": [API, WEB],
        "tokens_by_lane": {"assistant_text": 10.0, "custom_agents": 50.0, "memory": 150.0, "mcp_servers": 80.0,
                           "skills": 50.0, "unattributed": 50.0},
        "unattributed_input_share": 0.1316,
    }


def test_spool_records_become_the_creates_that_carry_them():
    records = [{"kind": "trace", "body": trace(T1, session("u1"))}, {"kind": "span", "body": span(S1, T1, WORKED)}]
    received = ci.received_from_spool(records)
    assert received == [Received("POST", "/v1/private/traces/batch", {"traces": [records[0]["body"]]}),
                        Received("POST", "/v1/private/spans/batch", {"spans": [records[1]["body"]]})]
    assert set(ci.by_user(ingest(received))) == {"u1"}
