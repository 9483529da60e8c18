#!/usr/bin/env python3
"""Wire benchmark: the same calls made directly to a fast fake upstream and through opik-cipx.

Run from the repository root: `python3 bench/bench_wire.py [--quick]`.

Three processes: this client, the fake upstream (`bench/fake_upstream.py`, plain HTTP on
loopback) and the real daemon (`python3 -m opik_cipx proxy`). Calls are paced `--gap-ms`
apart, direct and proxied alike: Claude Code never sends its next call the instant the last
one ends (a tool runs in between), and the daemon materializes each capture in such gaps.
The busy-materializer case removes that slack on purpose. Measured in one run:
  - p50/p99 latency of non-streaming calls with 100 KB and 1 MB request and response bodies;
  - per-SSE-event delay (receive time minus the upstream's send time stamped in the event);
  - 32 concurrent streams through the proxy (errors, event-delay p99);
  - 100 KB latency while the materializer works through a backlog of 1 MB captures (sent
    beforehand by another process, so no other wire traffic competes).
It prints the added latency and ratios against the direct baseline, and the targets.
"""

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def wait_file(path: Path, proc: subprocess.Popen, timeout_s: float = 15) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process exited early with {proc.returncode}")
        if path.exists() and path.stat().st_size:
            return path.read_text()
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {path}")


def start_upstream(tmp: Path) -> tuple[subprocess.Popen, int]:
    port_file = tmp / "upstream.port"
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "fake_upstream.py"), str(port_file)])
    return proc, int(wait_file(port_file, proc))


