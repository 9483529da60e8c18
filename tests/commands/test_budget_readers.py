"""`opik-cipx budget` and `budget allow`, the hook's warnings, the status line and the dashboard's
bars: every reader of the caps, from the ledger, on a clock the test sets (docs/BUDGETS.md)."""

import argparse
import dataclasses
import io
import json

import pytest

from opik_cipx.commands import budget as command
from opik_cipx.commands import statusline, sync
from opik_cipx.commands.sync import _Report, _warn_budget
from opik_cipx.config import load_settings
from opik_cipx.control import budget_allow
from opik_cipx.ledger.db import open_reader
from opik_cipx.ledger.entry import ledger_entry
from opik_cipx.ledger.periods import local_day
from opik_cipx.ledger.store import Ledger
from opik_cipx.views.caps import caps_section
from tests.claude_code_corpus import corpus
from tests.conftest import run_command
from tests.fake_clock import FakeClock
from tests.time_zone import in_zone, local_ns

with in_zone("Europe/Paris"):
    NOW = local_ns(2026, 12, 9, 20, 48)  # a Wednesday evening in Paris
S1, S2 = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"
CONFIG = """[budget]
day_usd = 5
week_usd = 20
session_usd = 10
[budget.projects."/srv/app"]
day_usd = 1
"""


@pytest.fixture(autouse=True)
def paris():
    with in_zone("Europe/Paris"):
        yield


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "cipx"
    home.mkdir()
    (home / "config.toml").write_text(CONFIG)
    return home


def settings_of(home):
    return load_settings({"CIPX_HOME": str(home), "HOME": str(home.parent)})


def write_calls(home, calls: list[tuple[int, float, str, str | None, str]]) -> None:
    """Calls (start, USD, session, directory, kind) in the home's ledger, shaped as a recorded one."""
    base = ledger_entry(next(d for d in corpus() if d.scenario == "simple" and d.result.call).result.call)
    ledger = Ledger(home / "ledger.db", 4000, clock=FakeClock(NOW))
    for n, (started, usd, session, directory, kind) in enumerate(calls):
        call = {**base.call, "capture_id": f"c{n}", "started_at_ns": started, "day": local_day(started),
                "cost_usd": usd, "session_id": session, "project_dir": directory, "kind": kind}
        ledger.write_entries([dataclasses.replace(base, call=call)])
    ledger.close()


HOUR = 3600 * 10**9
SPENT = [(NOW - HOUR, 1.5, S1, "/home/me/code/x", "main"), (NOW - 2 * HOUR, 0.85, S2, "/srv/app/api", "main"),
         (NOW - 30 * HOUR, 10.0, S2, "/srv/app/api", "main"),  # yesterday: the week's, not the day's
         (NOW - 60, 0.0, S1, "/home/me/code/x", "blocked")]


def args(**given) -> argparse.Namespace:
    return argparse.Namespace(**{"action": None, "session": None, "duration": None, "clear": False, "json": False,
                                 **given})


def show(home, capsys, env=None, **given) -> str:
    assert command.show(args(**given), settings_of(home), env or {}, FakeClock(NOW)) == 0
    return capsys.readouterr().out


def test_every_cap_with_what_it_counted_what_is_left_and_when_it_resets(home, capsys):
    write_calls(home, SPENT)
    doc = json.loads(show(home, capsys, json=True))
    caps = {(c["scope"], c["project"], c["session_id"]): c for c in doc["caps"]}
    assert set(caps) == {("day", None, None), ("week", None, None), ("day", "/srv/app", None),
                         ("session", None, S1), ("session", None, S2)}  # the sessions active today
    day, week, project_day = caps["day", None, None], caps["week", None, None], caps["day", "/srv/app", None]
    assert (day["spent_usd"], day["remaining_usd"], day["level"]) == (2.35, 2.65, "ok")
    assert (week["spent_usd"], week["level"]) == (12.35, "ok")
    assert (project_day["spent_usd"], project_day["level"]) == (0.85, "warning")  # past 80% of $1
    assert caps["session", None, S2]["level"] == "over" and caps["session", None, S1]["level"] == "ok"
    assert day["resets_at"] == "2026-12-09T23:00:00.000Z"  # local midnight, Paris
    assert doc["daemon"] is None and doc["allowed"] == {"sessions": [], "until": None}


