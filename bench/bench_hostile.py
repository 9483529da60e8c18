#!/usr/bin/env python3
"""Hostile and huge clients: the figures issue 22 measured, for a before and after in one script.

Run from the repository root: `python3 bench/bench_hostile.py [--daemon-from CHECKOUT] [--quick]`.
Each part starts a daemon of its own at its defaults (the daemon of `--daemon-from`, e.g. a
`git worktree` of an older commit), against the test suite's fake Anthropic over TLS:
  1. stalled bodies: 300 connections send a whole request head and a body that never comes; then
     40 calls of 100 KB on new connections and 5 on a connection opened before: their statuses,
     p50 against the same calls before the attack, the daemon's threads before and during;
  2. huge responses: one SSE response of 100 MB, then one of 300 MB (`--quick`: 100 MB only): the
     daemon's peak RSS (VmHWM) and its RSS once the call is materialized;
  3. big requests: 20 concurrent requests of 40 MB: their statuses, the daemon's peak RSS when
     every one is answered, then once the materializer is done (at most 2 minutes);
  4. the peer check of this checkout (wire/peer.py), in this process: one owner lookup by
     netlink and by /proc/net/tcp, with 0, 1,000 and 3,000 connections open.
Linux only (threads and RSS come from /proc).
"""

import argparse
import http.client
import json
import os
import resource
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.conftest import DaemonProcess  # noqa: E402
from tests.fake_anthropic import FakeAnthropic, sse_reply  # noqa: E402

CALL = json.dumps({"model": "claude-opus-4-8", "messages": [{"role": "user", "content": "x" * 100_000}]}).encode()


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def mib(value: str) -> float:
    return int(value.split()[0]) / 1024


