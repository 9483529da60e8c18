"""categorize: every character of a request body in exactly one bucket, on real Claude Code traffic."""

import hashlib
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opik_cipx.materialize.attribution import BUCKETS, Attribution, categorize, redacted
from opik_cipx.materialize.attribution.compaction import SUMMARY_PROMPT
from opik_cipx.materialize.attribution.model import Part
from tests.claude_code_corpus import SCENARIOS, body_bytes, messages_requests, request
from tests.conftest import examples
from tests.materialize.test_environment import GIT_FIXTURES

# Unattributed share of all Messages API body characters, per scenario (stated, not just bounded).
UNATTRIBUTED_SHARE = {scenario: 0.0 for scenario in SCENARIOS}
MESSAGES = messages_requests()


def attribution(scenario: str, number: str) -> Attribution:
    return categorize(body_bytes(request(scenario, number)))


def region_texts(scenario: str, number: str, bucket: str, label: str | None = None) -> list[str]:
    """The body text of every region of `bucket` (and `label`), decoded from JSON where whole."""
    text = request(scenario, number)["body"]
    result = attribution(scenario, number)
    return [
        text[region.start : region.end]
        for region in result.regions
        if region.bucket == bucket and (label is None or region.label == label)
    ]


def assert_partition(result: Attribution, text: str) -> None:
    assert result.total_chars == len(text)
    position = 0
    for region in result.regions:
        assert region.start == position and region.end > region.start, region
        assert region.bucket in BUCKETS
        position = region.end
    assert position == len(text)
    assert list(result.buckets) == list(BUCKETS)
    assert sum(result.buckets.values()) == len(text)
    for bucket, labels in result.by_label.items():
        assert sum(labels.values()) <= result.buckets[bucket]
    json.dumps(result.facts)


_ESCAPE = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|\\u[0-9a-fA-F]{4}|\\.")


def assert_escapes_whole(result: Attribution, text: str) -> None:
    """No region boundary falls inside an escape sequence (or between a surrogate pair)."""
    inside = set()
    for match in _ESCAPE.finditer(text):
        inside.update(range(match.start() + 1, match.end()))
    assert not [region.start for region in result.regions if region.start in inside]


# -- every recorded request --------------------------------------------------------------


@pytest.mark.parametrize(("scenario", "number", "req"), MESSAGES, ids=[f"{s}/{n}" for s, n, _ in MESSAGES])
def test_every_recorded_body_is_partitioned_exactly(scenario, number, req):
    result = categorize(body_bytes(req))
    assert_partition(result, req["body"])
    assert_escapes_whole(result, req["body"])
    assert result.buckets["unattributed"] / result.total_chars < 0.01


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_unattributed_share_per_scenario(scenario):
    results = [categorize(body_bytes(req)) for s, _, req in MESSAGES if s == scenario]
    total = sum(result.total_chars for result in results)
    unattributed = sum(result.buckets["unattributed"] for result in results)
    assert results and total > 0
    assert unattributed / total == pytest.approx(UNATTRIBUTED_SHARE[scenario], abs=1e-4)
    assert unattributed / total < 0.01


def test_serialisation_does_not_change_the_attribution():
    """Escaping every non-ASCII character and pretty-printing moves bytes, not buckets."""
    for scenario, number in [("compact", "029"), ("mcp", "003"), ("skills_agents", "002")]:
        body = json.loads(request(scenario, number)["body"])
        compact = categorize(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode())
        escaped_text = json.dumps(body, indent=2, ensure_ascii=True)
        escaped = categorize(escaped_text.encode())
        assert_partition(escaped, escaped_text)
        assert_escapes_whole(escaped, escaped_text)
        assert {b: set(labels) for b, labels in escaped.by_label.items()} == {
            b: set(labels) for b, labels in compact.by_label.items()
        }
        assert escaped.facts["memory"]["files"][0]["sha256"] == compact.facts["memory"]["files"][0]["sha256"]


