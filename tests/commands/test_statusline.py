"""`opik-cipx statusline`: exact session cost from the ledger, limits, width, colours, never a
failure; `--install` / `uninstall` / `sync` and Claude Code's `statusLine` setting. The command
runs in the test's process (`run_command`), but for the test of colours and width, which runs it as
Claude Code does on each repaint: a fresh process whose only argument sends it to its fast path."""

import contextlib
import io
import json
import re
import sqlite3
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opik_cipx.commands import statusline
from opik_cipx.ledger.periods import local_day
from opik_cipx.ledger.store import Ledger
from tests.claude_code_corpus import corpus_clock, materialized
from tests.conftest import examples, run_cli, run_command

ANSI = re.compile(r"\033\[[0-9;]*m")


@pytest.fixture(scope="module")
def corpus_home(tmp_path_factory):
    """A home whose ledger holds the recorded corpus at its recorded dates; session id -> the
    cost of its spans."""
    home = tmp_path_factory.mktemp("statusline") / "cipx-home"
    corpus = materialized(home / "sessions")
    ledger = Ledger(home / "ledger.db", retention_days=400, clock=corpus_clock())
    costs: dict[str, float] = defaultdict(float)
    for *_, result in corpus:
        ledger.write(result.call)
        for record in result.records:
            body = record["body"]
            if body.get("type") in ("llm", "general"):
                costs[body["metadata"]["cc"]["session"]["id"]] += body.get("total_estimated_cost") or 0.0
    ledger.close()
    return home, dict(costs)


def line_for(home, doc, **env) -> str:
    result = run_command(home, "statusline", input=json.dumps(doc), NO_COLOR="1", **env)
    assert result.returncode == 0 and result.stderr == ""
    (line,) = result.stdout.splitlines()
    return line


def test_each_recorded_session_shows_its_exact_cost_with_the_daemon_down(corpus_home):
    home, costs = corpus_home
    assert len(costs) >= 8  # every scenario has its session (skills_agents two)
    for session_id, cost in costs.items():
        line = line_for(home, {"session_id": session_id, "cwd": "/tmp", "model": {"id": "claude-opus-4-8"}})
        assert line.startswith(f"${cost:.4f} · today $"), (session_id, line)


def test_context_cache_hits_and_todays_cost(corpus_home):
    home, costs = corpus_home
    conn = sqlite3.connect(home / "ledger.db")
    session = "d359249e-1c6d-4446-9bcd-7d9d003f8758"  # the tools scenario: 6 main calls
    last_prompt, = conn.execute(
        "SELECT input_tokens + cache_creation_input_tokens + cache_read_input_tokens FROM calls "
        "WHERE session_id = ? ORDER BY started_at_ns DESC LIMIT 1", (session,)).fetchone()
    read, prompt = conn.execute(
        "SELECT sum(cache_read_input_tokens), sum(input_tokens + cache_creation_input_tokens + "
        "cache_read_input_tokens) FROM calls WHERE session_id = ?", (session,)).fetchone()
    last_ns, = conn.execute("SELECT max(started_at_ns) FROM calls").fetchone()
    now = last_ns / 1e9 + 60  # a minute after the last recorded call: the corpus' day is today
    today, = conn.execute("SELECT total(cost_usd) FROM calls WHERE day = ?", (local_day(last_ns),)).fetchone()
    line = render(home, {"session_id": session, "context_window": {"context_window_size": 200000,
                                                                    "used_percentage": 3}}, now)
    parts = line.split(" · ")
    assert today > 0 and parts[0] == f"${costs[session]:.4f}"
    assert parts[1] == (f"today ${today:,.2f}" if today >= 1 else f"today ${today:.4f}")
    assert parts[2] == f"ctx {last_prompt / 1000:.0f}k/200k {last_prompt / 200000:.0%}"
    assert parts[3] == f"cache hit {read / prompt:.0%}"  # the words of docs/REPORTS.md
    # before the ledger has a main call of the session: Claude Code's own figure
    assert "ctx 3%" in line_for(home, {"session_id": "new-session", "context_window": {"used_percentage": 3}})