def test_the_table_for_a_terminal(home, capsys):
    write_calls(home, SPENT)
    out = show(home, capsys, env={"CLAUDE_CODE_SESSION_ID": S1})  # run from that Claude Code session
    lines = out.splitlines()
    assert lines[0].split() == ["cap", "spent", "of", "left", "level", "resets"]
    assert lines[1].split()[:6] == ["session", "11111111", "$1.50", "$10.00", "$8.50", "ok"]
    assert "day of /srv/app" in out and "Thu 10 Dec 00:00 (in 3h12m)" in out
    assert "daemon: not running" in out


def test_without_a_cap_it_says_how_to_set_one(tmp_path, capsys):
    (tmp_path / "config.toml").write_text("")
    assert command.show(args(), settings_of(tmp_path), {}, FakeClock(NOW)) == 0
    assert "no spend cap is set: add a [budget] table to" in capsys.readouterr().out


def test_allow_a_session_by_its_start_for_a_while_or_the_one_blocked_last(home, capsys):
    write_calls(home, SPENT)
    settings = settings_of(home)
    assert command.allow(args(action="allow", session="2222"), settings, {}, FakeClock(NOW)) == 0
    assert "session 22222222 goes on" in capsys.readouterr().out
    assert set(budget_allow.read(home).sessions) == {S2}
    assert command.allow(args(action="allow"), settings, {}, FakeClock(NOW)) == 0  # the one blocked last: S1
    assert set(budget_allow.read(home).sessions) == {S1, S2}
    assert command.allow(args(action="allow", duration="2h"), settings, {}, FakeClock(NOW)) == 0
    assert budget_allow.read(home).until_ns == NOW + 2 * HOUR
    out = capsys.readouterr().out
    assert "every call goes through" in out and "the daemon is not running" in out
    doc = json.loads(show(home, capsys, json=True))
    assert doc["allowed"]["sessions"] == sorted([S1, S2]) and doc["allowed"]["until"] is not None
    assert command.allow(args(action="allow", clear=True), settings, {}, FakeClock(NOW)) == 0
    assert budget_allow.read(home) == budget_allow.Allowances(serial=budget_allow.read(home).serial)


def test_allow_without_any_session_to_name_says_what_to_do(home, capsys):
    write_calls(home, SPENT[:1])
    assert command.allow(args(action="allow"), settings_of(home), {}, FakeClock(NOW)) == 1
    assert "no session was blocked: name one with `--session ID`" in capsys.readouterr().err
    assert command.allow(args(action="allow", duration="soon"), settings_of(home), {}, FakeClock(NOW)) == 2
    assert command.allow(args(action="allow", session="9999"), settings_of(home), {}, FakeClock(NOW)) == 1


def test_the_session_a_claude_code_command_runs_in_is_the_one_allowed(home, capsys):
    assert command.allow(args(action="allow"), settings_of(home), {"CLAUDE_CODE_SESSION_ID": S1},
                         FakeClock(NOW)) == 0
    assert set(budget_allow.read(home).sessions) == {S1}