def test_non_model_traffic_is_all_unattributed():
    for number in ("001", "013"):  # GrowthBook eval, event logging batch
        req = request("nonstream_and_others", number)
        result = categorize(body_bytes(req))
        assert_partition(result, req["body"])
        assert result.buckets["unattributed"] > 0.8 * result.total_chars
        assert result.buckets["unattributed"] + result.buckets["envelope"] == result.total_chars


# -- system prompt, tools, MCP -----------------------------------------------------------


def test_system_blocks_are_system_prompt_by_section():
    result = attribution("simple", "001")
    labels = result.by_label["system_prompt"]
    assert {"billing_header", "identity", "preamble", "Harness", "Memory", "Environment"} <= set(labels)
    assert region_texts("simple", "001", "system_prompt", "billing_header")[0].startswith(
        '"x-anthropic-billing-header: cc_version=2.1.197.'
    )


def test_builtin_tools_by_name():
    result = attribution("tools", "001")
    assert len(result.facts["tools"]["builtin"]) == 26
    assert {"Glob", "Grep", "Bash", "Workflow"} <= set(result.by_label["tools_builtin"])
    assert sum(result.by_label["tools_builtin"].values()) == result.buckets["tools_builtin"]
    assert result.buckets["tools_mcp"] == 0


def test_mcp_servers_weather_and_notes():
    result = attribution("mcp", "003")
    servers = result.facts["tools"]["mcp"]["by_server"]
    assert set(servers) == {"weather", "notes"}
    assert sorted(servers["weather"]["tools"]) == ["get_alerts", "get_forecast"]
    assert sorted(servers["notes"]["tools"]) == ["get_note", "search_notes"]
    assert servers["weather"]["instructions_chars"] > 0 and servers["notes"]["instructions_chars"] == 0
    assert result.by_label["tools_mcp"]["weather"] == servers["weather"]["chars"]
    assert result.by_label["tools_mcp"]["notes"] == servers["notes"]["chars"]
    instructions = region_texts("mcp", "003", "tools_mcp", "weather")[0]
    assert instructions.startswith("## weather\\nWeather server:")
    assert result.facts["tools"]["summary"]["mcp_count"] == 4
    assert "mcp__weather__get_forecast" not in result.facts["tools"]["builtin"]
    assert {"mcp__weather__get_forecast", "mcp__weather__get_alerts", "mcp__notes__search_notes"} == set(
        result.by_label["tool_io"]
    )


def test_plugin_mcp_server_keeps_its_whole_id():
    body = {
        "model": "m",
        "tools": [{"name": "mcp__plugin_acme_tickets__search", "description": "d", "input_schema": {}}],
        "messages": [],
    }
    result = categorize(json.dumps(body).encode())
    assert result.facts["tools"]["mcp"]["by_server"] == {
        "plugin_acme_tickets": {"tools": ["search"], "chars": result.buckets["tools_mcp"], "instructions_chars": 0}
    }


def test_tool_cache_control_is_envelope():
    tool = {"name": "Bash", "description": "run", "cache_control": {"type": "ephemeral"}, "input_schema": {}}
    text = json.dumps({"tools": [tool]}, separators=(",", ":"))
    result = categorize(text.encode())
    tool_text = json.dumps(tool, separators=(",", ":"))
    assert result.buckets["tools_builtin"] == len(tool_text) - len('"cache_control":{"type":"ephemeral"}')


# -- memory, skills, agents --------------------------------------------------------------


def test_memory_files_with_paths_and_kinds():
    result = attribution("skills_agents", "001")
    files = result.facts["memory"]["files"]
    assert [(f["path"], f["kind"]) for f in files] == [
        ("/home/dev/.claude/CLAUDE.md", "user"),
        ("/home/dev/code/release-bot/CLAUDE.md", "project"),
    ]
    user_md = "# User preferences\n\n- I prefer British spelling.\n- Sign off summaries with '-- cc'."
    assert files[0]["sha256"] == hashlib.sha256(user_md.encode()).hexdigest()
    for record in files:
        assert result.by_label["memory"][record["path"]] == record["chars"]
        (section,) = region_texts("skills_agents", "001", "memory", record["path"])
        assert section.startswith(f"Contents of {record['path']} (")
    wrapper = "".join(region_texts("skills_agents", "001", "system_reminder", "claudeMd"))
    assert "# claudeMd" in wrapper and "# currentDate" in wrapper and "Contents of" not in wrapper


