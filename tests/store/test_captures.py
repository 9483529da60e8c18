"""The capture log on disk: round trip, positions, torn tails, rotation, retention."""

import gzip
import os
import stat
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from opik_cipx.store import captures
from opik_cipx.store.capture_keeper import LogKeeper
from opik_cipx.store.captures import (
    CaptureStore,
    LogPosition,
    count_log,
    encode_member,
    find_capture,
    first_stamp,
    list_segments,
    read_log,
)
from opik_cipx.wire.capture import Capture, redact_headers
from tests.claude_code_corpus import corpus_now_ns
from tests.conftest import examples
from tests.fake_clock import FakeClock

BIG = 10**9


def make(n: int, body: bytes = b'{"model":"claude-opus-4-8"}') -> Capture:
    c = Capture(id=f"0190-{n}", started_at_ns=n, method="POST", path="/v1/messages?beta=true",
                request_headers=redact_headers([("x-api-key", "sk-secret"), ("anthropic-version", "2023-06-01")]),
                request_body=body, status=200, response_headers=[["content-encoding", "gzip"]])
    c.response_parts = [b"\x1f\x8b\x08binary", b"\xff\xfe"]
    return c


def ids(entries) -> list[str]:
    return [e.capture.id for e in entries]


def read_captures(directory):
    """Every stored capture, in log order, as the follower and `replay` read them."""
    return [entry.capture for entry in read_log(directory)]


def test_round_trip_keeps_text_and_binary_bodies(tmp_path):
    store = CaptureStore(tmp_path / "captures", segment_bytes=10**6)
    store.append(make(1))
    store.append(make(2, body="héllo".encode()))
    store.close()
    got = list(read_captures(tmp_path / "captures"))
    assert [c.id for c in got] == ["0190-1", "0190-2"]
    assert got[0].response_body == b"\x1f\x8b\x08binary\xff\xfe"
    assert got[1].request_body == "héllo".encode()
    assert got[0].request_headers[0] == ["x-api-key", "[redacted]"]
    (segment,) = (tmp_path / "captures").iterdir()
    assert segment.name == "000000000001.raw"  # as the wire wrote it: the bodies as they were, no compression
    assert stat.S_IMODE(segment.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "captures").stat().st_mode) == 0o700
    assert segment.read_bytes().split(b"\n", 1)[1].startswith(b'{"model":"claude-opus-4-8"}\x1f\x8b\x08binary')
    keeper = LogKeeper(tmp_path / "captures", BIG, BIG)
    assert keeper.compact(LogPosition(2, 0), store.tail().sealed_below).name == "000000000001.jsonl.gz"
    (segment,) = (tmp_path / "captures").iterdir()
    assert gzip.decompress(segment.read_bytes()).count(b"\n") >= 2  # plain gzip members, any tool reads them
    assert [c.id for c in read_captures(tmp_path / "captures")] == ["0190-1", "0190-2"]


def test_positions_are_contiguous_and_reading_resumes_from_any_of_them(tmp_path):
    store = CaptureStore(tmp_path, segment_bytes=700)
    assert store.end == store.start_end == LogPosition(1, 0)
    appended = [store.append(make(n, body=os.urandom(200))) for n in range(8)]
    assert store.end == appended[-1].end
    for before, after in zip(appended, appended[1:], strict=False):
        assert after.start == before.end or (after.start == LogPosition(before.end.segment + 1, 0))
    assert len({a.path for a in appended}) > 1  # rotated by size
    entries = list(read_log(tmp_path))
    assert [(e.start, e.end) for e in entries] == [(a.start, a.end) for a in appended]
    assert ids(read_log(tmp_path, appended[3].start)) == [f"0190-{n}" for n in range(3, 8)]
    assert ids(read_log(tmp_path, appended[3].end, appended[6].start)) == ["0190-4", "0190-5"]
    assert count_log(tmp_path, appended[1].start, store.end) == 7
    store.close()
    again = CaptureStore(tmp_path, segment_bytes=700)
    assert again.start_end == LogPosition(appended[-1].end.segment + 1, 0)  # a new start, a new segment
    assert again.append(make(9)).start == again.start_end


