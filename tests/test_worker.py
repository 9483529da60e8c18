"""The worker model: items in order, wake-ups and idle steps on the worker's clock, one stop
protocol (queued items first, then `finish`, a bounded wait), one guard that logs and counts."""

import logging
import threading

from opik_cipx.stats import Counters
from opik_cipx.worker import Worker
from tests.conftest import wait_for
from tests.fake_clock import FakeClock

log = logging.getLogger("opik_cipx.test_worker")


class Recorder(Worker):
    def __init__(self, clock: FakeClock, idle_s: float | None = None, gate: threading.Event | None = None):
        super().__init__("recorder", Counters(), log, clock, idle_s=idle_s)
        self.seen: list = []
        self.finished_with: list | None = None
        self.gate = gate

    def begin(self):
        return None  # no first step of its own: the first comes with an item, a wake-up or the idle time

    def step(self, item):
        if self.gate is not None:
            self.gate.wait(10)
        if item == "boom":
            raise ValueError("a bug")
        self.seen.append(item)
        return None

    def finish(self):
        self.finished_with = list(self.seen)


def test_items_in_order_then_idle_steps_on_the_workers_clock():
    clock = FakeClock(10**18)
    worker = Recorder(clock, idle_s=5.0)
    worker.start()
    for n in range(3):
        worker.put(n)
    wait_for(lambda: worker.seen == [0, 1, 2], what="the items")
    wait_for(lambda: clock.waiting(worker.name) == 5.0, what="the idle wait")
    clock.advance(5.0)
    wait_for(lambda: worker.seen == [0, 1, 2, None], what="an idle step once the idle time passed")
    worker.wake()
    wait_for(lambda: worker.seen == [0, 1, 2, None, None], what="a step on a wake-up")
    assert worker.stop(5) and worker.finished


def test_stop_takes_every_queued_item_first_then_finishes_and_waits_a_bounded_time():
    clock = FakeClock(10**18)
    gate = threading.Event()
    worker = Recorder(clock, gate=gate)
    worker.start()
    for n in range(4):
        worker.put(n)
    stopped = []
    stopper = threading.Thread(target=lambda: stopped.append(worker.stop(30)))
    stopper.start()
    wait_for(lambda: clock.waiting(stopper.name) is not None, what="stop waiting for the thread")
    assert worker.stopping and not worker.put(99, limit=0)
    clock.advance(31)  # the step is stuck: the bounded wait ends on the clock
    stopper.join(5)
    assert stopped == [False] and not worker.finished
    gate.set()
    assert worker.stop(5)  # asked again: the same stop, finished now
    assert worker.seen == [0, 1, 2, 3] and worker.finished_with == [0, 1, 2, 3]


def test_a_failing_step_is_logged_and_counted_and_the_worker_goes_on(caplog):
    worker = Recorder(FakeClock(10**18))
    worker.start()
    with caplog.at_level(logging.ERROR, logger=log.name):
        for item in ("a", "boom", "b"):
            worker.put(item)
        assert worker.stop(5)
    assert worker.seen == ["a", "b"] and worker.counters.get("panics_recovered") == 1
    [record] = [r for r in caplog.records if r.name == log.name]
    assert "cipx-recorder: step failed; going on" in record.getMessage() and record.exc_info[0] is ValueError


def test_a_rest_ends_at_its_time_or_at_once_on_stop():
    clock = FakeClock(10**18)
    worker = Recorder(clock)
    results = []

    def pause_twice():
        results.append(worker.rest(2.0))
        results.append(worker.rest(3600.0))

    thread = threading.Thread(target=pause_twice, name="pauser")
    thread.start()
    wait_for(lambda: clock.waiting("pauser") == 2.0, what="the first pause")
    clock.advance(2.0)
    wait_for(lambda: results == [False] and clock.waiting("pauser") == 3600.0, what="the second pause")
    assert worker.stop(1)  # never started: stopped at once, and the pause ends
    thread.join(5)
    assert results == [False, True]