def test_memory_kind_for_local_and_auto_memory_files():
    reminder = (
        "<system-reminder>\nAs you answer the user's questions, you can use the following context:\n"
        "# claudeMd\nCodebase and user instructions are shown below.\n\n"
        "Contents of /p/CLAUDE.local.md (user's private project instructions, not checked in):\n\nlocal\n\n"
        "Contents of /h/.claude/projects/-p/memory/MEMORY.md (user's auto-memory, persists across conversations):"
        "\n\n- [Note](note.md)\n# currentDate\nToday's date is 2026-11-24.\n</system-reminder>\n"
    )
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": reminder}]}]}
    files = categorize(json.dumps(body).encode()).facts["memory"]["files"]
    assert [f["kind"] for f in files] == ["local", "auto-memory"]


@pytest.mark.parametrize("ascii_only", [False, True])
def test_split_strings_keep_escapes_inside_their_piece(ascii_only):
    header = "Contents of /p/CLAUDE.md (project instructions, checked into the codebase):"
    section = header + '\n\n"caf\u00e9" \U0001f600\\\n\n'
    intro = "<system-reminder>\n# claudeMd\nIntro \u2014 \U0001f600\n\n"
    reminder = intro + section + "# currentDate\nToday.\n</system-reminder>"
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": reminder}]}]}
    text = json.dumps(body, ensure_ascii=ascii_only)
    result = categorize(text.encode())
    assert_partition(result, text)
    assert_escapes_whole(result, text)
    (region,) = [r for r in result.regions if r.bucket == "memory"]
    assert json.loads('"' + text[region.start : region.end] + '"') == section[:-1]  # "\n# currentDate" ends it
    head, tail = [r for r in result.regions if r.bucket == "system_reminder"]
    assert json.loads(text[head.start : head.end] + '"').endswith("\U0001f600\n\n")
    assert json.loads('"' + text[tail.start : tail.end]).startswith("\n# currentDate")


def test_skills_menu_and_loaded_skill_body():
    result = attribution("skills_agents", "002")
    skills = result.facts["skills"]
    assert skills["menu"][:2] == ["release-notes", "lint-rules"]
    assert "security-review" in skills["menu"]
    (loaded,) = skills["loaded"]
    assert loaded["name"] == "release-notes" and loaded["path"] == "/home/dev/.claude/skills/release-notes"
    (body,) = region_texts("skills_agents", "002", "skills", "release-notes")
    assert json.loads(body).startswith("Base directory for this skill:")
    assert loaded["sha256"] == hashlib.sha256(json.loads(body).encode()).hexdigest()
    assert loaded["chars"] == len(body)
    assert region_texts("skills_agents", "002", "tool_io", "Skill") == [
        '{"skill":"release-notes","args":"v1.2.0"}',
        '"Launching skill: release-notes"',
    ]


def test_agent_list_and_custom_agent_definition():
    listed = attribution("skills_agents", "002").facts["agents"]["listed"]
    assert "code-auditor" in listed and "general-purpose" in listed
    result = attribution("skills_agents", "003")
    (definition,) = region_texts("skills_agents", "003", "agents", "custom")
    assert definition.startswith('"You are Code Auditor') and "Notes:" not in definition
    (custom,) = result.facts["agents"]["custom"]
    assert custom["chars"] == len(definition)
    harness = region_texts("skills_agents", "003", "system_prompt", "agent_harness")[0]
    assert harness.startswith("\\n\\nNotes:\\n- Agent threads")


def test_builtin_subagent_prompt_stays_system_prompt():
    result = attribution("subagent", "002")
    assert result.buckets["agents"] == 0
    assert result.facts["agents"]["custom"] == []
    preamble, environment, _ = region_texts("subagent", "002", "system_prompt", "preamble")  # env: its own part
    assert preamble.startswith('"You are an agent for Claude Code')
    assert environment.startswith("Here is useful information about the environment")


