"""Reports from the ledger: exact against the spans, against a brute-force sum over the entries
for any window and grouping, and roll-ups that stay equal to the calls through rewrites,
retention and migration."""

import dataclasses
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opik_cipx.ledger.db import connect, open_reader
from opik_cipx.ledger.entry import OUTPUT, WEB_SEARCH, ledger_entry
from opik_cipx.ledger.periods import local_day, month_of, week_of
from opik_cipx.ledger.queries import (
    BY_KEYS,
    DETAIL_KEYS,
    AmbiguousSession,
    ReportError,
    Selection,
    SessionNotFound,
    find_session,
    parse_by,
    pick_session,
    prefix_bounds,
    recent_calls,
    report,
    report_figures,
    why_empty,
)
from opik_cipx.ledger.schema import (
    CALL_FIGURES,
    DETAIL_FIGURES,
    DIMENSIONS,
    LABELLED,
    LATEST,
    MIGRATIONS,
    PART_FIGURES,
    ROLLED_UP_DETAILS,
    SESSION_PART_KEYS,
    V2_CALL_FIGURES,
    V2_DIMENSIONS,
    roll_up,
)
from opik_cipx.ledger.store import Ledger, delete_before, upsert
from tests.claude_code_corpus import corpus_clock, corpus_now_ns, materialized
from tests.conftest import examples

DAY_NS = 86_400 * 10**9


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return materialized(tmp_path_factory.mktemp("sessions"))


@pytest.fixture(scope="module")
def entries(corpus):
    return [ledger_entry(r.call) for _, _, c, r in corpus if r.call]


def spread(entries, copies: int, days: int, start_ns: int) -> list:
    """`copies` of every entry, moved across `days` days from `start_ns` (a new capture id and
    session each copy, so they are distinct calls)."""
    out = []
    for copy in range(copies):
        for i, entry in enumerate(entries):
            at = start_ns + ((copy * len(entries) + i) * days * DAY_NS) // (copies * len(entries))
            session = entry.call["session_id"] if copy == 0 else f"{entry.call['session_id']}-{copy}"
            call = {**entry.call, "capture_id": f"{entry.call['capture_id']}-{copy}", "started_at_ns": at,
                    "ended_at_ns": at + 10**8, "day": local_day(at), "session_id": session}
            out.append(dataclasses.replace(entry, call=call))
    return out


START_NS = corpus_now_ns() - 12 * DAY_NS


@pytest.fixture(scope="module")
def ledger_conn(tmp_path_factory, entries):
    path = tmp_path_factory.mktemp("ledger") / "ledger.db"
    ledger = Ledger(path, retention_days=400, clock=corpus_clock())
    assert ledger.write_entries(spread(entries, copies=3, days=10, start_ns=START_NS))
    ledger.close()
    conn = open_reader(path)
    yield conn
    conn.close()


# -- brute force -------------------------------------------------------------------------

def dims(entry) -> dict:
    c = entry.call
    agent = c["agent_type"] or ("subagent" if c["agent_id"] or c["kind"] == "subagent" else "main")
    return {
        "day": c["day"], "week": week_of(c["day"]), "month": month_of(c["day"]),
        "session": c["session_id"], "project": c["project_dir"], "branch": c["git_branch"], "model": c["model"],
        "kind": c["kind"] + (f":{c['side_kind']}" if c["side_kind"] else ""), "agent": agent,
        "cache_break": c["cache_break_cause"] or "none",
    }


def detail_figures(entry, d) -> dict:
    c = entry.call
    prompt = c["input_tokens"] + c["cache_creation_input_tokens"] + c["cache_read_input_tokens"]
    share = d.tokens / prompt if prompt and d.bucket not in (OUTPUT, WEB_SEARCH) else 0.0
    return {"calls": 1, "cost_usd": d.cost_usd or 0.0, "uncached_input_tokens": share * c["input_tokens"],
            "cache_write_tokens": share * c["cache_creation_input_tokens"],
            "cache_read_tokens": share * c["cache_read_input_tokens"], "input_side_tokens": share * prompt,
            "output_tokens": d.tokens if d.bucket == OUTPUT else 0.0}