def test_colours_unless_no_color_and_the_width_is_honoured(corpus_home):
    home, _ = corpus_home
    doc = json.dumps({"session_id": "d359249e-1c6d-4446-9bcd-7d9d003f8758",
                      "context_window": {"context_window_size": 200000}})
    coloured = run_cli(home, "statusline", input=doc).stdout.rstrip("\n")
    plain = run_cli(home, "statusline", input=doc, NO_COLOR="1").stdout.rstrip("\n")
    assert "\033[" in coloured and ANSI.sub("", coloured) == plain and "\033[" not in plain
    assert len(plain) <= 80
    narrow = run_cli(home, "statusline", input=doc, NO_COLOR="1", COLUMNS="30").stdout.rstrip("\n")
    assert len(narrow) <= 30 and narrow.startswith(plain.split(" · ")[0])
    assert "today" not in narrow  # the least important part goes first
    tiny = run_cli(home, "statusline", input=doc, NO_COLOR="1", COLUMNS="4").stdout.rstrip("\n")
    assert tiny == plain[:4]


@pytest.mark.parametrize("stdin", ["", "garbage", "[1, 2]", '{"session_id": 7}', "\x00\xff" * 100,
                                   '{"session_id": "x"' + " " * 2_000_000 + "}"])
def test_garbage_on_stdin_is_a_hint_and_exit_0(corpus_home, stdin):
    home, _ = corpus_home
    result = run_command(home, "statusline", input=stdin)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == "opik-cipx: no Claude Code session on stdin (run by Claude Code's statusLine)\n"


@pytest.mark.parametrize("ledger, hint", [
    (None, "opik-cipx: no calls recorded yet (`opik-cipx sync` routes Claude Code through it)\n"),
    (b"not a database" * 100, "opik-cipx: status line unavailable (DatabaseError); `opik-cipx report` still works\n"),
])
def test_no_or_a_broken_ledger_is_a_hint_and_exit_0(tmp_path, ledger, hint):
    home = tmp_path / "cipx-home"
    home.mkdir()
    if ledger is not None:
        (home / "ledger.db").write_bytes(ledger)
    result = run_command(home, "statusline", input='{"session_id": "s"}')
    assert (result.returncode, result.stdout, result.stderr) == (0, hint, "")


def test_a_bad_config_file_does_not_matter_to_the_status_line(corpus_home):
    home, costs = corpus_home
    bad = home.parent / "bad.toml"
    bad.write_text("this is = = not toml")
    session, cost = next(iter(costs.items()))
    assert line_for(home, {"session_id": session}, CIPX_CONFIG=str(bad)).startswith(f"${cost:.4f}")


def test_a_terminal_on_stdin_gets_a_hint_instead_of_a_wait():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert statusline.main(Terminal(), env={}) == 0
    assert out.getvalue().startswith("opik-cipx statusline: reads Claude Code's statusLine JSON on stdin")


def render(home, doc, now, columns=200) -> str:
    env = {"CIPX_HOME": str(home), "NO_COLOR": "1", "COLUMNS": str(columns)}
    return statusline.render(io.StringIO(json.dumps(doc)), env, now)