def test_agent_list_arriving_mid_conversation():
    assert attribution("subagent", "002").facts["agents"]["listed"] == []
    assert "general-purpose" in attribution("subagent", "003").facts["agents"]["listed"]


# -- conversation: prompts, tool I/O, prior turns --------------------------------------------


def test_tool_io_per_tool_with_error_result():
    result = attribution("tools", "006")
    by_tool = result.facts["tool_io"]["by_tool"]
    assert {name: tool["calls"] for name, tool in by_tool.items()} == {
        "Read": 1,
        "Bash": 2,
        "Glob": 1,
        "Grep": 1,
        "Edit": 1,
    }
    assert by_tool["Bash"]["errors"] == 1 and by_tool["Read"]["errors"] == 0
    assert by_tool["Bash"]["sample_chars"].startswith("Exit code 2\nls: cannot access")
    error = [t for t in region_texts("tools", "006", "tool_io", "Bash") if t.startswith('"Exit code 2')]
    assert len(error) == 1
    for name, tool in by_tool.items():
        assert tool["input_chars"] + tool["result_chars"] == result.by_label["tool_io"][name]


def test_agent_tool_result_is_tool_io_of_agent():
    texts = region_texts("subagent", "005", "tool_io", "Agent")
    assert len(texts) == 2 and "agentId: ace3cfb3d1dc59e10" in texts[1]


def test_prior_assistant_text_and_thinking_with_signature():
    result = attribution("tools", "006")
    thinking = region_texts("tools", "006", "prior_assistant", "thinking")
    assert any(text.startswith('"The user wants several checks.') for text in thinking)
    assert any(text.startswith('"NHmVYRi+') for text in thinking)  # the signature
    assert result.by_label["prior_assistant"]["text"] > 0


def test_user_prompt_is_the_turns_typed_text():
    result = attribution("tools", "006")
    assert result.facts["user_prompt"]["text"].startswith("Check notes.txt, confirm the shell works")
    assert result.facts["user_prompt"]["text_chars"] == result.buckets["user_prompt"]
    assert attribution("compact", "005").facts["user_prompt"]["text"] == "Now run it."  # string content


def test_subagent_prompt_is_its_user_prompt():
    text = attribution("subagent", "003").facts["user_prompt"]["text"]
    assert text.startswith("Survey the project at /home/dev/code/inventory-sync")


# -- slash commands ----------------------------------------------------------------------


def test_slash_invoked_skill_release_notes():
    result = attribution("skills_agents", "007")
    (command,) = result.facts["slash_commands"]["by_command"]
    assert command["name"] == "release-notes" and command["kind"] == "prompt"
    assert command["args"] == "v1.3.0" and command["args_chars"] == 6
    assert command["chars"] == result.buckets["slash_command"]
    assert [s["name"] for s in result.facts["skills"]["loaded"]] == ["release-notes"]
    assert result.facts["user_prompt"]["text"] is None


def test_custom_prompt_command_review_notes_with_expansion():
    result = attribution("compact", "007")
    (command,) = result.facts["slash_commands"]["by_command"]
    assert (command["name"], command["kind"], command["args"]) == ("review-notes", "prompt", "notes.txt")
    texts = region_texts("compact", "007", "slash_command", "review-notes")
    assert texts[-1].startswith('"Review the notes file notes.txt in this project.')


def test_local_compact_command_with_caveat_and_stdout():
    result = attribution("compact", "012")
    (command,) = result.facts["slash_commands"]["by_command"]
    assert (command["name"], command["kind"], command["args"]) == ("compact", "local", "")
    texts = region_texts("compact", "012", "slash_command", "compact")
    assert [t[:23] for t in texts] == ['"<local-command-caveat>', '"<command-name>/compact', '"<local-command-stdout>']
    assert command["stdout_chars"] == len(texts[2])
    assert command["chars"] == sum(map(len, texts))


