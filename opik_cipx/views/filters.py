"""What a dashboard URL asks for: a date range and filters, carried by every link (pure).

`?since=2026-11-01&until=2026-11-24&project=/home/dev/api&model=claude-opus-4-8&kind=main&
agent=main&session=44faf0ae` (any of them). `since` and `until` take what `report` takes: a local
date (`until` includes that day), an ISO date/time, or `7d` / `2h` ago. `session` may be the start
of an id. `mcp`, `skill` or `tool` (one of them) keeps the calls whose request carried that MCP
server, skill or tool: the calls list and its export only. Unknown parameters are ignored; a
value longer than `MAX_VALUE` is cut. Nothing here reads the ledger: the dashboard resolves a
session's start (`queries.find_session`) and passes the id to `selection`.
"""

import argparse
import urllib.parse
from dataclasses import dataclass, fields, replace

from opik_cipx.ledger.periods import parse_moment
from opik_cipx.ledger.queries import LABELLED, Selection

NAMES = ("since", "until", "project", "model", "kind", "agent", "session")
PARTS = tuple(LABELLED)  # mcp, skill, tool
MAX_VALUE = 1000


@dataclass(frozen=True)
class Filters:
    """The range and filters of one URL, as given ('' when not given)."""

    since: str = ""
    until: str = ""
    project: str = ""
    model: str = ""
    kind: str = ""
    agent: str = ""
    session: str = ""
    part: tuple[str, str] | None = None  # (mcp | skill | tool, its label)

    def items(self) -> list[tuple[str, str]]:
        """The parameters set, in URL order."""
        out = [(f.name, getattr(self, f.name)) for f in fields(self) if f.name in NAMES and getattr(self, f.name)]
        return out + ([self.part] if self.part else [])

    def query(self, **changes: str | tuple[str, str] | None) -> str:
        """`?a=b&...` for these filters with `changes` (a name set to '' or None is dropped);
        '' when nothing is left."""
        items = replace(self, **changes).items()  # type: ignore[arg-type]  # a name set to None is dropped as ''
        return "?" + urllib.parse.urlencode(items) if items else ""

    def link(self, path: str, **changes: str | tuple[str, str] | None) -> str:
        """`path` with these filters (and `changes`) as its query, HTML-escaped for an href."""
        return (urllib.parse.quote(path) + self.query(**changes)).replace("&", "&amp;")

    def with_range(self) -> bool:
        return bool(self.since or self.until)


def parse_filters(query: str) -> Filters:
    """The filters of a URL's query string: the first value of each known name, trimmed."""
    values: dict[str, str] = {}
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=False):
        if (name in NAMES or name in PARTS) and name not in values:
            values[name] = value.strip()[:MAX_VALUE]
    part = next(((name, values[name]) for name in PARTS if values.get(name)), None)
    return Filters(**{name: values.get(name, "") for name in NAMES}, part=part)


def selection(filters: Filters, now_s: float, session_id: str | None = None) -> tuple[Selection, list[str]]:
    """The ledger selection `filters` ask for (`session_id`: the session their `session` names),
    and one line per bound that could not be read (that bound is left out)."""
    bounds: dict[str, int | None] = {"since": None, "until": None}
    errors = []
    for name in bounds:
        raw = getattr(filters, name)
        if raw:
            try:
                bounds[name] = parse_moment(raw, whole_day_end=name == "until", now=now_s, flag=name)
            except argparse.ArgumentTypeError as exc:
                errors.append(str(exc))
    return Selection(since_ns=bounds["since"], until_ns=bounds["until"], session=session_id,
                     project=filters.project or None, model=filters.model or None, kind=filters.kind or None,
                     agent=filters.agent or None), errors