def test_every_rate_limit_window_with_its_time_to_reset_a_new_name_too(tmp_path):
    from tests.ledger.test_queries import rate_limit_entries

    home = tmp_path / "cipx-home"
    entries = rate_limit_entries(tmp_path)
    ledger = Ledger(home / "ledger.db", retention_days=10**6, clock=corpus_clock())
    assert ledger.write_entries(entries)
    ledger.close()
    session = entries[0].call["session_id"]
    now = entries[2].call["started_at_ns"] / 1e9 + 0.5  # just after oauth/003
    line = render(home, {"session_id": session}, now)
    windows = line.split(" · ")[4:]
    # the API-key call's per-minute windows (recorded earlier) have reset: their figures no longer hold
    assert windows == ["5h 14% 2h12m", "7d 81%! 3d3h", "7d_mythos 40% 4d23h", "7d_oi 5% 3d3h", "7d_opus 21% 3d3h"]
    later = render(home, {"session_id": session}, now + 3 * 3600)  # and now 5h too
    assert [w.split()[0] for w in later.split(" · ")[4:]] == ["7d", "7d_mythos", "7d_oi", "7d_opus"]
    api_key_time = entries[3].call["started_at_ns"] / 1e9 + 0.5
    assert render(home, {"session_id": session}, api_key_time).split(" · ")[-3:] == [
        "input-tokens 1% 0s", "requests 0% 0s", "tokens 1% 0s"]  # output-tokens reset on that second
    narrow = render(home, {"session_id": session}, now, columns=40)
    assert "7d 81%! 3d3h" in narrow  # a window past its warning threshold outlasts the rest


def test_claude_codes_own_limits_when_the_ledger_has_none(corpus_home):
    home, costs = corpus_home
    session = next(iter(costs))
    doc = {"session_id": session, "rate_limits": {"five_hour": {"used_percentage": 42, "resets_at": 2000},
                                                  "seven_day": {"used_percentage": 36.4, "resets_at": 500}}}
    line = render(home, doc, now=1000)
    assert line.endswith(" · 5h 42% 16m")  # seven_day has reset already


@pytest.mark.parametrize("version, hint", [
    (0, "opik-cipx: no calls recorded yet (`opik-cipx sync` routes Claude Code through it)"),
    (statusline.SCHEMA_VERSION - 1, "opik-cipx: ledger.db is from an older opik-cipx; `opik-cipx restart` upgrades it"),
    (statusline.SCHEMA_VERSION + 1, "opik-cipx: ledger.db is from a newer opik-cipx; upgrade this one"),
])
def test_a_ledger_of_another_version_is_a_hint_and_left_as_it_was(tmp_path, version, hint):
    home = tmp_path / "cipx-home"
    home.mkdir()
    conn = sqlite3.connect(home / "ledger.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE calls (id INTEGER PRIMARY KEY)")
    conn.execute(f"PRAGMA user_version = {version}")
    conn.close()
    before = (home / "ledger.db").read_bytes()
    assert render(home, {"session_id": "s"}, now=0) == hint  # only the daemon migrates it
    assert (home / "ledger.db").read_bytes() == before


# -- Claude Code's settings ----------------------------------------------------------------------

def installed(m) -> str:
    executable = m.home / "bin" / "opik-cipx"
    executable.parent.mkdir(parents=True, exist_ok=True)
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    return f"{executable} statusline"


@pytest.mark.no_executable  # `--install` with nothing installed says to install first
def test_install_sets_it_only_when_none_is_set_or_forced(machine):  # noqa: F811
    m = machine
    missing = m.command("statusline", "--install")
    assert missing.returncode == 1 and "run `opik-cipx install`" in missing.stderr
    assert not m.settings_path.exists()
    command = installed(m)
    m.claude_dir.mkdir()
    m.settings_path.write_text(json.dumps({"model": "opus", "env": {"FOO": "1"}}))
    first = m.command("statusline", "--install")
    assert first.returncode == 0 and "set statusLine in" in first.stdout
    assert m.settings() == {"model": "opus", "env": {"FOO": "1"},
                            "statusLine": {"type": "command", "command": command}}
    again = m.command("statusline", "--install")
    assert again.returncode == 0 and "already set" in again.stdout
    theirs = {"type": "command", "command": "~/.claude/my-line.sh", "padding": 0}
    m.settings_path.write_text(json.dumps({"statusLine": theirs}))
    refused = m.command("statusline", "--install")
    assert refused.returncode == 1 and "already has a statusLine" in refused.stderr and "--force" in refused.stderr
    assert m.settings()["statusLine"] == theirs
    forced = m.command("statusline", "--install", "--force")
    assert forced.returncode == 0 and "replaced the previous statusLine" in forced.stdout
    assert m.settings()["statusLine"] == {"type": "command", "command": command}
    assert m.command("statusline", "--force").returncode == 2


