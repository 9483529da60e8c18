"""metadata.cipx on llm spans: what Opik's Cost Intelligence reads, checked with its own ingestion and
allocation rules (tests/cost_intelligence.py) on the recorded corpus and on generated requests."""

import json
import math
from collections import Counter
from itertools import accumulate

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opik_cipx.materialize import cipx
from opik_cipx.materialize.attribution import BUCKETS, categorize
from opik_cipx.materialize.attribution.model import ENVELOPE, Part
from opik_cipx.materialize.materializer import Materializer
from opik_cipx.materialize.pricing import load_price_table
from opik_cipx.materialize.usage import read_usage
from tests import cost_intelligence as ci
from tests.claude_code_corpus import exchanges, materialized
from tests.conftest import examples
from tests.json_schema import opik_schema
from tests.materialize.test_attribution import requests as generated_requests
from tests.materialize.test_materializer import config

STATUS_ORDER = {"read": 0, "write": 1, "fresh": 2}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return materialized(tmp_path_factory.mktemp("sessions"))


def llm_spans(items) -> list[dict]:
    return [r["body"] for item in items for r in item.result.records
            if r["kind"] == "span" and r["body"]["type"] == "llm"]


def usage(read=0, write=0, fresh=0, output=0, **more) -> dict:
    return {"input_tokens": fresh, "cache_read_input_tokens": read, "cache_creation_input_tokens": write,
            "output_tokens": output, **more}


def allocated(usage_json: dict, blocks: list[cipx.Block]) -> dict[str, float]:
    """What the contract's allocation rule gives each tier of a span with these blocks."""
    metadata = {"cipx": {"call": {"usage": usage_json}, "blocks": [cipx.block_json(b) for b in blocks]}}
    rows = ci.allocate(metadata)
    assert not [row for row in rows if row.residual], "a tier with tokens has no block"
    totals = dict.fromkeys(ci.BASE_TIERS, 0.0)
    for row in rows:
        if row.tier:
            totals[row.tier.removesuffix("_5m").removesuffix("_1h")] += row.tokens
    return totals


# --- the recorded corpus through Opik's ingestion ---------------------------------------------------

def test_every_llm_span_is_ingested_and_gives_back_its_usage_tier_by_tier(corpus):
    spans = llm_spans(corpus)
    ingested = ci.ingest(ci.received_from_spool(r for item in corpus for r in item.result.records))
    assert set(ingested.spends) == {span["id"] for span in spans} and len(spans) == 43
    assert ingested.repeated_creates == ()
    for row in ingested.spends.values():
        assert not [block for block in row.blocks if block.residual]
        for tier, tokens in ci.allocated(row).items():
            assert math.isclose(tokens, row.usage[tier], rel_tol=1e-9, abs_tol=1e-6), (row.span_id, tier)
    # what has no lane: reminders, local commands' caveats and output, the request's own parameters
    assert ci.unattributed_input_share(ingested) == pytest.approx(0.0102, abs=5e-5)
    assert ci.unattributed_input_share(ingested) <= 0.03


def test_the_breakdowns_name_every_mcp_server_skill_agent_and_memory_file(corpus):
    ingested = ci.ingest(ci.received_from_spool(r for item in corpus for r in item.result.records))
    facts = [item.result.call.attribution.facts for item in corpus if item.result.call is not None]
    assert set(ci.breakdown(ingested, "mcp_servers")) == {"weather", "notes"}
    menu = {skill for fact in facts for skill in fact["skills"]["menu"]}
    assert set(ci.breakdown(ingested, "skills")) == menu | {"release-notes"} and "lint-rules" in menu
    agents = {agent for fact in facts for agent in fact["agents"]["listed"]}
    assert set(ci.breakdown(ingested, "custom_agents")) == agents and "code-auditor" in agents
    files = {file["path"] for fact in facts for file in fact["memory"]["files"]}
    assert set(ci.breakdown(ingested, "memory")) == files and len(files) == 9
    assert set(ci.breakdown(ingested, "prior_assistant")) == {"text", "thinking", "tool_use"}
    assert set(ci.by_lane(ingested)) >= {"built_in_tools", "static_overhead", "user_prompts", "thinking",
                                          "assistant_text", "mcp_tool_calls", "skill_invocations"}