def brute_force(entries, by, sel: Selection) -> tuple[dict, dict]:
    names = report_figures(by)
    rows: dict[tuple, dict] = {}
    total = dict.fromkeys(names, 0)
    detail = next((k for k in by if k in DETAIL_KEYS), None)
    for entry in entries:
        c = entry.call
        if sel.since_ns is not None and c["started_at_ns"] < sel.since_ns:
            continue
        if sel.until_ns is not None and c["started_at_ns"] >= sel.until_ns:
            continue
        if sel.session is not None and c["session_id"] != sel.session:
            continue
        if any(value is not None and dims(entry)[name] != value
               for name, value in (("model", sel.model), ("kind", sel.kind), ("agent", sel.agent))):
            continue
        figures = {"calls": 1, "cost_usd": c["cost_usd"] or 0.0, "uncached_input_tokens": c["input_tokens"],
                   "cache_write_tokens": c["cache_creation_input_tokens"],
                   "cache_read_tokens": c["cache_read_input_tokens"],
                   "input_side_tokens": (c["input_tokens"] + c["cache_creation_input_tokens"]
                                         + c["cache_read_input_tokens"]),
                   "output_tokens": c["output_tokens"],
                   "cache_breaks": int(c["cache_break_cause"] is not None),
                   "cache_break_tokens": c["cache_break_tokens"], "cache_break_usd": c["cache_break_usd"] or 0.0}
        for f in names:
            total[f] += figures[f]
        parts = [(None, figures)]
        if detail == "bucket":
            parts = [(d.bucket, detail_figures(entry, d)) for d in entry.details if d.detail == ""]
        elif detail:
            parts = [(d.detail, detail_figures(entry, d)) for d in entry.details
                     if d.bucket == LABELLED[detail] and d.detail]
        for value, part in parts:
            key = tuple(value if k in DETAIL_KEYS else dims(entry)[k] for k in by)
            into = rows.setdefault(key, dict.fromkeys(names, 0))
            for f in names:
                into[f] += part[f]
    return rows, total


def assert_figures_equal(got: dict, want: dict) -> None:
    assert got["calls"] == want["calls"]
    assert set(got) - {"unpriced_calls", "estimated_calls", "peak_utilization"} >= set(want)
    for f in set(want) - {"calls"}:
        assert got[f] == pytest.approx(want[f], rel=1e-9, abs=1e-9), f


# -- tests -------------------------------------------------------------------------------

def test_totals_equal_the_span_costs_and_rows_add_up_to_them(tmp_path, corpus):
    ledger = Ledger(tmp_path / "ledger.db", retention_days=400, clock=corpus_clock())
    for *_, result in corpus:
        ledger.write(result.call)
    ledger.close()
    spans = sum(r["body"].get("total_estimated_cost") or 0.0 for *_, result in corpus for r in result.records
                if r["body"].get("type") == "llm")
    conn = open_reader(tmp_path / "ledger.db")
    for by in ("model", "session", "day,bucket", "kind", "agent", "project,branch", "month"):
        result = report(conn, parse_by(by))
        assert abs(result.total["cost_usd"] - spans) < 1e-9, by
        assert abs(sum(r["cost_usd"] for r in result.rows) - spans) < 1e-9, by
        if "bucket" not in by:
            assert sum(r["calls"] for r in result.rows) == result.total["calls"] == 71


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    by=st.lists(st.sampled_from(BY_KEYS), min_size=0, max_size=3, unique=True).filter(
        lambda keys: sum(k in DETAIL_KEYS for k in keys) <= 1),
    since=st.one_of(st.none(), st.integers(-DAY_NS, 11 * DAY_NS)),
    length=st.one_of(st.none(), st.integers(0, 12 * DAY_NS)),
    session=st.one_of(st.none(), st.sampled_from(["59a8bce3-81a8-46d0-a14b-a2d1e9557e40-1",
                                                  "d746060a-2115-4917-833e-96568974e836"])),
    model=st.one_of(st.none(), st.sampled_from(["claude-opus-4-8", "claude-haiku-4-5-20251001"])),
    kind=st.one_of(st.none(), st.sampled_from(["main", "subagent", "count_tokens", "side:web_search"])),
    agent=st.one_of(st.none(), st.sampled_from(["main", "general-purpose", "code-auditor"])),
)
def test_any_window_and_grouping_equals_the_brute_force_sum(ledger_conn, entries, by, since, length, session,
                                                            model, kind, agent):
    all_entries = spread(entries, copies=3, days=10, start_ns=START_NS)
    since_ns = None if since is None else START_NS + since
    until_ns = None if length is None else (since_ns or START_NS) + length
    sel = Selection(since_ns=since_ns, until_ns=until_ns, session=session, model=model, kind=kind, agent=agent)
    result = report(ledger_conn, tuple(by), sel)
    want_rows, want_total = brute_force(all_entries, tuple(by), sel)
    assert_figures_equal(result.total, want_total)
    if by:
        got = {tuple(None if r[k] is None else r[k] for k in by): r for r in result.rows}
        want_rows = {tuple("main" if k == "agent" and v is None else v for k, v in zip(by, key, strict=True)): f
                     for key, f in want_rows.items()}
        assert set(got) == set(want_rows)
        for key, figures in want_rows.items():
            assert_figures_equal(got[key], figures)


