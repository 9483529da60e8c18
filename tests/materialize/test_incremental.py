"""RequestReader: reading a conversation's requests incrementally gives exactly what reading each
from scratch gives (parsed body, regions, buckets, by_label, facts, and the blocks of
`metadata.cipx` made from the prompt the conversation's memo carries), and walks only what is new."""

import copy
import json
from functools import cache
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opik_cipx.materialize import cipx
from opik_cipx.materialize.attribution import Attribution, categorize, incremental
from opik_cipx.materialize.attribution.incremental import RequestReader, parse_body
from opik_cipx.store.spool_lines import Encoded
from tests.claude_code_corpus import SCENARIOS, body_bytes, body_json, messages_requests, request
from tests.conftest import examples

MESSAGES = messages_requests()


def key_of(req: dict) -> tuple:
    headers = {name.lower(): value for name, value in req["headers"].items()}
    return headers.get("x-claude-code-session-id"), headers.get("x-claude-code-agent-id"), req["path"]


class Scratch(NamedTuple):
    """What reading a body from scratch gives: its parse, its attribution, and its prompt's blocks as
    `metadata.cipx` has them at each of the `token_splits` cache boundaries."""

    body: dict | None
    attribution: Attribution
    blocks: list[tuple[tuple[int, int, int], Encoded]]


