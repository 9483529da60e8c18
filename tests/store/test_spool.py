"""The write-ahead spool: group commit, durability, cursor, recovery, bounds, disk errors."""

import errno
import http.client
import json
import os
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from opik_cipx.ship.destination import Destination
from opik_cipx.ship.opik_api import Reply, Route
from opik_cipx.ship.shipper import Shipper
from opik_cipx.stats import Counters
from opik_cipx.store import spool_writer
from opik_cipx.store.quarantine import quarantine_counts, request_requeue
from opik_cipx.store.spool import Spool
from opik_cipx.store.spool_lines import encode
from tests.conftest import DaemonProcess, examples, wait_for
from tests.spool_driver import synthetic_capture

MIB = 1024 * 1024


def make_spool(directory: Path, **kw) -> Spool:
    options = dict(max_bytes=64 * MIB, segment_bytes=MIB, inmem_max=100_000, inmem_max_bytes=64 * MIB,
                   commit_interval_s=0.01, retry_s=0.02)
    options.update(kw)
    return Spool(directory, **options)


def ids_of(records: list[dict]) -> list[str]:
    return [r["body"]["id"] for r in records]


def drain(spool: Spool, max_records: int = 1000) -> list[str]:
    """Read and commit everything waiting, as a shipper whose every post succeeds would."""
    out = []
    while (batch := spool.read_batch(max_records, MIB)) is not None:
        out += [body["id"] for _, body, _ in batch.records]
        spool.commit(batch)
    return out


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.jsonl"))


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "home" / "spool"


def test_append_is_acknowledged_after_the_group_commit_and_read_in_order(spool_dir):
    spool = make_spool(spool_dir)
    spool.start()
    records = [r for _ in range(5) for r in synthetic_capture()]
    ticket = spool.append(records)
    assert ticket == len(records)
    assert spool.wait_durable(ticket, 5)
    batch = spool.read_batch(1000, MIB)
    assert [body for _, body, _ in batch.records] == [r["body"] for r in records]
    assert [kind for kind, _, _ in batch.records] == [r["kind"] for r in records]
    assert spool.read_batch(1000, MIB).end == batch.end  # reading does not move the cursor
    spool.commit(batch)
    assert spool.read_batch(1000, MIB) is None
    assert spool.close(5) == 0
    assert stat.S_IMODE(spool_dir.stat().st_mode) == 0o700
    for path in spool_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_group_commit_keeps_fsyncs_few_under_load(spool_dir):
    spool = make_spool(spool_dir, commit_interval_s=0.2)
    spool.start()
    started = time.monotonic()
    for _ in range(2000):
        ticket = spool.append(synthetic_capture(padding=10))
    assert spool.wait_durable(ticket, 10)
    elapsed = time.monotonic() - started
    syncs = spool.section()["syncs"]
    assert syncs <= 3 + elapsed / 0.2 + 6000 / spool_writer.GROUP_MAX  # interval- or size-triggered only
    assert len(drain(spool)) == 6000
    spool.close(5)


def test_append_does_not_wait_for_the_disk(spool_dir, monkeypatch):
    spool = make_spool(spool_dir)
    spool.start()
    gate = threading.Event()
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (gate.wait(10), real_fsync(fd)))
    tickets = [spool.append(synthetic_capture()) for _ in range(50)]  # returns while the writer is stuck in fsync
    assert spool.durable_seq < tickets[-1]
    assert spool.counts()[0] > 0
    gate.set()
    assert spool.wait_durable(tickets[-1], 5)
    spool.close(5)


def test_restart_reships_everything_after_the_cursor_and_deletes_shipped_segments(spool_dir):
    spool = make_spool(spool_dir, segment_bytes=4096)
    spool.start()
    first = [r for _ in range(20) for r in synthetic_capture()]
    for i in range(0, len(first), 3):
        spool.append(first[i:i + 3])
        spool.flush(5)  # one group per capture: many small segments
    assert len(segments(spool_dir)) > 3
    shipped = []
    while len(shipped) < 30:
        batch = spool.read_batch(7, MIB)
        shipped += [body["id"] for _, body, _ in batch.records]
        spool.commit(batch)
    unshipped_before = spool.counts()[1]
    spool.close(5)
    again = make_spool(spool_dir, segment_bytes=4096)
    assert again.counts()[1] == unshipped_before == len(first) - len(shipped)
    rest = drain(again)
    assert shipped + rest == ids_of(first)
    assert len(segments(spool_dir)) <= 1  # only the last one (it may still be written to) survives
    json.loads((spool_dir / "cursor.json").read_text())