def test_torn_last_member_costs_only_that_capture(tmp_path):
    store = CaptureStore(tmp_path, segment_bytes=10**6)
    for n in range(3):
        store.append(make(n))
    store.close()
    (segment,) = [p for p, _, _ in list_segments(tmp_path)]
    data = segment.read_bytes()
    segment.write_bytes(data[:-7])
    assert [c.id for c in read_captures(tmp_path)] == ["0190-0", "0190-1"]


@settings(max_examples=examples(60), deadline=None)
@given(cut=st.integers(min_value=0, max_value=10**6), sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=6))
def test_a_crash_at_any_byte_leaves_a_readable_prefix(tmp_path_factory, cut, sizes):
    directory = tmp_path_factory.mktemp("log")
    store = CaptureStore(directory, segment_bytes=BIG)
    appended = [store.append(make(n, body=os.urandom(size))) for n, size in enumerate(sizes)]
    store.close()
    path = appended[0].path
    data = path.read_bytes()
    cut %= len(data) + 1
    path.write_bytes(data[:cut])
    whole = [a for a in appended if a.end.offset <= cut]
    got = list(read_log(directory))
    assert [(e.capture.id, e.end) for e in got] == [(f"0190-{n}", a.end) for n, a in enumerate(whole)]


def test_retention_deletes_materialized_segments_beyond_the_budget_oldest_first(tmp_path):
    body = os.urandom(20_000)  # incompressible, so sizes are predictable
    store = CaptureStore(tmp_path, segment_bytes=40_000)
    keeper = LogKeeper(tmp_path, max_bytes=120_000, max_age_s=BIG)
    appended = [store.append(make(n, body=body)) for n in range(20)]
    store.close()
    assert keeper.retain(appended[-1].end, store.tail().sealed_below) == 0  # all materialized: none lost
    assert sum(size for _, size, _ in list_segments(tmp_path)) <= 120_000 + 40_000
    kept = [c.id for c in read_captures(tmp_path)]
    assert kept == [f"0190-{n}" for n in range(20 - len(kept), 20)]  # newest kept, in order


def test_the_budget_deletes_unmaterialized_captures_only_when_forced_and_counts_them(tmp_path):
    body = os.urandom(20_000)
    store = CaptureStore(tmp_path, segment_bytes=40_000)
    keeper = LogKeeper(tmp_path, max_bytes=120_000, max_age_s=BIG)
    appended = [store.append(make(n, body=body)) for n in range(20)]
    materialized = appended[2].end  # the follower is far behind
    lost = keeper.retain(materialized, store.tail().sealed_below)
    remaining = list(read_log(tmp_path, materialized))
    assert lost == 17 - len(remaining)  # every capture gone before it was materialized is counted
    assert lost > 0 and sum(size for _, size, _ in list_segments(tmp_path)) <= 120_000 + 40_000


def test_age_limit_spares_what_is_not_materialized(tmp_path):
    clock = FakeClock(corpus_now_ns())
    store = CaptureStore(tmp_path, segment_bytes=10**6, clock=clock)
    keeper = LogKeeper(tmp_path, max_bytes=BIG, max_age_s=3600, clock=clock)
    first = store.append(make(1))
    store.close()
    second = store.append(make(2))
    store.close()
    clock.advance(3 * 3600)  # each written within an hour of its first capture: older than the limit
    assert keeper.retain(first.end, store.tail().sealed_below) == 0  # only the first one was materialized
    assert [c.id for c in read_captures(tmp_path)] == ["0190-2"]
    keeper.retain(second.end, store.tail().sealed_below)
    assert list(read_captures(tmp_path)) == []


