"""Test-only driver: the real Spool and Shipper in a process of their own, so tests can kill -9 it.

    python -m tests.spool_driver SPOOL_DIR OPIK_URL [--rate N] [--count N]

Appends one synthetic capture (a trace and two spans, valid Opik shapes) every 1/N seconds
(`--rate 0`: no appends, only shipping) until `--count` captures, and ships to OPIK_URL (the
fake Opik's key and workspace). Writes JSON lines to stdout:
  {"recovered": {...}}   the spool's `wal` stats right after recovery;
  {"acked": [ids]}       records that became durable (acknowledged) since the last line;
  {"stats": {...}}       `wal` + `queue` stats, whenever they change.
SIGTERM closes the spool and exits 0. Intervals are shrunk so crash tests take seconds.
"""

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

from opik_cipx.ids import new_uuid7
from opik_cipx.ship.destination import Destination
from opik_cipx.ship.shipper import Shipper
from opik_cipx.stats import Counters, utc_iso
from opik_cipx.store.spool import Spool
from tests.fake_opik import API_KEY, WORKSPACE

PROJECT = "cipx-crash-test"


def synthetic_capture(project: str = PROJECT, padding: int = 200) -> list[dict]:
    """One call's records: a trace, an llm span and a tool span, as the materializer shapes them."""
    now = time.time()
    start, end = utc_iso(now - 1), utc_iso(now)
    trace_id = new_uuid7()
    llm_id = new_uuid7()
    trace = {
        "id": trace_id, "project_name": project, "name": "turn", "start_time": start, "end_time": end,
        "last_updated_at": end, "input": {"prompt": "x" * padding}, "metadata": {"cc": {"calls": 1}},
        "tags": ["cipx"], "thread_id": "session-1",
    }
    llm = {
        "id": llm_id, "trace_id": trace_id, "project_name": project, "name": "claude", "type": "llm",
        "start_time": start, "end_time": end, "last_updated_at": end, "model": "claude-sonnet-4",
        "provider": "anthropic", "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        "total_estimated_cost": 0.0001, "output": {"text": "y" * padding},
    }
    tool = {
        "id": new_uuid7(), "trace_id": trace_id, "parent_span_id": llm_id, "project_name": project,
        "name": "Read", "type": "tool", "start_time": start, "end_time": end, "last_updated_at": end,
    }
    return [{"kind": "trace", "body": trace}, {"kind": "span", "body": llm}, {"kind": "span", "body": tool}]


def prefill(directory: Path, captures: int) -> list[dict]:
    """Leave `captures` synthetic calls in a spool at `directory`, as a stopped daemon would; the records."""
    spool = Spool(directory, max_bytes=1 << 26, segment_bytes=1 << 16, inmem_max=100_000, inmem_max_bytes=1 << 26)
    records = [r for _ in range(captures) for r in synthetic_capture()]
    spool.append(records)
    assert spool.close(5) == 0
    return records


def emit(doc: dict) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("spool_dir")
    parser.add_argument("opik_url")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--count", type=int, default=10**9)
    args = parser.parse_args()
    spool = Spool(Path(args.spool_dir), max_bytes=256 * 1024 * 1024, segment_bytes=32 * 1024,
                  inmem_max=100_000, inmem_max_bytes=64 * 1024 * 1024, commit_interval_s=0.02, retry_s=0.05)
    destination = Destination(args.opik_url, API_KEY, WORKSPACE, PROJECT)
    shipper = Shipper(spool, destination, Counters(), timeout_s=5.0, retry_base_s=0.02, retry_max_s=0.1,
                      auth_probe_s=0.1, batch_max_records=100)
    emit({"recovered": spool.section()})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    spool.start()
    shipper.start()
    waiting: list[tuple[int, list[str]]] = []
    appended, last_stats = 0, None
    while not stop.is_set():
        if args.rate > 0 and appended < args.count:
            records = synthetic_capture()
            ticket = spool.append(records)
            appended += 1
            if ticket is not None:
                waiting.append((ticket, [r["body"]["id"] for r in records]))
        durable = spool.durable_seq
        acked = [i for ticket, ids in waiting if ticket <= durable for i in ids]
        if acked:
            waiting = [(ticket, ids) for ticket, ids in waiting if ticket > durable]
            emit({"acked": acked})
        stats = {"wal": spool.section(), "queue": shipper.queue_section()}
        stats["wal"].pop("last_sync_at")
        if stats != last_stats:
            emit({"stats": stats})
            last_stats = stats
        stop.wait(1 / args.rate if args.rate > 0 and appended < args.count else 0.02)
    spool.close(5.0)
    shipper.stop(5.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