def test_a_torn_last_line_is_cut_off_counted_and_not_fatal(spool_dir):
    spool = make_spool(spool_dir)
    spool.start()
    records = synthetic_capture()
    spool.append(records)
    spool.flush(5)
    spool.close(5)
    last = segments(spool_dir)[-1]
    intact = last.stat().st_size
    with open(last, "ab") as fh:
        fh.write(encode(synthetic_capture()[0])[:57])  # a crash in the middle of a write
    again = make_spool(spool_dir)
    assert again.section()["corrupt_records"] == 1
    assert last.stat().st_size == intact
    assert drain(again) == ids_of(records)


def test_a_corrupt_line_is_skipped_and_counted(spool_dir):
    spool = make_spool(spool_dir)
    spool.start()
    before, after = synthetic_capture(), synthetic_capture()
    spool.append(before)
    spool.flush(5)
    spool.close(5)
    with open(segments(spool_dir)[-1], "ab") as fh:
        fh.write(b'\x00\x00garbage{"kind":\n{"kind": "nope", "body": {}}\n')
    again = make_spool(spool_dir)
    again.start()
    again.append(after)
    again.flush(5)
    assert drain(again) == ids_of(before) + ids_of(after)
    assert again.section()["corrupt_records"] == 2
    again.close(5)


def test_unreadable_cursor_means_everything_is_shipped_again(spool_dir):
    spool = make_spool(spool_dir)
    spool.start()
    records = synthetic_capture()
    spool.append(records)
    spool.flush(5)
    batch = spool.read_batch(2, MIB)
    spool.commit(batch)
    spool.close(5)
    (spool_dir / "cursor.json").write_text("{torn")
    assert drain(make_spool(spool_dir)) == ids_of(records)


def test_in_memory_bound_drops_whole_appends_and_counts_them(spool_dir):
    spool = make_spool(spool_dir, inmem_max=7)  # writer not started: nothing leaves memory
    assert spool.append(synthetic_capture()) == 3
    assert spool.append(synthetic_capture()) == 6
    assert spool.append(synthetic_capture()) is None
    small = make_spool(spool_dir.parent / "other", inmem_max_bytes=1000)
    assert small.append(synthetic_capture(padding=2000)) is None
    assert spool.section()["dropped_events_inmem"] == 3
    assert small.section()["dropped_events_inmem"] == 3
    assert spool.counts() == (6, 0)
    assert spool.close(5) == 0  # never started: close commits what is queued
    assert spool.counts() == (0, 6)


def test_disk_budget_drops_the_oldest_unshipped_segments_and_keeps_the_newest(spool_dir):
    spool = make_spool(spool_dir, max_bytes=40_000, segment_bytes=8_000)
    spool.start()
    appended = []
    for _ in range(60):
        records = synthetic_capture()
        appended += ids_of(records)
        spool.append(records)
        spool.flush(5)
    wal = spool.section()
    assert wal["dropped_events_disk"] > 0
    assert sum(p.stat().st_size for p in segments(spool_dir)) <= 40_000 + 8_000
    kept = drain(spool)
    assert kept == appended[len(appended) - len(kept):]  # the newest, in order, nothing in between lost
    assert wal["dropped_events_disk"] + len(kept) == len(appended)
    spool.close(5)


def test_a_batch_dropped_by_the_disk_budget_is_no_longer_current(spool_dir):
    spool = make_spool(spool_dir, max_bytes=20_000, segment_bytes=4_000)
    spool.start()
    spool.append(synthetic_capture())
    spool.flush(5)
    batch = spool.read_batch(1000, MIB)
    assert spool.is_current(batch)
    for _ in range(40):
        spool.append(synthetic_capture())
        spool.flush(5)
    assert not spool.is_current(batch)
    spool.commit(batch)  # a late success for dropped records must not move the cursor back
    assert spool.read_batch(1000, MIB).start > batch.end
    spool.close(5)