def test_ages_come_from_the_stores_own_clock_not_the_files_mtime(tmp_path):
    clock = FakeClock(corpus_now_ns())
    start = clock.time_ns()
    store = CaptureStore(tmp_path, segment_bytes=10**6, clock=clock)
    keeper = LogKeeper(tmp_path, max_bytes=BIG, max_age_s=86400, clock=clock)
    first = store.append(make(1))
    assert first_stamp(first.path) == start
    clock.advance(600)
    assert store.append(make(2)).path == first.path  # logged within the hour: the same segment
    clock.advance(7200)
    later = store.append(make(3))
    assert later.path != first.path  # a segment is rotated once it is an hour old, by either clock
    store.close()
    os.utime(first.path, (0, 0))  # restored from a backup with its mtime lost: not a reason to delete it
    os.utime(later.path, (4e9, 4e9))  # nor a date in the future one to keep it

    def kept_at(seconds: int) -> list[str]:
        clock.advance(start / 1e9 + seconds - clock.time())
        assert keeper.retain(later.end, store.tail().sealed_below) == 0
        return [c.id for c in read_captures(tmp_path)]

    # The first segment's captures were all logged by an hour after its first one.
    assert kept_at(3600 + 86400 - 1) == ["0190-1", "0190-2", "0190-3"]
    assert kept_at(3600 + 86400 + 1) == ["0190-3"]
    assert kept_at(7800 + 3600 + 86400 + 1) == []


def test_captures_off_keeps_each_one_only_until_it_is_materialized(tmp_path):
    store = CaptureStore(tmp_path, segment_bytes=10**6, keep=False)
    keeper = LogKeeper(tmp_path, max_bytes=BIG, max_age_s=BIG, keep=False)
    first, second = store.append(make(1)), store.append(make(2))
    assert first.path != second.path  # one sealed segment each
    assert second.tail.sealed_below == second.end.segment + 1
    keeper.retain(first.end, store.tail().sealed_below)
    assert [c.id for c in read_captures(tmp_path)] == ["0190-2"]
    keeper.retain(second.end, store.tail().sealed_below)
    assert list_segments(tmp_path) == []


def test_segments_from_before_the_log_come_first_and_count_as_materialized(tmp_path):
    legacy = tmp_path / "20260101T000000-123-0001.jsonl.gz"
    legacy.write_bytes(encode_member(make(0), 0))
    store = CaptureStore(tmp_path, segment_bytes=10**6, keep=False)
    assert store.start_end == LogPosition(1, 0)
    store.append(make(1))
    assert ids(read_log(tmp_path)) == ["0190-0", "0190-1"]
    assert ids(read_log(tmp_path, store.start_end)) == ["0190-1"]
    LogKeeper(tmp_path, max_bytes=BIG, max_age_s=BIG, keep=False).retain(store.start_end, store.tail().sealed_below)
    assert not legacy.exists()  # captures off: materialized, so deleted


def test_a_failed_write_starts_a_new_segment_so_later_captures_stay_readable(tmp_path, monkeypatch):
    store = CaptureStore(tmp_path, segment_bytes=10**6)
    first = store.append(make(1))

    def full(fd, buffers):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(captures.os, "writev", full)  # the disk fills up mid-segment
    try:
        store.append(make(2))
        raise AssertionError("the write error must reach the caller (it is counted there)")
    except OSError:
        pass
    monkeypatch.undo()
    assert store.end == first.end
    later = store.append(make(3))
    store.close()
    assert later.path != first.path
    assert [c.id for c in read_captures(tmp_path)] == ["0190-1", "0190-3"]


def test_short_writes_are_resumed_where_they_stopped(tmp_path, monkeypatch):
    """A write the system cuts short (a signal, a pipe-sized slice) goes on from the byte it reached."""
    store = CaptureStore(tmp_path, segment_bytes=10**6)
    real = os.writev

    def stingy(fd, buffers):
        first = bytes(memoryview(buffers[0])[:7])
        return real(fd, [first]) if first else real(fd, buffers)

    monkeypatch.setattr(captures.os, "writev", stingy)
    capture = make(1, body=os.urandom(3000))
    capture.response_parts = [b"", b"a" * 11, b"bc", b"", os.urandom(5000)]
    store.append(capture)
    monkeypatch.undo()
    store.append(make(2))
    store.close()
    got = read_captures(tmp_path)
    assert [c.id for c in got] == ["0190-1", "0190-2"]
    assert got[0].request_body == capture.request_body and got[0].response_body == b"".join(capture.response_parts)


