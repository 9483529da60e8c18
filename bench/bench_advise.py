#!/usr/bin/env python3
"""`opik-cipx advise` latency on a ledger of 100,000 calls (target: 2 s, the command included).

Run from the repository root: `python3 bench/bench_advise.py [--calls N] [--keep DIR]` (a ledger
already in DIR is timed as it is).
Builds the ledger as `bench_report.py` does (the recorded corpus' calls copied across 100 days
through the real writer, sessions of a few hundred calls), then times `advise` in-process (median
of 3) over the default period (7 days), 30 days and all 100 days, and the whole command as a
subprocess, against a baseline measured in the same run: one full scan of the calls table.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_report import corpus_entries, synthetic, timed  # noqa: E402

from opik_cipx.ledger.advice import advise  # noqa: E402
from opik_cipx.ledger.db import open_reader  # noqa: E402
from opik_cipx.ledger.queries import Selection  # noqa: E402
from opik_cipx.ledger.reprice import Repricer  # noqa: E402
from opik_cipx.ledger.store import Ledger  # noqa: E402
from opik_cipx.materialize.pricing import load_price_table  # noqa: E402

TARGET_S = 2.0
PERIODS = (("7 days (the default)", 7), ("30 days", 30), ("all 100 days", 101))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=100)
    parser.add_argument("--keep", help="build the ledger in this CIPX_HOME and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(args.keep) if args.keep else Path(tmp) / "home"
        home.mkdir(parents=True, exist_ok=True)
        path = home / "ledger.db"
        if path.exists():  # kept by an earlier run (--keep): timed as it is
            conn = open_reader(path)
            now = conn.execute("SELECT max(started_at_ns) FROM calls").fetchone()[0] + 60 * 10**9
            count, built = conn.execute("SELECT count(*) FROM calls").fetchone()[0], 0.0
        else:
            now = time.time_ns()
            fake = synthetic(corpus_entries(Path(tmp)), args.calls, args.days, now)
            ledger = Ledger(path, retention_days=400)
            started = time.perf_counter()
            for i in range(0, len(fake), 1000):
                ledger.write_entries(fake[i:i + 1000])
            built, count = time.perf_counter() - started, len(fake)
            ledger.close()
            conn = open_reader(path)
        size_mb = sum(os.path.getsize(p) for p in home.glob("ledger.db*")) / 1e6
        rows = conn.execute("SELECT (SELECT count(*) FROM call_parts), (SELECT count(*) FROM session_parts)").fetchone()
        print(f"ledger: {count:,} calls over {args.days} days, {size_mb:.0f} MB, built in {built:.1f} s; "
              f"{rows[0]:,} call_parts rows, {rows[1]:,} session_parts rows")
        baseline = timed(lambda: conn.execute("SELECT count(*), total(cost_usd) FROM calls").fetchone())
        print(f"baseline (full scan of calls): {baseline * 1000:.1f} ms")
        repricer = Repricer(load_price_table())
        worst = 0.0
        for label, days in PERIODS:
            selection = Selection(since_ns=now - days * 86400 * 10**9)
            elapsed = timed(lambda: advise(conn, selection, Repricer(repricer.table), now, home / "captures"))  # noqa: B023
            found = advise(conn, selection, repricer, now, home / "captures")
            worst = max(worst, elapsed)
            print(f"  advise over {label}: {elapsed * 1000:7.1f} ms ({elapsed / baseline:5.1f}x baseline), "
                  f"{len(found.findings)} findings")
        conn.close()
        env = {**os.environ, "CIPX_HOME": str(home), "PYTHONPATH": str(ROOT)}
        for extra in ((), ("--since", f"{args.days + 1}d")):
            command = [sys.executable, "-m", "opik_cipx", "advise", "--json", *extra]
            elapsed = timed(lambda: subprocess.run(command, env=env, capture_output=True, check=True))  # noqa: B023
            worst = max(worst, elapsed)
            print(f"  `opik-cipx advise --json {' '.join(extra)}` as a command: {elapsed * 1000:.0f} ms")
        print(f"slowest: {worst * 1000:.0f} ms (target {TARGET_S * 1000:.0f} ms): "
              f"{'ok' if worst < TARGET_S else 'MISSED'}")
    return 0 if worst < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