def test_sync_never_touches_it_and_uninstall_removes_only_ours(machine):  # noqa: F811
    m = machine
    command = installed(m)
    assert m.command("statusline", "--install").returncode == 0
    assert m.cli("sync").returncode == 0  # starts the daemon, points Claude Code at it
    assert m.settings()["statusLine"] == {"type": "command", "command": command}
    result = m.cli("uninstall", "--yes")
    assert result.returncode == 0, result.stderr
    assert f"removed our statusLine from {m.settings_path}" in result.stdout
    assert not m.settings_path.exists()  # our entries were all it held
    theirs = {"type": "command", "command": "bash ~/.claude/statusline.sh"}
    m.settings_path.parent.mkdir(parents=True, exist_ok=True)
    m.settings_path.write_text(json.dumps({"statusLine": theirs}))
    assert m.cli("uninstall", "--yes").returncode == 0
    assert m.settings() == {"statusLine": theirs}


@pytest.mark.parametrize("value, ours", [
    ({"type": "command", "command": "/h/.opik-cipx/bin/opik-cipx statusline"}, True),
    ({"type": "command", "command": "'/my dir/opik-cipx' statusline", "padding": 0}, True),
    ({"type": "command", "command": "opik-cipx statusline | tee /tmp/x"}, False),
    ({"type": "command", "command": "ccusage statusline"}, False),
    ({"type": "command", "command": "/h/opik-cipx statusline --install"}, False),
    ({"type": "command", "command": "'unbalanced"}, False),
    ("opik-cipx statusline", False),
])
def test_what_counts_as_our_status_line(value, ours):
    from opik_cipx.control.claude_settings import is_our_status_line

    assert is_our_status_line(value) is ours


PARTS = st.lists(st.tuples(st.integers(0, 100), st.text(st.characters(blacklist_categories=("Cc",)), min_size=1,
                                                      max_size=30)), min_size=1, max_size=12)


@given(parts=PARTS, columns=st.integers(1, 200))
def test_the_line_never_exceeds_the_columns_and_keeps_the_most_important_part(parts, columns):
    coloured = [(importance, text, f"\033[1m{text}\033[0m") for importance, text in parts]
    line = ANSI.sub("", statusline.fit(coloured, columns))
    assert len(line) <= columns
    top = max(importance for importance, _ in parts)
    assert any(text[:columns] in line for importance, text in parts if importance == top)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=20)


@settings(max_examples=examples(60), deadline=None)
@given(doc=st.dictionaries(st.sampled_from(["session_id", "context_window", "rate_limits", "model", "cost"]), JSON),
       session=st.text(max_size=40))
def test_any_document_claude_code_could_send_gives_one_line(tmp_path_factory, doc, session):
    home = tmp_path_factory.getbasetemp() / "statusline-fuzz"
    if not (home / "ledger.db").exists():
        home.mkdir(exist_ok=True)
        Ledger(home / "ledger.db", retention_days=400, clock=corpus_clock()).write_entries([])
    doc = {**doc, "session_id": session}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert statusline.main(io.StringIO(json.dumps(doc)), env={"CIPX_HOME": str(home)}, now=1.8e9) == 0
    assert out.getvalue().count("\n") == 1 and "Traceback" not in out.getvalue()


def test_the_status_line_reads_the_ledger_version_the_schema_writes():
    from opik_cipx.commands.statusline import SCHEMA_VERSION
    from opik_cipx.ledger.schema import LATEST

    assert SCHEMA_VERSION == LATEST  # kept as a literal so the repaint does not load the schema module