def test_a_write_error_degrades_keeps_records_in_memory_and_recovers(spool_dir, monkeypatch):
    spool = make_spool(spool_dir)
    spool.start()
    first = synthetic_capture()
    spool.append(first)
    assert spool.flush(5)
    failing = threading.Event()
    failing.set()
    real_fsync = os.fsync

    def fsync(fd):
        if failing.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    during = [r for _ in range(10) for r in synthetic_capture()]
    for i in range(0, len(during), 3):
        assert spool.append(during[i:i + 3]) is not None  # never raises, never blocks
    wal = wait_for(lambda: (s := spool.section())["degraded"] and s, what="degraded")
    assert "No space left on device" in wal["last_write_error"]
    assert spool.counts()[0] == len(during)
    assert drain(spool) == ids_of(first)  # nothing unacknowledged is visible
    failing.clear()
    wait_for(lambda: not spool.section()["degraded"], what="recovered")
    assert spool.flush(5)
    assert drain(spool) == ids_of(during)
    spool.close(5)
    lines = [json.loads(line) for p in segments(spool_dir) for line in p.read_bytes().splitlines()]
    assert len({r["body"]["id"] for r in lines}) == len(lines)  # the failed group was cut off, not doubled


def test_an_unusable_spool_directory_at_start_recovers_by_itself(spool_dir):
    spool_dir.parent.mkdir(parents=True)
    spool_dir.write_text("not a directory")
    spool = make_spool(spool_dir)
    spool.start()
    wal = spool.section()
    # no path: stats are public
    assert wal["degraded"] and wal["last_write_error"] == "cannot open the spool directory: File exists"
    records = synthetic_capture()
    ticket = spool.append(records)
    assert spool.read_batch(1000, MIB) is None
    spool_dir.unlink()
    assert spool.wait_durable(ticket, 5)
    assert not spool.section()["degraded"]
    assert drain(spool) == ids_of(records)
    spool.close(5)


def test_close_reports_records_that_could_not_be_written(spool_dir, monkeypatch):
    def fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    spool = make_spool(spool_dir)
    spool.start()
    monkeypatch.setattr(os, "fsync", fsync)
    spool.append(synthetic_capture())
    spool.append(synthetic_capture())
    assert spool.close(0.3) == 6  # retried until the deadline, then given up
    assert spool.closing and spool.append(synthetic_capture()) is None


def test_quarantine_file_keeps_the_reason(spool_dir):
    spool = make_spool(spool_dir)
    body = synthetic_capture()[1]["body"]
    spool.quarantine("span", body, 400, '{"errors":["bad usage"]}')
    (entry,) = [json.loads(line) for line in (spool_dir / "quarantine.jsonl").read_text().splitlines()]
    assert entry["body"] == body and entry["status"] == 400 and "bad usage" in entry["reason"]
    assert entry["at"].endswith("Z")


def quarantine_some(spool: Spool, captures: int) -> list[dict]:
    records = [r for _ in range(captures) for r in synthetic_capture()]
    for record in records:
        spool.quarantine(record["kind"], record["body"], 500, "boom")
    return records


def test_requeued_records_go_back_into_the_spool_once_durable(spool_dir):
    spool = make_spool(spool_dir, inmem_max=4)  # room for 4 at a time: taken in chunks, never dropped
    spool.start()
    older = quarantine_some(spool, 2)
    os.replace(spool_dir / "quarantine.jsonl", spool_dir / "quarantine.jsonl.1")  # as the rotation leaves it
    newer = quarantine_some(spool, 3)
    with open(spool_dir / "quarantine.jsonl", "ab") as fh:
        fh.write(b'{not json\n{"kind":"log","body":{"id":"x"}}\n{"kind":"span","body":{"id":"y","ttft":NaN}}\n[1]\n')
    assert quarantine_counts(spool_dir) == {"quarantined": 19, "retry_pending": 0}
    assert request_requeue(spool_dir, time.time_ns()) == 19
    assert quarantine_counts(spool_dir) == {"quarantined": 0, "retry_pending": 19}
    assert not (spool_dir / "quarantine.jsonl").exists() and not (spool_dir / "quarantine.jsonl.1").exists()
    assert spool.take_requeued() == 15  # the four lines that hold no spool record are left out
    assert quarantine_counts(spool_dir) == {"quarantined": 0, "retry_pending": 0}
    assert drain(spool) == ids_of(older + newer)  # oldest first, behind nothing
    assert spool.section()["dropped_events_inmem"] == 0
    assert spool.close(5) == 0
    assert request_requeue(spool_dir, time.time_ns()) == 0  # nothing left to hand back


