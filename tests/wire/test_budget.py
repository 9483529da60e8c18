"""The budget guard (`opik_cipx/wire/budget.py`): which requests a cap keeps from the upstream,
from totals fed as the ledger writes, on a clock the test moves (never today's date)."""

import http.client
import json
import threading
from email.message import Message

import pytest

from opik_cipx.caps import parse_budget
from opik_cipx.wire.budget import SETTLE_WAIT_S, UNPRICED_MAX_S, Block, Guard, Seed, Spend
from tests.conftest import wait_for
from tests.fake_anthropic import sse_reply
from tests.fake_clock import FakeClock
from tests.time_zone import in_zone, local_ns
from tests.wire.conftest import InProcessWire

SESSION, OTHER = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"


@pytest.fixture(autouse=True)
def paris():
    """Local days, weeks and months of one zone (with summer time), whatever the machine's."""
    with in_zone("Europe/Paris"):
        yield


def headers(session: str | None = SESSION, agent: str | None = None) -> Message:
    message = Message()
    if session:
        message["X-Claude-Code-Session-Id"] = session
    if agent:
        message["x-claude-code-agent-id"] = agent
    return message


def guard(raw: dict, wall_ns: int, seed: Seed | None = None) -> tuple[Guard, FakeClock]:
    clock = FakeClock(wall_ns)
    g = Guard(parse_budget(raw), "/home/me/.opik-cipx/config.toml", clock)
    g.seed(seed or Seed())
    return g, clock


def check(g: Guard, session: str | None = SESSION, path: str = "/v1/messages?beta=true", method: str = "POST",
          agent: str | None = None) -> Block | None:
    return g.check(method, path, headers(session, agent))


with in_zone("Europe/Paris"):
    NOON = local_ns(2026, 12, 9, 12)  # a Wednesday, in Paris


def test_before_the_ledger_was_read_every_request_goes_through_and_is_counted():
    g = Guard(parse_budget({"day_usd": 0.01}), clock=FakeClock(NOON))
    assert check(g) is None and check(g) is None
    g.cannot_seed("cannot read ledger.db: disk I/O error")
    assert check(g) is None
    section = g.section()
    assert section["undecided"] == 3 and not section["deciding"] and "disk I/O" in section["undecided_reason"]
    g.seed(Seed(days=(("2026-12-09", None, 1.0),)))
    assert check(g).scope == "day"


def test_below_a_cap_nothing_is_blocked_at_it_everything_billable_is():
    g, _ = guard({"day_usd": 5}, NOON)
    g.add([Spend(NOON - 3600 * 10**9, 4.99, SESSION)])
    assert check(g) is None
    g.add([Spend(NOON - 60 * 10**9, 0.01, OTHER)])  # exactly the cap, from another session
    block = check(g)
    assert block is not None and (block.scope, block.tag, block.cap_usd) == ("day", "day", 5.0)
    assert block.spent_usd == pytest.approx(5.0)
    assert check(g, session=None) is not None  # a request that names no session too


@pytest.mark.parametrize("method, path", [
    ("POST", "/v1/messages/count_tokens?beta=true"), ("GET", "/v1/models"), ("HEAD", "/"),
    ("POST", "/api/event_logging/batch"), ("GET", "/v1/messages"),
])
def test_free_endpoints_are_never_blocked(method, path):
    g, _ = guard({"day_usd": 1}, NOON, Seed(days=(("2026-12-09", None, 50.0),)))
    assert check(g, method=method, path=path) is None
    assert check(g) is not None


def test_the_day_rolls_over_at_local_midnight_the_week_goes_on():
    g, clock = guard({"day_usd": 5, "week_usd": 8}, local_ns(2026, 12, 9, 23, 59))
    g.add([Spend(clock.time_ns(), 6.0, SESSION)])
    assert check(g).scope == "day"
    clock.advance(59)  # 23:59:59
    assert check(g).scope == "day"
    clock.advance(1)  # local midnight: Thursday
    assert check(g) is None
    g.add([Spend(clock.time_ns(), 2.0, SESSION)])
    block = check(g)
    assert block.scope == "week" and block.spent_usd == pytest.approx(8.0)
    assert block.resets_at_ns == local_ns(2026, 12, 14)  # next Monday