def test_every_span_validates_against_opiks_published_request_schema(corpus):
    schema = opik_schema("SpanBatch_Write")
    spans = [r["body"] for item in corpus for r in item.result.records if r["kind"] == "span"]
    schema.validate({"spans": spans})
    for span in llm_spans(corpus):
        call = span["metadata"]["cipx"]["call"]
        assert set(call) >= {"model", "usage", "config", "trigger", "trigger_detail", "turn_key"}
        assert call["trigger"] in ("user_turn", "tool_continuation", "subagent", "automated", "unknown")
        assert len(call["turn_key"]) == 64 and call["usage"] == (span["metadata"]["cc"]["usage"] or {})
        for block in span["metadata"]["cipx"]["blocks"]:
            assert all(value not in ("", None) for value in block.values())  # empty fields are left out
            assert (block["side"] == "input") == ("cache_status" in block)


def test_input_blocks_follow_the_prompt_read_then_written_then_fresh(corpus):
    for span in llm_spans(corpus):
        statuses = [b["cache_status"] for b in span["metadata"]["cipx"]["blocks"] if b["side"] == "input"]
        assert statuses == sorted(statuses, key=STATUS_ORDER.__getitem__), span["name"]
    tools = {item.number: item for item in corpus if item.scenario == "tools"}
    blocks = [b for b in cipx.blocks(tools["006"].result.call) if b.side == "input"]
    written = [(b.category, b.kind, b.tool_name) for b in blocks if b.cache_status == "write"]
    assert written == [("prior_assistant", "tool_use", "Bash"), ("tool_io", "tool_result", "Bash")]  # the new turn
    assert [b.category for b in blocks if b.cache_status == "fresh"] == ["envelope"]  # the parameters
    assert blocks[0] == cipx.Block("system_tools", "input", "read", blocks[0].chars, "Agent")


def test_a_redacted_span_carries_the_same_cipx(corpus, tmp_path):
    materializer = Materializer(config(tmp_path, capture_content=False), load_price_table())
    redacted = [r for item in corpus for r in materializer.materialize(item.capture).records]
    assert [s["metadata"]["cipx"] for s in llm_spans_of(redacted)] == [
        s["metadata"]["cipx"] for s in llm_spans(corpus)]


def llm_spans_of(records: list[dict]) -> list[dict]:
    return [r["body"] for r in records if r["kind"] == "span" and r["body"]["type"] == "llm"]


def test_the_answer_is_one_block_per_content_block(corpus):
    by_number = {(item.scenario, item.number): item.result.call for item in corpus}
    mcp = [b for b in cipx.blocks(by_number[("mcp", "001")]) if b.side == "output"]
    assert {(b.category, b.tool_server, b.tool_name) for b in mcp if b.category == "mcp_tool_calls"} == {
        ("mcp_tool_calls", "weather", "mcp__weather__get_forecast"), ("mcp_tool_calls", "weather",
                                                                      "mcp__weather__get_alerts")}
    skill = [b for b in cipx.blocks(by_number[("skills_agents", "001")]) if b.side == "output"]
    assert [(b.category, b.resource) for b in skill if b.tool_name == "Skill"] == [
        ("skill_invocations", "release-notes")]
    thinking = [b.category for b in cipx.blocks(by_number[("tools", "001")]) if b.side == "output"]
    assert thinking == ["thinking", "assistant_text", "built_in_tool_calls"]


