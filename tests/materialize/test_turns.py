"""Turn boundaries and finished tool calls, read from real Claude Code requests."""

import json

from opik_cipx.materialize.turns import finished_tools, first_user_digests, result_text, text_digest, turn_anchor
from tests.conftest import load_fixture


def messages(scenario: str, number: str) -> list:
    return json.loads(load_fixture(scenario, number)[0]["body"])["messages"]


def test_tool_loop_calls_share_the_turn_of_the_prompt():
    anchors = {turn_anchor(messages("tools", f"00{n}")) for n in range(1, 7)}
    assert len(anchors) == 1
    (anchor,) = anchors
    assert anchor.index == 0


def test_new_prompt_after_compaction_opens_a_new_turn():
    before = turn_anchor(messages("compact", "008"))
    after = turn_anchor(messages("compact", "012"))
    assert before != after
    assert after.index == 5  # "What have we done so far?", after the re-attached context


def test_finished_tools_join_results_to_their_tool_use():
    done = finished_tools(messages("tools", "004"))  # Glob + Grep ran in parallel
    assert sorted(t.name for t in done) == ["Glob", "Grep"]
    assert all(t.tool_use_id.startswith("toolu_") for t in done)
    failing = finished_tools(messages("tools", "006"))
    assert [t.name for t in failing] == ["Bash"] and failing[0].is_error
    assert "Exit code 2" in result_text(failing[0].result)
    assert finished_tools(messages("simple", "001")) == []


def test_agent_result_and_subagent_brief():
    (agent,) = finished_tools(messages("subagent", "005"))
    assert agent.name == "Agent"
    assert "agentId:" in result_text(agent.result)
    assert text_digest(agent.input["prompt"].strip()) in first_user_digests(messages("subagent", "002"))
