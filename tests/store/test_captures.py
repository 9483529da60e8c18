"""Raw captures on disk: round trip, torn tails, rotation and retention."""

import os
import stat
import time

from opik_cipx.store.captures import CaptureStore, list_segments, read_captures
from opik_cipx.wire.capture import Capture, redact_headers


def make(n: int, body: bytes = b'{"model":"claude-opus-4-8"}') -> Capture:
    c = Capture(id=f"0190-{n}", started_at_ns=n, method="POST", path="/v1/messages?beta=true",
                request_headers=redact_headers([("x-api-key", "sk-secret"), ("anthropic-version", "2023-06-01")]),
                request_body=body, status=200, response_headers=[["content-encoding", "gzip"]])
    c.response_parts = [b"\x1f\x8b\x08binary", b"\xff\xfe"]
    return c


def test_round_trip_keeps_text_and_binary_bodies(tmp_path):
    store = CaptureStore(tmp_path / "captures", max_bytes=10**9, max_age_s=10**6, segment_bytes=10**6)
    store.append(make(1))
    store.append(make(2, body="héllo".encode()))
    store.close()
    got = list(read_captures(tmp_path / "captures"))
    assert [c.id for c in got] == ["0190-1", "0190-2"]
    assert got[0].response_body == b"\x1f\x8b\x08binary\xff\xfe"
    assert got[1].request_body == "héllo".encode()
    assert got[0].request_headers[0] == ["x-api-key", "[redacted]"]
    (segment,) = (tmp_path / "captures").iterdir()
    assert stat.S_IMODE(segment.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "captures").stat().st_mode) == 0o700


def test_torn_last_member_costs_only_that_capture(tmp_path):
    store = CaptureStore(tmp_path, max_bytes=10**9, max_age_s=10**6, segment_bytes=10**6)
    for n in range(3):
        store.append(make(n))
    store.close()
    (segment,) = [p for p, _, _ in list_segments(tmp_path)]
    data = segment.read_bytes()
    segment.write_bytes(data[:-7])
    assert [c.id for c in read_captures(tmp_path)] == ["0190-0", "0190-1"]


def test_rotation_and_byte_budget_delete_oldest_segments(tmp_path):
    body = os.urandom(20_000)  # incompressible, so sizes are predictable
    store = CaptureStore(tmp_path, max_bytes=120_000, max_age_s=10**6, segment_bytes=40_000)
    for n in range(20):
        store.append(make(n, body=body))
    store.close()
    segments = list_segments(tmp_path)
    assert len(segments) > 1
    assert sum(size for _, size, _ in segments) <= 120_000 + 40_000
    ids = [c.id for c in read_captures(tmp_path)]
    assert ids == [f"0190-{n}" for n in range(20 - len(ids), 20)]  # newest kept, in order


def test_age_limit_deletes_old_segments(tmp_path):
    store = CaptureStore(tmp_path, max_bytes=10**9, max_age_s=3600, segment_bytes=10**6)
    store.append(make(1))
    store.close()
    (old,) = [p for p, _, _ in list_segments(tmp_path)]
    past = time.time() - 7200
    os.utime(old, (past, past))
    assert store.enforce_retention() == [old]
    assert list(read_captures(tmp_path)) == []


def test_a_failed_write_starts_a_new_segment_so_later_captures_stay_readable(tmp_path):
    store = CaptureStore(tmp_path, max_bytes=10**9, max_age_s=10**6, segment_bytes=10**6)
    first = store.append(make(1))

    class Full:
        def write(self, data):
            raise OSError(28, "No space left on device")

        def close(self):
            pass

    store._fh = Full()  # the disk fills up mid-segment
    try:
        store.append(make(2))
        raise AssertionError("the write error must reach the caller (it is counted there)")
    except OSError:
        pass
    later = store.append(make(3))
    store.close()
    assert later != first
    assert [c.id for c in read_captures(tmp_path)] == ["0190-1", "0190-3"]


def test_find_capture_looks_only_in_segments_written_after_it_started(tmp_path):
    from opik_cipx.store.captures import find_capture

    store = CaptureStore(tmp_path, max_bytes=10**9, max_age_s=10**9, segment_bytes=400)
    now_ns = time.time_ns()
    captures = [make(n) for n in range(6)]
    for capture in captures:
        capture.started_at_ns = now_ns
        store.append(capture)  # ~1 capture per segment
    store.close()
    segments = [p for p, _, _ in list_segments(tmp_path)]
    assert len(segments) >= 3
    old = segments[0]
    os.utime(old, (time.time() - 3600, time.time() - 3600))  # written before the exchange started
    first = next(read_captures(tmp_path)).id
    assert find_capture(tmp_path, captures[-1].id, now_ns).id == captures[-1].id
    assert find_capture(tmp_path, first, now_ns) is None  # its segment is not opened
    assert find_capture(tmp_path, first, now_ns - 7200 * 10**9).id == first
    assert find_capture(tmp_path, "0190-absent", 0) is None
