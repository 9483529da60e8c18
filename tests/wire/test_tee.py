"""The tee queue and its worker: never blocks the wire, counts drops and stage failures."""

import threading

from opik_cipx.stats import Counters
from opik_cipx.wire.capture import Capture
from opik_cipx.wire.tee import Pipeline


def capture(n: int) -> Capture:
    return Capture(id=f"id-{n}", started_at_ns=n, method="POST", path="/v1/messages", request_headers=[])


def test_full_queue_drops_and_counts_without_blocking():
    counters = Counters()
    release = threading.Event()
    started = threading.Event()
    seen = []

    def slow(c: Capture) -> None:
        started.set()
        release.wait(10)
        seen.append(c.id)

    pipeline = Pipeline([("slow", slow)], counters, maxsize=2)
    pipeline.start()
    pipeline.offer(capture(0))
    assert started.wait(5)  # worker holds capture 0; the queue has room for 2 more
    for n in range(1, 6):
        pipeline.offer(capture(n))  # returns at once even though the worker is stuck
    assert counters.get("requests_captured") == 3
    assert counters.get("requests_dropped_queue_full") == 3
    release.set()
    assert pipeline.stop(timeout_s=5)
    assert seen == ["id-0", "id-1", "id-2"]


def test_failing_stage_is_counted_and_later_stages_and_captures_still_run():
    counters = Counters()
    after = []

    def boom(c: Capture) -> None:
        if c.id == "id-1":
            raise ValueError("bad capture")

    pipeline = Pipeline([("boom", boom), ("after", lambda c: after.append(c.id))], counters, maxsize=10)
    pipeline.start()
    for n in range(3):
        pipeline.offer(capture(n))
    assert pipeline.stop(timeout_s=5)
    assert after == ["id-0", "id-1", "id-2"]
    assert counters.get("materializer_errors_total") == 1


def test_worker_waits_for_an_idle_wire_but_not_behind_a_backlog():
    counters = Counters()
    wire_busy = threading.Event()
    wire_busy.set()
    asked = []
    done = []

    def wire_idle(timeout_s: float) -> bool:
        asked.append(timeout_s)
        while wire_busy.is_set():
            threading.Event().wait(0.005)
        return True

    pipeline = Pipeline([("s", lambda c: done.append(c.id))], counters, maxsize=100, wire_idle=wire_idle)
    pipeline.start()
    pipeline.offer(capture(0))
    finished = threading.Event()
    threading.Thread(target=lambda: (pipeline.stop(timeout_s=5), finished.set()), daemon=True).start()
    assert not finished.wait(0.2) and done == []  # held back while an exchange is in flight
    wire_busy.clear()
    assert finished.wait(5) and done == ["id-0"] and asked


def test_a_backlog_of_half_the_queue_is_processed_without_waiting_for_the_wire():
    waits = []
    pipeline = Pipeline([("s", lambda c: None)], Counters(), maxsize=20,
                        wire_idle=lambda timeout_s: waits.append(timeout_s) or True)
    for n in range(20):
        pipeline.offer(capture(n))
    pipeline.start()
    assert pipeline.stop(timeout_s=5)
    assert len(waits) == 10  # the first ten found ten or more behind them and did not wait