def test_init_command_and_context_stdout_from_an_earlier_message():
    result = attribution("compact", "029")
    commands = {c["name"]: c for c in result.facts["slash_commands"]["by_command"]}
    assert list(commands) == ["compact", "context", "init"]
    assert commands["context"]["kind"] == "local" and commands["context"]["stdout_chars"] > 900
    assert commands["init"]["kind"] == "prompt" and commands["init"]["args"] is None
    init = region_texts("compact", "029", "slash_command", "init")
    assert init[-1].startswith('"Please analyze this codebase and create a CLAUDE.md file')


def test_skill_tool_description_is_not_a_slash_command():
    result = attribution("simple", "001")
    assert result.buckets["slash_command"] == 0 and result.facts["slash_commands"]["by_command"] == []


# -- compaction --------------------------------------------------------------------------


def test_compaction_request():
    result = attribution("compact", "010")
    assert result.facts["compaction"]["request"] is True
    (prompt,) = region_texts("compact", "010", "compaction", "summary_prompt")
    assert SUMMARY_PROMPT in prompt and prompt.startswith('"CRITICAL: Respond with TEXT ONLY.')
    assert result.facts["compaction"]["prompt_chars"] == len(prompt)
    assert attribution("compact", "008").facts["compaction"]["request"] is False


def test_continued_session_summary_and_reattached_files():
    result = attribution("compact", "012")
    compaction = result.facts["compaction"]
    assert compaction["continued_summary"] is True and compaction["request"] is False
    (summary,) = region_texts("compact", "012", "compaction", "continued_summary")
    assert summary.startswith('"This session is being continued from a previous conversation')
    assert compaction["summary_chars"] == len(summary)
    (files,) = region_texts("compact", "012", "compaction", "reattached_files")
    assert files.startswith('"Called the Read tool with the following input:')
    assert compaction["reattached_chars"] == len(files)
    assert result.by_label["agents"]["list"] > 0  # the agent list after the files stays agents


def test_reattached_file_without_a_summary_is_tool_io():
    message = "Called the Read tool with the following input: {}\nResult of calling the Read tool:\n1\tx\n"
    body = {"messages": [{"role": "system", "content": message}]}
    result = categorize(json.dumps(body).encode())
    assert result.by_label["tool_io"] == {"Read": len(json.dumps(message))}


# -- side calls and count_tokens -----------------------------------------------------------


def test_side_calls_web_search_and_web_fetch():
    search = attribution("nonstream_and_others", "028")
    assert search.by_label["tools_builtin"] == {"web_search": 63}
    assert search.buckets["user_prompt"] > 0 and search.buckets["unattributed"] == 0
    fetch = attribution("nonstream_and_others", "032")
    assert fetch.buckets["user_prompt"] > 800 and fetch.buckets["unattributed"] == 0


@pytest.mark.parametrize("number", ["014", "024", "026"])
def test_count_tokens_bodies(number):
    req = request("compact", number)
    result = categorize(body_bytes(req))
    assert_partition(result, req["body"])
    assert result.buckets["unattributed"] == 0
    assert result.buckets["user_prompt"] + result.buckets["tools_builtin"] + result.buckets["envelope"] == len(
        req["body"]
    )


# -- malformed input and redaction -------------------------------------------------------


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"[1, 2]", b'"text"', b'{"messages": [', b"\xff\xfe{}", b'{"a": 1} x', b"[" * 100000]
)
def test_malformed_bodies_are_all_unattributed(body):
    result = categorize(body)
    text = body.decode("utf-8", "replace")
    assert_partition(result, text)
    assert result.buckets["unattributed"] == len(text)


def test_unknown_members_are_unattributed():
    body = '{"model":"m","future_param":{"x":1},"messages":[{"role":"user","content":[{"type":"hologram","x":1}]}]}'
    result = categorize(body.encode())
    assert result.buckets["unattributed"] == len('{"x":1}') + len('{"type":"hologram","x":1}')