def token_splits(total: int) -> tuple[tuple[int, int, int], ...]:
    """Cache boundaries over a prompt of `total` characters: mostly read, all written, nothing
    cached, a boundary mid-prompt, the last characters only."""
    return ((total * 6 // 10, total * 3 // 10, total // 10), (0, total, 1), (0, 0, 5), (total // 2, 0, total),
            (total - 2, 1, 1))


def scratch(body: bytes) -> Scratch:
    want = categorize(body)
    total = sum(chars for chars, _, _ in want.prompt.runs)
    blocks = []
    for tokens in token_splits(total):
        encoded = cipx.input_json(want.prompt._replace(memo={}), tokens)
        assert encoded == json.loads(encoded.text)
        assert encoded == [cipx.block_json(block) for block in cipx.input_blocks(want.prompt._replace(memo={}), tokens)]
        blocks.append((tokens, encoded))
    return Scratch(parse_body(body), want, blocks)


@cache
def recorded_scratch(index: int) -> Scratch:
    """`scratch` of the recorded request `MESSAGES[index]`, made once per test process: read-only."""
    return scratch(body_bytes(MESSAGES[index][2]))


def assert_same(reader: RequestReader, key, body: bytes, want: Scratch | None = None) -> None:
    """Reading `body` under `key` gives what reading it from scratch gives (`want`, when it is known)."""
    got = reader.read(key, body)
    want = want or scratch(body)
    assert got.body == want.body
    if got.body is not None:
        assert list(got.body) == list(want.body)
    result, attribution = got.attribution, want.attribution
    assert result.total_chars == attribution.total_chars
    assert result.buckets == attribution.buckets
    # dict order is part of the record Opik gets: compare as JSON text
    assert json.dumps(result.by_label) == json.dumps(attribution.by_label)
    assert json.dumps(result.facts) == json.dumps(attribution.facts)
    assert result.regions == attribution.regions
    assert result.layout == attribution.layout
    assert described(result.prompt.runs) == described(attribution.prompt.runs)
    assert result.prompt.breakpoints == attribution.prompt.breakpoints
    # the blocks of a prompt whose memo holds the conversation's earlier requests' (cipx keeps the
    # groups of the runs shared and their JSON) are those of the same prompt made from scratch
    for tokens, encoded in want.blocks:
        made = cipx.input_json(result.prompt, tokens)
        assert made.text == encoded.text
        assert made == encoded


def described(runs: list) -> list:
    """Runs by what they hold (the owner of an envelope-only run is a region cut to its unit or not)."""
    return [(chars, envelope, owner.bucket, owner.label, owner.part) for chars, envelope, owner in runs]


def test_the_recorded_corpus_read_in_order_matches_reading_each_from_scratch():
    reader = RequestReader()
    for index, (_, _, req) in enumerate(MESSAGES):
        assert_same(reader, key_of(req), body_bytes(req), recorded_scratch(index))


@settings(max_examples=examples(20), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.permutations(range(len(MESSAGES))), st.booleans())
def test_the_corpus_in_any_order_and_under_any_key_matches(order, one_key):
    reader = RequestReader()
    for index in order[:25]:
        _, _, req = MESSAGES[index]
        assert_same(reader, "k" if one_key else key_of(req), body_bytes(req), recorded_scratch(index))


# -- generated growing sessions ------------------------------------------------------------

def _pool() -> list[dict]:
    """Every distinct message of the recorded main-loop and subagent requests: real shapes
    (commands, caveats, local command output, skills, reminders, compaction summaries, system
    messages with agent lists, MCP instructions and re-attached files, tool calls and results)."""
    seen, out = set(), []
    for scenario in SCENARIOS:
        for req in [r for s, _, r in MESSAGES if s == scenario]:
            body = body_json(req)
            for message in (body or {}).get("messages") or []:
                text = json.dumps(message, sort_keys=True)
                if text not in seen:
                    seen.add(text)
                    out.append(_unmarked(message))
    return out


def _unmarked(value):
    if isinstance(value, dict):
        return {k: _unmarked(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_unmarked(v) for v in value]
    return value


POOL = _pool()
BASES = [body_json(request("tools", "006")), body_json(request("subagent", "003")), body_json(request("mcp", "003"))]
TEXTS = st.lists(st.sampled_from(list('ab \n"\\/é—😀\t<>{}') + ["<system-reminder>", "</system-reminder>",
                                                                  "\n# claudeMd\n", "<command-name>/x</command-name>"]),
                 max_size=12).map("".join)


def _marked(messages: list, where: int = -1) -> list:
    """Claude Code's marker: cache_control on the last block of one message (the last by default)."""
    out = copy.deepcopy(messages)
    if out and isinstance(out[where].get("content"), list) and out[where]["content"]:
        block = out[where]["content"][-1]
        if isinstance(block, dict):
            block["cache_control"] = {"type": "ephemeral"}
    return out


def _edited(message: dict, text: str) -> dict:
    """The message with `text` appended to its first string (content or a text block)."""
    out = copy.deepcopy(message)
    if isinstance(out.get("content"), str):
        out["content"] += text
    elif isinstance(out.get("content"), list):
        for block in out["content"]:
            if isinstance(block, dict) and isinstance(block.get("text"), str):
                block["text"] += text
                break
            if isinstance(block, dict) and isinstance(block.get("content"), str):
                block["content"] += text
                break
    return out


STEP = st.one_of(
    st.tuples(st.just("grow"), st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=3), TEXTS),
    st.tuples(st.just("retry")),
    st.tuples(st.just("edit"), st.integers(0, 100), TEXTS),
    st.tuples(st.just("compact"), st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=4)),
    st.tuples(st.just("compaction_request"), TEXTS),
    st.tuples(st.just("system"), TEXTS),
    st.tuples(st.just("model"), st.sampled_from(["claude-opus-4-8", "claude-haiku-4-5-20251001", "x"])),
    st.tuples(st.just("other_agent"), st.integers(0, len(BASES) - 1), st.booleans()),
    st.tuples(st.just("layout"), st.sampled_from([None, 1, "\t"])),
)


