"""`opik-cipx report`: cost and tokens from the local ledger, grouped as asked.

Reads `ledger.db` directly, so it works with the daemon down (WAL: it never blocks the daemon
writing meanwhile). A terminal table with a totals row by default; `--json` prints
`{"rows": [...], "total": {...}}` (each row: its group keys under the names given to `--by`,
then `calls`, `cost_usd`, `input_tokens`, `cache_creation_input_tokens`,
`cache_read_input_tokens`, `output_tokens`; grouped by `cache_break` also `cache_breaks`,
`cache_break_tokens`, `cache_break_usd`; grouped by one time key also `peak_utilization`,
rate-limit window -> the highest utilization reported); `--csv` the same as CSV (a
`peak:<window>` column per window), the total last with empty group keys. See
`ledger/queries.py` for what each key means.
"""

import argparse
import csv
import json
import os
import sqlite3
import sys
from typing import Any, TextIO

from opik_cipx.config import Settings
from opik_cipx.ledger.db import open_reader
from opik_cipx.ledger.figures import cache_hit, label_of, unpriced_note
from opik_cipx.ledger.periods import parse_since, parse_until
from opik_cipx.ledger.queries import (
    BY_KEYS,
    DETAIL_KEYS,
    FIGURES,
    Report,
    ReportError,
    Selection,
    parse_by,
    report,
    report_figures,
)
from opik_cipx.ledger.schema import SchemaError

COLUMNS = (  # figure, table heading
    ("calls", "calls"),
    ("input_tokens", "input tok"),
    ("cache_creation_input_tokens", "cache write tok"),
    ("cache_read_input_tokens", "cache read tok"),
    ("output_tokens", "output tok"),
    ("cost_usd", "cost USD"),
)
BREAK_COLUMNS = (("cache_breaks", "breaks"), ("cache_break_tokens", "rewritten tok"), ("cache_break_usd", "break USD"))
PEAK = "peak_utilization"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--by", default="day", metavar="KEYS",
                        help="group by these keys, comma-separated for nested groups (default: day): "
                             f"{', '.join(BY_KEYS)}")
    parser.add_argument("--since", type=parse_since, help="from then on: 7d, 2h, 30m or an ISO date/time (local time)")
    parser.add_argument("--until", type=parse_until, help="before then (a date alone includes that day)")
    parser.add_argument("--session", metavar="ID", help="only this Claude Code session")
    parser.add_argument("--project", metavar="PATH", help="only calls made in this directory or below it")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help='print {"rows": [...], "total": {...}}')
    output.add_argument("--csv", action="store_true", help="print CSV, the total on the last line")


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        by = parse_by(args.by)
    except ReportError as exc:
        print(f"opik-cipx: {exc}", file=sys.stderr)
        return 2
    selection = Selection(
        since_ns=args.since,
        until_ns=args.until,
        session=args.session,
        project=os.path.abspath(os.path.expanduser(args.project)) if args.project else None,
    )
    path = settings.ledger_path
    try:
        conn = open_reader(path)
        if conn is None:
            result = Report(by=by, total=dict.fromkeys(report_figures(by), 0))
            print(f"opik-cipx: no ledger yet ({path}): it fills as Claude Code calls go through opik-cipx; "
                  "`opik-cipx replay --ledger` builds it from the stored captures", file=sys.stderr)
        else:
            try:
                result = report(conn, by, selection)
            finally:
                conn.close()
    except SchemaError as exc:
        print(f"opik-cipx: cannot read {path}: {exc}", file=sys.stderr)
        return 1
    except (sqlite3.Error, OSError) as exc:
        print(f"opik-cipx: cannot read {path}: {exc}. If it is damaged, move it away and run "
              "`opik-cipx replay --ledger` to rebuild it from the stored captures", file=sys.stderr)
        return 1
    if args.json:
        print(dump_json(to_json(result)))
    elif args.csv:
        write_csv(result, sys.stdout)
    else:
        print(render_table(result))
    return 0


def _figure(name: str, value: Any) -> Any:
    """Token figures of a bucket or label are shares: two decimals; whole calls stay integers."""
    if not name.endswith("_usd") and isinstance(value, float):
        return round(value, 2)
    return value