@settings(max_examples=examples(40), deadline=None)
@given(parts=st.lists(st.binary(max_size=600), max_size=2000))
def test_a_response_of_any_pieces_reads_back_whole(tmp_path_factory, parts):
    directory = tmp_path_factory.mktemp("log")
    capture = make(1)
    capture.response_parts = list(parts)
    store = CaptureStore(directory, segment_bytes=BIG)
    store.append(capture)
    store.close()
    (got,) = read_captures(directory)
    assert got.response_body == b"".join(parts) and got.request_body == capture.request_body


def test_a_full_disk_leaves_no_empty_segment_behind(tmp_path, monkeypatch):
    store = CaptureStore(tmp_path, segment_bytes=10**6)
    store.append(make(1))
    store.close()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(captures.os, "writev", full)
    for n in range(3):
        try:
            store.append(make(n))
        except OSError:
            pass
    assert len(list_segments(tmp_path)) == 1


def test_find_capture_looks_only_in_segments_written_after_it_started(tmp_path):
    clock = FakeClock(corpus_now_ns())
    store = CaptureStore(tmp_path, segment_bytes=400, clock=clock)
    early = make(0)
    early.started_at_ns = clock.time_ns()
    store.append(early)
    clock.advance(7200)
    captures = [make(n) for n in range(1, 6)]
    for capture in captures:
        capture.started_at_ns = clock.time_ns()
        store.append(capture)  # ~1 capture per segment
    store.close()
    segments = [p for p, _, _ in list_segments(tmp_path)]
    assert len(segments) >= 3
    for path in segments:
        os.utime(path, (0, 0))  # the file system's dates play no part
    now_ns = clock.time_ns()
    assert find_capture(tmp_path, captures[-1].id, now_ns).id == captures[-1].id
    assert find_capture(tmp_path, early.id, now_ns) is None  # its segment was written before: not opened
    assert find_capture(tmp_path, early.id, early.started_at_ns).id == early.id
    assert find_capture(tmp_path, "0190-absent", 0) is None


def test_close_waits_for_an_append_in_progress(tmp_path, monkeypatch):
    """The capture thread may still be writing when the daemon's shutdown closes the log: the
    seal waits for the write, so the capture is whole and readable."""
    store = CaptureStore(tmp_path, segment_bytes=10**6)
    store.append(make(1))
    writing, go_on, real = threading.Event(), threading.Event(), os.writev

    def gated(fd, buffers):
        writing.set()
        go_on.wait(10)
        return real(fd, buffers)

    monkeypatch.setattr(captures.os, "writev", gated)
    appended = []
    writer = threading.Thread(target=lambda: appended.append(store.append(make(2))))
    writer.start()
    assert writing.wait(10)  # the capture thread is in the middle of its write
    closer = threading.Thread(target=store.close)
    closer.start()
    closer.join(0.5)
    assert closer.is_alive()  # the seal waits for the write ...
    go_on.set()
    writer.join(10)
    closer.join(10)
    assert not closer.is_alive() and appended and appended[0].end == store.end  # ... which completes
    assert [c.id for c in read_captures(tmp_path)] == ["0190-1", "0190-2"]


def test_a_record_being_written_is_read_only_once_whole(tmp_path):
    """The work process follows the segment the wire writes: a record whose bytes are not all there
    yet is not read (nor skipped), and is read once they are."""
    store = CaptureStore(tmp_path, segment_bytes=10**6)
    first = store.append(make(1, body=os.urandom(4000)))
    second = store.append(make(2, body=os.urandom(4000)))
    store.close()
    data = first.path.read_bytes()
    for cut in (first.end.offset + 1, first.end.offset + 300, second.end.offset - 1):
        first.path.write_bytes(data[:cut])
        assert [(e.capture.id, e.end) for e in read_log(tmp_path)] == [("0190-1", first.end)]
        assert count_log(tmp_path, first.start, None) == 1
    first.path.write_bytes(data)
    assert ids(read_log(tmp_path, first.end)) == ["0190-2"]


