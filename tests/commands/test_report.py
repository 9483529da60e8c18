"""`opik-cipx report` over a ledger of the recorded corpus (no daemon), run in the test's process (`run_command`)."""

import csv
import io
import json

import pytest

from opik_cipx.ledger.store import Ledger
from tests.claude_code_corpus import corpus_clock, materialized
from tests.conftest import run_command

FIGURES = ["calls", "cost_usd", "uncached_input_tokens", "cache_write_tokens", "cache_read_tokens", "input_side_tokens",
           "output_tokens"]  # docs/REPORTS.md, "Words"


@pytest.fixture(scope="module")
def corpus_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("report") / "cipx-home"
    corpus = materialized(home / "sessions")
    ledger = Ledger(home / "ledger.db", retention_days=400, clock=corpus_clock())
    for *_, result in corpus:
        ledger.write(result.call)
    ledger.close()
    spans = sum(r["body"].get("total_estimated_cost") or 0.0 for *_, result in corpus for r in result.records
                if r["body"].get("type") == "llm")
    return home, spans


def test_json_has_exactly_the_documented_shape(corpus_home):
    home, spans = corpus_home
    result = run_command(home, "report", "--by", "day,model", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert set(doc) == {"rows", "total"}
    assert list(doc["total"]) == FIGURES
    assert all(list(row) == ["day", "model", *FIGURES] for row in doc["rows"])
    assert abs(doc["total"]["cost_usd"] - spans) < 1e-9
    assert sum(row["calls"] for row in doc["rows"]) == doc["total"]["calls"] == 71


def test_table_is_aligned_with_units_and_a_totals_row(corpus_home):
    home, spans = corpus_home
    result = run_command(home, "report", "--by", "model")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["model", "calls", "uncached", "input", "cache", "write", "cache", "read", "input",
                                "side", "output", "cost", "USD", "cache", "hit"]
    assert lines[-1] == ("Tokens: input side = uncached input + cache write + cache read; cache hit = cache read / "
                         "input side (docs/REPORTS.md).")
    lines = lines[:-1]
    assert len(lines) == 6 and len({len(line) for line in lines}) == 1  # figures right-aligned
    cost_end = lines[0].index("cost USD") + len("cost USD")
    assert all(line[:cost_end][-5] == "." for line in lines[2:] if not line.startswith("-"))  # $x.xxxx
    total = lines[-1]
    assert total.startswith("total") and f"${spans:,.4f}" in total and total.endswith("%")
    assert " 71 " in total


def test_csv_lists_the_rows_then_the_total(corpus_home):
    home, spans = corpus_home
    result = run_command(home, "report", "--by", "kind", "--csv")
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["kind", *FIGURES]
    assert rows[-1][0] == "" and int(rows[-1][1]) == 71 and abs(float(rows[-1][2]) - spans) < 1e-9
    kinds = {row[0]: int(row[1]) for row in rows[1:-1]}
    assert kinds["count_tokens"] == 28 and kinds["main"] == 35 and kinds["side:web_search"] == 1


def test_filters_by_session_project_and_window(corpus_home):
    home, _ = corpus_home
    session = "d746060a-2115-4917-833e-96568974e836"  # the mcp scenario
    doc = json.loads(run_command(home, "report", "--by", "mcp", "--session", session, "--json").stdout)
    assert {row["mcp"] for row in doc["rows"]} == {"weather", "notes"} and doc["total"]["calls"] == 3
    project = json.loads(run_command(home, "report", "--project", "/home/dev/code/weather-dash", "--json").stdout)
    assert project["total"] == doc["total"]
    # the corpus was recorded on 2026-11-24 (UTC)
    later = run_command(home, "report", "--since", "2026-11-25T00:00Z", "--json")
    assert json.loads(later.stdout)["total"]["calls"] == 0
    inside = run_command(home, "report", "--since", "2026-11-23", "--until", "2026-11-25", "--json", TZ="UTC")
    assert json.loads(inside.stdout)["total"]["calls"] == 71


@pytest.mark.parametrize("args, message", [
    (["--by", "day,colour"], "cannot group by colour"),
    (["--since", "last tuesday"], "cannot read --since"),
    (["--json", "--csv"], "not allowed with"),
])
def test_bad_arguments_are_one_clear_line(corpus_home, args, message):
    result = run_command(corpus_home[0], "report", *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_without_a_ledger_it_says_how_one_appears(tmp_path):
    result = run_command(tmp_path / "fresh-home", "report", "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"rows": [], "total": dict.fromkeys(FIGURES, 0)}
    assert "no ledger yet" in result.stderr and "replay --ledger" in result.stderr
    assert not (tmp_path / "fresh-home").exists()


def test_a_damaged_ledger_is_one_line_naming_the_fix(tmp_path):
    home = tmp_path / "cipx-home"
    home.mkdir()
    (home / "ledger.db").write_bytes(b"garbage" * 1000)
    result = run_command(home, "report")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "ledger.db" in result.stderr and "replay --ledger" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_by_cache_break_gives_each_cause_with_what_the_breaks_cost(corpus_home):
    home, _ = corpus_home
    doc = json.loads(run_command(home, "report", "--by", "cache_break", "--json").stdout)
    assert list(doc["total"]) == [*FIGURES, "cache_breaks", "cache_break_tokens", "cache_break_usd"]
    causes = {row["cache_break"]: row for row in doc["rows"]}
    assert set(causes) == {"none", "unknown", "compaction"} and causes["none"]["cache_break_usd"] == 0
    assert doc["total"]["cache_breaks"] == causes["unknown"]["cache_breaks"] + 1 > 1
    table = run_command(home, "report", "--by", "cache_break").stdout.splitlines()
    assert table[0].split()[-6:] == ["hit", "breaks", "rewritten", "tok", "break", "USD"]
    assert table[-2].endswith(f"${doc['total']['cache_break_usd']:,.4f}")
    rows = list(csv.reader(io.StringIO(run_command(home, "report", "--by", "cache_break", "--csv").stdout)))
    assert rows[0] == ["cache_break", *FIGURES, "cache_breaks", "cache_break_tokens", "cache_break_usd"]


def test_by_day_shows_each_rate_limit_windows_peak(tmp_path):
    from tests.ledger.test_queries import rate_limit_entries

    home = tmp_path / "cipx-home"
    ledger = Ledger(home / "ledger.db", retention_days=10**6, clock=corpus_clock())
    assert ledger.write_entries(rate_limit_entries(tmp_path))
    ledger.close()
    doc = json.loads(run_command(home, "report", "--json").stdout)
    (row,) = doc["rows"]
    assert row["peak_utilization"] == doc["total"]["peak_utilization"] == {
        "5h": 0.14, "7d": 0.81, "requests": 0.00025, "tokens": 0.00875, "input-tokens": 0.0105,
        "output-tokens": 0.0, "7d_mythos": 0.4, "7d_oi": 0.05, "7d_opus": 0.21}
    table = run_command(home, "report").stdout.splitlines()
    assert "5h peak" in table[0] and "7d_mythos peak" in table[0] and table[2].split()[-9:-7] == ["14%", "81%"]
    assert any("highest utilization each rate-limit window reported" in line for line in table)
    rows = list(csv.reader(io.StringIO(run_command(home, "report", "--by", "week", "--csv").stdout)))
    assert rows[0][-9:-7] == ["peak:5h", "peak:7d"] and rows[1][-9:-7] == ["0.14", "0.81"]
    assert "peak_utilization" not in json.loads(run_command(home, "report", "--by", "model", "--json").stdout)["total"]


def test_session_takes_the_start_of_an_id_and_says_when_it_names_none_or_several(corpus_home):
    home, _ = corpus_home
    whole = json.loads(
        run_command(home, "report", "--session", "d746060a-2115-4917-833e-96568974e836", "--json").stdout)
    short = run_command(home, "report", "--session", "d746060a", "--json")  # the prefix everyone copies
    assert short.returncode == 0 and short.stderr == "" and json.loads(short.stdout) == whole
    assert whole["total"]["calls"] == 3
    ambiguous = run_command(home, "report", "--session", "1b")
    assert ambiguous.returncode == 2 and ambiguous.stdout == ""
    assert ambiguous.stderr == ("opik-cipx: --session '1b' starts 2 session ids (1b15d3cd-b49e-410d-880f-1d1856a84f6c, "
                                "1ba5440a-458d-4df7-b61b-c2cf3c262711): give more of the id\n")
    missing = run_command(home, "report", "--session", "44faf0ae", "--json")
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr == ("opik-cipx: no session in the ledger has an id starting with '44faf0ae'; "
                              "`opik-cipx report --by session` lists them\n")


def test_a_filter_or_a_window_without_calls_says_so(corpus_home):
    home, _ = corpus_home
    nowhere = run_command(home, "report", "--project", "/home/dev/code/nowhere", "--json")
    assert nowhere.returncode == 1 and nowhere.stdout == ""
    assert nowhere.stderr == ("opik-cipx: no call in the ledger was made in /home/dev/code/nowhere or below it; "
                              "`opik-cipx report --by project` lists what the ledger holds\n")
    later = run_command(home, "report", "--since", "2026-12-01", "--json", TZ="UTC")  # the corpus: 2026-11-24
    assert later.returncode == 0 and json.loads(later.stdout)["total"]["calls"] == 0  # scripts still get the shape
    assert later.stderr == ("opik-cipx: no call was made from 2026-12-01 00:00 to now (the ledger holds calls from "
                            "2026-11-24 01:53 to 2026-11-24 01:54)\n")
    assert run_command(home, "report", "--since", "2026-11-23", "--json", TZ="UTC").stderr == ""


def test_model_kind_and_agent_narrow_as_the_dashboards_filters(corpus_home):
    home, _ = corpus_home
    by_kind = json.loads(run_command(home, "report", "--by", "kind", "--json").stdout)
    kinds = {row["kind"]: row for row in by_kind["rows"]}
    main = json.loads(run_command(home, "report", "--kind", "main", "--json").stdout)["total"]
    assert main == {name: kinds["main"][name] for name in FIGURES}
    haiku = json.loads(
        run_command(home, "report", "--by", "agent", "--model", "claude-haiku-4-5-20251001", "--json").stdout)
    assert [(row["agent"], row["calls"]) for row in haiku["rows"]] == [("code-auditor", 2)]
    none = run_command(home, "report", "--agent", "main", "--kind", "subagent", "--json")
    assert none.returncode == 1 and none.stdout == "" and none.stderr == (
        "opik-cipx: no call in the ledger matches kind subagent and agent main together\n")


SESSION_KEYS = ["session", "session_label", "session_project", "session_started_at"]


def test_by_session_each_row_carries_its_label_project_and_start(corpus_home):
    """Sessions are no bare ids: table, JSON and CSV give each one's label (its first prompt
    here: the corpus holds no title call), project and start time."""
    home, _ = corpus_home
    sessions = {json.loads(path.read_text())["session_id"]: json.loads(path.read_text())
                for path in (home / "sessions").glob("*.json")}
    doc = json.loads(run_command(home, "report", "--by", "session", "--json").stdout)
    rows = {row["session"]: row for row in doc["rows"]}
    assert all(list(row) == [*SESSION_KEYS, *FIGURES] for row in doc["rows"])
    subagent = rows["1b15d3cd-b49e-410d-880f-1d1856a84f6c"]
    assert subagent["session_label"] == "Use a subagent to survey this project's layout and report back."
    assert subagent["session_project"] == sessions[subagent["session"]]["cwd"] == "/home/dev/code/inventory-sync"
    assert subagent["session_started_at"].startswith("20") and subagent["session_started_at"][19] in "+-Z"
    assert all(row["session_label"] and row["session_project"] for row in doc["rows"])
    table = run_command(home, "report", "--by", "session").stdout.splitlines()
    assert table[0].split()[:5] == ["session", "started", "project", "label", "calls"]
    line = next(line for line in table if line.startswith("1b15d3cd "))
    started = subagent["session_started_at"][:16].replace("T", " ")
    assert f"1b15d3cd  {started}  inventory-sync" in line and "Use a subagent to survey this project's…" in line
    rows_csv = list(csv.DictReader(io.StringIO(run_command(home, "report", "--by", "session,model", "--csv").stdout)))
    assert list(rows_csv[0])[:6] == ["session", "model", *SESSION_KEYS[1:], "calls"]
    assert {row["session_label"] for row in rows_csv[:-1]} == {row["session_label"] for row in doc["rows"]}
