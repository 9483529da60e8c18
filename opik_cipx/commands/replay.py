"""`opik-cipx replay`: re-derive the calls and their Opik records from the stored raw captures, offline.

Read-only: it reads the capture log (`captures/`) and never touches the daemon, the spool or
Opik. By default it prints a summary of what the captures hold (captures read, calls by kind,
their cost, sessions, errors) and what was written where; the records themselves (JSON lines,
one spool record each: whole prompts and tool schemas) only when asked, `--records` on stdout
(the summary then goes to stderr) or `--out FILE`. It reads the log
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
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from opik_cipx.config import Settings
from opik_cipx.home import open_private, wrong_type
from opik_cipx.ledger.periods import parse_since

if TYPE_CHECKING:
    from opik_cipx.ledger.store import Ledger
    from opik_cipx.materialize.call import CallRecord
    from opik_cipx.materialize.materializer import Materializer

LEDGER_BATCH = 500  # calls per ledger transaction


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", type=parse_since,
                        help="only captures from then on: 2h, 30m, 7d or an ISO date/time "
                             "(local unless it says Z or +hh:mm)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--records", action="store_true",
                        help="print the Opik records as JSON lines on stdout (whole prompts); the summary goes to "
                             "stderr")
    target.add_argument("--out", help="write the Opik records as JSON lines to this file")
    target.add_argument("--ledger", action="store_true",
                        help="write the calls into ledger.db (replacing rows of the same captures) "
                             "instead of printing records")


@dataclass
class Tally:
    """What a replay read and wrote: the summary it prints."""

    captures: int = 0
    written: int = 0  # records, or calls for the ledger
    failed: int = 0  # captures the materializer could not read
    kinds: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    sessions: set = field(default_factory=set)
    cost_usd: float = 0.0
    unpriced: int = 0
    first_ns: int | None = None
    last_ns: int | None = None

    def add(self, call: "CallRecord") -> None:
        self.kinds[call.kind.kind] += 1
        self.sessions.add(call.session.id)
        if call.error_type or call.exchange.client_aborted:
            self.errors[call.error_type or "client_aborted"] += 1
        cost = call.cost
        if cost is not None and cost.total_usd is not None:
            self.cost_usd += cost.total_usd
        elif cost is not None and cost.unknown_model and not cost.estimated_from:  # as the ledger counts them
            self.unpriced += 1
        started = call.exchange.started_at_ns
        self.first_ns = started if self.first_ns is None else min(self.first_ns, started)
        self.last_ns = started if self.last_ns is None else max(self.last_ns, started)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from opik_cipx.materialize.materializer import build_materializer
    from opik_cipx.ship.destination import opik_config_path, resolve_destination
    from opik_cipx.store.captures import list_segments

    if args.ledger:  # the ledger's writer only for --ledger, first: a Python without sqlite3 says so at once
        from opik_cipx.ledger import store

    why = wrong_type(settings.captures_dir, directory=True)
    if why:
        print(f"opik-cipx: {settings.captures_dir} {why}, so there is nothing to replay: move it away", file=sys.stderr)
        return 1
    segments = list_segments(settings.captures_dir)
    if not segments:
        print(f"opik-cipx: no raw captures in {settings.captures_dir} (captures.enabled is "
              f"{str(settings.captures_enabled).lower()}); nothing to replay.", file=sys.stderr)
        return 0
    env = dict(os.environ)
    project = resolve_destination(settings, opik_config_path(env)).project  # the daemon's, so the ids match
    try:
        materializer = build_materializer(settings, env, project)
    except ValueError as exc:
        print(f"opik-cipx: {exc}", file=sys.stderr)
        return 2
    try:
        # The records hold prompts and responses: the file is owner-only, like everything of ours.
        out: TextIO | None = (io.TextIOWrapper(open_private(Path(args.out), os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                               encoding="utf-8") if args.out else sys.stdout if args.records else None)
    except OSError as exc:
        print(f"opik-cipx: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
        return 1
    ledger: Ledger | None = None
    if args.ledger:
        ledger = store.Ledger(settings.ledger_path, settings.ledger_retention_days, keep_text=settings.capture_content)
    sizes = {path: size for path, size, _ in segments}
    progress = Progress(sys.stderr, total_bytes=sum(sizes.values()))
    try:
        tally = _replay(settings, materializer, args.since, out, ledger, sizes, progress)
    except BrokenPipeError:
        return 0  # e.g. piped into `head`
    except OSError as exc:
        print(f"opik-cipx: cannot write {args.out or 'stdout'}: {exc.strerror}", file=sys.stderr)
        return 1
    finally:
        progress.done()
        if out is not None and out is not sys.stdout:
            out.close()
    if ledger:
        ledger.close()
    print(summary(tally, settings, args), file=sys.stderr if args.records else sys.stdout)
    return _problems(tally, settings, ledger)


def _problems(tally: Tally, settings: Settings, ledger: "Ledger | None") -> int:
    """One line on stderr for calls the ledger did not take and captures that could not be read; the exit code."""
    code = 0
    if ledger:
        refused, unwritten = ledger.counters.get("ledger_calls_dropped"), ledger.pending
        if refused:  # each was named in the log; replaying again would meet the same values
            print(f"opik-cipx: {refused} call(s) skipped: the ledger refused their values", file=sys.stderr)
        if unwritten or ledger.counters.get("ledger_write_errors"):
            print(f"opik-cipx: {unwritten} call(s) could not be written to {settings.ledger_path}; "
                  "`opik-cipx logs` may say why (is the disk full?); run `opik-cipx replay --ledger` again",
                  file=sys.stderr)
        if refused or unwritten or ledger.counters.get("ledger_write_errors"):
            code = 1
    if tally.failed:
        print(f"opik-cipx: {tally.failed} capture(s) could not be materialized and were skipped "
              "(a materializer bug: please report it)", file=sys.stderr)
        code = 1
    return code


def summary(tally: Tally, settings: Settings, args: argparse.Namespace) -> str:
    """What the captures held and what was written where, a few lines for a person."""
    window = "" if tally.first_ns is None else f", calls from {_moment(tally.first_ns)} to {_moment(tally.last_ns)}"
    kinds = ", ".join(f"{n:,} {kind}" for kind, n in tally.kinds.most_common())
    calls = sum(tally.kinds.values())
    unpriced = (f" ({tally.unpriced:,} call(s) of a model missing from the price table not included)"
                if tally.unpriced else "")
    errors = (", ".join(f"{n:,} {kind}" for kind, n in tally.errors.most_common()) if tally.errors
              else "no call ended in an error")
    if tally.failed:
        errors += f"; {tally.failed:,} capture(s) could not be materialized"
    if args.ledger:
        written = f"{tally.written:,} call(s) into {settings.ledger_path} (rows of the same captures replaced)"
    elif args.out or args.records:
        written = f"{tally.written:,} Opik record(s) to {args.out or 'stdout'}"
    else:
        written = ("nothing (read-only): `--records` prints the Opik records, `--out FILE` writes them, "
                   "`--ledger` writes the calls into ledger.db")
    return "\n".join([
        f"replayed {tally.captures:,} capture(s) from {settings.captures_dir}{window}",
        f"  calls     {calls:,}" + (f": {kinds}" if kinds else ""),
        f"  cost      ${tally.cost_usd:,.4f}{unpriced}",
        f"  sessions  {len(tally.sessions):,}",
        f"  errors    {errors}",
        f"  written   {written}",
    ])


def _moment(ns: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime((ns or 0) / 1e9))


def _replay(settings: Settings, materializer: "Materializer", since: int | None, out: TextIO | None,
            ledger: "Ledger | None", sizes: dict, progress: "Progress") -> Tally:
    """Materialize the log from `since` on, writing each capture's records to `out` (if any), or
    its call to `ledger` (in batches); what was read and written."""
    from opik_cipx.store.captures import read_log

    if ledger is not None:  # the ledger's rows only for --ledger
        from opik_cipx.ledger.entry import ledger_entry

    batch: list = []
    tally = Tally()
    current = None
    for logged in read_log(settings.captures_dir):
        if logged.path != current:
            if current is not None:
                progress.advance(sizes.get(current, 0), tally.captures)
            current = logged.path
        capture = logged.capture
        if since and capture.started_at_ns < since:
            continue
        try:
            result = materializer.materialize(capture)
            entry = ledger_entry(result.call, ledger.keep_text) if ledger and result.call else None
        except Exception:  # one bad capture must not end the replay
            tally.failed += 1
            continue
        if result.call is not None:
            tally.add(result.call)
        if out is not None:
            for record in result.records:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                tally.written += 1
        elif entry is not None:
            assert ledger is not None  # an entry is made only for the ledger
            batch.append(entry)
            tally.written += 1
            if len(batch) >= LEDGER_BATCH:
                ledger.write_entries(batch)
                batch = []
        tally.captures += 1
    if current is not None:
        progress.advance(sizes.get(current, 0), tally.captures)
    if ledger is not None:
        ledger.write_entries(batch)
    return tally


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
