"""ledger.db: private WAL file, upserts keyed by capture id, retention, and failures that never
stop the writer's caller (locked, corrupt, newer schema, a refused entry)."""

import dataclasses
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import time

import pytest

from opik_cipx.ledger.db import open_reader
from opik_cipx.ledger.entry import ledger_entry
from opik_cipx.ledger.schema import LATEST
from opik_cipx.ledger.store import RETRY_PAUSE_S, WRITER_BUSY_TIMEOUT_S, Ledger
from tests.claude_code_corpus import corpus_clock, materialized
from tests.fake_clock import DAY_NS, FakeClock, wall_ns_after


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return materialized(tmp_path_factory.mktemp("sessions"))


def write_all(ledger: Ledger, corpus) -> None:
    for *_, result in corpus:
        ledger.write(result.call)


def aged(entry, clock: FakeClock, days: float):
    """`entry` as a call made `days` before the clock's now."""
    ns = clock.time_ns() - int(days * DAY_NS)
    return dataclasses.replace(entry, call={**entry.call, "capture_id": "old", "started_at_ns": ns,
                                            "day": time.strftime("%Y-%m-%d", time.localtime(ns / 1e9))})


def span_cost_sum(corpus) -> float:
    return sum(r["body"].get("total_estimated_cost") or 0.0 for *_, result in corpus for r in result.records
               if r["body"].get("type") == "llm")


def totals(path) -> tuple[int, float, int]:
    conn = open_reader(path)
    try:
        calls, cost = conn.execute("SELECT count(*), total(cost_usd) FROM calls").fetchone()
        details = conn.execute("SELECT count(*) FROM details").fetchone()[0]
    finally:
        conn.close()
    return calls, cost, details


def test_private_wal_file_and_writing_a_capture_again_never_counts_it_twice(tmp_path, corpus):
    path = tmp_path / "home" / "ledger.db"
    ledger = Ledger(path, retention_days=400, clock=corpus_clock())
    write_all(ledger, corpus)
    for suffix in ("", "-wal", "-shm"):
        assert stat.S_IMODE((tmp_path / "home" / f"ledger.db{suffix}").stat().st_mode) == 0o600, suffix
    assert ledger._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert ledger._conn.execute("PRAGMA user_version").fetchone()[0] == LATEST
    first = totals(path)
    assert first[0] == 71 and first[1] == pytest.approx(span_cost_sum(corpus), abs=1e-12)
    write_all(ledger, corpus)  # re-materialization
    ledger.close()
    assert totals(path) == pytest.approx(first)
    assert ledger.counters.get("ledger_write_errors") == 0


def test_a_changed_entry_replaces_the_old_rows(tmp_path, corpus):
    path = tmp_path / "ledger.db"
    ledger = Ledger(path, retention_days=400, clock=corpus_clock())
    _, _, capture, result = next(c for c in corpus if c[:2] == ("mcp", "002"))
    entry = ledger_entry(result.call)
    ledger.write_entries([entry])
    cheaper = dataclasses.replace(entry, call={**entry.call, "cost_usd": 0.5}, details=entry.details[:3])
    ledger.write_entries([cheaper])
    ledger.close()
    assert totals(path) == (1, 0.5, 3)


def test_days_beyond_the_retention_are_deleted(tmp_path, corpus):
    path = tmp_path / "ledger.db"
    entries = [ledger_entry(r.call) for _, _, c, r in corpus[:12] if r.call]
    clock = FakeClock(wall_ns_after(e.call["started_at_ns"] for e in entries))
    old = aged(entries[0], clock, days=30)
    ledger = Ledger(path, retention_days=10, clock=clock)
    ledger.write_entries([old, *entries[1:]])
    ledger.close()
    calls, _, _ = totals(path)
    assert calls == len(entries) - 1
    conn = open_reader(path)
    assert conn.execute("SELECT count(*) FROM calls WHERE capture_id = 'old'").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM details WHERE call_id NOT IN (SELECT id FROM calls)").fetchone()[0] == 0