@settings(max_examples=examples(25), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.integers(0, len(BASES) - 1), st.lists(STEP, min_size=1, max_size=8))
def test_generated_growing_sessions_match_reading_each_request_from_scratch(base_index, steps):
    """Sessions that grow by appending real messages, with the marker moving, retries, edited earlier
    messages, compaction requests and resets, a changed system prompt or model, another agent's
    requests interleaved under the same or its own key, and another JSON layout."""
    reader = RequestReader()
    body = copy.deepcopy(BASES[base_index])
    indent = None
    marker = -1
    for step in steps:
        action, *args = step
        key = "main"
        marker = -1
        if action == "grow":
            picks, text = args
            body["messages"] += [_edited(POOL[i], text) for i in picks]
        elif action == "edit" and body["messages"]:
            at, text = args
            at %= len(body["messages"])
            body["messages"][at] = _edited(body["messages"][at], text or "!")
        elif action == "compact":
            body["messages"] = [copy.deepcopy(POOL[i]) for i in args[0]]
        elif action == "compaction_request" and body["messages"]:
            body["messages"][-1] = _edited(body["messages"][-1], "Your task is to create a detailed summary of the "
                                           "conversation so far" + args[0])
            marker = -2 if len(body["messages"]) > 1 else -1
        elif action == "system" and isinstance(body.get("system"), list):
            body["system"][-1]["text"] += args[0] or "\n# New section\n"
        elif action == "model":
            body["model"] = args[0]
        elif action == "other_agent":
            other, own_key = args
            other_body = dict(BASES[other], messages=_marked(BASES[other]["messages"]))
            raw = json.dumps(other_body, ensure_ascii=False, separators=(",", ":")).encode()
            assert_same(reader, "agent" if own_key else "main", raw)
        elif action == "layout":
            indent = args[0]
        sent = dict(body, messages=_marked(body["messages"], marker))
        separators = (",", ":") if indent is None else None
        raw = json.dumps(sent, ensure_ascii=False, separators=separators, indent=indent).encode()
        assert_same(reader, key, raw)


# -- what it costs -------------------------------------------------------------------------

def _session(calls: int) -> list[bytes]:
    """A growing session: each call appends an assistant tool call and its result to the last one."""
    base = body_json(request("tools", "006"))
    messages = base["messages"]
    bodies = []
    for call in range(calls):
        messages = messages + [
            {"role": "assistant", "content": [{"type": "tool_use", "id": f"toolu_{call}", "name": "Bash",
                                               "input": {"command": f"echo {call}"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{call}",
                                          "content": f"out {call} " + "é" * call}]},
        ]
        bodies.append(json.dumps(dict(base, messages=_marked(messages)), ensure_ascii=False,
                                 separators=(",", ":")).encode())
    return bodies


def test_each_request_walks_only_the_messages_that_changed_or_are_new(monkeypatch):
    walked = []
    original = incremental.message
    monkeypatch.setattr(incremental, "message", lambda *args: walked.append(1) or original(*args))
    reader = RequestReader()
    pauses = []
    bodies = _session(12)
    for index, body in enumerate(bodies):
        walked.clear()
        result = reader.read("s", body, pause=lambda: pauses.append(1))
        if index:
            # the previous last message (its marker moved) and the two new ones
            assert len(walked) == 3
        assert result.attribution.buckets == categorize(body).buckets
    assert len(pauses) >= 12 * 3


def test_a_retried_request_walks_no_message_and_reuses_the_tail(monkeypatch):
    reader = RequestReader()
    body = _session(3)[-1]
    reader.read("s", body)
    monkeypatch.setattr(incremental, "message", lambda *args: pytest.fail("walked a message"))
    monkeypatch.setattr(incremental, "member", lambda *args: pytest.fail("walked the tail"))
    assert reader.read("s", body).attribution.buckets == categorize(body).buckets


@pytest.mark.parametrize("body", [b"", b"[]", b"{}", b'{"messages": {}}', b'{"messages": [1, 2', b"\xff{}",
                                  b'{"messages": [], "messages": []}', b'\xef\xbb\xbf{"messages": []}',
                                  b'{"model": "x", "messages": [{"role": "user", "content": "a"}] } x'])
def test_bodies_of_other_shapes_are_read_from_scratch(body):
    reader = RequestReader()
    assert_same(reader, "k", body)
    assert_same(reader, "k", body)


def test_kept_requests_are_bounded_in_count_and_bytes(monkeypatch):
    reader = RequestReader()
    bodies = _session(2)
    for session in range(incremental.MAX_ENTRIES + 5):
        reader.read(("session", session), bodies[0])
    assert len(reader._entries) == incremental.MAX_ENTRIES
    monkeypatch.setattr(incremental, "MAX_BYTES", 3 * len(bodies[0]))
    reader.read(("session", "last"), bodies[0])
    assert sum(len(entry.body) for entry in reader._entries) <= 3 * len(bodies[0])
    for _ in range(incremental.MAX_PER_KEY + 3):
        reader.read("one key", bodies[0] + b" " * _)  # unrelated conversations under one key
    assert len([e for e in reader._entries if e.key == "one key"]) <= incremental.MAX_PER_KEY