def to_json(result: Report) -> dict[str, Any]:
    total = {name: result.total[name] for name in report_figures(result.by)}
    if PEAK in result.total:
        total[PEAK] = result.total[PEAK]
    return {
        "rows": [{key: _figure(key, value) for key, value in row.items()} for row in result.rows],
        "total": total,
    }


def _windows(result: Report) -> list[str]:
    """The rate-limit windows whose peaks the report shows (those of its total, in order)."""
    return list(result.total.get(PEAK) or {})


def dump_json(doc: dict[str, Any]) -> str:
    """The document with one row per line (json's indenting encoder is ten times slower)."""
    rows = ",\n    ".join(json.dumps(row) for row in doc["rows"])
    return ('{\n  "rows": [' + (f"\n    {rows}\n  " if rows else "") + '],\n  "total": '
            + json.dumps(doc["total"]) + "\n}")


def write_csv(result: Report, stream: TextIO) -> None:
    figures, windows = report_figures(result.by), _windows(result)
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow([*result.by, *figures, *(f"peak:{w}" for w in windows)])

    def peaks(figures_of: dict[str, Any]) -> list[Any]:
        return ["" if (figures_of.get(PEAK) or {}).get(w) is None else figures_of[PEAK][w] for w in windows]

    for row in result.rows:
        writer.writerow([*("" if row[k] is None else row[k] for k in result.by),
                         *(_figure(f, row[f]) for f in figures), *peaks(row)])
    writer.writerow([*("" for _ in result.by), *(result.total[f] for f in figures), *peaks(result.total)])


def _cells(figures: dict[str, Any], breaks: bool, windows: list[str]) -> list[str]:
    cells = [f"{figures['calls']:,}"]
    cells += [f"{round(figures[name]):,}" for name, _ in COLUMNS[1:5]]
    cells.append(f"${figures['cost_usd']:,.4f}")
    hit = cache_hit(figures)
    cells.append("" if hit is None else f"{hit:.1%}")
    if breaks:
        cells += [f"{figures['cache_breaks']:,}", f"{figures['cache_break_tokens']:,}",
                  f"${figures['cache_break_usd']:,.4f}"]
    peaks = figures.get(PEAK) or {}
    cells += ["" if peaks.get(w) is None else f"{peaks[w]:.0%}" for w in windows]
    return cells


def render_table(result: Report) -> str:
    """An aligned table: group keys left, figures right, the total last; notes below."""
    breaks, windows = report_figures(result.by) != FIGURES, _windows(result)
    headings = [*result.by, *(heading for _, heading in COLUMNS), "cache hit",
                *((heading for _, heading in BREAK_COLUMNS) if breaks else ()), *(f"{w} peak" for w in windows)]
    rows = [[label_of(row[k]) for k in result.by] + _cells(row, breaks, windows) for row in result.rows]
    total = ["total", *([""] * (len(result.by) - 1))] if result.by else []
    rows.append(total + _cells(result.total, breaks, windows))
    widths = [max(len(line[i]) for line in [headings, *rows]) for i in range(len(headings))]
    keys = len(result.by)

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < keys else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out = [line(headings), "  ".join("-" * w for w in widths)]
    out += [line(cells) for cells in rows[:-1]]
    if result.rows:
        out.append("  ".join("-" * w for w in widths))
    out.append(line(rows[-1]))
    out += _notes(result)
    return "\n".join(out)


def _notes(result: Report) -> list[str]:
    notes = []
    if any(k in DETAIL_KEYS for k in result.by):
        notes.append("Rows are each part's share of the calls that carried it (tokens by character share); "
                     "the total counts whole calls.")
    if unpriced := unpriced_note(result.total.get("unpriced_calls") or 0):
        notes.append(f"{unpriced}.")
    if windows := _windows(result):
        notes.append("`<window> peak`: the highest utilization each rate-limit window reported "
                     f"({', '.join(windows)}); `opik-cipx status` shows the latest.")
    if result.total.get("estimated_calls"):
        notes.append(f"{result.total['estimated_calls']} call(s) were priced from a related model's rates "
                     "(an estimate).")
    return notes