def test_a_corrupt_file_is_moved_aside_and_a_new_ledger_started(tmp_path, corpus, caplog):
    path = tmp_path / "ledger.db"
    path.write_bytes(b"this is not a database, it is a text file " * 200)
    ledger = Ledger(path, retention_days=400, clock=corpus_clock())
    with caplog.at_level(logging.WARNING, logger="opik_cipx.ledger.store"):
        write_all(ledger, corpus)
    ledger.close()
    assert totals(path)[0] == 71  # nothing lost: the entry that met the corrupt file was written after
    aside = list(tmp_path.glob("ledger.db.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not a database")
    assert ledger.counters.get("ledger_write_errors") == 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "replay --ledger" in lines[0]


HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode = WAL")
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
"""


def test_a_locked_ledger_delays_the_writer_at_most_the_busy_timeout_then_catches_up(tmp_path, corpus, caplog):
    path = tmp_path / "ledger.db"
    clock = corpus_clock()
    ledger = Ledger(path, retention_days=400, clock=clock)
    calls = [r.call for _, _, c, r in corpus if r.call and r.call.kind.kind != "count_tokens"]
    ledger.write(calls[0])
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with caplog.at_level(logging.INFO, logger="opik_cipx.ledger.store"):
            started = time.monotonic()
            ledger.write(calls[1])
            blocked = time.monotonic() - started
            for call in calls[2:10]:
                ledger.write(call)  # in the pause after a failure: queued, not tried
            ledger.retry_due()  # the pause is not over
        assert blocked >= WRITER_BUSY_TIMEOUT_S * 0.9  # the one attempt waited for the lock
        assert ledger.pending == 9 and ledger.counters.get("ledger_write_errors") == 1
    finally:
        holder.stdin.close()
        holder.wait(10)
    clock.advance(RETRY_PAUSE_S)
    ledger.retry_due()  # the writer's idle step, once the pause is over: no need for another call
    assert ledger.pending == 0
    ledger.close()
    assert totals(path)[0] == 10
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "locked" in messages[0]


def test_nothing_opens_the_ledger_again_after_close(tmp_path, corpus, caplog):
    path = tmp_path / "ledger.db"
    path.mkdir()  # not a file SQLite can open: every write fails
    clock = corpus_clock()
    ledger = Ledger(path, retention_days=400, clock=clock)
    call = next(r.call for *_, r in corpus if r.call)
    ledger.write(call)
    assert ledger.pending == 1
    with caplog.at_level(logging.WARNING, logger="opik_cipx.ledger.store"):
        ledger.close()  # tries once more, gives up: `replay --ledger` adds the call later
    assert "replay --ledger" in caplog.records[-1].getMessage()
    path.rmdir()  # the cause is gone after the daemon stopped using the ledger
    clock.advance(RETRY_PAUSE_S + 1)
    assert not ledger.flush()  # what a retry that fired while `close` ran would do next
    assert not path.exists() and ledger._conn is None
    ledger.retry_due()  # nor a late idle step
    ledger.write(call)  # nor a call that comes late
    assert not path.exists() and ledger._conn is None
    assert ledger.counters.get("ledger_calls_dropped") == 1


def test_a_ledger_from_a_newer_version_is_left_alone(tmp_path, corpus, caplog):
    path = tmp_path / "ledger.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    conn.close()
    ledger = Ledger(path, retention_days=400, clock=corpus_clock())
    with caplog.at_level(logging.WARNING, logger="opik_cipx.ledger.store"):
        write_all(ledger, corpus[:20])
        ledger.close()  # tries once more
    assert ledger.counters.get("ledger_write_errors") == 2
    messages = [r.getMessage() for r in caplog.records]
    assert "newer opik-cipx" in messages[0] and len(messages) == 2 and "replay --ledger" in messages[1]
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == LATEST + 1


def test_an_entry_the_schema_refuses_is_dropped_alone(tmp_path, corpus):
    path = tmp_path / "ledger.db"
    entries = [ledger_entry(r.call) for _, _, c, r in corpus[:15] if r.call]
    broken = dataclasses.replace(entries[0], call={**entries[0].call, "capture_id": "broken", "day": None})
    ledger = Ledger(path, retention_days=400, clock=corpus_clock())
    assert ledger.write_entries([broken, *entries[1:]])
    ledger.close()
    assert totals(path)[0] == len(entries) - 1
    assert ledger.counters.get("ledger_calls_dropped") == 1


def test_readers_see_committed_rows_while_the_writer_holds_a_transaction(tmp_path, corpus):
    path = tmp_path / "ledger.db"
    assert open_reader(path) is None and not path.exists()
    ledger = Ledger(path, retention_days=400, clock=corpus_clock())
    write_all(ledger, corpus[:20])
    ledger._conn.execute("BEGIN IMMEDIATE")
    ledger._conn.execute("DELETE FROM calls")
    assert totals(path)[0] == sum(1 for *_, result in corpus[:20] if result.call)  # a blocked reader would raise
    ledger._conn.execute("ROLLBACK")
    ledger.close()


def test_retention_runs_at_most_once_an_hour(tmp_path, corpus):
    path = tmp_path / "ledger.db"
    entries = [ledger_entry(r.call) for _, _, c, r in corpus[:12] if r.call]
    clock = FakeClock(wall_ns_after(e.call["started_at_ns"] for e in entries))
    ledger = Ledger(path, retention_days=10, clock=clock)
    ledger.write_entries(entries[1:])  # the first write enforces the retention
    ledger.write_entries([aged(entries[0], clock, days=30)])
    assert totals(path)[0] == len(entries)  # not again within the hour
    clock.advance(3601)
    ledger.write_entries([entries[1]])
    ledger.close()
    assert totals(path)[0] == len(entries) - 1


def test_a_ledger_removed_under_the_writer_is_started_afresh(tmp_path, corpus):
    path = tmp_path / "ledger.db"
    entries = [ledger_entry(r.call) for _, _, c, r in corpus[:12] if r.call]
    ledger = Ledger(path, retention_days=400, clock=corpus_clock())
    ledger.write_entries(entries[:3])
    for suffix in ("", "-wal", "-shm"):
        os.replace(f"{path}{suffix}", f"{path}{suffix}.moved")  # the user moves it away
    ledger.write_entries(entries[3:])
    ledger.close()
    assert totals(path)[0] == len(entries) - 3


def test_a_value_sqlite_cannot_hold_is_clamped_and_never_blocks_the_next_call(tmp_path, corpus, caplog):
    """Issue 22.2: `10**30` output tokens from the wire raised an OverflowError nothing caught; the
    entry stayed at the head of the queue and every later call was missing from the ledger."""
    path = tmp_path / "ledger.db"
    calls = [r.call for *_, r in corpus if r.call and r.call.usage]
    first = calls[0]
    absurd = dataclasses.replace(first, usage=dataclasses.replace(first.usage, output=10**30,
                                                                  malformed=("output_tokens",)))
    ledger = Ledger(path, retention_days=400, clock=corpus_clock())
    with caplog.at_level(logging.WARNING, logger="opik_cipx.ledger.store"):
        ledger.write(absurd)
        for call in calls[1:5]:
            ledger.write(call)
        ledger.close()  # what SIGTERM does: ends without raising
    assert ledger.pending == 0 and totals(path)[0] == 5
    conn = open_reader(path)
    kept = conn.execute("SELECT output_tokens FROM calls WHERE capture_id = ?",
                        (first.exchange.capture_id,)).fetchone()[0]
    assert kept == 2**63 - 1  # recorded as well as the ledger can: clamped to the largest count it holds
    assert ledger.counters.get("ledger_values_clamped") == 1 and ledger.counters.get("ledger_calls_dropped") == 0
    assert [r.getMessage() for r in caplog.records if "clamped" in r.getMessage()]


def test_calls_written_together_take_one_transaction_and_one_that_cannot_be_derived_holds_back_none(
        tmp_path, corpus, monkeypatch, caplog):
    from opik_cipx.ledger import entry as entry_module

    calls = [r.call for *_, r in corpus if r.call][:6]
    broken = calls[2].exchange.capture_id
    real = entry_module.ledger_entry

    def derive(call, keep_text):
        if call.exchange.capture_id == broken:
            raise KeyError("a bug in the rows' builders")
        return real(call, keep_text)

    monkeypatch.setattr(entry_module, "ledger_entry", derive)
    path = tmp_path / "ledger.db"
    ledger = Ledger(path, retention_days=400, clock=corpus_clock())
    ledger.write(calls[0])
    statements: list[str] = []
    ledger._connection().set_trace_callback(statements.append)
    with caplog.at_level(logging.ERROR, logger="opik_cipx.ledger.store"):
        ledger.write_calls([None, *calls[1:]])
    ledger.close()
    assert statements.count("COMMIT") == 1
    assert totals(path)[0] == len(calls) - 1
    assert ledger.counters.get("ledger_write_errors") == 1
    assert [r for r in caplog.records if broken in r.getMessage()]