def test_project_filter_takes_the_directory_and_below(ledger_conn):
    everything = report(ledger_conn, ("project",))
    only = report(ledger_conn, ("project",), Selection(project="/home/dev/code/greeter-cli/"))
    assert [r["project"] for r in only.rows] == ["/home/dev/code/greeter-cli"]
    greeter = next(r for r in everything.rows if r["project"] == "/home/dev/code/greeter-cli")
    assert only.total["calls"] == greeter["calls"]
    assert report(ledger_conn, (), Selection(project="/home/dev/code")).total == everything.total
    assert report(ledger_conn, (), Selection(project="/home/dev/cod")).total["calls"] == 0


@given(prefix=st.text(min_size=1, max_size=6), other=st.text(max_size=8))
def test_prefix_bounds_hold_exactly_the_strings_that_start_with_the_prefix(prefix, other):
    low, high = prefix_bounds(prefix)
    for text in (other, prefix + other, prefix[:-1] + other):
        inside = low <= text and (high is None or text < high)
        assert inside == text.startswith(prefix)
        # SQLite compares text as UTF-8 bytes: the same order for any text that encodes
        if "\ud800" <= text[:1] <= "\udfff" or any("\ud800" <= ch <= "\udfff" for ch in text + prefix):
            continue
        encoded = low.encode() <= text.encode() and (high is None or text.encode() < high.encode())
        assert encoded == inside


def test_a_session_is_named_by_its_whole_id_or_any_unique_start():
    ids = ["1b15d3cd-b49e", "1ba5440a-458d", "d359249e-1c6d"]
    assert pick_session("d3", ["d359249e-1c6d"]) == "d359249e-1c6d"
    assert pick_session("1b15d3cd-b49e", ["1b15d3cd-b49e", "1b15d3cd-b49e-2"]) == "1b15d3cd-b49e"  # whole id wins
    with pytest.raises(AmbiguousSession) as ambiguous:
        pick_session("1b", ids[:2])
    assert ambiguous.value.candidates == ids[:2]
    assert str(ambiguous.value) == "'1b' starts 2 session ids (1b15d3cd-b49e, 1ba5440a-458d): give more of the id"
    with pytest.raises(AmbiguousSession, match=r"starts 1\+ session ids \(d359249e-1c6d, \.\.\.\)"):
        pick_session("d", ids[2:], more=True)  # one listed, more beyond the list: not unique
    with pytest.raises(SessionNotFound, match="no session in the ledger has an id starting with '44faf0ae'"):
        pick_session("44faf0ae", [])


