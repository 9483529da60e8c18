"""The shipper against a fake Opik over real HTTP: batching, headers, every response policy."""

import json
import math
import os
from pathlib import Path

import pytest

from opik_cipx.ship.batching import plan_requests
from opik_cipx.ship.destination import NOT_CONFIGURED, Destination
from opik_cipx.ship.failures import MIN_WAIT_S, rate_limit_wait_s
from opik_cipx.ship.opik_api import TRACES_BATCH, Reply, already_exists, record_suspect
from opik_cipx.ship.shipper import ISOLATE_AFTER, Shipper
from opik_cipx.stats import Counters
from opik_cipx.store.spool import Spool, unshipped_records
from tests.claude_code_corpus import corpus_clock
from tests.conftest import DaemonProcess, wait_for
from tests.fake_opik import API_KEY, NOT_JSON, WEB_PAGE, WORKSPACE, Answer, FakeOpik, Slow
from tests.spool_driver import prefill, synthetic_capture

MIB = 1024 * 1024
IDLE = {"in_memory": 0, "ready": 0, "inflight": 0}


@pytest.fixture
def opik():
    with FakeOpik() as fake:
        yield fake


class Rig:
    """A started Spool + Shipper pointed at the fake Opik, with test-sized intervals."""

    def __init__(self, directory: Path, opik: FakeOpik, spool_kw=None, destination: Destination | None = None,
                 **shipper_kw):
        self.clock = shipper_kw.get("clock")
        self.spool = Spool(directory, **{"max_bytes": 64 * MIB, "segment_bytes": MIB, "inmem_max": 100_000,
                                         "inmem_max_bytes": 64 * MIB, "commit_interval_s": 0.01, "retry_s": 0.02,
                                         **(spool_kw or {})})
        self.counters = Counters()
        options = {"timeout_s": 5.0, "retry_base_s": 0.01, "retry_max_s": 0.05, "auth_probe_s": 0.1, **shipper_kw}
        destination = destination or Destination(opik.url, API_KEY, WORKSPACE, "cipx-test")
        self.shipper = Shipper(self.spool, destination, self.counters, **options)
        self.spool.start()

    def append(self, captures: int, **kw) -> list[str]:
        ids = []
        for _ in range(captures):
            records = synthetic_capture(**kw)
            self.spool.append(records)
            ids += [r["body"]["id"] for r in records]
        assert self.spool.flush(5)
        return ids

    def close(self) -> None:
        self.shipper.stop(5)
        self.spool.close(5)


