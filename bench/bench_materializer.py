#!/usr/bin/env python3
"""Materializer throughput on the recorded Claude Code captures (one thread, one core).

Run from the repository root: `python3 bench/bench_materializer.py [--seconds N]`.
Replays every Messages API exchange of the corpus through a fresh Materializer, scenario by
scenario in recorded order, until the time budget is spent, and reports captures/s and MB/s
of request bytes, plus the share of time per stage. Target: >= 200 captures/s.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from opik_cipx.materialize.attribution import categorize  # noqa: E402
from opik_cipx.materialize.materializer import Materializer, MaterializerConfig  # noqa: E402
from opik_cipx.materialize.pricing import load_price_table  # noqa: E402
from opik_cipx.materialize.response import summarize_response  # noqa: E402
from tests.claude_code_corpus import SCENARIOS, exchanges  # noqa: E402


def throughput(captures_by_scenario: list[list], config: MaterializerConfig, prices, seconds: float):
    """(captures, request bytes, records, elapsed) replaying scenarios in order until `seconds` pass."""
    count = size = records = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for scenario in captures_by_scenario:
            materializer = Materializer(config, prices)  # fresh session state per pass
            for capture in scenario:
                records += len(materializer.materialize(capture))
                count += 1
                size += len(capture.request_body)
    return count, size, records, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    corpus = [[c for _, c in exchanges(s) if c.path.startswith("/v1/messages")] for s in SCENARIOS]
    flat = [c for scenario in corpus for c in scenario]
    big = [c for c in flat if len(c.request_body) >= 70_000]
    prices = load_price_table()
    with tempfile.TemporaryDirectory() as tmp:
        config = MaterializerConfig("claude-code", True, 512_000, Path(tmp) / "sessions", Path(tmp) / "none.json")
        count, size, records, elapsed = throughput(corpus, config, prices, args.seconds)
        big_count, _, _, big_elapsed = throughput([big], config, prices, args.seconds / 2)
    rate, big_rate = count / elapsed, big_count / big_elapsed
    print(f"corpus: {len(flat)} Messages API captures, mean request {size / count / 1000:.1f} KB")
    print(f"materialize: {rate:,.0f} captures/s, {size / elapsed / 1e6:.1f} MB/s of requests, "
          f"{records / count:.2f} records per capture, {1000 / rate:.2f} ms per capture")
    print(f"real-size main-loop requests (>= 70 KB, {len(big)} of them): {big_rate:,.0f} captures/s")
    for name, fn in (("categorize", lambda c: categorize(c.request_body)), ("response", summarize_response)):
        t0 = time.perf_counter()
        for capture in flat:
            fn(capture)
        per = (time.perf_counter() - t0) / len(flat)
        print(f"  {name:<11} {per * 1000:.2f} ms per capture ({per * rate:.0%} of the time)")
    print(f"target >= 200 captures/s of real-size requests: {'PASS' if big_rate >= 200 else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
