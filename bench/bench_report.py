#!/usr/bin/env python3
"""`opik-cipx report` latency on a ledger of 100,000 calls (target: every report under 0.5 s).

Run from the repository root: `python3 bench/bench_report.py [--calls N] [--keep DIR]`.
Builds a ledger through the real writer from the recorded corpus' calls (materialized once),
copied across 100 days (about 1,000 calls a day, sessions of a few hundred calls), then times
each report in-process (median of 5), the dashboard's home and session pages, and the whole
command as a subprocess, against a baseline measured in the same run: one full scan of the
calls table (`SELECT count(*), total(cost_usd) FROM calls`). Also prints the write cost per
call, one transaction per call as the daemon writes.
"""

import argparse
import dataclasses
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from opik_cipx.ledger.db import open_reader  # noqa: E402
from opik_cipx.ledger.entry import Entry, ledger_entry  # noqa: E402
from opik_cipx.ledger.periods import local_day  # noqa: E402
from opik_cipx.ledger.queries import Selection, parse_by, report  # noqa: E402
from opik_cipx.ledger.store import Ledger  # noqa: E402
from opik_cipx.views.dashboard import Dashboard  # noqa: E402
from tests.claude_code_corpus import materialized  # noqa: E402

DAY_NS = 86_400 * 10**9
TARGET_S = 0.5
REPORTS = ("day", "model", "session", "project,branch", "day,bucket", "kind,agent", "mcp", "skill", "tool",
           "week,model")


def corpus_entries(tmp: Path) -> list[Entry]:
    return [ledger_entry(r.call) for _, _, c, r in materialized(tmp / "sessions") if r.call]


def synthetic(entries: list[Entry], calls: int, days: int, now_ns: int) -> list[Entry]:
    """`calls` entries copied from the corpus over the last `days` days, each copy of the corpus
    at a random moment (fixed seed), its calls a few seconds apart; a session spans 20 copies
    of the corpus (a few hundred calls)."""
    out = []
    start = now_ns - days * DAY_NS
    rng = random.Random(10)
    copies = -(-calls // len(entries))
    starts = sorted(start + rng.randrange(days * DAY_NS - len(entries) * 10**10) for _ in range(copies))
    for n in range(calls):
        copy, base = divmod(n, len(entries))
        entry = entries[base]
        at = starts[copy] + base * 10**10
        session = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{entry.call['session_id']}/{copy // 20}"))
        call = {**entry.call, "capture_id": f"bench-{n}", "started_at_ns": at, "ended_at_ns": at + 10**9,
                "day": local_day(at), "session_id": session}
        out.append(dataclasses.replace(entry, call=call))
    return out


def timed(fn, runs: int = 5) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=100)
    parser.add_argument("--keep", help="build the ledger in this CIPX_HOME and keep it (e.g. for the dashboard)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(args.keep) if args.keep else Path(tmp) / "home"
        home.mkdir(parents=True, exist_ok=True)
        entries = corpus_entries(Path(tmp))
        fake = synthetic(entries, args.calls, args.days, int(time.time() * 1e9))
        path = home / "ledger.db"
        ledger = Ledger(path, retention_days=400)
        started = time.perf_counter()
        for i in range(0, len(fake) - 500, 1000):
            ledger.write_entries(fake[i:i + 1000])
        built = time.perf_counter() - started
        started = time.perf_counter()
        for entry in fake[-500:]:
            ledger.write_entries([entry])  # one transaction per call, as the daemon writes
        per_call_ms = (time.perf_counter() - started) / 500 * 1000
        ledger.close()
        size_mb = sum(os.path.getsize(p) for p in home.glob("ledger.db*")) / 1e6
        print(f"ledger: {len(fake):,} calls over {args.days} days from {len(entries)} corpus calls, "
              f"{size_mb:.0f} MB; built in {built:.1f} s; one call per transaction: {per_call_ms:.2f} ms")

        conn = open_reader(path)
        baseline = timed(lambda: conn.execute("SELECT count(*), total(cost_usd) FROM calls").fetchone())
        print(f"baseline (full scan of calls): {baseline * 1000:.1f} ms")
        week = Selection(since_ns=int((time.time() - 7.5 * 86400) * 1e9))
        worst = 0.0
        for by in REPORTS:
            for label, selection in (("", Selection()), (" --since 7.5d", week)):
                elapsed = timed(lambda: report(conn, parse_by(by), selection))  # noqa: B023 - called at once
                worst = max(worst, elapsed)
                print(f"  report --by {by}{label}: {elapsed * 1000:7.1f} ms  ({elapsed / baseline:5.1f}x baseline)")
        conn.close()
        pages = Dashboard(path, home / "captures")
        for page in ("/", f"/session/{fake[-1].call['session_id']}"):
            elapsed = timed(lambda: pages.route(page))  # noqa: B023 - called at once
            worst = max(worst, elapsed)
            print(f"  dashboard {page.split('/')[1] or 'home'} page: {elapsed * 1000:7.1f} ms  "
                  f"({elapsed / baseline:5.1f}x baseline)")
        env = {**os.environ, "CIPX_HOME": str(home), "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-m", "opik_cipx", "report", "--by", "day,bucket", "--json"]
        elapsed = timed(lambda: subprocess.run(command, env=env, capture_output=True, check=True), runs=3)
        worst = max(worst, elapsed)
        print(f"  `opik-cipx report --by day,bucket --json` as a command: {elapsed * 1000:.0f} ms "
              f"({elapsed / baseline:.1f}x baseline)")
        print(f"slowest: {worst * 1000:.0f} ms (target {TARGET_S * 1000:.0f} ms): "
              f"{'ok' if worst < TARGET_S else 'MISSED'}")
    return 0 if worst < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
