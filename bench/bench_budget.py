#!/usr/bin/env python3
"""The budget guard's cost on the wire, measured alone: `Guard.check` on a billable request, with
every spend cap set (and project caps), the totals of a heavy month and thousands of sessions in
memory, the headers as the gateway holds them (Claude Code's recorded ones, parsed by
`http.client` as `http.server` does). Also what the work side pays per call (`add`) and the
wire per ended call (`finished`). Issue 23's target: <= 0.1 ms added at p50.

Run from the repository root: `python3 bench/bench_budget.py [--calls N]`. Each figure is the
time of one call, p50 and p99 over `--calls` calls, timed in batches of 100 (the clock's own
cost spread over them). `bench/bench_wire.py --cap` measures the whole wire with a cap set.
"""

import argparse
import http.client
import io
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from opik_cipx.caps import parse_budget  # noqa: E402
from opik_cipx.wire.budget import Guard, Seed, Spend  # noqa: E402
from tests.claude_code_corpus import request  # noqa: E402

BATCH = 100
BUDGET = {"session_usd": 1e9, "day_usd": 1e9, "week_usd": 1e9, "month_usd": 1e9,
          "projects": {f"/home/dev/code/p{n}": {"day_usd": 1e9, "session_usd": 1e9} for n in range(20)}}


def recorded_headers() -> http.client.HTTPMessage:
    """A recorded main-loop request's headers, as the gateway's `self.headers`."""
    raw = "".join(f"{name}: {value}\r\n" for name, value in request("tools", "003")["headers"].items()) + "\r\n"
    return http.client.parse_headers(io.BytesIO(raw.encode("latin-1")))


def heavy_guard(now_ns: int, sessions: int) -> Guard:
    """Caps on every scope, 31 days of spend in 20 projects, `sessions` sessions."""
    day_ns = 86400 * 10**9
    days = tuple((time.strftime("%Y-%m-%d", time.localtime((now_ns - n * day_ns) / 1e9)), f"/home/dev/code/p{p}",
                  3.0) for n in range(31) for p in range(20))
    seeded = tuple((f"{n:08x}-0000-4000-8000-000000000000", f"/home/dev/code/p{n % 20}", 1.5, now_ns)
                   for n in range(sessions))
    guard = Guard(parse_budget(BUDGET))
    guard.seed(Seed(days, seeded, 2.0))
    return guard


def timed(fn, calls: int) -> tuple[float, float]:
    """(p50, p99) microseconds of one call of `fn`."""
    per_call = []
    for _ in range(calls // BATCH):
        started = time.perf_counter_ns()
        for _ in range(BATCH):
            fn()
        per_call.append((time.perf_counter_ns() - started) / BATCH / 1e3)
    per_call.sort()
    return per_call[len(per_call) // 2], per_call[int(len(per_call) * 0.99)]


def main() -> int:
    parser = argparse.ArgumentParser(description="the budget guard's cost per call")
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--sessions", type=int, default=5000)
    args = parser.parse_args()
    now = time.time_ns()
    guard = heavy_guard(now, args.sessions)
    headers = recorded_headers()
    session = headers["x-claude-code-session-id"]
    guard.add([Spend(now, 0.5, session, "/home/dev/code/p3")])  # this session works in a capped project
    assert guard.check("POST", "/v1/messages?beta=true", headers) is None
    billable = "/v1/messages?beta=true"
    rows = [
        ("check, a billable request (POST /v1/messages)", lambda: guard.check("POST", billable, headers)),
        ("check, a free request (count_tokens)", lambda: guard.check("POST", "/v1/messages/count_tokens", headers)),
        ("finished (the wire, per ended call)", lambda: guard.finished("c", "POST", "/v1/messages", False)),
        ("add (the work, per call the ledger wrote)", lambda: guard.add([Spend(now, 0.0, session, None, "c")])),
        ("baseline: the session header alone", lambda: headers.get("x-claude-code-session-id")),
    ]
    print(f"guard: every cap set, 20 project caps, 31 days x 20 projects of spend, {args.sessions} sessions; "
          f"{args.calls} calls each, timed in batches of {BATCH}")
    for name, fn in rows:
        p50, p99 = timed(fn, args.calls)
        print(f"  {name:<48} p50 {p50:7.2f} us  p99 {p99:7.2f} us")
    p50, _ = timed(rows[0][1], args.calls)
    print(f"\ntarget: check <= 100 us at p50: {p50:.2f} us  {'PASS' if p50 <= 100 else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