def test_compaction_keeps_every_capture_its_stamp_and_what_follows(tmp_path):
    clock = FakeClock(corpus_now_ns())
    store = CaptureStore(tmp_path, segment_bytes=3000, clock=clock)
    keeper = LogKeeper(tmp_path, max_bytes=BIG, max_age_s=BIG, clock=clock)
    appended = []
    for n in range(6):
        appended.append(store.append(make(n, body=os.urandom(1000))))
        clock.advance(1)
    before = [(c.id, c.request_body, c.response_body) for c in read_captures(tmp_path)]
    stamps = {segment.number: first_stamp(segment.path) for segment in list_segments(tmp_path)}
    assert keeper.compact(appended[1].start, store.tail().sealed_below) is None  # nothing wholly behind it
    sealed = store.tail().sealed_below
    behind = appended[-1].start  # the checkpoint: the first segments are wholly materialized
    compacted = []
    while (done := keeper.compact(behind, sealed)) is not None:
        compacted.append(done.name)
    assert compacted and all(name.endswith(".jsonl.gz") for name in compacted)
    numbers = [int(name[:12]) for name in compacted]
    assert max(numbers) < behind.segment  # the segment the checkpoint is in stays raw: positions in it hold
    assert [(c.id, c.request_body, c.response_body) for c in read_captures(tmp_path)] == before
    assert {segment.number: first_stamp(segment.path) for segment in list_segments(tmp_path)} == stamps
    assert ids(read_log(tmp_path, behind)) == ["0190-5"]
    store.close()


def test_a_compaction_cut_short_leaves_the_compacted_segment_in_charge(tmp_path):
    store = CaptureStore(tmp_path, segment_bytes=10**6)
    store.append(make(1))
    store.close()
    (raw,) = [p for p, _, _ in list_segments(tmp_path)]
    kept = raw.read_bytes()
    keeper = LogKeeper(tmp_path, max_bytes=BIG, max_age_s=BIG)
    compacted = keeper.compact(LogPosition(2, 0), store.tail().sealed_below)
    raw.write_bytes(kept)  # as if the process died between the rename and the unlink
    assert [p for p, _, _ in list_segments(tmp_path)] == [compacted]  # read once, from the compacted file
    assert [c.id for c in read_captures(tmp_path)] == ["0190-1"]
    LogKeeper(tmp_path, max_bytes=BIG, max_age_s=BIG).compact(LogPosition(2, 0), store.tail().sealed_below)
    assert not raw.exists()


def test_retention_never_touches_a_segment_the_wire_may_still_write(tmp_path):
    store = CaptureStore(tmp_path, segment_bytes=10**6)
    keeper = LogKeeper(tmp_path, max_bytes=1, max_age_s=0)
    appended = store.append(make(1))
    assert appended.tail.sealed_below == appended.end.segment  # open
    assert keeper.retain(appended.end, appended.tail.sealed_below) == 0
    assert keeper.compact(LogPosition(9, 0), appended.tail.sealed_below) is None
    assert [c.id for c in read_captures(tmp_path)] == ["0190-1"]
    store.close()
    keeper.retain(appended.end, store.tail().sealed_below)
    assert list_segments(tmp_path) == []


def test_a_blocked_capture_keeps_its_mark_and_others_read_as_before(tmp_path):
    """The cap that kept a request from the upstream travels in the log, raw and compacted
    (docs/BUDGETS.md); a capture without one is written exactly as before, with no such field."""
    store = CaptureStore(tmp_path / "captures", segment_bytes=10**6)
    blocked = make(1)
    blocked.blocked = "project_day"
    store.append(blocked)
    store.append(make(2))
    store.close()
    got = read_captures(tmp_path / "captures")
    assert [c.blocked for c in got] == ["project_day", None]
    (segment,) = (tmp_path / "captures").iterdir()
    assert segment.read_bytes().count(b'"blocked"') == 1
    keeper = LogKeeper(tmp_path / "captures", max_bytes=BIG, max_age_s=BIG)
    compacted = keeper.compact(LogPosition(2, 0), store.tail().sealed_below)
    assert compacted is not None and gzip.decompress(compacted.read_bytes()).count(b'"blocked"') == 1
    assert [c.blocked for c in read_captures(tmp_path / "captures")] == ["project_day", None]