def test_redacted_facts_drop_text_and_keep_counts():
    facts = attribution("skills_agents", "007").facts
    facts["tool_io"]["by_tool"]["Read"] = {"calls": 1, "sample_chars": "secret", "result_chars": 3}
    clean = redacted(facts)
    assert "text" not in clean["user_prompt"] and clean["user_prompt"]["text_chars"] == 0
    assert "args" not in clean["slash_commands"]["by_command"][0]
    assert clean["slash_commands"]["by_command"][0]["args_chars"] == 6
    assert clean["tool_io"]["by_tool"]["Read"] == {"calls": 1, "result_chars": 3}
    assert facts["slash_commands"]["by_command"][0]["args"] == "v1.3.0"  # the input is untouched


# -- parts and layout: what a block of the request needs -------------------------------------


def parts(result: Attribution, bucket: str, label: str | None = None) -> list:
    """The parts of `bucket`'s regions (of `label` if given), in body order."""
    return [r.part for r in result.regions if r.bucket == bucket and (label is None or r.label == label)]


def test_every_listed_skill_and_agent_is_a_region_of_its_own():
    result = attribution("skills_agents", "002")
    menu = [part.resource for part in parts(result, "skills", "menu")]
    assert menu == ["", *result.facts["skills"]["menu"]]  # the heading, then one region per skill
    listed = [part.resource for part in parts(result, "agents", "list")]
    assert listed == ["", *result.facts["agents"]["listed"], ""]  # the paragraph after the list: no agent's
    assert "code-auditor" in listed
    (loaded,) = parts(result, "skills", "release-notes")
    assert loaded.resource == "release-notes"


def test_tool_schemas_calls_and_results_name_their_tool_server_and_call():
    result = attribution("mcp", "003")
    schemas = {(p.tool_server, p.tool_name) for p in parts(result, "tools_mcp") if p.kind != "instructions"}
    assert schemas == {("weather", "mcp__weather__get_forecast"), ("weather", "mcp__weather__get_alerts"),
                       ("notes", "mcp__notes__search_notes"), ("notes", "mcp__notes__get_note")}
    assert {p.tool_server for p in parts(result, "tools_mcp") if p.kind == "instructions"} == {"", "weather"}
    assert all(p.tool_name == r.label and not p.tool_server for r in result.regions if r.bucket == "tools_builtin"
               for p in [r.part])
    calls = [p for p in parts(result, "tool_io") if p.kind == "tool_use"]
    results = [p for p in parts(result, "tool_io") if p.kind == "tool_result"]
    assert [p.tool_use_id for p in calls] == [p.tool_use_id for p in results] and len(calls) == 3
    assert all(p.tool_use_id.startswith("toolu_") for p in calls)
    assert [(p.tool_server, p.tool_name) for p in results] == [(mcp_server(p.tool_name), p.tool_name)
                                                                for p in calls]


def mcp_server(name: str) -> str:
    return name.split("__")[1]


def test_memory_files_carry_path_kind_and_digest():
    result = attribution("skills_agents", "001")
    files = result.facts["memory"]["files"]
    assert [(p.resource, p.subcategory, p.sha256) for p in parts(result, "memory")] == [
        (f["path"], f["kind"], f["sha256"]) for f in files]
    assert [f["kind"] for f in files] == ["user", "project"]


def test_prior_assistant_blocks_by_kind_and_the_compaction_texts():
    kinds = {p.kind for p in parts(attribution("tools", "006"), "prior_assistant")}
    assert kinds == {"text", "thinking"}
    result = attribution("compact", "012")
    reattached = parts(result, "compaction", "reattached_files")
    assert reattached and all((p.kind, p.tool_name) == ("tool_result", "Read") for p in reattached)
    assert parts(result, "compaction", "continued_summary") == [Part(kind="text")]


def test_the_environment_and_git_status_sections_are_parts_of_their_own():
    main = attribution("simple", "001")
    (environment,) = [r for r in main.regions if r.part.kind == "environment"]
    assert environment.label == "Environment"
    body = request("simple", "001")["body"]
    assert body[environment.start:environment.end].startswith("# Environment\\nYou have been invoked")
    assert body[environment.end:].startswith("# Context management")
    for number in ("001", "002"):  # a main loop and a subagent, in a repository
        req = request("subagent", number, GIT_FIXTURES)
        result = categorize(body_bytes(req))
        (git,) = [r for r in result.regions if r.part.kind == "git_status"]
        text = json.loads('"' + req["body"][git.start:git.end].removesuffix('"') + '"')
        assert text.startswith("gitStatus: This is the git status") and text.endswith("a41b7f2 Start inventory-sync")
        assert [r.part.kind for r in result.regions if r.part.kind in ("environment", "git_status")] == [
            "environment", "git_status"]