def test_the_week_rolls_over_on_monday_and_the_month_on_the_first():
    g, clock = guard({"week_usd": 5, "month_usd": 8}, local_ns(2026, 11, 29, 23, 0))  # a Sunday
    g.add([Spend(clock.time_ns(), 5.0, SESSION)])
    assert check(g).scope == "week"
    clock.advance(3600)  # Monday 30 November: a new week, the same month
    assert check(g) is None
    g.add([Spend(clock.time_ns(), 3.0, SESSION)])
    block = check(g)
    assert block.scope == "month" and block.resets_at_ns == local_ns(2026, 12, 1)
    clock.advance(86400)  # 1 December
    assert check(g) is None


def test_of_two_caps_reached_the_one_that_holds_longer_is_named():
    g, _ = guard({"day_usd": 1, "week_usd": 2, "session_usd": 3}, NOON)
    g.add([Spend(NOON, 2.0, SESSION)])
    assert check(g).scope == "week"
    g.add([Spend(NOON, 1.0, SESSION)])
    assert check(g).scope == "session"  # it never resets


def test_a_late_call_counts_in_the_day_it_started():
    g, clock = guard({"day_usd": 5}, local_ns(2026, 12, 10, 0, 0, 5))
    g.add([Spend(local_ns(2026, 12, 9, 23, 59), 9.0, SESSION)])  # started yesterday, recorded today
    assert check(g) is None


def test_a_session_cap_counts_the_session_alone_whatever_calls_it_made():
    g, _ = guard({"session_usd": 2}, NOON)
    g.add([Spend(NOON, 1.5, SESSION), Spend(NOON, 0.6, SESSION), Spend(NOON, 5.0, OTHER)])
    block = check(g, agent="a1b2c3")  # a subagent of the session sends its session's id
    assert block.scope == "session" and block.resets_at_ns is None and block.spent_usd == pytest.approx(2.1)
    assert "does not reset" in block.message
    assert check(g, session="33333333-3333-4333-8333-333333333333") is None
    assert check(g, session=None) is None  # no session named: no session cap


def test_project_caps_count_the_project_alone_and_its_session_cap_wins():
    raw = {"day_usd": 100, "session_usd": 10,
           "projects": {"/srv/app": {"day_usd": 3, "session_usd": 1}, "/srv/other": {"week_usd": 50}}}
    g, _ = guard(raw, NOON)
    g.add([Spend(NOON, 0.9, SESSION, "/srv/app/backend"), Spend(NOON, 4.0, OTHER, "/srv/other")])
    assert check(g) is None and check(g, session=OTHER) is None
    g.add([Spend(NOON, 0.1, SESSION, "/srv/app/backend")])
    block = check(g)
    assert (block.scope, block.project, block.cap_usd) == ("session", None, 1.0)  # the project's session cap
    third = "33333333-3333-4333-8333-333333333333"
    g.add([Spend(NOON, 0.5, third, "/srv/app"), Spend(NOON, 2.0, "44444444-4444-4444-8444-444444444444", "/srv/app")])
    block = check(g, session=third)
    assert (block.scope, block.project, block.tag) == ("day", "/srv/app", "project_day")
    assert "[budget.projects.\"/srv/app\"] day_usd" in block.message
    assert check(g, session=OTHER) is None  # another project: only the global caps, far off


def test_a_capture_written_again_counts_once():
    g, _ = guard({"day_usd": 5}, NOON)
    g.add([Spend(NOON, 3.0, SESSION, capture_id="c1")])
    g.add([Spend(NOON, -3.0, SESSION), Spend(NOON, 3.0, SESSION, capture_id="c1")])  # the ledger replaced its row
    assert check(g) is None
    assert g.section()["caps"][0]["spent_usd"] == pytest.approx(3.0)