def test_find_session_reads_the_candidates_from_the_ledger(ledger_conn, monkeypatch):
    # every session has copies here (`<id>-1`, `<id>-2`): a whole id still names its own
    whole = "d746060a-2115-4917-833e-96568974e836"
    assert find_session(ledger_conn, whole) == whole
    assert find_session(ledger_conn, f"{whole}-2") == f"{whole}-2"
    with pytest.raises(AmbiguousSession) as ambiguous:  # the session and its copies (`-1`, `-2`)
        find_session(ledger_conn, "d746")
    assert ambiguous.value.candidates == ["d746060a-2115-4917-833e-96568974e836",
                                          "d746060a-2115-4917-833e-96568974e836-1",
                                          "d746060a-2115-4917-833e-96568974e836-2"]
    monkeypatch.setattr("opik_cipx.ledger.queries.SESSION_CANDIDATES", 4)
    with pytest.raises(AmbiguousSession, match=r"'1' starts 4\+ session ids") as many:  # 6 do
        find_session(ledger_conn, "1")
    assert len(many.value.candidates) == 4
    for missing in ("44faf0ae", "", "z"):
        with pytest.raises(SessionNotFound):
            find_session(ledger_conn, missing)


def test_an_empty_selection_says_which_filter_matches_nothing(ledger_conn):
    assert why_empty(ledger_conn, Selection(project="/home/dev/nowhere")) == (
        "no call in the ledger was made in /home/dev/nowhere or below it", "project")
    assert why_empty(ledger_conn, Selection(model="claude-opus-4-8", kind="side:nope"))[1] == "kind"
    together = why_empty(ledger_conn, Selection(model="claude-haiku-4-5-20251001", kind="main"))  # haiku: subagents
    assert together == ("no call in the ledger matches model claude-haiku-4-5-20251001 and kind main together", "")
    why, culprit = why_empty(ledger_conn, Selection(since_ns=START_NS + 20 * DAY_NS, model="claude-opus-4-8"))
    assert culprit is None and why.startswith("no call that matches the filters was made from ")
    assert "(the ledger holds calls from " in why


def test_recent_calls_take_the_filters_a_window_and_a_part(ledger_conn, entries):
    all_entries = spread(entries, copies=3, days=10, start_ns=START_NS)
    sel = Selection(since_ns=START_NS + DAY_NS, until_ns=START_NS + 6 * DAY_NS, kind="main")
    calls = recent_calls(ledger_conn, 1000, selection=sel)
    want = [e for e in all_entries
            if e.call["kind"] == "main" and sel.since_ns <= e.call["started_at_ns"] < sel.until_ns]
    assert sorted(c["capture_id"] for c in calls) == sorted(e.call["capture_id"] for e in want)
    assert [c["started_at_ns"] for c in calls] == sorted((c["started_at_ns"] for c in calls), reverse=True)
    assert all(c["input_side_tokens"] == c["uncached_input_tokens"] + c["cache_write_tokens"] + c["cache_read_tokens"]
               for c in calls)
    older = recent_calls(ledger_conn, 5, before_ns=calls[9]["started_at_ns"], selection=sel)
    assert [c["capture_id"] for c in older] == [c["capture_id"] for c in calls[10:15]]
    weather = recent_calls(ledger_conn, 1000, part=("mcp", "weather"))
    assert len(weather) == sum(any(d.bucket == "tools_mcp" and d.detail == "weather" for d in e.details)
                               for e in all_entries) > 0


def test_rows_sort_by_time_then_by_cost(ledger_conn):
    rows = report(ledger_conn, ("day", "model")).rows
    days = [r["day"] for r in rows]
    assert days == sorted(days)
    for day in set(days):
        costs = [r["cost_usd"] for r in rows if r["day"] == day]
        assert costs == sorted(costs, reverse=True)
    models = report(ledger_conn, ("model", "day")).rows
    assert models[0]["model"] == "claude-opus-4-8" and models[-1]["model"].startswith("claude-haiku")


@pytest.mark.parametrize("raw, message", [
    ("day,nope", "cannot group by nope"),
    ("bucket,mcp", "choose one of bucket, mcp, skill, tool"),
    ("day,day", "appears twice"),
])
def test_bad_groupings_are_one_clear_error(raw, message):
    with pytest.raises(ReportError, match=message):
        parse_by(raw)