@pytest.fixture
def rig(tmp_path, opik):
    made = []

    def make(name: str = "spool", **kw) -> Rig:
        made.append(Rig(tmp_path / name, opik, **kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


def all_received(opik: FakeOpik, ids) -> bool:
    return set(ids) <= opik.ids()


def test_ships_traces_then_spans_with_opik_headers_and_moves_the_cursor(rig, opik):
    r = rig()
    ids = r.append(10)
    r.shipper.start()
    wait_for(lambda: all_received(opik, ids), what="records at Opik")
    assert opik.violations == []  # path, bare Authorization, Comet-Workspace, gzip, UUIDv7, Z times
    assert [req.field for req in opik.requests] == ["traces", "spans"]
    assert len(opik.requests[0].ids) == 10 and len(opik.requests[1].ids) == 20
    wait_for(lambda: r.shipper.queue_section() == IDLE, what="empty queue")  # Opik stored them before it answered
    assert r.counters.get("spans_shipped") == 30
    section = r.shipper.section()
    assert section["configured"] and section["last_error"] is None and section["last_ok_at"].endswith("Z")
    assert section["base_url"] == opik.url and API_KEY not in json.dumps(section)
    assert all(len(versions) == 1 for versions in opik.received.values())


def test_requests_are_bounded_by_count_and_bytes(rig, opik):
    r = rig()
    spans = [rec for _ in range(550) for rec in synthetic_capture(padding=10) if rec["kind"] == "span"]
    r.spool.append(spans)
    r.spool.flush(5)
    r.shipper.start()
    wait_for(lambda: all_received(opik, [rec["body"]["id"] for rec in spans]), what="records at Opik")
    assert [len(req.ids) for req in opik.requests] == [1000, 100]
    assert opik.violations == []
    small = rig("small", batch_max_bytes=4000)
    more = small.append(10)
    before = len(opik.requests)
    small.shipper.start()
    wait_for(lambda: all_received(opik, more), what="records at Opik")
    sizes = [len(req.ids) for req in opik.requests[before:]]
    assert max(sizes) <= 6 and len(sizes) >= 6  # ~700-byte records, 4000-byte requests


def test_one_id_once_per_request_and_the_newest_version_wins(rig, opik):
    r = rig()
    trace = synthetic_capture()[0]
    older = {"kind": "trace", "body": {**trace["body"], "last_updated_at": "2026-01-01T00:00:00.000Z", "name": "old"}}
    newer = {"kind": "trace", "body": {**trace["body"], "last_updated_at": "2026-01-01T00:00:01.000Z", "name": "new"}}
    r.spool.append([newer, older, newer])
    r.spool.flush(5)
    r.shipper.start()
    wait_for(lambda: trace["body"]["id"] in opik.ids(), what="trace at Opik")
    assert opik.received[trace["body"]["id"]] == [newer["body"]]
    assert opik.violations == []


def waits_until(r: Rig, done) -> list[float]:
    """Let the fake clock pass each wait the shipper asks for, in full, until `done()`: the waits."""
    waits: list[float] = []
    while not done():
        wait = wait_for(lambda: done() or r.clock.waiting(r.shipper.name), what="the shipper waiting, or done")
        if wait is True:
            break
        waits.append(wait)
        r.clock.advance(wait)
    return waits


def test_429_waits_for_ratelimit_reset(rig, opik):
    opik.script(Answer(429, {"RateLimit-Reset": "7"}))
    r = rig(clock=corpus_clock())
    ids = r.append(1)
    r.shipper.start()
    waits = waits_until(r, lambda: all_received(opik, ids))
    assert waits == [7.0]  # as long as Opik asked, no longer
    first, second = opik.requests[0], opik.requests[1]
    assert first.status == 429 and second.status == 204 and first.ids == second.ids
    wait_for(lambda: r.shipper.queue_section() == IDLE, what="the batch settled")
    assert r.shipper.section()["last_error"] is None
def test_rate_limit_headers():
    assert rate_limit_wait_s({"RateLimit-Reset": "7"}, now=100.0) == 7
    assert rate_limit_wait_s({"Retry-After": "3"}, now=100.0) == 3
    assert rate_limit_wait_s({"RateLimit-Reset": "2000000010"}, now=2000000000.0) == 10
    assert rate_limit_wait_s({"Retry-After": "Thu, 01 Jan 2099 00:00:00 GMT"}, now=0) == 3600  # capped
    assert rate_limit_wait_s({"Retry-After": "soon"}, now=0) is None
    assert rate_limit_wait_s({}, now=0) is None
    for floored in ({"RateLimit-Reset": "0"}, {"RateLimit-Reset": "-5"}, {"RateLimit-Reset": "0.001"},
                    {"Retry-After": "Thu, 01 Jan 2015 00:00:00 GMT"}, {"RateLimit-Reset": "1999999990"}):
        assert rate_limit_wait_s(floored, now=2000000000.0) == MIN_WAIT_S == 1.0, floored


def test_which_answers_mean_what():
    assert already_exists("trace", Reply(409, {}, b'{"errors":["Trace already exists"]}'))
    assert already_exists("span", Reply(409, {}, b'{"errors":["Span already exists"]}'))
    assert not already_exists("span", Reply(409, {}, b'{"errors":["Project already exists"]}'))  # not this record
    assert not already_exists("span", Reply(409, {}, b'{"errors":["parent_span_id does not match the existing span"]}'))
    assert not already_exists("trace", Reply(200, {}, b"Trace already exists"))
    assert [record_suspect(code) for code in (500, 501, 507, 502, 503, 504, 429, 400, None)] == \
        [True, True, True, False, False, False, False, False, False]


@pytest.mark.parametrize("headers", [{"RateLimit-Reset": "0"}, {"Retry-After": "Thu, 01 Jan 2015 00:00:00 GMT"},
                                     {"Retry-After": "whenever"}, {}])
def test_429_waits_at_least_a_second_whatever_the_headers_say(rig, opik, headers):
    opik.fail_with = Answer(429, headers)
    r = rig(clock=corpus_clock())  # backoff base 0.01 s: only the 429 floor keeps the pace down
    ids = r.append(1)
    r.shipper.start()
    waits = waits_until(r, lambda: len(opik.requests) >= 3)
    assert waits == [MIN_WAIT_S] * 2
    opik.fail_with = None
    assert waits_until(r, lambda: all_received(opik, ids)) == [MIN_WAIT_S]
    statuses = [req.status for req in opik.requests]
    assert statuses[:3] == [429] * 3 and statuses[3:] == [204, 204]  # the trace, then the spans


def test_5xx_backs_off_exponentially_then_succeeds(rig, opik):
    opik.script(*[Answer(500, body=b"boom")] * 4)
    r = rig(retry_base_s=0.05, retry_max_s=1.0, clock=corpus_clock())
    ids = r.append(1)
    r.shipper.start()
    waits = waits_until(r, lambda: all_received(opik, ids) and r.shipper.queue_section() == IDLE)
    statuses = [req.status for req in opik.requests]
    assert statuses[:4] == [500] * 4 and set(statuses[4:]) == {204}  # a 5xx also splits a request: 2 or 3 more
    assert len(waits) == 4
    for n, wait in enumerate(waits):  # 0.05 * 2**n, jittered between half and all of it, never below 0.05
        ceiling = min(1.0, 0.05 * 2**n)
        assert max(0.05, ceiling / 2) <= wait <= ceiling
    assert r.shipper.section()["last_error"] is None


def test_opik_down_for_the_whole_run_then_up_drains_completely(rig, opik):
    opik.down()
    r = rig()
    r.shipper.start()
    ids = r.append(50)
    wait_for(lambda: "cannot reach Opik" in (r.shipper.section()["last_error"] or ""), what="outage noticed")
    ids += r.append(50)
    assert r.shipper.queue_section()["ready"] + r.shipper.queue_section()["inflight"] == 300
    opik.up()
    wait_for(lambda: all_received(opik, ids), what="drained")
    wait_for(lambda: r.shipper.queue_section() == {"in_memory": 0, "ready": 0, "inflight": 0}, what="empty queue")
    assert r.counters.get("spans_shipped") == 300
    assert r.spool.section()["hot_bytes"] == 0


def test_slow_opik_times_out_and_the_retry_upserts_the_same_records(rig, opik):
    opik.delay_s = 1.5
    r = rig(timeout_s=1.0)
    ids = r.append(2)
    r.shipper.start()
    wait_for(lambda: "too slow" in (r.shipper.section()["last_error"] or ""), what="timeout noticed")
    opik.delay_s = 0
    wait_for(lambda: all_received(opik, ids), what="records at Opik")
    for versions in opik.received.values():
        assert all(v == versions[0] for v in versions)  # same id, same last_updated_at: an upsert


def test_400_for_one_record_quarantines_it_and_ships_the_rest(rig, opik, tmp_path):
    r = rig()
    ids = r.append(40)
    bad = ids[3 * 17 + 1]  # an llm span
    opik.reject_ids[bad] = "usage.prompt_tokens: must be an integer"
    r.shipper.start()
    good = [i for i in ids if i != bad]
    wait_for(lambda: all_received(opik, good), what="the other records")
    wait_for(lambda: r.shipper.queue_section() == IDLE, what="batch settled")
    assert bad not in opik.ids()
    (entry,) = [json.loads(line) for line in (tmp_path / "spool" / "quarantine.jsonl").read_text().splitlines()]
    assert entry["body"]["id"] == bad and entry["status"] == 400
    assert "must be an integer" in entry["reason"]
    assert r.shipper.section()["quarantined"] == 1
    rejected = [req for req in opik.requests if req.status == 400]
    assert len(rejected) <= 2 * math.ceil(math.log2(80)) + 1  # bisected, never retried forever
    assert opik.violations == []


def test_413_splits_the_batch_and_a_record_too_big_alone_is_quarantined(rig, opik, tmp_path):
    opik.max_body_bytes = 6000
    r = rig()
    ids = r.append(30)
    huge = synthetic_capture(padding=0)
    huge[0]["body"]["input"] = {"blob": os.urandom(8000).hex()}
    r.spool.append(huge)
    r.spool.flush(5)
    r.shipper.start()
    rest = ids + [rec["body"]["id"] for rec in huge[1:]]
    wait_for(lambda: all_received(opik, rest), what="the split batches")
    wait_for(lambda: r.shipper.section()["quarantined"] == 1, what="the oversize record set aside")
    assert huge[0]["body"]["id"] not in opik.ids()
    assert any(req.status == 413 for req in opik.requests)
    assert "quarantine.jsonl" in {p.name for p in (tmp_path / "spool").iterdir()}


def quarantined(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "quarantine.jsonl").read_text().splitlines()]


def test_a_record_that_makes_opik_fail_with_500_is_isolated_and_the_rest_flows(rig, opik, tmp_path):
    r = rig(batch_max_records=30)
    ids = r.append(40)  # 120 records, four batches
    poison = ids[7 * 3 + 2]  # a tool span in the first batch
    opik.answer_ids[poison] = Answer(500, body=b'{"errors":["java.lang.NullPointerException"]}')
    r.shipper.start()
    good = [i for i in ids if i != poison]
    wait_for(lambda: all_received(opik, good), timeout_s=20, what="every other record, later batches included")
    (entry,) = wait_for(lambda: (tmp_path / "spool" / "quarantine.jsonl").exists() and quarantined(tmp_path / "spool"),
                        what="the poison set aside")
    assert entry["body"]["id"] == poison and entry["status"] == 500
    assert "NullPointerException" in entry["reason"] and f"{ISOLATE_AFTER + 1} times" in entry["reason"]
    wait_for(lambda: r.shipper.queue_section() == IDLE, what="the cursor past every batch")
    assert poison not in opik.ids() and r.counters.get("spans_shipped") == 119
    assert r.shipper.section()["quarantined"] == 1
    failed = [req for req in opik.requests if req.status == 500]
    assert len(failed) <= 2 * math.ceil(math.log2(30)) + ISOLATE_AFTER + 1  # bisected, then a bounded few tries
    assert opik.violations == []


def test_a_failing_first_record_waits_for_a_probe_from_newer_records(rig, opik, tmp_path):
    r = rig()
    poison = synthetic_capture()[1]  # the first span this shipper ever sees: no accepted span to probe with
    opik.answer_ids[poison["body"]["id"]] = Answer(500, body=b"boom")
    r.spool.append([poison])
    r.spool.flush(5)
    r.shipper.start()
    wait_for(lambda: len(opik.requests) >= ISOLATE_AFTER + 2, what="the lone span retried")
    assert not (tmp_path / "spool" / "quarantine.jsonl").exists()  # no evidence that Opik works: it waits
    ids = r.append(3)  # newer records arrive behind it
    wait_for(lambda: all_received(opik, ids), what="the newer records")
    (entry,) = wait_for(lambda: (tmp_path / "spool" / "quarantine.jsonl").exists() and quarantined(tmp_path / "spool"),
                        what="the poison set aside")
    assert entry["body"]["id"] == poison["body"]["id"] and "while Opik accepted another record" in entry["reason"]
    wait_for(lambda: r.shipper.queue_section() == IDLE, what="everything settled")
    assert r.counters.get("spans_shipped") == 9  # each record counted once, though the batch was read again
    assert all(len(versions) == 1 for versions in opik.received.values())  # the newer records were the evidence


def test_an_outage_that_ends_just_before_the_probe_quarantines_nothing(rig, opik, tmp_path):
    r = rig()
    ids = r.append(1)
    r.shipper.start()
    wait_for(lambda: all_received(opik, ids), what="a record to probe with")
    lone = synthetic_capture()[1]
    opik.script(*[Answer(500, body=b"database down")] * ISOLATE_AFTER)  # then Opik is back: the probe succeeds
    r.spool.append([lone])
    r.spool.flush(5)
    wait_for(lambda: all_received(opik, [lone["body"]["id"]]), what="the record, once Opik is back")
    wait_for(lambda: r.shipper.queue_section() == IDLE, what="everything settled")
    assert not (tmp_path / "spool" / "quarantine.jsonl").exists() and r.shipper.section()["quarantined"] == 0
    probe, last = opik.requests[-2:]  # the probe (an accepted span again), then the record once more
    assert probe.ids != [lone["body"]["id"]] and probe.status == last.status == 204 and last.ids == [lone["body"]["id"]]


@pytest.mark.parametrize("answer", [Answer(500, body=b"database down"), Answer(503), None])
def test_an_outage_of_the_whole_opik_quarantines_nothing_and_drains_after(rig, opik, tmp_path, answer):
    r = rig(batch_max_records=20)
    ids = r.append(4)
    r.shipper.start()
    wait_for(lambda: all_received(opik, ids), what="records shipped before the outage")
    if answer is None:
        opik.down()
    else:
        opik.fail_with = answer
    seen = len(opik.requests)
    ids += r.append(30)
    wait_for(lambda: r.shipper.section()["last_error"] is not None, what="the outage noticed")
    if answer is not None:  # long enough to bisect down to lone records and probe with them
        wait_for(lambda: len(opik.requests) - seen >= 40, timeout_s=20, what="many failed requests")
        if answer.status == 500:  # lone records were reached, and the probe (an accepted record) failed too
            wait_for(lambda: any(len(req.ids) == 1 and req.ids[0] in ids[:12] for req in opik.requests[seen:]),
                     timeout_s=20, what="a probe")
        assert {req.status for req in opik.requests[seen:]} == {answer.status}
    assert r.shipper.section()["quarantined"] == 0 and not (tmp_path / "spool" / "quarantine.jsonl").exists()
    if answer is None:
        opik.up()
    else:
        opik.fail_with = None
    wait_for(lambda: all_received(opik, ids), timeout_s=20, what="drained after the outage")
    wait_for(lambda: r.shipper.queue_section() == IDLE, what="cursor at the end")
    assert r.shipper.section()["quarantined"] == 0 and r.counters.get("spans_shipped") == len(ids)
    assert opik.violations == []


def test_409_already_exists_is_accepted_a_conflicting_record_is_quarantined(rig, opik, tmp_path):
    r = rig()
    first = synthetic_capture()
    r.spool.append(first)
    r.spool.flush(5)
    r.shipper.start()
    wait_for(lambda: all_received(opik, [rec["body"]["id"] for rec in first]), what="first call at Opik")
    trace_id = first[0]["body"]["id"]  # Opik answers 409 for one record in two senses
    opik.answer_ids[trace_id] = Answer(409, body=b'{"errors":["Trace already exists"]}')
    conflicting = synthetic_capture()
    conflicting[1]["body"]["id"] = first[1]["body"]["id"]  # an llm span id Opik holds under another trace
    opik.answer_ids[first[1]["body"]["id"]] = Answer(
        409, body=b'{"errors":["trace_id does not match the existing span"]}')
    ids = r.append(5)
    r.spool.append([first[0], *conflicting])
    r.spool.flush(5)
    wait_for(lambda: all_received(opik, ids + [conflicting[0]["body"]["id"], conflicting[2]["body"]["id"]]),
             what="the rest of the batch")
    wait_for(lambda: r.shipper.queue_section() == IDLE, what="batch settled")
    (entry,) = quarantined(tmp_path / "spool")
    assert entry["status"] == 409 and entry["body"] == conflicting[1]["body"]
    assert "trace_id does not match" in entry["reason"]
    assert r.counters.get("spans_shipped") == 3 + 15 + 3  # the trace Opik already holds counts as shipped
    assert [req.status for req in opik.requests if req.ids == [trace_id]][-1] == 409


def test_401_pauses_shipping_until_a_probe_succeeds(rig, opik):
    opik.fail_with = Answer(401, body=b'{"errors":["unauthorized"]}')
    r = rig(auth_probe_s=0.3)
    ids = r.append(3)
    r.shipper.start()
    section = wait_for(lambda: (s := r.shipper.section())["paused"] and s, what="paused")
    assert "HTTP 401" in section["last_error"] and "OPIK_CIPX_API_KEY" in section["last_error"]
    assert API_KEY not in json.dumps(section)
    ids += r.append(3)  # the spool keeps taking records
    assert r.shipper.queue_section()["ready"] + r.shipper.queue_section()["inflight"] == 18
    seen = len(opik.requests)
    wait_for(lambda: len(opik.requests) > seen, what="a probe")
    assert len(opik.requests) <= seen + 2  # probes, not a retry storm
    opik.fail_with = None
    wait_for(lambda: all_received(opik, ids), what="resumed")
    assert not r.shipper.section()["paused"] and r.shipper.section()["last_error"] is None


def test_a_wrong_base_url_pauses_with_a_hint(rig, opik):
    opik.fail_with = Answer(404, body=b"Not Found")
    r = rig()
    r.append(1)
    r.shipper.start()
    section = wait_for(lambda: (s := r.shipper.section())["paused"] and s, what="paused")
    assert "OPIK_CIPX_BASE_URL" in section["last_error"]


def test_without_opik_nothing_is_sent_and_the_stats_say_how_to_configure(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=MIB, segment_bytes=MIB, inmem_max=100, inmem_max_bytes=MIB)
    shipper = Shipper(spool, Destination(None, "", "default", "claude-code"), Counters())
    spool.start()
    shipper.start()
    spool.append(synthetic_capture())
    spool.flush(5)
    section = shipper.section()
    assert section["configured"] is False and section["base_url"] is None
    assert section["last_error"] == NOT_CONFIGURED and "OPIK_CIPX_BASE_URL" in NOT_CONFIGURED
    assert shipper.queue_section() == {"in_memory": 0, "ready": 3, "inflight": 0}
    assert shipper.stop(1) and spool.close(1) == 0


def test_a_crash_after_opik_accepted_reships_the_same_ids(rig, opik, monkeypatch):
    r = rig()
    ids = r.append(5)
    monkeypatch.setattr(r.spool, "commit", lambda batch: None)  # dies before the cursor is saved
    assert r.shipper.ship_once()
    r.spool.close(5)
    again = rig()
    assert again.shipper.ship_once()
    assert all(len(opik.received[i]) == 2 for i in ids)
    assert all(a == b for a, b in opik.received.values())  # same ids, same last_updated_at: upserts
    assert not again.shipper.ship_once()  # cursor saved this time


def test_disk_budget_while_opik_is_down_keeps_the_newest(rig, opik):
    opik.down()
    r = rig(spool_kw={"max_bytes": 30_000, "segment_bytes": 6_000})
    r.shipper.start()
    ids = []
    for _ in range(60):
        ids += r.append(1)
    dropped = r.spool.section()["dropped_events_disk"]
    assert dropped > 0
    opik.up()
    kept = ids[dropped:]
    wait_for(lambda: all_received(opik, kept), what="the newest records")
    assert not opik.ids() & set(ids[:dropped])  # the oldest were dropped, not shipped


def test_plan_requests_puts_traces_first_and_splits_by_count_and_bytes():
    records = [(r["kind"], r["body"], 100) for _ in range(5) for r in synthetic_capture()]
    plan = plan_requests(records, max_records=3, max_bytes=10_000)
    assert [request.route.kind for request in plan] == ["trace", "trace", "span", "span", "span", "span"]
    assert [len(request.items) for request in plan] == [3, 2, 3, 3, 3, 1]
    plan = plan_requests(records, max_records=1000, max_bytes=250)
    assert [len(request.items) for request in plan] == [2, 2, 1, 2, 2, 2, 2, 2]
    assert plan[0].route is TRACES_BATCH


def test_daemon_drains_a_prefilled_spool_and_reports_it(home, upstream, opik):
    records = prefill(home / "spool", 20)
    daemon = DaemonProcess(home, upstream.url, OPIK_CIPX_BASE_URL=opik.url, OPIK_CIPX_API_KEY=API_KEY,
                           OPIK_CIPX_WORKSPACE=WORKSPACE, OPIK_CIPX_PROJECT="{username}-cc")
    try:
        wait_for(lambda: all_received(opik, [r["body"]["id"] for r in records]), what="drained")
        stats = wait_for(lambda: (s := daemon.stats())["queue"] == IDLE and s, what="stats caught up")
        assert stats["counters"]["spans_shipped"] == 60
        assert stats["opik"]["configured"] and stats["opik"]["base_url"] == opik.url
        assert stats["opik"]["last_ok_at"].endswith("Z") and stats["opik"]["last_error"] is None
        assert stats["project"] == "{username}-cc"
        assert stats["wal"]["degraded"] is False
        assert API_KEY not in json.dumps(stats)
    finally:
        assert daemon.stop() == 0
    assert API_KEY not in (home / "logs" / "cipx.log").read_text()
    assert opik.violations == []


def test_daemon_reads_the_opik_sdk_config_file(home, upstream, opik):
    home.parent.mkdir(parents=True, exist_ok=True)
    (home.parent / ".opik.config").write_text(
        f"[opik]\nurl_override = http://127.0.0.1:1/api/\napi_key = {API_KEY}\nworkspace = nope\n"
        f"[opik_cc]\nurl_override = {opik.url}/\nworkspace = {WORKSPACE}\nproject_name = from-ini\n"
    )
    records = prefill(home / "spool", 1)
    daemon = DaemonProcess(home, upstream.url)
    try:
        wait_for(lambda: all_received(opik, [r["body"]["id"] for r in records]), what="drained")
        assert daemon.stats()["project"] == "from-ini"
    finally:
        daemon.stop()
    assert opik.violations == []


def test_daemon_without_opik_keeps_spans_in_the_spool(home, upstream):
    prefill(home / "spool", 1)
    daemon = DaemonProcess(home, upstream.url)
    try:
        stats = daemon.stats()
        assert stats["opik"]["configured"] is False
        assert "not configured" in stats["opik"]["last_error"] and "opik-cipx restart" in stats["opik"]["last_error"]
        assert stats["queue"]["ready"] == 3 and stats["wal"]["segments"] == 1 and stats["wal"]["hot_bytes"] > 0
        assert stats["project"] == "claude-code"
    finally:
        assert daemon.stop() == 0
    assert unshipped_records(home / "spool") == 3


@pytest.mark.parametrize("answer", [WEB_PAGE, NOT_JSON], ids=["web page", "not json"])
def test_a_2xx_that_is_not_opiks_answer_stores_nothing_and_status_names_it(rig, opik, answer):
    """Issue 22.5: a base URL that points at a web front end answered 200 with a page, taken as stored."""
    opik.fail_with = answer
    r = rig()
    ids = r.append(2)
    r.shipper.start()
    section = wait_for(lambda: (s := r.shipper.section())["last_error"] and s, what="the error")
    assert "HTTP 200" in section["last_error"] and "OPIK_CIPX_BASE_URL" in section["last_error"]
    assert answer.headers["Content-Type"].split(";")[0] in section["last_error"] and section["paused"]
    assert r.counters.get("spans_shipped") == 0
    assert r.shipper.queue_section()["ready"] + r.shipper.queue_section()["inflight"] == 6  # nothing taken as shipped
    opik.fail_with = None
    wait_for(lambda: all_received(opik, ids), what="shipped once Opik answers")
    wait_for(lambda: r.shipper.section()["last_error"] is None, what="the error gone")


def test_the_error_of_a_record_set_aside_does_not_stay_in_status(rig, opik, tmp_path):
    """Issue 22, also: a stale Opik error stayed in `status` after its cause was quarantined."""
    r = rig()
    ids = r.append(1)
    r.shipper.start()
    wait_for(lambda: all_received(opik, ids), what="a record accepted")
    lone = synthetic_capture()[1]
    opik.answer_ids[lone["body"]["id"]] = Answer(500, body=b'{"errors":["java.lang.NullPointerException"]}')
    r.spool.append([lone])
    r.spool.flush(5)
    wait_for(lambda: r.shipper.section()["quarantined"] == 1, what="the record set aside")
    wait_for(lambda: r.shipper.queue_section() == IDLE, what="settled")
    assert r.shipper.section()["last_error"] is None  # the quarantine line speaks for it now


def test_a_poison_pair_first_in_line_after_a_restart_is_isolated_and_later_calls_flow(rig, opik, tmp_path):
    """Issue 22.1: a trace and a span Opik answers 500 for, first in line after a start: the shipper
    rotated between the two for ever while later calls waited, and quarantined nothing."""
    poison = synthetic_capture()[:2]
    for record in poison:
        opik.answer_ids[record["body"]["id"]] = Answer(500, body=b'{"errors":["java.lang.NullPointerException"]}')
    before = rig()  # the daemon that spooled them stopped before shipping them
    before.spool.append(poison)
    assert before.spool.flush(5)
    before.close()
    r = rig()  # the next start: nothing in memory about what Opik accepted
    r.shipper.start()
    wait_for(lambda: len(opik.requests) >= 2 * ISOLATE_AFTER, what="the poison tried")
    later = r.append(7)
    wait_for(lambda: all_received(opik, later), timeout_s=20, what="the later calls at Opik")
    wait_for(lambda: r.shipper.section()["quarantined"] == 2, what="both set aside")
    wait_for(lambda: r.shipper.queue_section() == IDLE, what="the cursor past them")
    assert {e["body"]["id"] for e in quarantined(tmp_path / "spool")} == {p["body"]["id"] for p in poison}
    assert r.shipper.section()["last_error"] is None and opik.violations == []


@pytest.mark.parametrize("slow, timeout_s", [(Slow(above=40, delay_s=0.3), 5.0),
                                             (Slow(above=40, delay_s=3.0, stored=True), 0.5)],
                         ids=["gateway timeout", "client timeout"])
def test_a_slow_opik_gets_smaller_requests_and_progresses(rig, opik, slow, timeout_s):
    """Issue 22.8: a batch Opik answers too slowly was re-sent unchanged, never split, for ever."""
    opik.slow = slow
    r = rig(timeout_s=timeout_s)
    ids = r.append(50)  # requests of 50 traces and 100 spans
    r.shipper.start()
    wait_for(lambda: all_received(opik, ids), timeout_s=30, what="every record at Opik")
    wait_for(lambda: r.shipper.queue_section() == IDLE, what="the cursor moved")
    stored = [len(req.ids) for req in opik.requests if req.stored and req.at]
    assert stored and max(stored) <= slow.above
    assert r.shipper.section()["request_records"] <= slow.above  # later batches start small
    assert opik.violations == []


def test_a_record_slower_than_the_timeout_gets_a_longer_one(rig, opik):
    opik.slow = Slow(above=0, delay_s=0.8, stored=True)  # every request, a lone record too, takes 0.8 s
    r = rig(timeout_s=0.5)
    r.append(1)
    r.shipper.start()
    wait_for(lambda: r.shipper.queue_section() == IDLE, timeout_s=30, what="Opik's answers awaited")
    section = r.shipper.section()
    assert section["last_error"] is None and section["request_timeout_s"] >= 1.0
    assert r.counters.get("spans_shipped") == 3
