"""`opik-cipx advise [--since 7d] [--until DATE] [--project P] [--json]`: what to change, and what it
would have saved (docs/ADVICE.md).

Reads `ledger.db` (and, for the evidence, which raw captures are still stored), so it works with
the daemon down; prices with the price table in use (`prices.json` and config.toml's `[prices]`).
A table of findings ranked by the dollars they would have saved over the period, each with its
action, then what earlier changes realised; `--json` prints `{"findings": [...], "realised": [...]}`,
each `{kind, subject, saving_usd, calls, evidence, action}`.
"""

import argparse
import json
import os
import sqlite3
import sys
import time

from opik_cipx.clock import SYSTEM
from opik_cipx.config import Settings
from opik_cipx.ledger.advice import Advice, advise
from opik_cipx.ledger.db import open_reader
from opik_cipx.ledger.findings import Finding
from opik_cipx.ledger.periods import parse_since, parse_until
from opik_cipx.ledger.queries import Selection
from opik_cipx.ledger.reprice import Repricer
from opik_cipx.ledger.schema import SchemaError
from opik_cipx.materialize.pricing import load_price_table

DEFAULT_SINCE = "7d"
SHOWN = 20  # findings the table shows (`--json` has them all)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", type=parse_since, default=None,
                        help=f"the period from then on: 7d, 2h, 30m or an ISO date/time (default {DEFAULT_SINCE})")
    parser.add_argument("--until", type=parse_until, help="the period's end (a date alone includes that day)")
    parser.add_argument("--project", metavar="PATH", help="only calls made in this directory or below it")
    parser.add_argument("--json", action="store_true",
                        help='print {"findings": [...], "realised": [...]}, every finding with its evidence')
    parser.set_defaults(config_keys=("prices",))  # reads the price overrides alone (cli.py)


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        table = load_price_table(settings.prices)
    except ValueError as exc:
        print(f"opik-cipx: bad setting in config file {settings.config_path}: {exc}", file=sys.stderr)
        return 2
    selection = Selection(
        since_ns=args.since if args.since is not None else parse_since(DEFAULT_SINCE),
        until_ns=args.until,
        project=os.path.abspath(os.path.expanduser(args.project)) if args.project else None,
    )
    path = settings.ledger_path
    try:
        conn = open_reader(path)
        if conn is None:
            print(f"opik-cipx: no ledger yet ({path}): it fills as Claude Code calls go through opik-cipx; "
                  "`opik-cipx replay --ledger` builds it from the stored captures", file=sys.stderr)
            return 0
        try:
            advice = advise(conn, selection, Repricer(table), SYSTEM.time_ns(), settings.captures_dir)
        finally:
            conn.close()
    except SchemaError as exc:
        print(f"opik-cipx: cannot read {path}: {exc}", file=sys.stderr)
        return 1
    except (sqlite3.Error, OSError) as exc:
        print(f"opik-cipx: cannot read {path}: {exc}. If it is damaged, move it away and run "
              "`opik-cipx replay --ledger` to rebuild it from the stored captures", file=sys.stderr)
        return 1
    print(json.dumps(advice.to_json(), indent=2) if args.json else render(advice))
    return 0


def render(advice: Advice) -> str:
    """The findings as a terminal reads them: saving, kind, subject, calls; the action below."""
    days = (advice.until_ns - advice.since_ns) / 86400e9
    out = [f"What to change, {_moment(advice.since_ns)} to {_moment(advice.until_ns)} ({days:.3g} days), "
           "by what it would have saved:"]
    if not advice.findings:
        out.append("  nothing: no definition, cache break, session or model choice of this period would have saved "
                   "anything")
    out += [line for finding in advice.findings[:SHOWN] for line in _finding(finding)]
    if len(advice.findings) > SHOWN:
        out.append(f"  ... and {len(advice.findings) - SHOWN} more (`--json` lists them all)")
    if advice.realised:
        out.append("")
        out.append("Realised since the period before (estimated: docs/ADVICE.md):")
        out += [line for finding in advice.realised for line in _finding(finding)]
    out.append("")
    out.append("Savings are the period's calls priced again without the change (docs/ADVICE.md says what each "
               "assumes); `--json` has the evidence.")
    return "\n".join(out)


def _finding(finding: Finding) -> list[str]:
    saving = "(not computable)" if finding.saving_usd is None else f"${finding.saving_usd:,.4f}"
    saving = saving.rjust(16)
    calls = "1 call" if finding.calls == 1 else f"{finding.calls:,} calls"
    return [f"  {saving}  {finding.kind}: {finding.subject} ({calls})",
            f"{'':20}{finding.action}"]


def _moment(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ns / 1e9))
