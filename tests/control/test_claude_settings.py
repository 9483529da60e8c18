"""`~/.claude/settings.json`: our ANTHROPIC_BASE_URL only, everything else kept; managed hook scripts."""

import json
import os
import stat

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from opik_cipx.control.claude_settings import (
    MANAGED_MARKER,
    is_our_status_line,
    point_at_proxy,
    read_entry,
    remove_managed_hook_scripts,
    remove_status_line,
    set_status_line,
    settings_path,
    stop_pointing_at_proxy,
    tidy,
)
from opik_cipx.materialize.identity import claude_json_path
from tests.conftest import examples

URL = "http://127.0.0.1:9909"
USER_SETTINGS = {
    "permissions": {"allow": ["Bash(ls:*)"], "deny": []},
    "env": {"FOO": "bar", "EMPTY": ""},
    "hooks": {"SessionStart": [{"hooks": [{"type": "command", "command": "~/.claude/hooks/mine.sh"}]}]},
    "model": "opus",
    "unicode": "caf\u00e9 \u2603",
}


def test_paths_follow_home_and_claude_config_dir():
    assert settings_path({"HOME": "/h"}).as_posix() == "/h/.claude/settings.json"
    assert claude_json_path({"HOME": "/h"}).as_posix() == "/h/.claude.json"
    env = {"HOME": "/h", "CLAUDE_CONFIG_DIR": "/cfg"}
    assert settings_path(env).as_posix() == "/cfg/settings.json"
    assert claude_json_path(env).as_posix() == "/cfg/.claude.json"


def test_creates_the_file_when_missing(tmp_path):
    path = tmp_path / ".claude" / "settings.json"
    assert point_at_proxy(path, URL).outcome == "set"
    assert json.loads(path.read_text()) == {"env": {"ANTHROPIC_BASE_URL": URL}}
    assert point_at_proxy(path, URL).outcome == "kept"


def test_upsert_keeps_other_keys_their_order_and_plain_formatting(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(USER_SETTINGS, indent=2, ensure_ascii=False) + "\n")
    os.chmod(path, 0o640)
    assert point_at_proxy(path, URL).outcome == "set"
    text = path.read_text(encoding="utf-8")
    doc = json.loads(text)
    assert list(doc) == list(USER_SETTINGS)
    assert list(doc["env"]) == ["FOO", "EMPTY", "ANTHROPIC_BASE_URL"]
    assert {k: v for k, v in doc.items() if k != "env"} == {k: v for k, v in USER_SETTINGS.items() if k != "env"}
    assert text == json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    assert "caf\u00e9" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    assert stop_pointing_at_proxy(path, URL).outcome == "removed"
    assert json.loads(path.read_text()) == USER_SETTINGS


def test_foreign_value_is_reported_and_never_touched(tmp_path):
    path = tmp_path / "settings.json"
    original = json.dumps({"env": {"ANTHROPIC_BASE_URL": "https://corp-gateway.example"}})
    path.write_text(original)
    change = point_at_proxy(path, URL)
    assert (change.outcome, change.detail) == ("foreign", "https://corp-gateway.example")
    assert stop_pointing_at_proxy(path, URL).outcome == "foreign"
    assert path.read_text() == original
    # Our old port after ports.json changed is not ours either: it is left alone.
    path.write_text(json.dumps({"env": {"ANTHROPIC_BASE_URL": "http://127.0.0.1:1234"}}))
    assert stop_pointing_at_proxy(path, URL).outcome == "foreign"


def test_unparsable_file_is_left_byte_for_byte(tmp_path):
    path = tmp_path / "settings.json"
    for text in ('{"env": {// a comment\n}}', "[1, 2]", '{"env": "not an object"}', "\xff\xfe"):
        path.write_bytes(text.encode("latin-1") if text.startswith("\xff") else text.encode())
        before = path.read_bytes()
        for change in (point_at_proxy(path, URL), stop_pointing_at_proxy(path, URL)):
            assert change.outcome == "unusable" and change.detail
        assert path.read_bytes() == before