def test_the_cli_runs_it(home):
    write_calls(home, SPENT)
    result = run_command(home, "budget", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["enabled"] is True
    result = run_command(home, "budget", "--for", "2h")
    assert result.returncode == 2 and "go with `opik-cipx budget allow`" in result.stderr
    (home / "config.toml").write_text("[budget]\nday_usd = -1\n")
    result = run_command(home, "budget")
    assert result.returncode == 2 and "budget.day_usd" in result.stderr


def hook_says(home, monkeypatch, capsys, now: int, session: str, cwd: str) -> list[str]:
    """What `sync`, run as a hook at `now`, puts in its `systemMessage` about the caps."""
    report = _Report({"hook_event_name": "UserPromptSubmit"}, as_hook=True)
    monkeypatch.setattr(sync, "SYSTEM", FakeClock(now))  # the hook's clock
    _warn_budget(settings_of(home), {"session_id": session, "cwd": cwd}, report)
    report.finish()
    out = capsys.readouterr().out
    return json.loads(out)["systemMessage"].removeprefix("opik-cipx: ").split("\n") if out else []


def test_the_hook_tells_once_per_cap_and_period_past_warn_at_and_at_the_cap(home, monkeypatch, capsys):
    write_calls(home, [(NOW - HOUR, 4.2, S1, "/home/me/code/x", "main")])
    first = hook_says(home, monkeypatch, capsys, NOW, S1, "/home/me/code/x")
    assert first == ["84% of the day cap is spent ($4.20 of $5.00; it resets Thu 10 Dec 00:00 (in 3h12m)). "
                     "`opik-cipx budget` shows every cap."]
    assert hook_says(home, monkeypatch, capsys, NOW, S1, "/home/me/code/x") == []  # once
    write_calls(home, [(NOW - HOUR, 4.2, S1, "/home/me/code/x", "main"), (NOW - 60, 1.0, S1, "/home/me/code/x",
                                                                            "main")])
    (over,) = hook_says(home, monkeypatch, capsys, NOW, S1, "/home/me/code/x")
    assert over.startswith("the day cap is reached ($5.20 of $5.00") and "budget allow" in over
    assert hook_says(home, monkeypatch, capsys, NOW + 24 * HOUR, S1, "/home/me/code/x") == []  # a new day


def test_the_hook_names_a_projects_cap(home, monkeypatch, capsys):
    write_calls(home, [(NOW - HOUR, 4.2, S1, "/srv/app/api", "main")])
    message = "\n".join(hook_says(home, monkeypatch, capsys, NOW, S1, "/srv/app/api"))
    assert "the day of /srv/app cap is reached ($4.20 of $1.00" in message
    assert "84% of the day cap" in message and "210% of" not in message


def test_the_status_line_shows_what_is_left_of_the_tightest_cap(home):
    write_calls(home, SPENT)
    env = {"CIPX_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "200"}

    def line(session, directory):
        doc = {"session_id": session, "workspace": {"project_dir": directory}}
        return statusline.render(io.StringIO(json.dumps(doc)), env, NOW / 1e9)

    assert " · left $2.65 day · " in line(S1, "/home/me/code/x")
    assert " · session cap reached · " in line(S2, "/srv/app/api")
    assert " · left $0.1500 day · " in line(S1, "/srv/app/api")  # the project's day cap is the tightest
    (home / "config.toml").write_text("[budget]\nweek_usd = 13\n")
    assert " · left $0.6500 week · " in line(S1, "/home/me/code/x")  # 95%: coloured as a warning
    coloured = statusline.render(io.StringIO(json.dumps({"session_id": S1})), {**env, "NO_COLOR": ""}, NOW / 1e9)
    assert f"{statusline.YELLOW}left $0.6500 week{statusline.RESET}" in coloured
    (home / "config.toml").write_text("capture_content = true\n")
    assert "left" not in line(S1, "/home/me/code/x")  # no cap: no part


def test_the_dashboard_shows_each_cap_as_a_bar(home):
    write_calls(home, SPENT)
    conn = open_reader(home / "ledger.db")
    html = caps_section(conn, settings_of(home).budget, NOW)
    assert html.count("<svg class=cap") == 5  # day, week, the project's day, two sessions of today
    assert "<tr class='warning'><td>day of <span title='/srv/app'>" in html
    assert "<tr class='over'><td>session 22222222</td>" in html and "reached" in html
    assert "$2.35 of $5.00" in html and "$2.65 left" in html and "resets Thu 10 Dec 00:00 (in 3h12m)" in html
    assert caps_section(conn, load_settings({"CIPX_HOME": str(home.parent / "none")}).budget, NOW) == ""