def rollups_match_calls(conn: sqlite3.Connection) -> None:
    """The roll-ups, kept up to date write by write, hold what summing the calls afresh gives."""
    dims = ", ".join(DIMENSIONS.values())
    for table, figures, source, extra in (
        ("daily_calls", CALL_FIGURES, "calls c", ""),
        ("daily_details", DETAIL_FIGURES, "calls c JOIN details d ON d.call_id = c.id",
         ", d.bucket, d.detail"),
    ):
        where = f" WHERE {ROLLED_UP_DETAILS}" if extra else ""
        fresh = conn.execute(f"SELECT {dims}{extra}, {', '.join(figures.values())} FROM {source}{where} "
                             f"GROUP BY {dims}{extra}").fetchall()
        keys = ", ".join(DIMENSIONS) + (", bucket, detail" if extra else "")
        kept = conn.execute(f"SELECT {keys}, {', '.join(figures)} FROM {table}").fetchall()
        assert len(kept) == len(fresh), table
        width = len(DIMENSIONS) + (2 if extra else 0)
        for a, b in zip(sorted(kept, key=lambda r: r[:width]), sorted(fresh, key=lambda r: r[:width]), strict=True):
            assert a[:width] == b[:width]
            assert a[width:] == pytest.approx(b[width:], rel=1e-9, abs=1e-9)
    days = conn.execute("SELECT day, calls FROM days ORDER BY day").fetchall()
    assert days == conn.execute("SELECT day, count(*) FROM calls GROUP BY day ORDER BY day").fetchall()
    keys = ", ".join(SESSION_PART_KEYS.values())
    fresh = conn.execute(f"SELECT {keys}, count(*), {', '.join(f'total(p.{f})' for f in PART_FIGURES)} "
                         f"FROM calls c JOIN call_parts p ON p.call_id = c.id GROUP BY {keys}").fetchall()
    kept = conn.execute(f"SELECT {', '.join(SESSION_PART_KEYS)}, calls, {', '.join(PART_FIGURES)} "
                        "FROM session_parts").fetchall()
    assert len(kept) == len(fresh), "session_parts"
    width = len(SESSION_PART_KEYS)
    for a, b in zip(sorted(kept), sorted(fresh), strict=True):
        assert a[:width] == b[:width]
        assert a[width:] == pytest.approx(b[width:], rel=1e-9, abs=1e-9)


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from(["write", "rewrite", "retain"]), st.integers(0, 40)),
                    min_size=1, max_size=25))
def test_rewrites_and_retention_never_let_the_rollups_drift(tmp_path_factory, entries, ops):
    """Writing a capture again (the same or changed rows), and deleting old days, keep every
    roll-up equal to the sum of the calls: nothing is counted twice."""
    pool = spread(entries[:41], copies=1, days=8, start_ns=START_NS)
    conn = sqlite3.connect(tmp_path_factory.mktemp("ops") / "ledger.db", isolation_level=None)
    from opik_cipx.ledger.schema import migrate

    migrate(conn)
    written = {}
    for op, i in ops:
        entry = pool[i % len(pool)]
        if op == "retain":
            delete_before(conn, local_day(entry.call["started_at_ns"]))
            written = {k: e for k, e in written.items() if e.call["day"] >= entry.call["day"]}
            continue
        if op == "rewrite":
            entry = dataclasses.replace(entry, call={**entry.call, "cost_usd": (entry.call["cost_usd"] or 0) + 1.0,
                                                     "model": "other-model", "day": entry.call["day"]},
                                        details=entry.details[::2])
        conn.execute("BEGIN")
        upsert(conn, entry)
        conn.execute("COMMIT")
        written[entry.call["capture_id"]] = entry
    rollups_match_calls(conn)
    total = report(conn, ()).total
    assert total["calls"] == len(written)
    assert total["cost_usd"] == pytest.approx(sum(e.call["cost_usd"] or 0 for e in written.values()), abs=1e-9)


