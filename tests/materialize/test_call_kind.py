"""classify: the kind of every recorded Claude Code exchange, and the markers it relies on."""

import pytest

from opik_cipx.materialize.call_kind import CallKind, classify
from tests.claude_code_corpus import SCENARIOS, body_json, header_pairs, request, requests

# Kinds as the recording's fake upstream logged them (INDEX.md), by scenario and request number.
EXPECTED = {
    ("subagent", "002"): "subagent",
    ("subagent", "003"): "subagent",
    ("subagent", "004"): "subagent",
    ("skills_agents", "003"): "subagent",
    ("skills_agents", "004"): "subagent",
    ("compact", "010"): "compaction",
    ("nonstream_and_others", "028"): "side",
    ("nonstream_and_others", "032"): "side",
}


def kind_of(scenario: str, number: str) -> CallKind:
    req = request(scenario, number)
    return classify(req["method"], req["path"], header_pairs(req), body_json(req))


def expected_kind(scenario: str, number: str, req: dict) -> str:
    if (scenario, number) in EXPECTED:
        return EXPECTED[(scenario, number)]
    if req["method"] == "HEAD":
        return "preconnect"
    if req["path"].startswith("/v1/messages/count_tokens"):
        return "count_tokens"
    if req["path"].startswith("/v1/messages"):
        return "main"
    return "other"


ALL = [(scenario, number, req) for scenario in SCENARIOS for number, req in requests(scenario)]


@pytest.mark.parametrize(("scenario", "number", "req"), ALL, ids=[f"{s}/{n}" for s, n, _ in ALL])
def test_every_recorded_exchange(scenario, number, req):
    kind = classify(req["method"], req["path"], header_pairs(req), body_json(req))
    assert kind.kind == expected_kind(scenario, number, req)
    if req["path"].startswith("/v1/messages"):
        assert kind.session_id == req["headers"]["X-Claude-Code-Session-Id"]
        assert kind.retry_count == 0


def test_subagent_ids_and_flag():
    for number in ("002", "003", "004"):
        kind = kind_of("subagent", number)
        assert (kind.kind, kind.subagent, kind.agent_id) == ("subagent", True, "ace3cfb3d1dc59e10")
    assert kind_of("skills_agents", "003").agent_id == "aa274657b1cee7155"
    assert kind_of("subagent", "001").agent_id is None and kind_of("subagent", "001").subagent is False


def test_subagent_without_headers_from_the_system_prompt():
    req = request("subagent", "002")
    body = body_json(req)
    assert classify("POST", req["path"], [], body).kind == "subagent"  # billing header flag
    body["system"][0]["text"] = "x-anthropic-billing-header: cc_version=2.1.197.c3d; cc_entrypoint=sdk-cli;"
    assert classify("POST", req["path"], [], body).kind == "subagent"  # "You are an agent for Claude Code"
    custom = body_json(request("skills_agents", "003"))  # custom agent: only the billing flag says so
    assert classify("POST", "/v1/messages?beta=true", [], custom).kind == "subagent"


def test_headers_are_case_insensitive_and_parent_agent_id_is_read():
    headers = [
        ["X-CLAUDE-CODE-AGENT-ID", "a1"],
        ["x-claude-code-parent-agent-id", "p0"],
        ["X-Stainless-Retry-Count", "2"],
    ]
    kind = classify("POST", "/v1/messages", headers, {"messages": []})
    assert (kind.kind, kind.agent_id, kind.parent_agent_id, kind.retry_count) == ("subagent", "a1", "p0", 2)


def test_session_id_from_metadata_when_the_header_is_missing():
    req = request("tools", "001")
    kind = classify("POST", req["path"], [], body_json(req))
    assert kind.session_id == "d359249e-1c6d-4446-9bcd-7d9d003f8758"
    legacy = {"metadata": {"user_id": "user_abc_account__session_0d1f2e3c-4b5a-6978-8a9b-0c1d2e3f4a5b"}}
    assert classify("POST", "/v1/messages", [], legacy).session_id == "0d1f2e3c-4b5a-6978-8a9b-0c1d2e3f4a5b"


def test_compaction_request_and_the_calls_around_it():
    assert kind_of("compact", "010").kind == "compaction"
    assert kind_of("compact", "008").kind == "main"
    assert kind_of("compact", "012").kind == "main"  # continued session after the summary


def test_side_calls_web_search_and_web_fetch():
    assert kind_of("nonstream_and_others", "028").side_kind == "web_search"
    assert kind_of("nonstream_and_others", "032").side_kind == "web_fetch"
    assert kind_of("nonstream_and_others", "033").kind == "main"


def test_quota_probe():
    body = {"model": "claude-haiku-4-5", "max_tokens": 1, "messages": [{"role": "user", "content": "quota"}]}
    assert classify("POST", "/v1/messages?beta=true", [], body) == CallKind("side", side_kind="quota_probe")
    body["max_tokens"] = 2
    assert classify("POST", "/v1/messages", [], body).side_kind == "unknown"


@pytest.mark.parametrize(
    "system",
    [
        "Generate a concise, sentence-case title for this coding session. Return JSON with a single title field.",
        "You are naming a coding session so the user can pick it out of a long list of sessions. Write a title.",
        [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197.abc; cc_entrypoint=cli;"},
         {"type": "text", "text": "Please write a 5-10 word title for the following conversation:"}],
    ],
)
def test_title_generation(system):
    body = {"model": "claude-haiku-4-5", "max_tokens": 512, "system": system,
            "messages": [{"role": "user", "content": "fix the login bug"}]}
    assert classify("POST", "/v1/messages", [], body).side_kind == "title"


def test_title_generation_by_output_schema():
    schema = {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}
    body = {"messages": [{"role": "user", "content": "hi"}],
            "output_config": {"format": {"type": "json_schema", "schema": schema}}}
    assert classify("POST", "/v1/messages", [], body).side_kind == "title"


def test_main_loop_is_never_a_side_call():
    body = body_json(request("simple", "001"))
    body["messages"][0]["content"][-1]["text"] = "Perform a web search for the query: title of this session"
    assert classify("POST", "/v1/messages?beta=true", [], body).kind == "main"


@pytest.mark.parametrize(
    ("method", "path", "body", "kind"),
    [
        ("HEAD", "/", None, "preconnect"),
        ("POST", "/v1/messages/count_tokens?beta=true", {"messages": []}, "count_tokens"),
        ("POST", "/v1/messages", None, "other"),
        ("POST", "/v1/messages", [1, 2], "other"),
        ("GET", "/v1/messages", None, "other"),
        ("POST", "https://api.anthropic.com/api/event_logging/v2/batch", {"events": []}, "other"),
        ("POST", "/v1/messages", {"system": 5, "messages": "x", "tools": {"a": 1}, "metadata": 7}, "side"),
    ],
)
def test_routes_and_odd_bodies(method, path, body, kind):
    assert classify(method, path, [], body).kind == kind