def test_a_requeue_file_stays_until_its_records_are_durable(spool_dir):
    spool = make_spool(spool_dir)  # the writer never runs: nothing becomes durable
    records = quarantine_some(spool, 2)
    request_requeue(spool_dir, time.time_ns())
    (requeue,) = spool_dir.glob("requeue-*.jsonl")
    assert spool.take_requeued(wait_s=0.2) == 0
    assert quarantine_counts(spool_dir)["retry_pending"] == 6  # a crash now loses nothing
    spool.start()
    assert spool.take_requeued() == 6 and not requeue.exists()
    assert drain(spool) == ids_of(records) * 2  # appended twice: same ids, Opik upserts
    assert spool.close(5) == 0


@pytest.mark.parametrize("bad", [{"kind": "log", "body": {"id": "x"}}, {"kind": "span", "body": {}}, ["span"]])
def test_append_refuses_what_is_not_a_spool_record(spool_dir, bad):
    with pytest.raises(ValueError):
        make_spool(spool_dir).append([bad])


# ---- property: appends, acks, shipping, crashes, restarts and torn tails -------------------


class Crash(Exception):
    """The process dies right after Opik accepted a request, before the cursor is saved."""


class RecordingOpik:
    """Stands in for `OpikClient`: accepts everything, checks what a real Opik would mind."""

    def __init__(self):
        self.received: dict[str, dict] = {}
        self.crash_next = False

    def send(self, route: Route, bodies: list[dict], timeout_s: float) -> Reply:
        ids = [body["id"] for body in bodies]
        assert len(set(ids)) == len(ids), "duplicate id inside one request"
        for body in bodies:
            previous = self.received.setdefault(body["id"], body)
            assert previous == body, "the same id arrived with different content"
        if self.crash_next:
            self.crash_next = False
            raise Crash
        return Reply(204, {}, b"")


class SpoolMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="cipx-spool-"))
        self.dir = self.root / "spool"
        self.opik = RecordingOpik()
        self.appended: set[str] = set()  # every id ever appended
        self.waiting: set[str] = set()  # appended in this process, not yet acknowledged
        self.acked: set[str] = set()
        self.acked_sizes: dict[str, int] = {}
        self._open()

    def _open(self) -> None:
        self.spool = Spool(self.dir, max_bytes=64 * MIB, segment_bytes=1500, inmem_max=10**6,
                           inmem_max_bytes=64 * MIB, commit_interval_s=3600, retry_s=0.01)
        self.spool.start()
        destination = Destination("http://opik.invalid/api", "", "default", "p")
        self.shipper = Shipper(self.spool, destination, Counters(), client=self.opik)

    @rule(captures=st.integers(1, 3), padding=st.integers(0, 300))
    def append(self, captures, padding):
        records = [r for _ in range(captures) for r in synthetic_capture(padding=padding)]
        assert self.spool.append(records) is not None
        self.appended |= set(ids_of(records))
        self.waiting |= set(ids_of(records))

    @rule()
    def flush(self):
        assert self.spool.flush(5)
        self.acked |= self.waiting
        self.waiting = set()
        self.acked_sizes = {p.name: p.stat().st_size for p in segments(self.dir)}

    @rule(max_records=st.integers(1, 8))
    def ship(self, max_records):
        self.shipper.batch_max_records = max_records
        self.shipper.ship_once()

    @rule(max_records=st.integers(1, 8))
    def ship_and_crash_before_the_cursor_is_saved(self, max_records):
        self.shipper.batch_max_records = max_records
        self.opik.crash_next = True
        try:
            self.shipper.ship_once()
        except Crash:
            pass
        self.opik.crash_next = False
        self._restart(None)

    @rule(tear=st.one_of(st.none(), st.floats(0, 1)))
    def restart(self, tear):
        self._restart(tear)

    def _restart(self, tear: float | None) -> None:
        self.spool.close(5)
        self.waiting = set()  # never acknowledged: may survive the crash or not
        files = segments(self.dir)
        if isinstance(tear, float) and files:
            last = files[-1]
            acked, size = self.acked_sizes.get(last.name, 0), last.stat().st_size
            if size > acked:  # cut into what was never acknowledged
                os.truncate(last, acked + int((size - acked) * tear))
            else:  # or leave half a line behind
                with open(last, "ab") as fh:
                    fh.write(b'{"kind":"span","body":{"id":"01')
        self._open()

    def teardown(self):
        try:
            self.spool.flush(5)
            while self.shipper.ship_once():
                pass
            assert self.acked <= set(self.opik.received), "an acknowledged record never reached Opik"
            assert set(self.opik.received) <= self.appended
        finally:
            self.spool.close(5)
            shutil.rmtree(self.root, ignore_errors=True)