def call(port: int, conn: http.client.HTTPConnection | None = None, body: bytes = CALL) -> tuple[object, float]:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    try:
        conn.request("POST", "/v1/messages", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        outcome = resp.status
    except (OSError, http.client.HTTPException) as exc:
        outcome = type(exc).__name__
    if own:
        conn.close()
    return outcome, time.perf_counter() - started


def p50_ms(results: list[tuple[object, float]]) -> str:
    times = sorted(elapsed for outcome, elapsed in results if outcome == 200)
    return f"{times[len(times) // 2] * 1e3:.1f} ms" if times else "-"


def wait_materialized(daemon: DaemonProcess, calls: int, limit_s: float) -> dict:
    deadline = time.monotonic() + limit_s
    while True:
        stats = daemon.stats()
        counters = stats["counters"]
        done = counters["events_materialized"] + counters["materializer_errors_total"] >= calls
        if (done and stats["materializer"]["lag_events"] == 0) or time.monotonic() > deadline:
            return stats
        time.sleep(0.5)


def stalled_bodies(daemon: DaemonProcess, count: int) -> None:
    pid, port = daemon.proc.pid, daemon.port
    call(port)
    idle = [call(port) for _ in range(40)]
    older = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    call(port, older)
    threads_before = status(pid)["Threads"]
    stalled = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n")
        stalled.append(sock)
    time.sleep(2)  # the daemon takes every one of them in
    threads_during = status(pid)["Threads"]
    fresh = [call(port) for _ in range(40)]
    kept = [call(port, older) for _ in range(5)]
    for sock in stalled:
        sock.close()
    print(f"1. {count} stalled bodies: threads {threads_before} -> {threads_during}; 40 calls on new connections "
          f"{dict(Counter(outcome for outcome, _ in fresh))}, p50 {p50_ms(fresh)} (before the attack {p50_ms(idle)}); "
          f"5 on a connection opened before {dict(Counter(outcome for outcome, _ in kept))}")


def sse_message(total: int) -> list[bytes]:
    start = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
             b'"role":"assistant","model":"claude-opus-4-8","content":[],"usage":{"input_tokens":10,"output_tokens":1}}}'
             b'\n\nevent: content_block_start\ndata: {"type":"content_block_start","index":0,'
             b'"content_block":{"type":"text","text":""}}\n\n')
    delta = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
             b'"delta":{"type":"text_delta","text":"' + b"x" * 200 + b'"}}\n\n')
    piece = delta * (65536 // len(delta))
    end = (b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\nevent: message_delta\n'
           b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":123456}}\n\n'
           b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    return [start] + [piece] * (total // len(piece)) + [end]


def huge_response(daemon: DaemonProcess, upstream: FakeAnthropic, megabytes: int) -> None:
    call(daemon.port, body=b'{"model":"claude-opus-4-8","messages":[]}')
    wait_materialized(daemon, 1, 60)
    upstream.script(sse_reply(sse_message(megabytes * 2**20)))
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=600)
    conn.request("POST", "/v1/messages", body=b'{"model":"claude-opus-4-8","stream":true,"messages":[]}')
    resp, received = conn.getresponse(), 0
    while piece := resp.read1(1 << 20):
        received += len(piece)
    stats = wait_materialized(daemon, 2, 600)
    now = status(daemon.proc.pid)
    print(f"2. a {megabytes} MB response ({received / 2**20:.0f} MiB received): peak RSS {mib(now['VmHWM']):.0f} MiB, "
          f"RSS once materialized {mib(now['VmRSS']):.0f} MiB; responses_truncated "
          f"{stats['counters'].get('responses_truncated', '-')}")


def big_requests(daemon: DaemonProcess) -> None:
    body = json.dumps({"model": "claude-opus-4-8", "messages": [{"role": "user", "content": "x" * (40 * 2**20)}]})
    results: list[tuple[object, float]] = []
    clients = [threading.Thread(target=lambda: results.append(call(daemon.port, body=body.encode())))
               for _ in range(20)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    answered = status(daemon.proc.pid)
    served = sum(1 for outcome, _ in results if outcome == 200)
    stats = wait_materialized(daemon, served, 120)
    after = status(daemon.proc.pid)
    print(f"3. 20 concurrent 40 MB requests: {dict(Counter(outcome for outcome, _ in results))}; "
          f"peak RSS when all were answered {mib(answered['VmHWM']):.0f} MiB, then {mib(after['VmHWM']):.0f} MiB once "
          f"{stats['counters']['events_materialized']} were materialized; captures dropped by the tee "
          f"{stats['counters']['requests_dropped_queue_full']}")


def peer_lookups() -> None:
    from opik_cipx.wire.peer import PeerLookup

    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    lookup, held, figures = PeerLookup(), [], []
    for count in (0, 1000, 3000):
        while len(held) < 2 * count:
            client = socket.create_connection(listener.getsockname())
            held += [client, listener.accept()[0]]
        client = socket.create_connection(listener.getsockname())
        server, addr = listener.accept()
        held += [client, server]
        started = time.perf_counter()
        for _ in range(200):
            lookup.uid(server.getsockname(), addr)
        by_netlink = (time.perf_counter() - started) / 200
        started = time.perf_counter()
        for _ in range(10):
            lookup.from_tables(server.getsockname(), addr)
        by_tables = (time.perf_counter() - started) / 10
        rows = sum(1 for _ in open("/proc/net/tcp")) - 1
        figures.append(f"{rows} sockets: {by_netlink * 1e6:.0f} us / {by_tables * 1e3:.1f} ms")
    for sock in held + [listener]:
        sock.close()
    print(f"4. one owner lookup, netlink / /proc/net/tcp: {'; '.join(figures)}")


def main() -> int:
    parser = argparse.ArgumentParser(description="issue 22's hostile and huge clients, measured")
    parser.add_argument("--quick", action="store_true", help="100 MB response only")
    parser.add_argument("--stalled", type=int, default=300)
    parser.add_argument("--daemon-from", type=Path, default=ROOT, metavar="CHECKOUT")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 8192), hard), hard))
    code = {"PYTHONPATH": str(args.daemon_from.resolve())}
    parts = [("stalled", None), ("response", 100)] + ([] if args.quick else [("response", 300)]) + [("requests", None)]
    for part, size in parts:
        with FakeAnthropic(tls=True) as upstream, tempfile.TemporaryDirectory() as tmp:
            os.chdir(tmp)  # `python -m` puts its working directory first on the path: it must not be a checkout
            daemon = DaemonProcess(Path(tmp) / "home", upstream.url, **code)
            try:
                if part == "stalled":
                    stalled_bodies(daemon, args.stalled)
                elif part == "response":
                    huge_response(daemon, upstream, size)
                else:
                    big_requests(daemon)
            finally:
                daemon.kill()
    if sys.platform.startswith("linux"):
        peer_lookups()
    return 0


if __name__ == "__main__":
    sys.exit(main())