def test_a_new_reading_of_the_ledger_replaces_the_totals_it_holds():
    """Each work process sends what the ledger holds before it writes: what the guard counted from
    an earlier one is in it, so the totals are replaced, never added to (nor lost)."""
    g, _ = guard({"day_usd": 5, "session_usd": 4}, NOON, Seed(days=(("2026-12-09", None, 1.0),),
                                                            sessions=((SESSION, None, 1.0, NOON),)))
    g.add([Spend(NOON, 2.5, SESSION, capture_id="c1")])
    assert check(g) is None
    g.seed(Seed(days=(("2026-12-09", None, 3.5),), sessions=((SESSION, None, 3.5, NOON),), largest_usd=2.5))
    assert [(c["scope"], c["spent_usd"]) for c in g.section()["caps"]][1] == ("day", pytest.approx(3.5))
    assert check(g) is None  # 3.5 of 4 and of 5: below both caps, as the ledger says
    g.add([Spend(NOON, 1.0, SESSION, capture_id="c2")])
    assert check(g).scope == "session"


def test_allowances_let_a_session_or_everything_through():
    g, clock = guard({"day_usd": 1}, NOON, Seed(days=(("2026-12-09", None, 2.0),)))
    g.allow([SESSION], 0, "s1")
    assert check(g) is None and check(g, session=OTHER) is not None
    g.allow([], clock.time_ns() + 3600 * 10**9, "s2")
    assert check(g, session=OTHER) is None
    clock.advance(3600)
    assert check(g, session=OTHER) is not None and check(g) is not None
    assert g.section()["allow_serial"] == "s2"


def test_the_message_names_the_cap_what_was_spent_when_it_resets_and_how_to_go_on():
    g, _ = guard({"day_usd": 5}, local_ns(2026, 12, 9, 20, 48), Seed(days=(("2026-12-09", None, 5.12),)))
    message = check(g).message
    for part in ("$5.12 spent of the $5.00 day cap", "resets Thu 00:00 (in 3h12m)", "`opik-cipx budget allow`",
                 "--for 2h", "[budget] day_usd in /home/me/.opik-cipx/config.toml", "opik-cipx restart"):
        assert part in message
    assert "\n" not in message


def test_the_answer_is_a_429_claude_code_does_not_retry():
    g, _ = guard({"day_usd": 5}, NOON, Seed(days=(("2026-12-09", None, 6.0),)))
    block = check(g)
    status, extra, body = block.answer()
    assert status == 429 and ("x-should-retry", "false") in extra
    assert json.loads(body) == {"type": "error", "error": {"type": "rate_limit_error", "message": block.message}}


def test_an_internal_error_lets_the_request_through_and_is_counted():
    g, _ = guard({"day_usd": 5}, NOON)

    def broken(*args):
        raise RuntimeError("bug")

    g._decide = broken  # noqa: SLF001 - planting a bug
    assert check(g) is None
    assert g.section()["errors"] == 1


def test_seed_and_spend_cross_a_process_boundary_as_json():
    seed = Seed((("2026-12-09", "/srv/app", 1.5), ("2026-12-08", None, 2.0)), ((SESSION, None, 3.5, NOON),), 0.75)
    assert Seed.from_json(json.loads(json.dumps(seed.to_json()))) == seed
    spend = Spend(NOON, -0.25, SESSION, "/srv/app", "c1")
    assert Spend.from_json(json.loads(json.dumps(spend.to_json()))) == spend


def test_the_seed_counts_each_day_in_its_week_and_month_and_each_session_whole():
    seed = Seed(days=(("2026-12-07", None, 1.0), ("2026-12-09", "/srv/app", 2.0), ("2026-11-30", None, 4.0)),
                sessions=((SESSION, "/srv/app", 2.5, NOON),))
    g, _ = guard({"session_usd": 2.5, "week_usd": 3, "month_usd": 10, "projects": {"/srv/app": {"day_usd": 5}}},
                 NOON, seed)
    spent = {cap["scope"]: cap["spent_usd"] for cap in g.section()["caps"] if cap["spent_usd"] is not None}
    assert spent == {"week": 3.0, "month": 3.0}  # 30 November is last month
    assert check(g).scope == "session"


