"""Our hooks in Claude Code's settings.json (control/claude_settings.py): added beside the user's,
never twice, taken out leaving the file as it was, and the plugin's `enabledPlugins` read."""

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from opik_cipx.control.claude_settings import (
    HOOK_EVENTS,
    PLUGIN_ID,
    hook_command,
    hooks_registered,
    is_our_hook,
    plugin_enabled,
    remove_hooks,
    set_hooks,
)
from tests.conftest import examples

LAUNCHER = Path("/home/ada/.claude/hooks/opik-cipx-hook-launcher")
COMMANDS = {event: hook_command(LAUNCHER, event, {}) for event in HOOK_EVENTS}


def ours(event: str) -> dict:
    return {"hooks": [{"type": "command", "command": COMMANDS[event], "timeout": 60}]}


def write(path: Path, doc: object) -> bytes:
    data = (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()
    path.write_bytes(data)
    return data


def test_added_after_the_users_hooks_once_and_removed_to_the_same_bytes(tmp_path):
    path = tmp_path / "settings.json"
    user = {"theme": "dark", "hooks": {"UserPromptSubmit": [{"hooks": [{"type": "command", "command": "mine"}]}],
                                       "Stop": [{"hooks": [{"type": "command", "command": "bell"}]}]}, "model": "x"}
    before = write(path, user)
    assert set_hooks(path, COMMANDS).outcome == "set"
    doc = json.loads(path.read_text())
    assert list(doc) == ["theme", "hooks", "model"]
    assert list(doc["hooks"]) == ["UserPromptSubmit", "Stop", "SessionStart"]
    assert doc["hooks"]["UserPromptSubmit"] == [*user["hooks"]["UserPromptSubmit"], ours("UserPromptSubmit")]
    assert doc["hooks"]["SessionStart"] == [ours("SessionStart")]
    assert set_hooks(path, COMMANDS).outcome == "kept" and json.loads(path.read_text()) == doc
    assert hooks_registered(path)
    assert remove_hooks(path).outcome == "removed" and path.read_bytes() == before
    assert remove_hooks(path).outcome == "absent" and not hooks_registered(path)


def test_a_moved_launcher_is_updated_in_place_and_a_duplicate_goes(tmp_path):
    path = tmp_path / "settings.json"
    old = hook_command(Path("/old/place/opik-cipx-hook-launcher"), "SessionStart", {})
    mine = {"type": "command", "command": "mine"}
    write(path, {"hooks": {"SessionStart": [
        {"matcher": "startup", "hooks": [mine, {"type": "command", "command": old}]},
        {"hooks": [{"type": "command", "command": old}]}]}})
    assert set_hooks(path, {"SessionStart": COMMANDS["SessionStart"]}).outcome == "updated"
    wanted = {"type": "command", "command": COMMANDS["SessionStart"], "timeout": 60}
    assert json.loads(path.read_text())["hooks"]["SessionStart"] == [{"matcher": "startup", "hooks": [mine, wanted]}]


def test_settings_of_another_shape_are_left_alone(tmp_path):
    path = tmp_path / "settings.json"
    for doc in ({"hooks": []}, {"hooks": {"SessionStart": {}}}, ["not", "an", "object"]):
        before = write(path, doc)
        assert set_hooks(path, COMMANDS).outcome == "unusable" and path.read_bytes() == before
    path.write_text("{ not json")
    assert set_hooks(path, COMMANDS).outcome == "unusable" and remove_hooks(path).outcome == "unusable"
    missing = tmp_path / "new" / "settings.json"
    assert set_hooks(missing, COMMANDS).outcome == "set"
    assert remove_hooks(missing).outcome == "removed" and json.loads(missing.read_text()) == {}


def test_whose_hook_is_whose():
    assert all(is_our_hook({"type": "command", "command": c}) for c in COMMANDS.values())
    spaced = hook_command(Path("/Users/Ada Lovelace/.claude/hooks/opik-cipx-hook-launcher"), "SessionStart",
                          {"CIPX_HOME": "/data/my cipx"})
    assert spaced == ("CIPX_HOME='/data/my cipx' '/Users/Ada Lovelace/.claude/hooks/opik-cipx-hook-launcher' "
                      "SessionStart")
    assert is_our_hook({"type": "command", "command": spaced})
    for command in ('"${CLAUDE_PLUGIN_ROOT}/scripts/opik-cipx-hook-launcher" SessionStart',  # the plugin's
                    "/usr/local/bin/opik-cipx sync", "echo opik-cipx-hook-launcher", "'unbalanced"):
        assert not is_our_hook({"type": "command", "command": command}), command
    assert not is_our_hook({"type": "prompt", "command": COMMANDS["SessionStart"]}) and not is_our_hook("x")


def test_plugin_enabled_as_the_strongest_settings_file_that_names_it_says(tmp_path):
    user, project, local = (tmp_path / name for name in ("user.json", "project.json", "local.json"))
    write(user, {"enabledPlugins": {PLUGIN_ID: True}})
    write(project, {"enabledPlugins": {"other@market": True}})
    assert plugin_enabled([user, project, local])  # local does not exist
    write(local, {"enabledPlugins": {PLUGIN_ID: False}})
    assert not plugin_enabled([user, project, local])
    assert plugin_enabled([local, user]) and not plugin_enabled([]) and not plugin_enabled([project])
    write(user, {"enabledPlugins": {PLUGIN_ID: "yes"}})
    assert not plugin_enabled([user])


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                       max_size=3), max_leaves=8)
handlers = st.fixed_dictionaries({"type": st.sampled_from(["command", "prompt"]),
                                  "command": st.sampled_from(["echo hi", "~/.claude/hooks/x.sh", "npx tool"])},
                                 optional={"timeout": st.integers(1, 600)})
groups = st.lists(st.fixed_dictionaries({"hooks": st.lists(handlers, max_size=3)},
                                        optional={"matcher": st.sampled_from(["", "startup", "Bash|Edit"])}),
                  max_size=3)
user_hooks = st.dictionaries(st.sampled_from(["SessionStart", "UserPromptSubmit", "PreToolUse", "Stop"]), groups,
                             max_size=4)


@settings(max_examples=examples(150), deadline=None)
@given(other=st.dictionaries(st.sampled_from(["model", "theme", "permissions", "statusLine"]), json_values, max_size=3),
       hooks=st.none() | user_hooks)
def test_adding_then_removing_ours_gives_back_the_users_file_byte_for_byte(tmp_path_factory, other, hooks):
    path = tmp_path_factory.mktemp("settings") / "settings.json"
    doc = {**other, **({} if hooks is None else {"hooks": hooks})}
    before = write(path, doc)
    change = set_hooks(path, COMMANDS)
    assert change.outcome == "set"
    assert set(change.created) == ({"hooks"} if hooks is None else set()) | set(HOOK_EVENTS) - set(hooks or {})
    added = json.loads(path.read_text())
    for event in HOOK_EVENTS:
        assert added["hooks"][event] == [*(hooks or {}).get(event, []), ours(event)]
    assert {k: v for k, v in added["hooks"].items() if k not in HOOK_EVENTS} == \
        {k: v for k, v in (hooks or {}).items() if k not in HOOK_EVENTS}
    assert remove_hooks(path, change.created).outcome == "removed"
    assert path.read_bytes() == before