def older_ledger(path, entries, version: int) -> None:
    """A ledger as the writer of schema `version` (1, 2 or 3) left it: WAL, that version's tables,
    the calls of `entries` (the columns that version had) and, from v2, its roll-ups."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for step in MIGRATIONS[:version]:
        step(conn)
    conn.execute(f"PRAGMA user_version = {version}")
    known = {row[1] for row in conn.execute("PRAGMA table_info(calls)")}
    for entry in entries:
        columns = [c for c in entry.call if c in known]
        call_id = conn.execute(f"INSERT INTO calls ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                               [entry.call[c] for c in columns]).lastrowid
        conn.executemany("INSERT INTO details VALUES (?, ?, ?, ?, ?, ?)",
                         [(call_id, d.bucket, d.detail, d.chars, d.tokens, d.cost_usd) for d in entry.details])
    if version == 2:
        roll_up(conn, "1", dimensions=V2_DIMENSIONS, call_figures=V2_CALL_FIGURES)  # as the v2 writer kept them
    elif version == 3:
        roll_up(conn, "1")
    conn.close()


def test_a_v1_ledger_is_migrated_by_the_writer_with_its_calls_rolled_up(tmp_path, entries):
    """A ledger written by the first schema (calls and details only) gains the roll-ups."""
    path = tmp_path / "ledger.db"
    older_ledger(path, entries, version=1)
    connect(path, busy_timeout_s=1.0).close()  # what the daemon's Ledger (and `replay --ledger`) opens
    reader = open_reader(path)
    assert reader.execute("PRAGMA user_version").fetchone()[0] == LATEST
    for by in (("model",), ("day", "bucket"), ("mcp",)):
        rows, total = brute_force(entries, by, Selection())
        result = report(reader, by)
        assert_figures_equal(result.total, total)
        assert len(result.rows) == len(rows)
    rollups_match_calls(reader)
    reader.close()
    # and the writer carries on from there
    ledger = Ledger(path, retention_days=400, clock=corpus_clock())
    assert ledger.write_entries(entries[:5])
    ledger.close()
    assert report(open_reader(path), ()).total["calls"] == len(entries)


def test_a_v2_ledger_gains_the_cache_and_rate_limit_columns_and_its_rollups_are_rebuilt(tmp_path, entries):
    """A ledger written by schema v2 (before cache diagnoses and rate limits) is migrated in
    place when the writer opens it."""
    path = tmp_path / "ledger.db"
    older_ledger(path, entries, version=2)
    v2_total = sqlite3.connect(path).execute("SELECT sum(calls), total(cost_usd) FROM daily_calls").fetchone()
    connect(path, busy_timeout_s=1.0).close()
    reader = open_reader(path)
    assert reader.execute("PRAGMA user_version").fetchone()[0] == LATEST
    rollups_match_calls(reader)
    (row,) = report(reader, ("cache_break",)).rows  # nothing was diagnosed before v3
    assert row["cache_break"] == "none" and row["cache_breaks"] == 0
    assert (row["calls"], row["cost_usd"]) == pytest.approx(tuple(v2_total))
    assert reader.execute("SELECT count(*) FROM rate_limits").fetchone()[0] == 0
    reader.close()
    ledger = Ledger(path, retention_days=400, clock=corpus_clock())  # the writer carries on, diagnoses included
    assert ledger.write_entries(entries)
    ledger.close()
    assert report(open_reader(path), ("cache_break",)).total["calls"] == len(entries)


def test_cache_breaks_report_by_cause_with_their_extra_cost(tmp_path, corpus):
    ledger = Ledger(tmp_path / "ledger.db", retention_days=400, clock=corpus_clock())
    for *_, result in corpus:
        ledger.write(result.call)
    ledger.close()
    spans = [r["body"] for *_, result in corpus for r in result.records if r["body"].get("type") == "llm"]
    breaks = [s["metadata"]["cc"]["cache"]["break"] for s in spans
              if (s["metadata"]["cc"].get("cache") or {}).get("break")]
    conn = open_reader(tmp_path / "ledger.db")
    result = report(conn, ("cache_break",))
    causes = {r["cache_break"]: r for r in result.rows}
    assert set(causes) == {"none", "unknown", "compaction"}
    assert causes["compaction"]["cache_breaks"] == 1 and causes["none"]["cache_breaks"] == 0
    assert result.total["cache_breaks"] == len(breaks) == sum(r["cache_breaks"] for r in result.rows)
    assert result.total["cache_break_usd"] == pytest.approx(sum(b["extra_cost_usd"] for b in breaks), rel=1e-12)
    assert result.total["cache_break_tokens"] == sum(b["lost_tokens"] for b in breaks)
    assert "cache_breaks" not in report(conn, ("cache_break", "bucket")).total  # shares of buckets: no break figures
    (compaction,) = conn.execute("SELECT cache_break_bucket, cache_break_item, cache_gap_s FROM calls "
                                 "WHERE cache_break_cause = 'compaction'").fetchall()
    assert compaction[:2] == ("compaction", "message 0 block 1 changed (compaction: continued_summary)")
    assert compaction[2] > 0


def rate_limit_entries(tmp_path) -> list:
    from opik_cipx.materialize.materializer import Materializer
    from opik_cipx.materialize.pricing import load_price_table
    from tests.claude_code_corpus import exchanges
    from tests.materialize.test_materializer import config
    from tests.materialize.test_rate_limits import RATE_LIMITS

    materializer = Materializer(config(tmp_path), load_price_table())
    return [ledger_entry(materializer.materialize(capture).call)
            for scenario in ("oauth", "api_key") for _, capture in exchanges(scenario, RATE_LIMITS)]


def test_rate_limits_per_call_latest_per_window_and_daily_peaks(tmp_path):
    from opik_cipx.ledger.queries import latest_rate_limits, peak_utilization

    oauth1, oauth2, oauth3, api = rate_limit_entries(tmp_path)
    # the recorded prompts name /home/dev/code/...: the API-key call alone is put elsewhere
    api = dataclasses.replace(api, call={**api.call, "project_dir": "/srv/code/api"})
    day = oauth1.call["day"]
    later = dataclasses.replace(oauth1, call={**oauth1.call, "capture_id": "later", "started_at_ns": oauth3.call[
        "started_at_ns"] + 10**9})
    ledger = Ledger(tmp_path / "ledger.db", retention_days=10**6, clock=corpus_clock())
    assert ledger.write_entries([oauth3, later, oauth2, api])
    assert ledger.write_entries([oauth3])  # written again: nothing doubles
    ledger.close()
    conn = open_reader(tmp_path / "ledger.db")
    assert conn.execute("SELECT count(*) FROM rate_limits").fetchone()[0] == 7 + 6 + 6 + 4  # oauth 003 has 7d_mythos
    latest = {row["window_name"]: row for row in latest_rate_limits(conn)}
    assert list(latest)[:2] == ["5h", "7d"] and "7d_mythos" in latest and "requests" in latest
    assert latest["5h"]["utilization"] == 0.12  # `later` (a copy of 001) started last
    assert latest["7d_mythos"]["utilization"] == 0.4  # only 003 reported it
    assert latest["requests"] == {"window_name": "requests", "source": "classic", "utilization": 0.00025,
                                  "resets_at": latest["requests"]["resets_at"], "status": None,
                                  "surpassed_threshold": None, "limit_value": 4000, "remaining": 3999,
                                  "started_at_ns": api.call["started_at_ns"]}
    peaks = peak_utilization(conn)
    assert peaks == {day: {"5h": 0.14, "7d": 0.81, "7d_mythos": 0.4, "7d_oi": 0.05, "7d_opus": 0.21,
                           "requests": 0.00025, "tokens": 0.00875, "input-tokens": 0.0105, "output-tokens": 0.0}}
    assert peak_utilization(conn, Selection(session=oauth1.call["session_id"]))[day]["7d"] == 0.81
    assert peak_utilization(conn, Selection(project="/srv/code/")) == {day: {
        "requests": 0.00025, "tokens": 0.00875, "input-tokens": 0.0105, "output-tokens": 0.0}}  # the API-key call's
    assert peak_utilization(conn, Selection(since_ns=oauth3.call["started_at_ns"] + 1))[day] == {
        "5h": 0.12, "7d": 0.34, "7d_oi": 0.05, "7d_opus": 0.21}  # the day cut: read from the calls
    result = report(conn, ("day",))
    assert result.rows[0]["peak_utilization"]["7d"] == result.total["peak_utilization"]["7d"] == 0.81
    assert list(result.rows[0]["peak_utilization"])[:2] == ["5h", "7d"]
    assert "peak_utilization" not in report(conn, ("day", "model")).rows[0]
    conn.close()
    writer = connect(tmp_path / "ledger.db", busy_timeout_s=1.0)
    delete_before(writer, "9999-01-01")
    assert writer.execute("SELECT count(*) FROM rate_limits").fetchone()[0] == 0
    assert peak_utilization(writer) == {}