def test_a_call_not_recorded_yet_is_waited_for_when_it_could_reach_the_cap():
    """A call that ended, its cost not recorded yet, may cross the cap: the next request waits for it."""
    g, clock = guard({"day_usd": 5}, NOON, Seed(days=(("2026-12-09", None, 4.5),), largest_usd=0.8))
    g.finished("c1", "POST", "/v1/messages?beta=true", blocked=False)
    result: list = []
    asking = threading.Thread(target=lambda: result.append(check(g)), name="asking")
    asking.start()
    while clock.waiting("asking") is None:  # it waits for the call to be recorded
        pass
    assert g.waiting == 1
    g.add([Spend(NOON, 0.7, SESSION, capture_id="c1")])
    asking.join(5)
    assert result[0] is not None and result[0].spent_usd == pytest.approx(5.2) and g.waiting == 0


def test_far_from_every_cap_nothing_waits_and_a_wait_is_bounded():
    g, clock = guard({"day_usd": 5}, NOON, Seed(days=(("2026-12-09", None, 1.0),), largest_usd=0.8))
    g.finished("c1", "POST", "/v1/messages", blocked=False)
    g.finished("c2", "POST", "/v1/messages/count_tokens", blocked=False)  # free: never waited for
    assert check(g) is None and g.section()["waited"] == 0  # 1.0 + 0.8 is far from 5
    g.add([Spend(NOON, 3.5, SESSION)])
    result: list = []
    asking = threading.Thread(target=lambda: result.append(check(g)), name="asking")
    asking.start()
    while clock.waiting("asking") is None:
        pass
    clock.advance(SETTLE_WAIT_S)  # the work never records c1: the request goes on, below the cap
    asking.join(5)
    assert result == [None]
    g.settle("c1")  # the work is done with it, recorded or not: nothing waits for it any more
    assert check(g) is None and g.section()["waited"] == 1


# ---- in the gateway ------------------------------------------------------------------------------

@pytest.fixture
def capped(upstream):
    served = InProcessWire(upstream.url)
    g, _ = guard({"day_usd": 1}, NOON, Seed(days=(("2026-12-09", None, 1.5),)))
    served.gateway.budget = g
    yield served, g
    served.close()


def post(conn: http.client.HTTPConnection, path: str = "/v1/messages?beta=true") -> http.client.HTTPResponse:
    conn.request("POST", path, body=b'{"model":"claude-opus-4-8","messages":[]}',
                 headers={"X-Claude-Code-Session-Id": SESSION, "content-type": "application/json"})
    return conn.getresponse()


def test_the_gateway_answers_a_blocked_request_itself_and_captures_it_marked(capped, upstream):
    served, g = capped
    upstream.default = sse_reply([b"event: message_stop\ndata: {}\n\n"])
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=5)
    resp = post(conn)
    body = resp.read()
    assert resp.status == 429 and resp.getheader("x-should-retry") == "false"
    assert json.loads(body)["error"]["type"] == "rate_limit_error"
    assert upstream.seen == []  # nothing reached the upstream
    resp = post(conn, "/v1/messages/count_tokens?beta=true")  # the same connection goes on; free calls pass
    resp.read()
    assert resp.status == 200 and [s.path for s in upstream.seen] == ["/v1/messages/count_tokens?beta=true"]
    g.allow([SESSION], 0, "s")
    resp = post(conn)
    resp.read()
    assert resp.status == 200 and len(upstream.seen) == 2
    conn.close()
    wait_for(lambda: len(served.captures) == 3, what="the three exchanges teed")
    blocked = served.captures[0]
    assert (blocked.blocked, blocked.status, blocked.response_body) == ("day", 429, body)
    assert blocked.ended_at_ns is not None and blocked.ttfb_ns is not None
    assert [c.blocked for c in served.captures[1:]] == [None, None]


def test_a_call_unrecorded_for_long_is_not_waited_for():
    """The work far behind (or a capture it never reported): no request waits on it for ever."""
    g, clock = guard({"day_usd": 5}, NOON, Seed(days=(("2026-12-09", None, 4.5),), largest_usd=0.8))
    g.finished("c1", "POST", "/v1/messages", blocked=False)
    clock.advance(UNPRICED_MAX_S + 1)
    assert check(g) is None and g.section()["waited"] == 0
