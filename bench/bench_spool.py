#!/usr/bin/env python3
"""Spool and shipper benchmark: append throughput with group commit, drain throughput to Opik.

Run from the repository root: `python3 bench/bench_spool.py [--quick] [--padding BYTES]`.

1. Append: one thread (as the materializer) appends captures of three records (a trace, an llm
   span, a tool span, with `--padding` bytes of text each) as fast as it can, with the daemon's
   default settings; measured until the last one is acknowledged (written and fsynced). When
   the in-memory bound is hit the bench waits for the writer instead of counting drops, so the
   figure is the writer's sustained rate. Reports records/s, fsyncs and the latency of
   `append` itself, which must not include a disk flush.
2. Drain: a spool prefilled with the same records is shipped by the real Shipper to the fake
   Opik of the tests (`tests/fake_opik.py`: real HTTP on loopback, gzip, every request
   checked), in the same process, until Opik has every record.
"""

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from opik_cipx.ship.destination import Destination  # noqa: E402
from opik_cipx.ship.shipper import Shipper  # noqa: E402
from opik_cipx.stats import Counters  # noqa: E402
from opik_cipx.store.spool import Spool  # noqa: E402
from tests.fake_opik import API_KEY, WORKSPACE, FakeOpik  # noqa: E402
from tests.spool_driver import synthetic_capture  # noqa: E402

MIB = 1024 * 1024


def new_spool(directory: Path) -> Spool:
    """A spool with the daemon's default settings."""
    return Spool(directory, max_bytes=512 * MIB, segment_bytes=8 * MIB, inmem_max=10_000,
                 inmem_max_bytes=64 * MIB, commit_interval_s=0.2)


def fill(spool: Spool, captures: list[list[dict]]) -> tuple[list[float], int]:
    """Append every capture, waiting for the writer whenever the in-memory bound is hit.

    Returns the latency of each `append` call and how many times the bound was hit.
    """
    latencies, full, ticket = [], 0, 0
    for records in captures:
        while True:
            t0 = time.perf_counter()
            accepted = spool.append(records)
            latencies.append(time.perf_counter() - t0)
            if accepted is not None:
                ticket = accepted
                break
            full += 1
            spool.wait_durable(ticket, 10)
    assert spool.wait_durable(ticket, 120), "records were not acknowledged"
    return latencies, full


def bench_append(directory: Path, captures: list[list[dict]]) -> None:
    spool = new_spool(directory)
    spool.start()
    started = time.perf_counter()
    latencies, full = fill(spool, captures)
    elapsed = time.perf_counter() - started
    wal = spool.section()
    spool.close(10)
    count = sum(map(len, captures))
    size = sum(p.stat().st_size for p in directory.glob("*.jsonl"))
    latencies.sort()
    print(f"append: {count} records ({size / MIB:.1f} MiB) acknowledged in {elapsed:.2f}s "
          f"= {count / elapsed:,.0f} records/s, {size / MIB / elapsed:.1f} MiB/s")
    print(f"        {wal['syncs']} fsyncs ({count / max(wal['syncs'], 1):,.0f} records each); "
          f"in-memory bound ({spool.inmem_max} records) hit {full} times")
    print(f"        append() call: p50 {statistics.median(latencies) * 1e6:.0f} us, "
          f"p99 {latencies[int(len(latencies) * 0.99)] * 1e6:.0f} us, max {latencies[-1] * 1e3:.1f} ms")


def bench_drain(directory: Path, captures: list[list[dict]]) -> None:
    prefill = new_spool(directory)
    prefill.start()
    fill(prefill, captures)
    prefill.close(60)
    ids = {r["body"]["id"] for records in captures for r in records}
    with FakeOpik() as opik:
        spool = new_spool(directory)
        shipper = Shipper(spool, Destination(opik.url, API_KEY, WORKSPACE, "bench"), Counters())
        spool.start()
        started = time.perf_counter()
        shipper.start()
        while len(opik.received) < len(ids):
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        shipper.stop(10)
        spool.close(10)
        assert not opik.violations, opik.violations[:3]
        sent = sum(r.raw_bytes for r in opik.requests)
        print(f"drain:  {len(ids)} records shipped in {elapsed:.2f}s = {len(ids) / elapsed:,.0f} records/s "
              f"in {len(opik.requests)} requests ({sent / MIB:.1f} MiB gzip on the wire)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer records")
    parser.add_argument("--padding", type=int, default=1000, help="text bytes per record body")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the bound being hit is expected here
    n = 2_000 if args.quick else 10_000
    captures = [synthetic_capture(padding=args.padding) for _ in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        bench_append(Path(tmp) / "append", captures)
        bench_drain(Path(tmp) / "drain", captures)


if __name__ == "__main__":
    main()
