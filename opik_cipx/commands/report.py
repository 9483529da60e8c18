"""`opik-cipx report`: cost and tokens from the local ledger, grouped as asked.

Reads `ledger.db` directly, so it works with the daemon down (WAL: it never blocks the daemon
writing meanwhile). A terminal table with a totals row by default, its token columns in the
words of docs/REPORTS.md ("Words"); `--json` and `--csv` print the shape `ledger/export.py`
defines (the dashboard exports the same). See `ledger/queries.py` for what each key means.
By `session`, each session is shown by the start of its id (what `--session` takes), its start,
its project's directory and its label (title or first prompt, `ledger/sessions.py`); JSON and CSV
carry the whole id, label and project. `--session` takes a session id or its start (`44faf0ae`);
`--project`, `--model`, `--kind` and
`--agent` narrow as the dashboard's filters do. A filter that matches no call says so in one
line (exit 1), and so does a window without calls (exit 0, the empty report printed).
"""

import argparse
import os
import sqlite3
import sys
from dataclasses import replace
from typing import Any

from opik_cipx.config import Settings
from opik_cipx.ledger.db import open_reader
from opik_cipx.ledger.export import PEAK, dump_json, report_json, windows, write_report_csv
from opik_cipx.ledger.figures import INPUT_SIDE_MEANS, TOKEN_CLASSES, cache_hit, label_of, unpriced_note
from opik_cipx.ledger.periods import parse_since, parse_until
from opik_cipx.ledger.queries import (
    BY_KEYS,
    DETAIL_KEYS,
    FIGURES,
    AmbiguousSession,
    Report,
    ReportError,
    Selection,
    find_session,
    parse_by,
    report,
    report_figures,
    why_empty,
)
from opik_cipx.ledger.schema import SchemaError
from opik_cipx.ledger.sessions import short_ids

