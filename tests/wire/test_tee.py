"""The tee queue and its capture thread: never blocks the wire, bounded in count and bytes,
counts drops and stage failures, never waits for the wire."""

import threading

from opik_cipx.stats import Counters
from opik_cipx.wire.capture import Capture
from opik_cipx.wire.tee import Pipeline


def capture(n: int, size: int = 0) -> Capture:
    c = Capture(id=f"id-{n}", started_at_ns=n, method="POST", path="/v1/messages", request_headers=[],
                request_body=b"x" * size)
    c.response_parts = [b"y" * size]
    return c


def stuck_pipeline(counters: Counters, **kw):
    release, started, seen = threading.Event(), threading.Event(), []

    def slow(c: Capture) -> None:
        started.set()
        release.wait(10)
        seen.append(c.id)

    pipeline = Pipeline([("slow", slow)], counters, **kw)
    pipeline.start()
    return pipeline, release, started, seen


def test_full_queue_drops_and_counts_without_blocking():
    counters = Counters()
    pipeline, release, started, seen = stuck_pipeline(counters, maxsize=2, max_bytes=10**9)
    pipeline.offer(capture(0))
    assert started.wait(5)  # worker holds capture 0; the queue has room for 2 more
    for n in range(1, 6):
        pipeline.offer(capture(n))  # returns at once even though the worker is stuck
    assert counters.get("requests_captured") == 3
    assert counters.get("requests_dropped_queue_full") == 3
    assert pipeline.section() == {"ready_raw": 3}
    release.set()
    assert pipeline.stop(timeout_s=5)
    assert seen == ["id-0", "id-1", "id-2"]
    assert pipeline.section() == {"ready_raw": 0}


def test_the_queue_is_bounded_in_bytes_too():
    counters = Counters()
    pipeline, release, started, seen = stuck_pipeline(counters, maxsize=100, max_bytes=10_000)
    pipeline.offer(capture(0, size=4_000))  # 8,000 bytes held by the worker count until it is done
    assert started.wait(5)
    pipeline.offer(capture(1, size=500))
    pipeline.offer(capture(2, size=1_000))  # would make 11,000
    pipeline.offer(capture(3, size=100))
    assert counters.get("requests_dropped_queue_full") == 1
    release.set()
    assert pipeline.drain(timeout_s=5)
    pipeline.offer(capture(4, size=20_000))  # bigger than the budget, but nothing else waits
    assert pipeline.stop(timeout_s=5)
    assert seen == ["id-0", "id-1", "id-3", "id-4"]


def test_failing_stage_is_counted_and_later_stages_and_captures_still_run():
    counters = Counters()
    after = []

    def boom(c: Capture) -> None:
        if c.id == "id-1":
            raise ValueError("bad capture")

    pipeline = Pipeline([("boom", boom), ("after", lambda c: after.append(c.id))], counters, maxsize=10,
                        max_bytes=10**9)
    pipeline.start()
    for n in range(3):
        pipeline.offer(capture(n))
    assert pipeline.stop(timeout_s=5)
    assert after == ["id-0", "id-1", "id-2"]
    assert counters.get("panics_recovered") == 1  # a stage that raises is a bug