def test_blank_file_counts_as_empty_and_removal_drops_an_env_we_emptied(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text("\n")
    assert point_at_proxy(path, URL).outcome == "set"
    assert read_entry(path) == (URL, "")
    assert stop_pointing_at_proxy(path, URL).outcome == "removed"
    assert json.loads(path.read_text()) == {}
    assert stop_pointing_at_proxy(path, URL).outcome == "absent"
    assert stop_pointing_at_proxy(tmp_path / "missing.json", URL).outcome == "absent"
    assert not (tmp_path / "missing.json").exists()


def test_symlinked_settings_are_written_through(tmp_path):
    dotfiles = tmp_path / "dotfiles" / "claude-settings.json"
    dotfiles.parent.mkdir()
    dotfiles.write_text('{"model": "opus"}')
    link = tmp_path / "settings.json"
    link.symlink_to(dotfiles)
    point_at_proxy(link, URL)
    assert link.is_symlink()
    assert json.loads(dotfiles.read_text()) == {"model": "opus", "env": {"ANTHROPIC_BASE_URL": URL}}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@hsettings(max_examples=examples(60), deadline=None)
@given(doc=st.dictionaries(st.text(max_size=8).filter(lambda k: k != "env"), json_values, max_size=5),
       env=st.dictionaries(st.text(max_size=8).filter(lambda k: k != "ANTHROPIC_BASE_URL"), st.text(max_size=8),
                           max_size=4))
def test_set_then_remove_restores_any_document(tmp_path_factory, doc, env):
    path = tmp_path_factory.mktemp("s") / "settings.json"
    original = {**doc, "env": env} if env else doc
    path.write_text(json.dumps(original))
    assert point_at_proxy(path, URL).outcome == "set"
    assert stop_pointing_at_proxy(path, URL).outcome == "removed"
    assert json.loads(path.read_text()) == original


OURS = "/h/.opik-cipx/bin/opik-cipx statusline"


@hsettings(max_examples=examples(60), deadline=None)
@given(doc=st.dictionaries(st.text(max_size=8), json_values, max_size=5), theirs=json_values)
def test_a_status_line_replaced_with_force_goes_back_in_its_place(tmp_path_factory, doc, theirs):
    if theirs in (None, "", {}) or is_our_status_line(theirs):
        return  # none to replace
    directory = tmp_path_factory.mktemp("s")
    path, backup = directory / "settings.json", directory / "home" / "statusline-backup.json"
    original = (json.dumps({**doc, "statusLine": theirs}, indent=2, ensure_ascii=False) + "\n").encode()
    path.write_bytes(original)
    assert set_status_line(path, OURS, force=True, backup=backup).outcome == "replaced"
    assert set_status_line(path, OURS, force=True, backup=backup).outcome == "kept"  # ours now: the backup stays
    assert remove_status_line(path, backup).outcome == "restored"
    assert path.read_bytes() == original


def test_a_status_line_changed_since_stays_and_one_never_replaced_is_only_removed(tmp_path):
    path, backup = tmp_path / "settings.json", tmp_path / "statusline-backup.json"
    path.write_text(json.dumps({"statusLine": {"type": "command", "command": "mine.sh"}}))
    assert set_status_line(path, OURS, force=True, backup=backup).outcome == "replaced"
    newer = {"type": "command", "command": "newer.sh"}
    path.write_text(json.dumps({"statusLine": newer}))  # the user's choice since
    assert remove_status_line(path, backup).outcome == "foreign"
    assert json.loads(path.read_text()) == {"statusLine": newer}
    other = tmp_path / "other" / "settings.json"  # the backup is of another settings file
    other.parent.mkdir()
    other.write_text(json.dumps({"model": "opus"}))
    assert set_status_line(other, OURS).outcome == "set"
    assert remove_status_line(other, backup).outcome == "removed"
    assert json.loads(other.read_text()) == {"model": "opus"}


def test_no_backup_no_replacement(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"statusLine": {"type": "command", "command": "mine.sh"}}))
    before = path.read_bytes()
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.raises(OSError):
        set_status_line(path, OURS, force=True, backup=blocked / "statusline-backup.json")
    assert path.read_bytes() == before


def test_only_scripts_with_the_managed_marker_are_removed(tmp_path):
    hooks = tmp_path / ".claude" / "hooks"
    hooks.mkdir(parents=True)
    ours = hooks / "opik-cipx-hook-launcher"
    ours.write_text(f"#!/bin/sh\n# {MANAGED_MARKER}. launcher\nexit 0\n")
    ours_no_shebang = hooks / "ours.py"
    ours_no_shebang.write_text(f"# {MANAGED_MARKER}\n")
    mine = hooks / "log-event.sh"
    mine.write_text(f"#!/bin/sh\n# my own hook\necho {MANAGED_MARKER}\n")  # marker below the header: not ours
    shebang_only = hooks / "empty.sh"
    shebang_only.write_text("#!/bin/sh\n")
    removed = remove_managed_hook_scripts({"HOME": str(tmp_path)})
    assert sorted(removed) == sorted([ours, ours_no_shebang])
    assert mine.exists() and shebang_only.exists()
    assert remove_managed_hook_scripts({"HOME": str(tmp_path / "nowhere")}) == []


def test_tidy_deletes_only_an_empty_settings_file_and_directories_that_left_empty(tmp_path):
    env = {"HOME": str(tmp_path)}
    claude = tmp_path / ".claude"
    (claude / "hooks").mkdir(parents=True)
    for kept in ('{\n  "model": "opus"\n}\n', "", "{} not json"):
        (claude / "settings.json").write_text(kept)
        assert tidy(env) == [] and (claude / "settings.json").read_text() == kept  # the user's, or not ours to judge
    (claude / "settings.json").write_text("{}\n")
    (claude / "projects").mkdir()
    assert tidy(env) == [claude / "settings.json", claude / "hooks"] and (claude / "projects").is_dir()
    (claude / "projects").rmdir()
    assert tidy(env) == [] and claude.is_dir()  # no settings file of ours: the directory is not ours to remove
    (claude / "settings.json").write_text("{}\n")
    assert tidy(env) == [claude / "settings.json", claude] and not tmp_path.joinpath(".claude").exists()
