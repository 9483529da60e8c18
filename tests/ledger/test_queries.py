"""Reports from the ledger: exact against the spans, against a brute-force sum over the entries
for any window and grouping, and roll-ups that stay equal to the calls through rewrites,
retention and migration."""

import dataclasses
import sqlite3
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opik_cipx.ledger.db import open_reader
from opik_cipx.ledger.entry import OUTPUT, WEB_SEARCH, ledger_entry
from opik_cipx.ledger.periods import local_day, month_of, week_of
from opik_cipx.ledger.queries import (
    BY_KEYS,
    DETAIL_KEYS,
    FIGURES,
    ReportError,
    Selection,
    parse_by,
    report,
)
from opik_cipx.ledger.schema import (
    CALL_FIGURES,
    DETAIL_FIGURES,
    DIMENSIONS,
    LABELLED,
    LATEST,
    ROLLED_UP_DETAILS,
    V1,
)
from opik_cipx.ledger.store import Ledger, delete_before, upsert
from tests.claude_code_corpus import materialized

DAY_NS = 86_400 * 10**9


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return materialized(tmp_path_factory.mktemp("sessions"))


@pytest.fixture(scope="module")
def entries(corpus):
    return [e for e in (ledger_entry(c, r) for _, _, c, r in corpus) if e]


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


START_NS = int((time.time() - 12 * 86400) * 1e9)


@pytest.fixture(scope="module")
def ledger_conn(tmp_path_factory, entries):
    path = tmp_path_factory.mktemp("ledger") / "ledger.db"
    ledger = Ledger(path, retention_days=400)
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
    }


def detail_figures(entry, d) -> dict:
    c = entry.call
    prompt = c["input_tokens"] + c["cache_creation_input_tokens"] + c["cache_read_input_tokens"]
    share = d.tokens / prompt if prompt and d.bucket not in (OUTPUT, WEB_SEARCH) else 0.0
    return {"calls": 1, "cost_usd": d.cost_usd or 0.0, "input_tokens": share * c["input_tokens"],
            "cache_creation_input_tokens": share * c["cache_creation_input_tokens"],
            "cache_read_input_tokens": share * c["cache_read_input_tokens"],
            "output_tokens": d.tokens if d.bucket == OUTPUT else 0.0}


def brute_force(entries, by, sel: Selection) -> tuple[dict, dict]:
    rows: dict[tuple, dict] = {}
    total = dict.fromkeys(FIGURES, 0)
    detail = next((k for k in by if k in DETAIL_KEYS), None)
    for entry in entries:
        c = entry.call
        if sel.since_ns is not None and c["started_at_ns"] < sel.since_ns:
            continue
        if sel.until_ns is not None and c["started_at_ns"] >= sel.until_ns:
            continue
        if sel.session is not None and c["session_id"] != sel.session:
            continue
        figures = {"calls": 1, "cost_usd": c["cost_usd"] or 0.0, **{f: c[f] for f in FIGURES[2:]}}
        for f in FIGURES:
            total[f] += figures[f]
        parts = [(None, figures)]
        if detail == "bucket":
            parts = [(d.bucket, detail_figures(entry, d)) for d in entry.details if d.detail == ""]
        elif detail:
            parts = [(d.detail, detail_figures(entry, d)) for d in entry.details
                     if d.bucket == LABELLED[detail] and d.detail]
        for value, part in parts:
            key = tuple(value if k in DETAIL_KEYS else dims(entry)[k] for k in by)
            into = rows.setdefault(key, dict.fromkeys(FIGURES, 0))
            for f in FIGURES:
                into[f] += part[f]
    return rows, total


def assert_figures_equal(got: dict, want: dict) -> None:
    assert got["calls"] == want["calls"]
    for f in FIGURES[1:]:
        assert got[f] == pytest.approx(want[f], rel=1e-9, abs=1e-9), f


# -- tests -------------------------------------------------------------------------------

