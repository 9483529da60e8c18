"""The budget guard fed from the ledger (`opik_cipx/ledger/budget_feed.py`): every call the
ledger writes counts in its session, day, week and month; a capture written again counts once;
a restart starts from what the ledger holds. On the recorded corpus, on a clock the test sets."""

import dataclasses
from datetime import date
from email.message import Message
from pathlib import Path

import pytest

from opik_cipx.caps import parse_budget
from opik_cipx.ledger.budget_feed import read_seed, spends
from opik_cipx.ledger.entry import ledger_entry
from opik_cipx.ledger.periods import local_day
from opik_cipx.ledger.store import Ledger, Previous
from opik_cipx.wire.budget import Guard
from tests.claude_code_corpus import Derived, corpus, corpus_clock
from tests.fake_clock import FakeClock
from tests.time_zone import in_zone


@pytest.fixture(autouse=True)
def paris():
    with in_zone("Europe/Paris"):
        yield


def billable(scenario: str) -> list[Derived]:
    """The scenario's calls that cost something (the Messages calls), in recorded order."""
    return [d for d in corpus() if d.scenario == scenario and d.result.call is not None
            and d.result.call.cost is not None]


def cost(d: Derived) -> float:
    return d.result.call.cost.total_usd


def headers_of(d: Derived) -> Message:
    message = Message()
    for name, value in d.capture.request_headers:
        message[name] = value
    return message


def check(guard: Guard, d: Derived):
    return guard.check(d.capture.method, d.capture.path, headers_of(d))


class Fed:
    """A ledger whose writes feed a guard, as the daemon wires them."""

    def __init__(self, path: Path, raw: dict, now_ns: int):
        self.clock = FakeClock(now_ns)
        self.guard = Guard(parse_budget(raw), clock=self.clock)
        self.ledger = Ledger(path, 400, clock=self.clock, on_written=lambda e, p: self.guard.add(spends(e, p)))
        self.guard.seed(self.ledger.read(lambda conn: read_seed(conn, now_ns)))

    def write(self, *derived: Derived) -> None:
        for d in derived:
            self.ledger.write(d.result.call)


def latest_ns(derived: list[Derived]) -> int:
    return max(d.capture.ended_at_ns for d in derived) + 60 * 10**9


def test_a_subagent_crossing_its_session_cap_blocks_the_session(tmp_path):
    calls = billable("subagent")  # 001 main, 002-004 the subagent, 005 main
    assert [d.result.call.kind.kind for d in calls] == ["main", "subagent", "subagent", "subagent", "main"]
    main, agent, last = calls[0], calls[1:4], calls[4]
    cap = cost(main) + sum(map(cost, agent[:2])) + cost(agent[2]) / 2  # the subagent's last call crosses it
    fed = Fed(tmp_path / "ledger.db", {"session_usd": cap}, latest_ns(calls))
    fed.write(main, *agent[:2])
    assert check(fed.guard, agent[2]) is None
    fed.write(agent[2])
    block = check(fed.guard, last)
    assert block is not None and block.scope == "session"
    assert block.spent_usd == pytest.approx(cost(main) + sum(map(cost, agent)))
    assert check(fed.guard, agent[0]).scope == "session"  # the subagent's own next call too


def test_a_side_call_crossing_its_session_cap_blocks_the_session(tmp_path):
    calls = billable("nonstream_and_others")
    side = next(i for i, d in enumerate(calls) if d.result.call.kind.kind == "side")
    session = calls[side].result.call.session.id
    before = [d for d in calls[:side] if d.result.call.session.id == session]
    after = next(d for d in calls[side + 1:] if d.result.call.session.id == session)
    cap = sum(map(cost, before)) + cost(calls[side]) / 2
    fed = Fed(tmp_path / "ledger.db", {"session_usd": cap}, latest_ns(calls))
    fed.write(*before)
    assert check(fed.guard, calls[side]) is None
    fed.write(calls[side])
    assert check(fed.guard, after).scope == "session"


def test_a_restart_keeps_the_totals_and_a_capture_written_again_counts_once(tmp_path):
    calls = billable("tools") + billable("subagent") + billable("mcp")
    raw = {"session_usd": 1000, "day_usd": 1000, "week_usd": 1000, "month_usd": 1000}
    now = latest_ns(calls)
    before = Fed(tmp_path / "ledger.db", raw, now)
    before.write(*calls)

    def periods(fed: Fed) -> list[float]:
        return [cap["spent_usd"] for cap in fed.guard.section()["caps"][1:]]  # day, week, month

    spent = periods(before)
    assert spent[0] == pytest.approx(sum(map(cost, calls))) and spent[0] > 0
    before.ledger.close()
    after = Fed(tmp_path / "ledger.db", raw, now)  # a new daemon on the same ledger
    assert periods(after) == pytest.approx(spent)
    after.write(*calls[-4:])  # materialized again after the restart: the same captures, upserted
    assert periods(after) == pytest.approx(spent)
    for d in calls:
        sid = d.result.call.session.id
        assert after.guard._sessions[sid].usd == pytest.approx(before.guard._sessions[sid].usd)  # noqa: SLF001


def test_the_ledger_says_what_a_row_it_replaced_held(tmp_path):
    d = billable("simple")[0]
    seen = []
    ledger = Ledger(tmp_path / "ledger.db", 400, clock=corpus_clock(), on_written=lambda e, p: seen.append(p))
    ledger.write(d.result.call)
    ledger.write(d.result.call)
    call = d.result.call
    assert seen == [None, Previous(call.exchange.started_at_ns, cost(d), call.session.id, call.session.cwd)]
    entry = ledger_entry(call)
    out = spends(entry, seen[1])
    assert [s.usd for s in out] == [-cost(d), cost(d)] and out[1].capture_id == call.exchange.capture_id


def test_a_failing_listener_never_fails_a_write(tmp_path):
    d = billable("simple")[0]

    def broken(entry, previous):
        raise RuntimeError("bug")

    ledger = Ledger(tmp_path / "ledger.db", 400, clock=corpus_clock(), on_written=broken)
    ledger.write(d.result.call)
    assert ledger.pending == 0
    assert ledger.read(lambda conn: conn.execute("SELECT count(*) FROM calls").fetchone()[0]) == 1


def test_the_seed_reads_the_weeks_and_months_days_and_recent_sessions(tmp_path):
    d = billable("simple")[0]
    ledger = Ledger(tmp_path / "ledger.db", 4000, clock=FakeClock(d.capture.started_at_ns))
    entry = ledger_entry(d.result.call)
    day = 86400 * 10**9
    for n, back in enumerate((0, 1, 40, 400)):  # today, yesterday, 40 and 400 days ago
        started = entry.call["started_at_ns"] - back * day
        call = {**entry.call, "capture_id": f"c{n}", "started_at_ns": started, "day": local_day(started),
                "session_id": f"s{n}", "project_dir": "/srv/app" if n else None}
        ledger.write_entries([dataclasses.replace(entry, call=call)])
    seed = ledger.read(lambda conn: read_seed(conn, d.capture.started_at_ns))
    days = {day_label for day_label, _, _ in seed.days}
    today, yesterday = (date.fromisoformat(local_day(entry.call["started_at_ns"] - back * day)) for back in (0, 1))
    along = yesterday.isocalendar()[:2] == today.isocalendar()[:2] or yesterday.month == today.month
    assert days == {today.isoformat()} | ({yesterday.isoformat()} if along else set())  # this week's or month's
    assert {sid for sid, _, _, _ in seed.sessions} == {"s0", "s1"}  # the sessions of the last 35 days
    assert seed.largest_usd == pytest.approx(cost(d))
