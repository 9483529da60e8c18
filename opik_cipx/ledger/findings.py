"""What every kind of `advise` finding is made of (docs/ADVICE.md): the `Finding` itself, and the
calls of a period as a counterfactual reads them (`CallRow`, with its tokens and what pricing it
again needs)."""

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from opik_cipx.ledger.queries import MAX_NS, Selection
from opik_cipx.ledger.reprice import Priced, Repricer, Tokens
from opik_cipx.ledger.schema import PROMPT

WEEK_NS = 7 * 86400 * 10**9


@dataclass
class Finding:
    """One thing to change: `kind`, its `subject` (a server, skill, agent, file, cause, session),
    the saving over the period (None: it cannot be computed, `evidence` says why), the calls it
    concerns, the evidence (which calls, how many tokens, what the arithmetic assumed) and the
    action in the user's terms."""

    kind: str
    subject: str
    saving_usd: float | None
    calls: int
    evidence: dict[str, Any]
    action: str
    first_ns: int = field(default=0, repr=False)  # the earliest affected call (for the captures note)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "subject": self.subject,
                "saving_usd": None if self.saving_usd is None else round(self.saving_usd, 6),
                "calls": self.calls, "evidence": self.evidence, "action": self.action}


# -- the calls of a period -------------------------------------------------------------------

CALL_FIELDS = ("id", "capture_id", "started_at_ns", "session_id", "project_dir", "model", "kind", "side_kind",
               "agent_id", "agent_type", "input_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens",
               "cache_read_input_tokens", "output_tokens", "speed", "inference_geo", "usage_iterations", "cost_usd",
               "cache_break_cause", "cache_break_causes", "cache_break_tokens", "cache_gap_s", "history_read_tokens",
               "messages_read_tokens")
SELECT_CALLS = ", ".join(f"c.{name}" for name in CALL_FIELDS)


class CallRow(NamedTuple):
    """A call as a counterfactual reads it (`CALL_FIELDS`)."""

    id: int
    capture_id: str
    started_at_ns: int
    session_id: str | None
    project_dir: str | None
    model: str | None
    kind: str
    side_kind: str | None
    agent_id: str | None
    agent_type: str | None
    fresh: int
    write_5m: int
    write_1h: int
    read: int
    output: int
    speed: str | None
    inference_geo: str | None
    iterations: str | None
    cost_usd: float | None
    break_cause: str | None
    break_causes: str | None
    break_tokens: int
    gap_s: float | None
    history_read: float
    messages_read: float

    @property
    def tokens(self) -> Tokens:
        return Tokens(self.fresh, self.write_5m, self.write_1h, self.read, self.output)

    @property
    def priced(self) -> Priced:
        return Priced(self.model, self.started_at_ns, self.speed, self.inference_geo, self.iterations)


def window(sel: Selection, params: dict[str, Any], alias: str = "c") -> str:
    """The SQL condition keeping calls (`alias`) of `sel`'s window and project; values into `params`."""
    params.update(since=sel.since_ns or 0, until=sel.until_ns or MAX_NS)
    where = f"{alias}.started_at_ns >= :since AND {alias}.started_at_ns < :until"
    return where + project_condition(f"{alias}.project_dir", sel.project, params)


def project_condition(column: str, project: str | None, params: dict[str, Any]) -> str:
    """` AND` the column names `project` or a directory below it ('' without a project)."""
    if project is None:
        return ""
    root = project.rstrip("/") or "/"
    params.update(project=root, prefix=root.rstrip("/") + "/", prefix_len=len(root.rstrip("/")) + 1)
    return f" AND ({column} = :project OR substr({column}, 1, :prefix_len) = :prefix)"


def calls(conn: sqlite3.Connection, sel: Selection, where: str = "1", params: dict[str, Any] | None = None,
          order: str = "c.started_at_ns, c.id") -> Iterator[CallRow]:
    """The calls of `sel` that match `where` (over `calls c`), in `order`."""
    params = dict(params or {})
    sql = f"SELECT {SELECT_CALLS} FROM calls c WHERE {window(sel, params)} AND {where} ORDER BY {order}"
    for row in conn.execute(sql, params):
        yield CallRow(*row)


def tokens_json(tokens: Tokens) -> dict[str, float]:
    """Input tokens by tier, as evidence."""
    return {"fresh": round(tokens.fresh, 2), "read": round(tokens.read, 2), "write_5m": round(tokens.write_5m, 2),
            "write_1h": round(tokens.write_1h, 2)}


# -- calls summed by what prices them alike ----------------------------------------------------

PRICING_KEYS = {"model": "c.model", "speed": "c.speed", "inference_geo": "c.inference_geo", "day": "c.day"}


class CallGroup(NamedTuple):
    """Calls of one local day with the same `keys` values, model and pricing settings: their tokens
    summed, with what decides whether one set of rates prices them all (`Repricer.steady`)."""

    keys: tuple
    model: str | None
    speed: str | None
    inference_geo: str | None
    day: str
    calls: int
    tokens: Tokens
    prompt_max: int
    first_ns: int
    last_ns: int
    iterations: int

    def rates(self, repricer: Repricer, model: str | None = None) -> dict[str, float] | None:
        """The one set of rates of all its calls (on `model` when given), or None: price them one by one."""
        if self.iterations:
            return None
        return repricer.steady(model or self.model, self.first_ns, self.last_ns, self.prompt_max, self.speed,
                               self.inference_geo)


def call_groups(conn: sqlite3.Connection, sel: Selection, where: str, params: dict[str, Any],
                keys: dict[str, str]) -> list[CallGroup]:
    """The calls of `sel` matching `where`, summed per `keys` (name -> expression over `calls c`),
    model, pricing settings and day."""
    params = dict(params)
    group = [*keys.values(), *PRICING_KEYS.values()]
    sql = (f"SELECT {', '.join(group)}, count(*), total(c.input_tokens), total(c.cache_write_5m_tokens), "
           "total(c.cache_write_1h_tokens), total(c.cache_read_input_tokens), total(c.output_tokens), "
           f"max({PROMPT}), min(c.started_at_ns), max(c.started_at_ns), count(c.usage_iterations) FROM calls c "
           f"WHERE {window(sel, params)} AND {where} GROUP BY {', '.join(group)}")
    n = len(keys)
    out = []
    for row in conn.execute(sql, params):
        model, speed, geo, day, count = row[n:n + 5]
        prompt_max, first_ns, last_ns, iterations = row[n + 10:]
        out.append(CallGroup(tuple(row[:n]), model, speed, geo, day, count, Tokens(*row[n + 5:n + 10]), prompt_max,
                             first_ns, last_ns, iterations))
    return out


def group_calls(conn: sqlite3.Connection, sel: Selection, where: str, params: dict[str, Any], keys: dict[str, str],
                group: CallGroup) -> Iterator[CallRow]:
    """The calls a `CallGroup` sums."""
    params = dict(params)
    values = dict(zip(keys, group.keys, strict=True))
    values.update(model=group.model, speed=group.speed, inference_geo=group.inference_geo, day=group.day)
    conditions = [f"{expr} IS :g_{name}" for name, expr in {**keys, **PRICING_KEYS}.items()]
    params.update({f"g_{name}": value for name, value in values.items()})
    return calls(conn, sel, f"{where} AND {' AND '.join(conditions)}", params)