def test_totals_equal_the_span_costs_and_rows_add_up_to_them(tmp_path, corpus):
    ledger = Ledger(tmp_path / "ledger.db", retention_days=400)
    for _, _, capture, records in corpus:
        ledger.write(capture, records)
    ledger.close()
    spans = sum(r["body"].get("total_estimated_cost") or 0.0 for *_, records in corpus for r in records
                if r["body"].get("type") == "llm")
    conn = open_reader(tmp_path / "ledger.db")
    for by in ("model", "session", "day,bucket", "kind", "agent", "project,branch", "month"):
        result = report(conn, parse_by(by))
        assert abs(result.total["cost_usd"] - spans) < 1e-9, by
        assert abs(sum(r["cost_usd"] for r in result.rows) - spans) < 1e-9, by
        if "bucket" not in by:
            assert sum(r["calls"] for r in result.rows) == result.total["calls"] == 71


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    by=st.lists(st.sampled_from(BY_KEYS), min_size=0, max_size=3, unique=True).filter(
        lambda keys: sum(k in DETAIL_KEYS for k in keys) <= 1),
    since=st.one_of(st.none(), st.integers(-DAY_NS, 11 * DAY_NS)),
    length=st.one_of(st.none(), st.integers(0, 12 * DAY_NS)),
    session=st.one_of(st.none(), st.sampled_from(["59a8bce3-81a8-46d0-a14b-a2d1e9557e40-1",
                                                  "d746060a-2115-4917-833e-96568974e836"])),
)
def test_any_window_and_grouping_equals_the_brute_force_sum(ledger_conn, entries, by, since, length, session):
    all_entries = spread(entries, copies=3, days=10, start_ns=START_NS)
    since_ns = None if since is None else START_NS + since
    until_ns = None if length is None else (since_ns or START_NS) + length
    sel = Selection(since_ns=since_ns, until_ns=until_ns, session=session)
    result = report(ledger_conn, tuple(by), sel)
    want_rows, want_total = brute_force(all_entries, tuple(by), sel)
    assert_figures_equal(result.total, want_total)
    if by:
        got = {tuple(None if r[k] is None else r[k] for k in by): r for r in result.rows}
        want_rows = {tuple("main" if k == "agent" and v is None else v for k, v in zip(by, key)): f
                     for key, f in want_rows.items()}
        assert set(got) == set(want_rows)
        for key, figures in want_rows.items():
            assert_figures_equal(got[key], figures)


def test_project_filter_takes_the_directory_and_below(ledger_conn):
    everything = report(ledger_conn, ("project",))
    only = report(ledger_conn, ("project",), Selection(project="/home/dev/code/greeter-cli/"))
    assert [r["project"] for r in only.rows] == ["/home/dev/code/greeter-cli"]
    assert only.total["calls"] == next(r for r in everything.rows if r["project"] == "/home/dev/code/greeter-cli")["calls"]
    assert report(ledger_conn, (), Selection(project="/home/dev/code")).total == everything.total
    assert report(ledger_conn, (), Selection(project="/home/dev/cod")).total["calls"] == 0


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
        for a, b in zip(sorted(kept, key=lambda r: r[:width]), sorted(fresh, key=lambda r: r[:width])):
            assert a[:width] == b[:width]
            assert a[width:] == pytest.approx(b[width:], rel=1e-9, abs=1e-9)
    days = conn.execute("SELECT day, calls FROM days ORDER BY day").fetchall()
    assert days == conn.execute("SELECT day, count(*) FROM calls GROUP BY day ORDER BY day").fetchall()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
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


def test_a_v1_ledger_is_migrated_with_its_calls_rolled_up(tmp_path, entries):
    """A ledger written by the first schema (calls and details only) gains the roll-ups."""
    path = tmp_path / "ledger.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(V1 + "; PRAGMA user_version = 1;")
    for entry in entries:
        columns = list(entry.call)
        call_id = conn.execute(f"INSERT INTO calls ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                               [entry.call[c] for c in columns]).lastrowid
        conn.executemany("INSERT INTO details VALUES (?, ?, ?, ?, ?, ?)",
                         [(call_id, d.bucket, d.detail, d.chars, d.tokens, d.cost_usd) for d in entry.details])
    conn.close()
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
    ledger = Ledger(path, retention_days=400)
    assert ledger.write_entries(entries[:5])
    ledger.close()
    assert report(open_reader(path), ()).total["calls"] == len(entries)