SpoolMachine.TestCase.settings = settings(
    max_examples=examples(150), stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_spool_never_loses_an_acknowledged_record = SpoolMachine.TestCase


def test_daemon_with_an_unusable_spool_keeps_the_wire_working_and_recovers(home, upstream, opik_down):
    segment = home / "spool" / "000000000001.jsonl"
    segment.mkdir(parents=True)  # in the way of the first segment (a `spool` file would be set aside at start)
    daemon = DaemonProcess(home, upstream.url, **opik_down)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
        conn.request("POST", "/v1/messages", body=b"{}")
        assert conn.getresponse().status == 200
        wal = daemon.stats()["wal"]
        assert wal["degraded"] is True and "spool" in wal["last_write_error"]
        segment.rmdir()
        wait_for(lambda: not daemon.stats()["wal"]["degraded"], what="spool recovered")
        assert segment.is_file()
    finally:
        assert daemon.stop() == 0


LONG_TEXT = st.text(alphabet=st.sampled_from(list('ab"\\\n\x01é—😀\u2028')), min_size=0, max_size=40).map(
    lambda text: text * 900)  # up to 36,000 characters: longer than one escaping step
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | LONG_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=examples(60), deadline=None)
@given(JSON_VALUES)
def test_a_line_with_long_strings_is_exactly_json_dumps_and_the_record_is_untouched(value):
    record = {"kind": "span", "body": {"id": "x", "input": value, "output": [value, {"v": value}]}}
    before = json.dumps(record)
    line = encode(record)
    assert line == json.dumps(record, separators=(",", ":"), allow_nan=False).encode() + b"\n"
    assert json.dumps(record) == before


def test_a_spool_that_keeps_nothing_acknowledges_at_once_and_leaves_what_was_there(spool_dir):
    """Issue 25: without an Opik destination, records (prompt text) piled up in the spool."""
    before = make_spool(spool_dir)
    before.start()
    kept = [r for _ in range(2) for r in synthetic_capture()]
    assert before.wait_durable(before.append(kept), 5)
    assert before.close(5) == 0
    on_disk = {p.name: p.read_bytes() for p in segments(spool_dir)}
    spool = make_spool(spool_dir, keep=False)
    spool.start()
    for _ in range(3):
        ticket = spool.offer(synthetic_capture(), 1.0)
        assert ticket is not None and spool.durable_seq >= ticket  # acknowledged without a write
        assert spool.append(synthetic_capture()) is not None
    assert spool.flush(5) and spool.counts() == (0, len(kept))  # what a configured daemon left still waits
    assert spool.section()["discarded"] == 18 and spool.section()["keep"] is False
    assert spool.close(5) == 0
    assert {p.name: p.read_bytes() for p in segments(spool_dir)} == on_disk  # nothing new on disk
