#!/usr/bin/env python3
"""Materializer benchmarks: throughput on the recorded corpus, cost per call of a growing session,
and how long off-wire work holds the interpreter (what a wire thread waits for).

Run from the repository root: `python3 bench/bench_materializer.py [--seconds N]`.
- corpus: every Messages API exchange of the recorded corpus through a fresh Materializer,
  scenario by scenario in recorded order, until the time budget is spent: captures/s and MB/s of
  request bytes. Target: >= 200 captures/s of real-size (>= 70 KB) requests.
- growing session (bench/claude_session.py): calls 1..200 of one session whose body grows 20x
  (80 KB to 1.7 MB). Target: the time per call stays flat, median of the last ten calls <= 2x
  the median of calls 2-11 (call 1 reads everything, as the first call after a start does).
- holds: the materializer (spool lines included) and the capture log's encoding work through the
  session's 1-2 MB captures, warm (each after the one before, as in a session) and cold (each
  read from scratch, as after a restart); every C call on that thread is timed in thread CPU time
  (`sys.setprofile`, `time.thread_time_ns`: the OS running another process is not a hold),
  leaving out those that release the GIL (zlib, file I/O). Repeated three times, a call site's
  hold is the least of its three longest. Target: none longer than 1 ms. Besides, a thread that sleeps 100 us in a
  loop while that work runs
  reports how late it wakes (what a wire thread waiting for bytes sees), next to the same
  thread on an idle interpreter.
"""

import argparse
import gc
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from claude_session import captures, growing_session  # noqa: E402

from opik_cipx.daemon import GIL_SWITCH_INTERVAL_S  # noqa: E402
from opik_cipx.materialize.materializer import Materializer, MaterializerConfig  # noqa: E402
from opik_cipx.materialize.pricing import load_price_table  # noqa: E402
from opik_cipx.store.captures import encode_member  # noqa: E402
from opik_cipx.store.spool_lines import encode  # noqa: E402
from tests.claude_code_corpus import SCENARIOS, exchanges  # noqa: E402

RELEASES_GIL = ("compress", "decompress", "flush", "read", "write", "sleep", "acquire", "wait")


def throughput(captures_by_scenario: list[list], config: MaterializerConfig, prices, seconds: float):
    """(captures, request bytes, records, elapsed) replaying scenarios in order until `seconds` pass."""
    count = size = records = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for scenario in captures_by_scenario:
            materializer = Materializer(config, prices)  # fresh session state per pass
            for capture in scenario:
                records += len(materializer.materialize(capture).records)
                count += 1
                size += len(capture.request_body)
    return count, size, records, time.perf_counter() - started


def per_call(session: list, config: MaterializerConfig, prices) -> list[float]:
    materializer = Materializer(config, prices)
    out = []
    for capture in session:
        started = time.perf_counter()
        materializer.materialize(capture)
        out.append(time.perf_counter() - started)
    return out


def off_wire_work(session: list, config: MaterializerConfig, prices, cold: bool) -> None:
    """What the capture and materializer threads do with each capture of `session` (freezing what
    exists out of the garbage collector's reach as the daemon's follower does on a quiet wire:
    after each capture; its pauses freeze only when they waited for the wire, which here is idle)."""
    materializer = Materializer(config, prices)
    for capture in session:
        if cold:
            materializer = Materializer(config, prices)
        encode_member(capture, time.time_ns())
        for record in materializer.materialize(capture).records:
            encode(record)
        gc.freeze()


def longest_holds(work) -> dict[tuple[str, str], int]:
    """Longest duration (ns of this thread's CPU time, so not the time the OS ran something else)
    of each C call site that keeps the GIL, while `work()` runs."""
    longest: dict[tuple[str, str], int] = {}
    stack: list[tuple[object, int]] = []

    def profile(frame, event, arg):
        if event == "c_call":
            stack.append((arg, time.thread_time_ns()))
        elif event in ("c_return", "c_exception") and stack:
            fn, started = stack.pop()
            name = getattr(fn, "__qualname__", str(fn))
            if name.rsplit(".", 1)[-1] in RELEASES_GIL:
                return
            site = (name, f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}")
            longest[site] = max(longest.get(site, 0), time.thread_time_ns() - started)

    sys.setprofile(profile)
    try:
        work()
    finally:
        sys.setprofile(None)
    return longest