def test_billed_output_without_characters_still_lands_on_a_block():
    billed = read_usage(usage(output=7))
    assert cipx.output_blocks([], billed) == [cipx.Block("unknown", "output", "", 1)]
    omitted = [{"type": "thinking", "thinking": "", "signature": "abc"}, {"type": "text", "text": ""}]
    assert [(b.category, b.chars) for b in cipx.output_blocks(omitted, billed)] == [("thinking", 1),
                                                                                    ("assistant_text", 1)]
    assert cipx.output_blocks(omitted, read_usage(usage(read=3))) == [
        cipx.Block("thinking", "output", "", 0), cipx.Block("assistant_text", "output", "", 0)]
    results = [{"type": "web_search_tool_result", "content": []}, {"type": "server_tool_use", "name": "web_search",
                                                                   "id": "srvtoolu_1", "input": {"query": "x"}}]
    assert cipx.output_blocks(results, None) == [
        cipx.Block("built_in_tool_calls", "output", "", len('{"query": "x"}'), "web_search", "", "srvtoolu_1")]


# --- cache status: where the boundaries fall ---------------------------------------------------------

def body_of(scenario: str, number: str) -> bytes:
    return dict(exchanges(scenario))[number].request_body


def statuses_of(blocks: list[cipx.Block]) -> list[str]:
    return [block.cache_status for block in blocks]


def test_every_tier_with_tokens_keeps_characters_whatever_the_layout():
    marked = categorize(body_of("tools", "006"))  # breakpoints on the system blocks and the last message
    bare = categorize(body_of("nonstream_and_others", "028"))  # a side call: no breakpoint at all
    end_only = categorize(json.dumps({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi there", "cache_control": {"type": "ephemeral"}}]}]}).encode())
    auto = categorize(json.dumps({"model": "m", "cache_control": {"type": "ephemeral"},
                                  "messages": [{"role": "user", "content": "hello"}]}).encode())
    assert auto.layout.auto_cache and not end_only.layout.auto_cache and not bare.prompt.breakpoints
    for attribution in (marked, bare, end_only, auto):
        for tokens in [(1000, 300, 5), (1000, 0, 5), (0, 300, 5), (0, 0, 5), (1000, 300, 0), (7, 0, 0), (0, 0, 0)]:
            read, write, fresh = tokens
            blocks = cipx.input_blocks(attribution.prompt, tokens)
            assert sum(b.chars for b in blocks) == attribution.total_chars
            got = allocated(usage(read, write, fresh), blocks)
            assert (got["cache_read"], got["cache_creation"], got["input"]) == pytest.approx(tokens)


def test_the_write_ends_at_the_last_breakpoint_and_the_read_end_at_a_block_boundary():
    attribution = categorize(body_of("tools", "006"))
    blocks = cipx.input_blocks(attribution.prompt, (22595, 116, 6))
    statuses = statuses_of(blocks)
    last_written = max(i for i, status in enumerate(statuses) if status == "write")
    assert blocks[last_written].kind == "tool_result"  # the marked block: the newest tool result
    first_written = statuses.index("write")
    assert blocks[first_written - 1].tool_use_id != blocks[first_written].tool_use_id  # no block cut in two
    prompt = attribution.prompt
    ends = list(accumulate(run[0] for run in prompt.runs))
    write_end, read_end = cipx.boundaries(prompt.breakpoints, ends, (22595, 116, 6))
    assert read_end in ends and write_end in ends  # both on run boundaries
    assert 0 <= write_end - prompt.breakpoints[-1] <= 3  # the marked block's closing brackets
    # without a breakpoint the cached share is placed in proportion: on a run boundary when one is close
    bare = categorize(body_of("nonstream_and_others", "032")).prompt
    ends = list(accumulate(run[0] for run in bare.runs))
    assert cipx.boundaries(bare.breakpoints, ends, (0, 500, 500)) == (round(ends[-1] / 2), 0)  # none is
    edge = next(at for before, at, after in zip(ends, ends[1:], ends[2:], strict=False)  # shorter and shorter
                if at - before > 20 and after - at > 20)
    assert cipx.boundaries(bare.breakpoints, ends, (0, edge + 5, ends[-1] - edge - 5)) == (edge, 0)


def test_a_piece_that_straddles_a_boundary_is_two_blocks():
    text = "word " * 400
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]}]}).encode()
    blocks = cipx.input_blocks(categorize(body).prompt, (500, 500, 3))
    prompts = [(b.cache_status, b.chars) for b in blocks if b.category == "user_prompts"]
    assert [status for status, _ in prompts] == ["read", "write"]
    assert abs(prompts[0][1] - prompts[1][1]) < 40  # the one prompt, split in proportion


