"""`opik-cipx advise` over a ledger (no daemon), in the test's process (`run_command`): the
documented JSON shape, the table, and one clear line when there is nothing to read."""

import json

from opik_cipx.ledger.entry import ledger_entry
from opik_cipx.ledger.store import Ledger
from tests.claude_code_corpus import corpus_clock
from tests.conftest import run_command
from tests.ledger.test_advice import ADVICE, derived

PERIOD = ("--since", "2026-11-20", "--until", "2026-11-30")  # the recorded corpus is of 2026-11-24


def home_with_calendar(tmp_path):
    home = tmp_path / "cipx-home"
    home.mkdir()
    calls = derived(tmp_path, ADVICE, "unused_server", ("001", "002", "003"))
    ledger = Ledger(home / "ledger.db", retention_days=4000, clock=corpus_clock())
    assert ledger.write_entries([ledger_entry(call) for call, _ in calls])
    ledger.close()
    return home


def test_json_and_table_name_the_unused_server_with_its_action(tmp_path):
    home = home_with_calendar(tmp_path)
    result = run_command(home, "advise", "--json", *PERIOD)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert set(doc) == {"findings", "realised"}
    assert all(set(f) == {"kind", "subject", "saving_usd", "calls", "evidence", "action"} for f in doc["findings"])
    savings = [f["saving_usd"] for f in doc["findings"]]
    assert savings == sorted(savings, reverse=True)  # ranked by dollars
    calendar = next(f for f in doc["findings"] if f["subject"] == "calendar")
    assert calendar["kind"] == "unused_mcp_server" and calendar["calls"] == 3 and calendar["saving_usd"] > 0
    assert calendar["evidence"]["captures"].startswith("none stored")
    table = run_command(home, "advise", *PERIOD, "--project", "/home/dev/code/weather-dash")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("What to change, 2026-11-20 00:00 to 2026-12-01 00:00 (11 days)")  # --until: whole day
    row = next(i for i, line in enumerate(lines) if "unused_mcp_server: calendar (3 calls)" in line)
    assert f"${calendar['saving_usd']:,.4f}" in lines[row] and "claude mcp remove calendar" in lines[row + 1]


def test_no_ledger_and_an_empty_period_each_say_so_in_one_line(tmp_path):
    empty = tmp_path / "empty-home"
    empty.mkdir()
    result = run_command(empty, "advise", *PERIOD)
    assert result.returncode == 0 and result.stdout == ""
    assert result.stderr.startswith("opik-cipx: no ledger yet") and result.stderr.count("\n") == 1
    home = home_with_calendar(tmp_path)
    nothing = run_command(home, "advise", "--since", "2026-10-01", "--until", "2026-10-02")
    assert nothing.returncode == 0, nothing.stderr
    assert "  nothing: " in nothing.stdout
    bad = run_command(home, "advise", "--since", "yesterday-ish")
    assert bad.returncode == 2 and "cannot read --since" in bad.stderr and "Traceback" not in bad.stderr