def start_proxy(tmp: Path, upstream_port: int) -> tuple[subprocess.Popen, int, int]:
    home = tmp / "cipx-home"
    env = {**os.environ, "CIPX_HOME": str(home), "CIPX_UPSTREAM_URL": f"http://127.0.0.1:{upstream_port}",
           "PYTHONPATH": str(ROOT), "OPIK_CIPX_BASE_URL": "", **json.loads(os.environ.get("BENCH_PROXY_ENV", "{}"))}
    proc = subprocess.Popen([sys.executable, "-m", "opik_cipx", "proxy", "--port", "0"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = json.loads(wait_file(home / "state.json", proc))
    return proc, state["ports"]["claude_code"], state["ports"]["admin"]


def call_json(conn: http.client.HTTPConnection, body: bytes, size: int) -> float:
    started = time.perf_counter()
    conn.request("POST", "/v1/messages", body=body, headers={"x-bench-size": str(size), "Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    elapsed = time.perf_counter() - started
    if resp.status != 200 or len(data) != size:
        raise RuntimeError(f"bad response {resp.status} {len(data)}")
    return elapsed


def latencies(port: int, size: int, n: int, gap_s: float) -> list[float]:
    body = json.dumps({"model": "claude-opus-4-8", "messages": [{"role": "user", "content": "x" * size}]}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for _ in range(5):
        call_json(conn, body, size)  # warm up connections and pools
    out = []
    for _ in range(n):
        time.sleep(gap_s)
        out.append(call_json(conn, body, size))
    conn.close()
    return out


def stream_delays(port: int, events: int, interval_ms: float) -> list[float]:
    """Seconds between the upstream stamping each event and this client reading it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/v1/messages", body=b'{"stream":true}',
                 headers={"x-bench-events": str(events), "x-bench-interval-ms": str(interval_ms)})
    resp = conn.getresponse()
    delays, buf = [], b""
    while True:
        piece = resp.read1(65536)
        now = time.time_ns()
        if not piece:
            break
        buf += piece
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if line.startswith(b"data: "):
                    delays.append((now - json.loads(line[6:])["t"]) / 1e9)
    conn.close()
    if len(delays) != events:
        raise RuntimeError(f"got {len(delays)} of {events} events")
    return delays


def concurrent_streams(port: int, streams: int, events: int, interval_ms: float) -> tuple[int, list[float]]:
    errors, delays, lock = [0], [], threading.Lock()

    def one():
        try:
            got = stream_delays(port, events, interval_ms)
            with lock:
                delays.extend(got)
        except Exception:
            with lock:
                errors[0] += 1

    threads = [threading.Thread(target=one) for _ in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors[0], delays


def fill_materializer_backlog(port: int, calls: int) -> None:
    """From a separate process, send `calls` 1 MB calls back to back and wait for them all."""
    code = (
        "import http.client,json,sys\n"
        "body=json.dumps({'model':'claude-opus-4-8','messages':[{'role':'user','content':'y'*1000000}]}).encode()\n"
        f"c=http.client.HTTPConnection('127.0.0.1',{port},timeout=60)\n"
        f"for _ in range({calls}):\n"
        "  c.request('POST','/v1/messages',body=body,headers={'x-bench-size':'1000000'}); c.getresponse().read()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def admin_stats(admin_port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
    conn.request("GET", "/admin/stats")
    return json.loads(conn.getresponse().read())


def lag_events(admin_port: int) -> int:
    return admin_stats(admin_port)["materializer"]["lag_events"]


def row(name: str, direct: list[float], proxied: list[float]) -> dict:
    d50, d99, p50, p99 = (pct(direct, 50), pct(direct, 99), pct(proxied, 50), pct(proxied, 99))
    print(f"{name:<28} direct p50 {d50*1e3:8.3f} ms  p99 {d99*1e3:8.3f} ms | proxied p50 {p50*1e3:8.3f} ms"
          f"  p99 {p99*1e3:8.3f} ms | added p50 {(p50-d50)*1e3:7.3f} ms  ratio p50 {p50/d50:5.2f}x")
    return {"direct_p50": d50, "direct_p99": d99, "proxied_p50": p50, "proxied_p99": p99}


def main() -> int:
    parser = argparse.ArgumentParser(description="direct vs through opik-cipx, measured in one run")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    parser.add_argument("--gap-ms", type=float, default=5.0, help="pause between non-streaming calls")
    args = parser.parse_args()
    gap_s = args.gap_ms / 1000
    n_small, n_large, n_events = (50, 10, 100) if args.quick else (400, 60, 400)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        upstream, up_port = start_upstream(tmp)
        proxy, px_port, admin_port = start_proxy(tmp, up_port)
        try:
            results = {}
            for size, n in ((100_000, n_small), (1_000_000, n_large)):
                results[size] = row(f"json {size // 1000} KB", latencies(up_port, size, n, gap_s),
                                    latencies(px_port, size, n, gap_s))
            direct_ev, proxied_ev = stream_delays(up_port, n_events, 2), stream_delays(px_port, n_events, 2)
            ev = row("sse per-event delay", direct_ev, proxied_ev)
            errors, conc = concurrent_streams(px_port, 32, 50 if args.quick else 200, 5)
            print(f"{'32 concurrent streams':<28} errors {errors}  event delay p50 {pct(conc, 50)*1e3:.3f} ms"
                  f"  p99 {pct(conc, 99)*1e3:.3f} ms")
            quiet = results[100_000]["proxied_p50"]
            fill_materializer_backlog(px_port, 100)
            lag_before = lag_events(admin_port)
            busy = latencies(px_port, 100_000, n_small, gap_s)
            lag_after = lag_events(admin_port)
            busy_p50 = pct(busy, 50)
            print(f"{'json 100 KB, materializer busy':<28} proxied p50 {busy_p50*1e3:8.3f} ms"
                  f"  vs quiet {quiet*1e3:8.3f} ms  ratio {busy_p50/quiet:5.2f}x"
                  f"  (materializer backlog {lag_before} -> {lag_after} captures)")
            counters = admin_stats(admin_port)["counters"]
            print(f"daemon counters: captured {counters['requests_captured']}, materialized "
                  f"{counters['events_materialized']}, dropped (queue full) {counters['requests_dropped_queue_full']}")
            added_small = (results[100_000]["proxied_p50"] - results[100_000]["direct_p50"]) * 1e3
            added_ev99 = (ev["proxied_p99"] - ev["direct_p99"]) * 1e3
            print()
            print("targets:")
            print(f"  added p50 at 100 KB <= 0.5 ms: {added_small:.3f} ms  {'PASS' if added_small <= 0.5 else 'MISS'}")
            print(f"  per-event delay p99 <= 1 ms (added over direct): {added_ev99:.3f} ms"
                  f"  {'PASS' if added_ev99 <= 1.0 else 'MISS'}")
            print(f"  zero errors at 32 concurrent streams: {errors}  {'PASS' if errors == 0 else 'MISS'}")
            ratio = busy_p50 / quiet
            print(f"  wire latency within 10% while materializer busy: {ratio:.3f}x  {'PASS' if ratio <= 1.10 else 'MISS'}")
        finally:
            proxy.terminate()
            proxy.wait(30)
            upstream.kill()
            upstream.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