@pytest.mark.parametrize("split, tier", [({"ephemeral_5m_input_tokens": 300, "ephemeral_1h_input_tokens": 0}, "5m"),
                                         ({"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200}, "1h")])
def test_writes_of_either_ttl_and_iterations_are_allocated_whole(split, tier):
    attribution = categorize(body_of("tools", "006"))
    used = usage(1000, 300, 4, cache_creation=split,
                 iterations=[{"type": "compaction", "input_tokens": 9000, "output_tokens": 400},
                             {"type": "message", "input_tokens": 4, "cache_read_input_tokens": 1000}])
    blocks = cipx.input_blocks(attribution.prompt, cipx.tier_tokens(read_usage(used)))
    assert allocated(used, blocks) == pytest.approx({"input": 4, "cache_read": 1000, "cache_creation": 300,
                                                     "output": 0})
    assert ci.write_tier(used) == f"cache_creation_{tier}"


# --- blocks partition the request exactly like the buckets do (generated requests) -------------------

tier_counts = st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6))


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated_requests, st.booleans(), tier_counts)
def test_blocks_partition_the_request_and_map_onto_the_buckets(body, ascii_only, tokens):
    text = json.dumps(body, ensure_ascii=ascii_only)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate can only travel escaped
        data = json.dumps(body, ensure_ascii=True).encode("utf-8")
    attribution = categorize(data)
    prompt = attribution.prompt
    # runs: every character once; a run is one region of one bucket and the envelope around it
    by_bucket = Counter()
    for chars, envelope, owner in prompt.runs:
        assert chars > 0 and 0 <= envelope <= chars and owner.bucket in BUCKETS
        assert envelope == chars or owner.bucket != ENVELOPE
        by_bucket[owner.bucket] += chars - envelope
        by_bucket[ENVELOPE] += envelope
    assert {b: n for b, n in attribution.buckets.items() if n} == {b: n for b, n in by_bucket.items() if n}
    # blocks: the runs in prompt order, cut at the cache boundaries; a block is a stretch of runs of
    # one description, one bucket (of their regions: envelope aside) and one cache status
    blocks = cipx.input_blocks(prompt, tokens)
    ends = list(accumulate(run[0] for run in prompt.runs))
    write_end, read_end = cipx.boundaries(prompt.breakpoints, ends, tokens)
    expected: list[list] = []
    position = 0
    for chars, _, owner in prompt.runs:
        for status, low, high in (("read", 0, read_end), ("write", read_end, write_end),
                                  ("fresh", write_end, attribution.total_chars)):
            size = min(position + chars, high) - max(position, low)
            if size > 0:
                key = (cipx.describe(owner.bucket, owner.label, owner.part), owner.bucket, status)
                if expected and expected[-1][0] == key:
                    expected[-1][1] += size
                else:
                    expected.append([key, size])
        position += chars
    assert [(cipx.Kind(b.category, *b[4:]), b.cache_status, b.chars) for b in blocks] == [
        (kind, status, size) for (kind, _, status), size in expected]
    # cache status: read, then written, then fresh, each a stretch as long as its range
    statuses = statuses_of(blocks)
    assert statuses == sorted(statuses, key=STATUS_ORDER.__getitem__)
    lengths = Counter()
    for block in blocks:
        lengths[block.cache_status] += block.chars
    assert (lengths["read"], lengths["write"], lengths["fresh"]) == (
        read_end, write_end - read_end, attribution.total_chars - write_end)
    # the contract's allocation gives every tier its tokens back (a prompt of 3 characters or more)
    if attribution.total_chars >= 3:
        got = allocated(usage(*tokens), blocks)
        assert (got["cache_read"], got["cache_creation"], got["input"]) == pytest.approx(tokens)


# --- categories of what the corpus does not hold ------------------------------------------------------

def test_attachments_deferred_tools_and_memory_kinds_have_their_categories():
    body = {"model": "m", "tools": [
        {"name": "Bash", "input_schema": {}},
        {"name": "NotebookEdit", "input_schema": {}, "defer_loading": True},
        {"name": "mcp__linear__get", "input_schema": {}, "defer_loading": True}],
        "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://x.test/shot.png"}},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
            {"type": "document", "title": "spec.pdf", "source": {"type": "base64", "data": "JVBER"}},
            {"type": "text", "text": "what is in these?"}]}]}
    blocks = cipx.input_blocks(categorize(json.dumps(body).encode()).prompt, (0, 0, 10))
    described = [(b.category, b.tool_name, b.tool_server, b.resource, b.kind) for b in blocks]
    assert described[:3] == [("system_tools", "Bash", "", "", ""),
                             ("system_tools_deferred", "NotebookEdit", "", "", ""),
                             ("mcp_tools_deferred", "mcp__linear__get", "linear", "", "")]
    assert [d for d in described if d[0] == "file_attachments"] == [
        ("file_attachments", "", "", "https://x.test/shot.png", "image"), ("file_attachments", "", "", "", "image"),
        ("file_attachments", "", "", "spec.pdf", "document")]
    kinds = {path: cipx.describe("memory", path, Part(resource=path, subcategory=kind)).subcategory
             for path, kind in [("/h/.claude/CLAUDE.md", "user"), ("/p/CLAUDE.md", "project"),
                                ("/p/CLAUDE.local.md", "local"), ("/p/.claude/rules/style.md", "project"),
                                ("/h/.claude/projects/-p/memory/MEMORY.md", "auto-memory"), ("/x.md", "unknown")]}
    assert kinds == {"/h/.claude/CLAUDE.md": "user_global", "/p/CLAUDE.md": "project_instructions",
                     "/p/CLAUDE.local.md": "project_instructions", "/p/.claude/rules/style.md": "rule",
                     "/h/.claude/projects/-p/memory/MEMORY.md": "auto_memory", "/x.md": ""}