def test_the_layout_names_the_prompt_sections_and_every_cache_breakpoint():
    for scenario, number in [("simple", "001"), ("tools", "006"), ("compact", "010"), ("nonstream_and_others", "028")]:
        text = request(scenario, number)["body"]
        body = json.loads(text)
        layout = attribution(scenario, number).layout
        assert {name: json.loads(text[start:end]) for name, (start, end) in layout.sections.items()} == {
            name: body[name] for name in ("tools", "system", "messages") if name in body}
        marked = [b for b in body["system"] if "cache_control" in b] + [
            b for m in body["messages"] if isinstance(m["content"], list) for b in m["content"] if "cache_control" in b]
        assert len(layout.breakpoints) == len(marked)
        for at in layout.breakpoints:  # Claude Code writes cache_control last: the block ends right after it
            assert text[:at].endswith('"cache_control":{"type":"ephemeral"}}')
        system, messages = layout.sections["system"], layout.sections["messages"]
        assert sum(system[0] < at < system[1] for at in layout.breakpoints) == sum(
            "cache_control" in b for b in body["system"])
        assert sum(messages[0] < at < messages[1] for at in layout.breakpoints) == len(marked) - sum(
            "cache_control" in b for b in body["system"])
        assert layout.breakpoints == sorted(layout.breakpoints)  # body order: messages come first here
        assert not layout.auto_cache


# -- arbitrary shapes (hypothesis) --------------------------------------------------------

MARKERS = [
    "<system-reminder>\n",
    "</system-reminder>\n\n",
    "# claudeMd\nCodebase and user instructions are shown below.\n\n",
    "Contents of /p/CLAUDE.md (project instructions, checked into the codebase):\n\n",
    "Contents of /h/.claude/CLAUDE.md (user's private global instructions for all projects):\n\n",
    "\n# currentDate\nToday's date is 2026-11-24.\n",
    "<command-message>x</command-message>\n<command-name>/x</command-name>\n",
    "<command-args>",
    "</command-args>",
    "<local-command-caveat>Caveat</local-command-caveat>\n",
    "<local-command-stdout>out</local-command-stdout>",
    "Base directory for this skill: /s/k\n\n",
    "Available agent types for the Agent tool:\n- a: b\n",
    "# MCP Server Instructions\n\nThe following MCP servers:\n\n",
    "## srv\n",
    "The following skills are available for use with the Skill tool:\n\n- s: d\n",
    "Called the Read tool with the following input: {}\n",
    "This session is being continued from a previous conversation. ",
    SUMMARY_PROMPT,
    "x-anthropic-billing-header: cc_version=1; cc_is_subagent=true;",
    "You are a Claude agent, built on Anthropic's Claude Agent SDK.",
    "\n# Section\n",
    "\n\nNotes:\n- Agent threads",
    "# Environment\nYou have been invoked in the following environment: \n - Platform: linux\n\n",
    "Here is useful information about the environment you are running in:\n<env>\nWorking directory: /w\n</env>\n",
    "gitStatus: This is the git status at the start of the conversation.\nStatus:\nM a.py\n\nRecent commits:\n"
    "abc1234 x\n",
    "# gitStatus\nThis is the git status at the start of the conversation.\nCurrent branch: main\n",
    '"\\\u00e9\U0001f600\n\t\x00',
    # whole structures, so the splitting paths run with escapes inside them
    "<system-reminder>\nAs you answer:\n# claudeMd\nCodebase.\n\nContents of /p/CLAUDE.md (project instructions, "
    'checked into the codebase):\n\n"\u00e9\U0001f600\\\n\nContents of /h/.claude/CLAUDE.md (user\'s private global '
    "instructions for all projects):\n\nx\ty\n# currentDate\nToday.\n</system-reminder>\n",
    '<command-message>r\u00e9</command-message>\n<command-name>/r\u00e9</command-name>\n<command-args>"\U0001f600\\'
    "</command-args>\n",
    '# MCP Server Instructions\n\nThe following:\n\n## w\u00e9\n"quoted"\n\n## n\nx\n',
]
texts = st.lists(st.one_of(st.sampled_from(MARKERS), st.text(max_size=12)), max_size=6).map("".join)
marker_texts = st.lists(st.one_of(st.sampled_from(MARKERS), st.text(max_size=6)), min_size=1, max_size=8)
marker_texts = marker_texts.map("".join)
leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), texts)
values = st.recursive(
    leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3), max_leaves=6
)
BLOCK_TYPES = ["text", "thinking", "redacted_thinking", "tool_use", "server_tool_use", "tool_result"]
BLOCK_TYPES += ["web_search_tool_result", "image", "document", "hologram"]
BLOCK_KEYS = ["text", "thinking", "signature", "data", "input", "content", "id", "name", "tool_use_id"]
BLOCK_KEYS += ["is_error", "cache_control", "citations", "source", "zzz"]
CACHE_CONTROL = [{}, {"cache_control": {"type": "ephemeral"}}]


