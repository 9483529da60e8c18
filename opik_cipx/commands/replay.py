"""`opik-cipx replay`: re-derive Opik records from the stored raw captures, offline.

Read-only: it reads the capture log (`captures/`) and writes JSON lines (one spool record
each) to stdout or `--out`; it never touches the daemon, the spool or Opik. It reads the log
the way the daemon's follower does (`store.captures.read_log`, in log order) through a fresh
materializer built as the daemon builds it, so it derives the ids the daemon derived — across
daemon restarts too, since the daemon carries its per-session state over in its checkpoint.
Only where the log no longer starts where the daemon started (retention deleted older
segments, or `--since`) can a turn that began before that point get another trace id.

With `--ledger` it writes each call into `ledger.db` instead (an upsert keyed by capture id, as
the daemon does, so a call already there is replaced, never counted twice): that rebuilds a
deleted or corrupt ledger from what the captures still hold, and fills in calls the daemon
could not write.
"""

import argparse
import io
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from opik_cipx.config import Settings
from opik_cipx.home import open_private, wrong_type
from opik_cipx.ledger.periods import parse_since

if TYPE_CHECKING:
    from opik_cipx.ledger.store import Ledger
    from opik_cipx.materialize.materializer import Materializer

LEDGER_BATCH = 500  # calls per ledger transaction


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", type=parse_since,
                        help="only captures from then on: 2h, 30m, 7d or an ISO date/time "
                             "(local unless it says Z or +hh:mm)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--out", help="write the JSON lines to this file instead of stdout")
    target.add_argument("--ledger", action="store_true",
                        help="write the calls into ledger.db (replacing rows of the same captures) "
                             "instead of printing records")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from opik_cipx.daemon import StartupError, build_materializer
    from opik_cipx.ledger.store import Ledger
    from opik_cipx.store.captures import list_segments

    why = wrong_type(settings.captures_dir, directory=True)
    if why:
        print(f"opik-cipx: {settings.captures_dir} {why}, so there is nothing to replay: move it away", file=sys.stderr)
        return 1
    segments = list_segments(settings.captures_dir)
    if not segments:
        print(f"opik-cipx: no raw captures in {settings.captures_dir} (captures.enabled is "
              f"{str(settings.captures_enabled).lower()}); nothing to replay.", file=sys.stderr)
        return 0
    try:
        materializer = build_materializer(settings, dict(os.environ))
    except StartupError as exc:
        print(f"opik-cipx: {exc}", file=sys.stderr)
        return 2
    try:
        # The records hold prompts and responses: the file is owner-only, like everything of ours.
        out: TextIO = (io.TextIOWrapper(open_private(Path(args.out), os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                        encoding="utf-8") if args.out else sys.stdout)
    except OSError as exc:
        print(f"opik-cipx: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
        return 1
    ledger = Ledger(settings.ledger_path, settings.ledger_retention_days) if args.ledger else None
    sizes = {path: size for path, size, _ in segments}
    progress = Progress(sys.stderr, total_bytes=sum(sizes.values()))
    try:
        captures, written, failed = _replay(settings, materializer, args.since, out, ledger, sizes, progress)
    except BrokenPipeError:
        return 0  # e.g. piped into `head`
    except OSError as exc:
        print(f"opik-cipx: cannot write {args.out or 'stdout'}: {exc.strerror}", file=sys.stderr)
        return 1
    finally:
        progress.done()
        if out is not sys.stdout:
            out.close()
    if ledger:
        ledger.close()
        print(f"replayed {captures} capture(s) into {written} call(s) -> {settings.ledger_path}", file=sys.stderr)
        refused, unwritten = ledger.counters.get("ledger_calls_dropped"), ledger.pending
        if refused:  # each was named above; replaying again would meet the same values
            print(f"opik-cipx: {refused} call(s) skipped: the ledger refused their values", file=sys.stderr)
        if unwritten or ledger.counters.get("ledger_write_errors"):
            print(f"opik-cipx: {unwritten} call(s) could not be written to {settings.ledger_path}; "
                  "`opik-cipx logs` may say why (is the disk full?); run `opik-cipx replay --ledger` again",
                  file=sys.stderr)
        if refused or unwritten or ledger.counters.get("ledger_write_errors"):
            return 1
    else:
        print(f"replayed {captures} capture(s) into {written} record(s)" + (f" -> {args.out}" if args.out else ""),
              file=sys.stderr)
    if failed:
        print(f"opik-cipx: {failed} capture(s) could not be materialized and were skipped "
              "(a materializer bug: please report it)", file=sys.stderr)
        return 1
    return 0


def _replay(settings: Settings, materializer: "Materializer", since: int | None, out: TextIO,
            ledger: "Ledger | None", sizes: dict, progress: "Progress") -> tuple[int, int, int]:
    """Materialize the log from `since` on, writing each capture's records to `out`, or its call
    to `ledger` (in batches); (captures, records or calls written, captures that failed)."""
    from opik_cipx.ledger.entry import ledger_entry
    from opik_cipx.store.captures import read_log

    batch: list = []
    captures = written = failed = 0
    current = None
    for logged in read_log(settings.captures_dir):
        if logged.path != current:
            if current is not None:
                progress.advance(sizes.get(current, 0), captures)
            current = logged.path
        capture = logged.capture
        if since and capture.started_at_ns < since:
            continue
        try:
            result = materializer.materialize(capture)
            entry = ledger_entry(result.call) if ledger and result.call else None
        except Exception:  # one bad capture must not end the replay
            failed += 1
            continue
        if ledger is None:
            for record in result.records:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                written += 1
        elif entry is not None:
            batch.append(entry)
            written += 1
            if len(batch) >= LEDGER_BATCH:
                ledger.write_entries(batch)
                batch = []
        captures += 1
    if current is not None:
        progress.advance(sizes.get(current, 0), captures)
    if ledger is not None:
        ledger.write_entries(batch)
    return captures, written, failed


class Progress:
    """A progress bar over the bytes of capture segments, on stderr, only on a terminal."""

    WIDTH = 30

    def __init__(self, stream: TextIO, total_bytes: int):
        self.stream = stream
        self.enabled = stream.isatty()
        self.total = max(1, total_bytes)
        self.done_bytes = 0

    def advance(self, segment_bytes: int, captures: int) -> None:
        self.done_bytes += segment_bytes
        if self.enabled:
            filled = int(self.WIDTH * min(1.0, self.done_bytes / self.total))
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            self.stream.write(f"\rreplaying [{bar}] {self.done_bytes / self.total:4.0%}  {captures} captures")
            self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()