def stalls(work) -> list[int]:
    """How late (ns) a thread sleeping 100 us wakes, each time, while `work()` runs."""
    late: list[int] = []
    done = threading.Event()

    def wire() -> None:
        while not done.is_set():
            started = time.perf_counter_ns()
            time.sleep(0.0001)
            late.append(time.perf_counter_ns() - started - 100_000)

    thread = threading.Thread(target=wire)
    thread.start()
    try:
        work()
    finally:
        done.set()
        thread.join()
    return late


def describe(late: list[int]) -> str:
    ordered = sorted(late)
    at = lambda p: ordered[min(len(ordered) - 1, int(p * len(ordered)))] / 1e3  # noqa: E731
    return (f"p50 {at(0.5):6.0f} us  p99 {at(0.99):6.0f} us  p99.9 {at(0.999):6.0f} us  max {ordered[-1] / 1e3:6.0f} us"
            f"  ({len(ordered)} wake-ups)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)  # as the daemon runs
    corpus = [[c for _, c in exchanges(s) if c.path.startswith("/v1/messages")] for s in SCENARIOS]
    flat = [c for scenario in corpus for c in scenario]
    big = [c for c in flat if len(c.request_body) >= 70_000]
    prices = load_price_table()
    bodies = growing_session(200, 20)
    session = captures(bodies)
    with tempfile.TemporaryDirectory() as tmp:
        config = MaterializerConfig("claude-code", True, 256 * 1024, Path(tmp) / "sessions", Path(tmp) / "none.json")
        count, size, records, elapsed = throughput(corpus, config, prices, args.seconds)
        big_count, _, _, big_elapsed = throughput([big], config, prices, args.seconds / 2)
        gc.freeze()  # as the daemon does once started
        times = per_call(session, config, prices)
        late = session[100:]
        holds = []
        for _ in range(3):
            holds.append(longest_holds(lambda: off_wire_work(late, config, prices, cold=False)))
            holds.append(longest_holds(lambda: off_wire_work(late[-8:], config, prices, cold=True)))
        idle = stalls(lambda: time.sleep(2))
        busy = stalls(lambda: off_wire_work(late, config, prices, cold=False))
        busy_cold = stalls(lambda: off_wire_work(late[-8:], config, prices, cold=True))
    rate, big_rate = count / elapsed, big_count / big_elapsed
    print(f"corpus: {len(flat)} Messages API captures, mean request {size / count / 1000:.1f} KB")
    print(f"materialize: {rate:,.0f} captures/s, {size / elapsed / 1e6:.1f} MB/s of requests, "
          f"{records / count:.2f} records per capture, {1000 / rate:.2f} ms per capture")
    print(f"real-size main-loop requests (>= 70 KB, {len(big)} of them): {big_rate:,.0f} captures/s")
    first, last = statistics.median(times[1:11]), statistics.median(times[-10:])
    print(f"growing session: body {len(bodies[0]) / 1e3:.0f} KB -> {len(bodies[-1]) / 1e6:.2f} MB "
          f"({len(bodies[-1]) / len(bodies[0]):.1f}x) over {len(bodies)} calls; per call: call 1 "
          f"{times[0] * 1e3:.2f} ms, calls 2-11 {first * 1e3:.2f} ms, calls 191-200 {last * 1e3:.2f} ms "
          f"(last/first {last / first:.2f}); whole session {sum(times):.2f} s")
    sites = {site for run in holds for site in run}
    for_site = {site: min(run.get(site, 0) for run in holds[0::2]) for site in sites}
    for_site.update({site: max(for_site[site], min(run.get(site, 0) for run in holds[1::2])) for site in sites})
    worst = sorted(for_site.items(), key=lambda item: -item[1])[:3]
    print("longest GIL holds off the wire (1-2 MB captures, warm and cold): "
          + ", ".join(f"{ns / 1e3:.0f} us {name} ({where})" for (name, where), ns in worst))
    print(f"a thread sleeping 100 us wakes late by: idle         {describe(idle)}")
    print(f"                                        busy (warm)  {describe(busy)}")
    print(f"                                        busy (cold)  {describe(busy_cold)}")
    print()
    print("targets:")
    print(f"  >= 200 captures/s of real-size requests: {big_rate:,.0f}  {'PASS' if big_rate >= 200 else 'FAIL'}")
    print(f"  growing session, time per call last/first <= 2: {last / first:.2f}  "
          f"{'PASS' if last / first <= 2 else 'FAIL'}")
    longest = worst[0][1] / 1e6
    print(f"  no GIL hold off the wire longer than 1 ms: {longest:.3f} ms  {'PASS' if longest <= 1 else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