COLUMNS = (("calls", "calls"), *TOKEN_CLASSES.items(), ("cost_usd", "cost USD"))  # figure, table heading
BREAK_COLUMNS = (("cache_breaks", "breaks"), ("cache_break_tokens", "rewritten tok"), ("cache_break_usd", "break USD"))
SESSION_HEADINGS = ("session", "started", "project", "label")  # the columns of the `session` key
LABEL_WIDTH = 40  # a session's label in the table is cut to this


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--by", default="day", metavar="KEYS",
                        help="group by these keys, comma-separated for nested groups (default: day): "
                             f"{', '.join(BY_KEYS)}")
    parser.add_argument("--since", type=parse_since, help="from then on: 7d, 2h, 30m or an ISO date/time (local time)")
    parser.add_argument("--until", type=parse_until, help="before then (a date alone includes that day)")
    parser.add_argument("--session", metavar="ID", help="only this Claude Code session (its id, or the start of it)")
    parser.add_argument("--project", metavar="PATH", help="only calls made in this directory or below it")
    parser.add_argument("--model", help="only calls of this model (as `--by model` lists them)")
    parser.add_argument("--kind", help="only calls of this kind: main, subagent, compaction, side:<kind>, count_tokens")
    parser.add_argument("--agent",
                        help="only calls of this agent: main, or a subagent type (as `--by agent` lists them)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help='print {"rows": [...], "total": {...}}')
    output.add_argument("--csv", action="store_true", help="print CSV, the total on the last line")
    parser.set_defaults(config_keys=())  # reads no setting: runs despite other bad settings (cli.py)


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        by = parse_by(args.by)
    except ReportError as exc:
        print(f"opik-cipx: {exc}", file=sys.stderr)
        return 2
    selection = Selection(
        since_ns=args.since,
        until_ns=args.until,
        project=os.path.abspath(os.path.expanduser(args.project)) if args.project else None,
        model=args.model,
        kind=args.kind,
        agent=args.agent,
    )
    path = settings.ledger_path
    empty: tuple[str, str | None] | None = None
    try:
        conn = open_reader(path)
        if conn is None:
            result = Report(by=by, total=dict.fromkeys(report_figures(by), 0))
            print(f"opik-cipx: no ledger yet ({path}): it fills as Claude Code calls go through opik-cipx; "
                  "`opik-cipx replay --ledger` builds it from the stored captures", file=sys.stderr)
        else:
            try:
                if args.session is not None:
                    selection = replace(selection, session=find_session(conn, args.session))
                result = report(conn, by, selection)
                if not result.total["calls"] and (selection.narrowed() or args.since or args.until):
                    empty = why_empty(conn, selection)
            finally:
                conn.close()
    except AmbiguousSession as exc:
        print(f"opik-cipx: --session {exc}", file=sys.stderr)
        return 2
    except ReportError as exc:  # no such session
        print(f"opik-cipx: {exc}; `opik-cipx report --by session` lists them", file=sys.stderr)
        return 1
    except SchemaError as exc:
        print(f"opik-cipx: cannot read {path}: {exc}", file=sys.stderr)
        return 1
    except (sqlite3.Error, OSError) as exc:
        print(f"opik-cipx: cannot read {path}: {exc}. If it is damaged, move it away and run "
              "`opik-cipx replay --ledger` to rebuild it from the stored captures", file=sys.stderr)
        return 1
    if empty is not None:
        why, culprit = empty
        hint = f"; `opik-cipx report --by {culprit}` lists what the ledger holds" if culprit else ""
        print(f"opik-cipx: {why}{hint}", file=sys.stderr)
        if culprit is not None:
            return 1
    if args.json:
        print(dump_json(report_json(result)))
    elif args.csv:
        write_report_csv(result, sys.stdout)
    else:
        print(render_table(result))
    return 0


def _cells(figures: dict[str, Any], breaks: bool, peak_windows: list[str]) -> list[str]:
    cells = [f"{figures['calls']:,}"]
    cells += [f"{round(figures[name]):,}" for name in TOKEN_CLASSES]
    cells.append(f"${figures['cost_usd']:,.4f}")
    hit = cache_hit(figures)
    cells.append("" if hit is None else f"{hit:.1%}")
    if breaks:
        cells += [f"{figures['cache_breaks']:,}", f"{figures['cache_break_tokens']:,}",
                  f"${figures['cache_break_usd']:,.4f}"]
    peaks = figures.get(PEAK) or {}
    cells += ["" if peaks.get(w) is None else f"{peaks[w]:.0%}" for w in peak_windows]
    return cells


def _key_cells(result: Report) -> tuple[list[str], list[list[str]]]:
    """The headings and each row's cells of the group keys; a session is four columns."""
    shorts = short_ids(row["session"] for row in result.rows if row.get("session")) if "session" in result.by else {}
    headings = [heading for k in result.by for heading in (SESSION_HEADINGS if k == "session" else (k,))]

    def cells(row: dict[str, Any]) -> list[str]:
        out = []
        for k in result.by:
            if k != "session":
                out.append(label_of(row[k], k))
                continue
            label = row["session_label"] or ""
            out += [shorts.get(row["session"]) or label_of(None),
                    (row["session_started_at"] or "")[:16].replace("T", " "),
                    (row["session_project"] or "").rstrip("/").rsplit("/", 1)[-1],
                    label if len(label) <= LABEL_WIDTH else label[:LABEL_WIDTH - 1].rstrip() + "\u2026"]
        return out

    return headings, [cells(row) for row in result.rows]


def render_table(result: Report) -> str:
    """An aligned table: group keys left, figures right, the total last; notes below."""
    breaks, peaks = report_figures(result.by) != FIGURES, windows(result)
    key_headings, key_rows = _key_cells(result)
    headings = [*key_headings, *(heading for _, heading in COLUMNS), "cache hit",
                *((heading for _, heading in BREAK_COLUMNS) if breaks else ()), *(f"{w} peak" for w in peaks)]
    rows = [cells + _cells(row, breaks, peaks) for cells, row in zip(key_rows, result.rows, strict=True)]
    total = ["total", *([""] * (len(key_headings) - 1))] if result.by else []
    rows.append(total + _cells(result.total, breaks, peaks))
    widths = [max(len(line[i]) for line in [headings, *rows]) for i in range(len(headings))]
    keys = len(key_headings)

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
    notes = [f"Tokens: input side = {INPUT_SIDE_MEANS}; cache hit = cache read / input side (docs/REPORTS.md)."]
    if any(k in DETAIL_KEYS for k in result.by):
        notes.append("Rows are each part's share of the calls that carried it (tokens by character share); "
                     "the total counts whole calls.")
    if unpriced := unpriced_note(result.total.get("unpriced_calls") or 0):
        notes.append(f"{unpriced}.")
    if peaks := windows(result):
        notes.append(f"`<window> peak`: the highest utilization each rate-limit window reported ({', '.join(peaks)}); "
                     "`opik-cipx status` shows the latest.")
    if result.total.get("estimated_calls"):
        notes.append(f"{result.total['estimated_calls']} call(s) were priced from a related model's rates "
                     "(an estimate).")
    return notes