def block(kind: str, members: dict, call_id: str) -> dict:
    return {"type": kind, **members, "id": call_id, "tool_use_id": call_id}


def message(role: object, content: object, role_first: bool) -> dict:
    return {"role": role, "content": content} if role_first else {"content": content, "role": role}


ids = st.sampled_from(["t1", "t2", "t3"])
block_members = st.dictionaries(st.sampled_from(BLOCK_KEYS), st.one_of(texts, values, ids), max_size=4)
blocks = st.builds(block, st.sampled_from(BLOCK_TYPES), block_members, ids)
text_blocks = st.builds(lambda text: {"type": "text", "text": text}, marker_texts)
contents = st.one_of(
    texts, marker_texts, st.lists(st.one_of(text_blocks, text_blocks, blocks, values), max_size=5), values
)
roles = st.one_of(st.sampled_from(["user", "assistant", "system", "other"]), values)
messages = st.builds(message, roles, contents, st.booleans())
system_block = st.builds(lambda text, cc: {"type": "text", "text": text, **cc}, texts, st.sampled_from(CACHE_CONTROL))
system_blocks = st.lists(st.one_of(system_block, values), max_size=4)
tool_names = st.one_of(st.sampled_from(["Bash", "mcp__srv__t", "mcp__plugin_a_b__c", "mcp__", "mcp__x"]), texts)
tool_members = st.dictionaries(texts, values, max_size=2)
tool_def = st.builds(lambda name, rest: {"name": name, **rest}, tool_names, tool_members)
tool_defs = st.lists(st.one_of(tool_def, values), max_size=3)
requests = st.fixed_dictionaries(
    {},
    optional={
        "model": texts,
        "system": st.one_of(texts, system_blocks, values),
        "tools": st.one_of(tool_defs, values),
        "messages": st.one_of(st.lists(messages, max_size=6), values),
        "max_tokens": st.integers(),
        "metadata": values,
        "future": values,
    },
)


@settings(max_examples=examples(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests, st.booleans(), st.sampled_from([None, 1]))
def test_regions_partition_arbitrary_requests(body, ascii_only, indent):
    text = json.dumps(body, ensure_ascii=ascii_only, indent=indent)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate can only travel escaped
        text = json.dumps(body, ensure_ascii=True, indent=indent)
        data = text.encode("utf-8")
    result = categorize(data)
    assert_partition(result, text)
    assert_escapes_whole(result, text)
    redacted(result.facts)


@settings(max_examples=examples(300), deadline=None)
@given(st.binary(max_size=300))
def test_categorize_never_raises_on_bytes(body):
    result = categorize(body)
    assert_partition(result, body.decode("utf-8", "replace"))