def test_a_git_status_in_the_prompt_or_a_reminder_is_env_info():
    from tests.claude_code_corpus import body_bytes, request
    from tests.materialize.test_environment import GIT_FIXTURES

    attribution = categorize(body_bytes(request("subagent", "001", GIT_FIXTURES)))
    blocks = cipx.input_blocks(attribution.prompt, (1000, 100, 5))
    env = [b.chars for b in blocks if b.category == "env_info"]
    assert len(env) == 2 and all(env)  # the environment section, then the git status at the prompt's end
    reminder = ("<system-reminder>\nAs you answer the user's questions, you can use the following context:\n"
                "# gitStatus\nThis is the git status at the start of the conversation.\nCurrent branch: main\n\n"
                "IMPORTANT: this context may or may not be relevant to your tasks.\n</system-reminder>\n")
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": reminder},
                                                      {"type": "text", "text": "go"}]}]}
    blocks = cipx.input_blocks(categorize(json.dumps(body).encode()).prompt, (0, 0, 5))
    assert [b.category for b in blocks] == ["system_reminder", "env_info", "system_reminder", "user_prompts",
                                            "envelope"]  # the request's own braces come last


def test_a_token_count_of_infinity_reads_as_no_count():
    """JSON allows `Infinity`: a response carrying it must not stop the call's metadata (OverflowError before)."""
    usage = read_usage({"input_tokens": float("inf"), "cache_read_input_tokens": 5, "output_tokens": float("inf")})
    assert cipx.tier_tokens(usage) == (5, 0, 0)
    assert cipx.output_blocks([], usage) == []
