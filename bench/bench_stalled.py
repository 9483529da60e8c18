#!/usr/bin/env python3
"""Stalled-clients benchmark: a normal call's latency with 1,000 stalled connections vs idle.

Run from the repository root: `python3 bench/bench_stalled.py [--quick] [--stalled N]`.

The same processes as `bench_wire.py` (fake upstream, real daemon). Measured in one run:
  1. p50/p99 of 100 KB non-streaming calls through the proxy, nothing else connected (idle);
  2. the same with N connections held open against the gateway, half silent and half stopped
     in the middle of a request head (a slow-loris client), plus the daemon's thread count;
  3. idle again, once they are closed: the baseline is the mean of 1 and 3, so a drift of the
     machine during the run does not pass for an effect of the stalled connections.
Target (issue 12): p50 with the stalled connections within 20 % of idle (ratio <= 1.20), and the
daemon's threads bounded (not one per stalled connection).
"""

import argparse
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_wire import ROOT, Target, latencies, pct, start_proxy, start_upstream  # noqa: E402


def threads(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None  # no /proc (macOS)
    return next(int(line.split()[1]) for line in text.splitlines() if line.startswith("Threads:"))


def stall(port: int, count: int) -> list[socket.socket]:
    socks = []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if i % 2:
            sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: sk-")
        socks.append(sock)
    return socks


def main() -> int:
    parser = argparse.ArgumentParser(description="latency with stalled connections vs idle, measured in one run")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    parser.add_argument("--stalled", type=int, default=1000, help="connections to hold open")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.stalled + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(args.stalled + 256, hard), hard))
    n = 100 if args.quick else 400
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        upstream, up_port = start_upstream(tmp)
        proxy, px_port, _ = start_proxy(tmp, up_port, ROOT)
        target = Target("opik-cipx", px_port, tls=False)
        stalled: list[socket.socket] = []
        try:
            before = latencies(target, 100_000, n)
            threads_idle = threads(proxy.pid)
            stalled = stall(px_port, args.stalled)
            time.sleep(1.0)  # the daemon has taken every one of them in
            threads_stalled = threads(proxy.pid)
            loaded = latencies(target, 100_000, n)
            for sock in stalled:
                sock.close()
            stalled = []
            after = latencies(target, 100_000, n)
        finally:
            for sock in stalled:
                sock.close()
            proxy.terminate()
            upstream.terminate()
            proxy.wait(30)
            upstream.wait(30)
    idle_p50 = (pct(before, 50) + pct(after, 50)) / 2
    ratio = pct(loaded, 50) / idle_p50
    for name, values in (("idle, before", before), (f"{args.stalled} stalled connections", loaded),
                         ("idle, after", after)):
        print(f"json 100 KB, {name:<26} p50 {pct(values, 50)*1e3:8.3f} ms  p99 {pct(values, 99)*1e3:8.3f} ms")
    print(f"daemon threads: idle {threads_idle}, with {args.stalled} stalled connections {threads_stalled}")
    print()
    print("targets:")
    print(f"  p50 with stalled connections / idle (mean of before and after) <= 1.20: {ratio:.3f}"
          f"  {'PASS' if ratio <= 1.2 else 'MISS'}")
    if threads_idle is not None:
        bounded = threads_stalled <= threads_idle + 4
        print(f"  threads bounded (idle + 4 at most): {threads_stalled}  {'PASS' if bounded else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
