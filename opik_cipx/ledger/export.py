"""Reports and call lists as JSON and CSV: one shape for `report --json/--csv` and the
dashboard's exports (docs/REPORTS.md).

A report is `{"rows": [...], "total": {...}}`: each row its group keys under the `--by` names
(by `session`, also `session_label`, `session_project` and `session_started_at`), then its
figures (`queries.report_figures`), and `peak_utilization` (rate-limit window -> the highest
utilization) when grouped by one time key; in CSV a `peak:<window>` column per window and the
total last, its group keys empty. Token figures of a bucket or label are shares, with
two decimals. Call lists hold `CALL_EXPORT` per call. Values are the ledger's (None for what it
does not know, `menu` for the skill list): the words tables show are `figures.label_of`'s.
"""

import csv
import json
from typing import Any, TextIO

from opik_cipx.ledger.figures import INPUT_SIDE
from opik_cipx.ledger.queries import CALL_COLUMNS, Report, report_figures, row_keys

PEAK = "peak_utilization"
CALL_EXPORT = tuple(name for name in (*CALL_COLUMNS[:CALL_COLUMNS.index("output_tokens")], INPUT_SIDE,
                                      *CALL_COLUMNS[CALL_COLUMNS.index("output_tokens"):]) if name != "id")


def _figure(name: str, value: Any) -> Any:
    """Token figures of a bucket or label are shares: two decimals; whole calls stay integers."""
    if not name.endswith("_usd") and isinstance(value, float):
        return round(value, 2)
    return value


def report_json(result: Report) -> dict[str, Any]:
    total = {name: result.total[name] for name in report_figures(result.by)}
    if PEAK in result.total:
        total[PEAK] = result.total[PEAK]
    return {
        "rows": [{key: _figure(key, value) for key, value in row.items()} for row in result.rows],
        "total": total,
    }


def windows(result: Report) -> list[str]:
    """The rate-limit windows whose peaks the report shows (those of its total, in order)."""
    return list(result.total.get(PEAK) or {})


def dump_json(doc: dict[str, Any]) -> str:
    """The document with one row per line (json's indenting encoder is ten times slower)."""
    rows = ",\n    ".join(json.dumps(row) for row in doc["rows"])
    return ('{\n  "rows": [' + (f"\n    {rows}\n  " if rows else "") + '],\n  "total": '
            + json.dumps(doc["total"]) + "\n}")


def write_report_csv(result: Report, stream: TextIO) -> None:
    figures, names, keys = report_figures(result.by), windows(result), row_keys(result.by)
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow([*keys, *figures, *(f"peak:{w}" for w in names)])

    def peaks(figures_of: dict[str, Any]) -> list[Any]:
        return ["" if (figures_of.get(PEAK) or {}).get(w) is None else figures_of[PEAK][w] for w in names]

    for row in result.rows:
        writer.writerow([*("" if row[k] is None else row[k] for k in keys),
                         *(_figure(f, row[f]) for f in figures), *peaks(row)])
    writer.writerow([*("" for _ in keys), *(result.total[f] for f in figures), *peaks(result.total)])


def calls_json(calls: list[dict[str, Any]]) -> str:
    """A list of calls, one object per line."""
    return "[" + ",\n ".join(json.dumps({name: call[name] for name in CALL_EXPORT}) for call in calls) + "]\n"


def write_calls_csv(calls: list[dict[str, Any]], stream: TextIO) -> None:
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(CALL_EXPORT)
    for call in calls:
        writer.writerow(["" if call[name] is None else call[name] for name in CALL_EXPORT])
