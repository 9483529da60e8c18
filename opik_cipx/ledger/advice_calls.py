"""Findings that change whole calls: how they used the prompt cache, and which model ran them
(docs/ADVICE.md, "Cache" and "Models").

- `cache_break`, per cause (docs/CACHE_DIAGNOSTICS.md): each break's lost tokens read instead of
  written again (the ones it wrote again, at most its writes, taken from its 5-minute and 1-hour
  writes in their proportion) or sent uncached (the rest), re-priced.
- `cache_ttl_1h`, per project: every cache write of the project's calls made a 1-hour write (at
  its higher price), and every break whose only cause is an expired cache after a pause of at
  most an hour recovered as above; the saving is the sum, net of the dearer writes, when positive.
- `model_choice`, per project, kind of job and model: Claude Code's own background calls (a
  session's title, a web search, a fetched page: `side:<kind>`) and subagents do narrow jobs.
  Those that ran on a model of another family than the smallest one the price table knows
  (Haiku) are re-priced on the newest model of that family, with the same tokens in the same
  tiers, at its rates in force at each call's start (its tiers by each prompt).
"""

import sqlite3
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from typing import Any

from opik_cipx.ledger.advice_parts import OWN
from opik_cipx.ledger.call_parts import AGENT
from opik_cipx.ledger.findings import (
    PRICING_KEYS,
    CallGroup,
    CallRow,
    Finding,
    call_groups,
    calls,
    group_calls,
    tokens_json,
    window,
)
from opik_cipx.ledger.queries import Selection
from opik_cipx.ledger.reprice import MTOK, Repricer, Tokens, usd
from opik_cipx.materialize.pricing import model_family

TTL_1H_S = 3600
EXPIRED = "ttl_expired"
ACTIONS = {
    "model_changed": "keep one model per session: after /model the next call reads the whole history uncached; "
                     "switch models in a new session",
    EXPIRED: "pauses outlived the 5-minute cache (see cache_ttl_1h for what 1-hour cache writes would save)",
    "tools_changed": "connect MCP servers before the session starts and keep them: a tool set that changes "
                     "mid-session writes the whole prompt again",
    "system_prompt_changed": "keep the system prompt as it is within a session (output style, settings, an "
                             "upgrade of Claude Code: between sessions)",
    "thinking_changed": "change thinking and effort settings between sessions rather than within one",
    "compaction": "compaction writes the prompt again by design: compact at natural breaks (see history_weight)",
    "messages_changed": "rewinding or editing earlier messages writes everything after them again",
    "unknown": "nothing in the requests explains these breaks (the cache was evicted on Anthropic's side): "
               "nothing to change",
}


def recovered(call: CallRow) -> Callable[[Tokens], Tokens]:
    """The change that makes a break read its lost tokens: written again (at most its writes, from
    5-minute and 1-hour writes in their proportion), then sent uncached."""
    written = call.write_5m + call.write_1h
    rewritten = min(call.break_tokens, written)
    resent = min(call.break_tokens - rewritten, call.fresh)
    fives = call.write_5m / written if written else 1.0

    def change(t: Tokens) -> Tokens:
        fives_now = t.write_5m / (t.write_5m + t.write_1h) if t.write_5m + t.write_1h else fives
        return t._replace(fresh=t.fresh - resent, write_5m=t.write_5m - rewritten * fives_now,
                          write_1h=t.write_1h - rewritten * (1 - fives_now), read=t.read + rewritten + resent)

    return change


def one_hour(t: Tokens) -> Tokens:
    """Every cache write a 1-hour write."""
    return t._replace(write_5m=0.0, write_1h=t.write_5m + t.write_1h)


def recovered_one_hour(back: Callable[[Tokens], Tokens], t: Tokens) -> Tokens:
    """Every cache write a 1-hour write, and the break recovered (`back`)."""
    return back(one_hour(t))


def cache_findings(conn: sqlite3.Connection, sel: Selection, repricer: Repricer) -> list[Finding]:
    spared = list(calls(conn, sel, f"c.cache_break_causes = '{EXPIRED}' AND c.cache_gap_s <= {TTL_1H_S} "
                                   "AND c.cache_break_tokens > 0"))
    return _by_cause(conn, sel, repricer) + _one_hour(conn, sel, repricer, spared)


BREAKS = "c.cache_break_cause IS NOT NULL AND c.cache_break_tokens > 0"
CAUSE = {"cause": "c.cache_break_cause"}
REWRITTEN = "min(c.cache_break_tokens, c.cache_creation_input_tokens)"
RECOVERED = (  # what `recovered` moves to cache reads, by class: fresh, 5-minute and 1-hour writes
    f"total(min(c.cache_break_tokens - {REWRITTEN}, c.input_tokens))",
    f"total(CASE WHEN c.cache_creation_input_tokens > 0 THEN {REWRITTEN} * 1.0 * c.cache_write_5m_tokens "
    "/ c.cache_creation_input_tokens ELSE 0 END)",
    f"total(CASE WHEN c.cache_creation_input_tokens > 0 THEN {REWRITTEN} * 1.0 * c.cache_write_1h_tokens "
    "/ c.cache_creation_input_tokens ELSE 0 END)",
)


def _by_cause(conn: sqlite3.Connection, sel: Selection, repricer: Repricer) -> list[Finding]:
    """Per cause: the breaks summed per model, pricing settings and day, priced at one set of rates
    where they have it (moving tokens between classes keeps each prompt's size, so its tier),
    else call by call."""
    moved = _moved(conn, sel)
    saving: dict[str, float] = defaultdict(float)
    unpriced: dict[str, int] = defaultdict(int)
    for group in call_groups(conn, sel, BREAKS, {}, CAUSE):
        rates = group.rates(repricer)
        cause = group.keys[0]
        if rates is not None:
            fresh, five, hour = moved[(*group.keys, group.model, group.speed, group.inference_geo, group.day)]
            saving[cause] += (fresh * (rates["input"] - rates["cache_read"]) + five * (
                rates["cache_write_5m"] - rates["cache_read"]) + hour * (rates["cache_write_1h"] - rates["cache_read"])
                              ) / MTOK
            continue
        for c in group_calls(conn, sel, BREAKS, {}, CAUSE, group):
            one = repricer.saving(c.priced, c.tokens, recovered(c))
            saving[cause] += one or 0.0
            unpriced[cause] += one is None
    return [_cause_finding(conn, sel, cause, total, unpriced[cause]) for cause, total in saving.items()]


def _moved(conn: sqlite3.Connection, sel: Selection) -> dict[tuple, tuple[float, float, float]]:
    """`RECOVERED` per group of `call_groups(..., BREAKS, {}, CAUSE)`: (cause, model, speed, region, day) -> sums."""
    params: dict[str, Any] = {}
    keys = ", ".join([*CAUSE.values(), *PRICING_KEYS.values()])
    return {tuple(row[:5]): tuple(row[5:]) for row in conn.execute(
        f"SELECT {keys}, {', '.join(RECOVERED)} FROM calls c WHERE {window(sel, params)} AND {BREAKS} "
        f"GROUP BY {keys}", params)}


def _cause_finding(conn: sqlite3.Connection, sel: Selection, cause: str, saving: float, unpriced: int) -> Finding:
    params: dict[str, Any] = {"cause": cause}
    where = f"{window(sel, params)} AND {BREAKS} AND c.cache_break_cause = :cause"
    breaks, lost, sessions, first = conn.execute(
        f"SELECT count(*), total(c.cache_break_tokens), count(DISTINCT c.session_id), min(c.started_at_ns) "
        f"FROM calls c WHERE {where}", params).fetchone()
    evidence: dict[str, Any] = {
        "breaks": breaks, "lost_tokens": int(lost), "sessions": sessions,
        "projects": {project or "(unknown)": n for project, n in conn.execute(
            f"SELECT c.project_dir, count(*) FROM calls c WHERE {where} GROUP BY 1", params)},
        "examples": [row[0] for row in conn.execute(
            f"SELECT c.capture_id FROM calls c WHERE {where} ORDER BY c.started_at_ns DESC LIMIT 3", params)],
        "assumes": ["each break would have read what its conversation's previous call had cached; nothing "
                    "else in the call changes"]}
    if unpriced:
        evidence["unpriced_calls"] = unpriced
    return Finding("cache_break", cause, saving, breaks, evidence, ACTIONS.get(cause, ACTIONS["unknown"]), first)


def _one_hour(conn: sqlite3.Connection, sel: Selection, repricer: Repricer, breaks: list[CallRow]) -> list[Finding]:
    """`breaks`: those an hour-long cache would have spared (only the cache had expired, after a
    pause of at most an hour)."""
    spared: dict[str, list[CallRow]] = defaultdict(list)
    for call in breaks:
        spared[call.project_dir or ""].append(call)
    if not spared:
        return []
    keys = {"project": "coalesce(c.project_dir, '')"}
    dearer: dict[str, float] = defaultdict(float)
    for summed in call_groups(conn, sel, "c.cache_write_5m_tokens > 0", {}, keys):
        if summed.keys[0] in spared:
            dearer[summed.keys[0]] += _dearer(conn, sel, repricer, keys, summed)
    out = []
    for project, group in spared.items():
        recovered_usd = 0.0
        for c in group:
            both = repricer.saving(c.priced, c.tokens, partial(recovered_one_hour, recovered(c)))
            alone = repricer.saving(c.priced, c.tokens, one_hour)
            recovered_usd += (both or 0.0) - (alone or 0.0)
        net = recovered_usd + dearer[project]
        if net <= 0:
            continue
        gaps = [c.gap_s or 0 for c in group]
        evidence = {
            "project": project or None, "breaks_spared": len(group), "tokens_read_instead": sum(
                c.break_tokens for c in group), "pauses_s": [min(gaps), max(gaps)],
            "sessions": len({c.session_id for c in group}), "spared_usd": round(recovered_usd, 6),
            "dearer_writes_usd": round(-dearer[project], 6),
            "examples": [c.capture_id for c in sorted(group, key=lambda c: -c.started_at_ns)[:3]],
            "assumes": ["every cache write of the project's calls is a 1-hour write, at its price",
                        "a call after a pause of at most an hour reads what its conversation's previous call "
                        "cached (no other eviction); a longer pause misses either way"]}
        action = (f"set ENABLE_PROMPT_CACHING_1H=1 for Claude Code in {project or 'these sessions'} (the `env` of "
                  "its settings.json): its pauses outlive the 5-minute cache")
        out.append(Finding("cache_ttl_1h", project or "(unknown project)", net, len(group), evidence, action,
                           min(c.started_at_ns for c in group)))
    return out


def _dearer(conn: sqlite3.Connection, sel: Selection, repricer: Repricer, keys: dict[str, str],
            group: CallGroup) -> float:
    """What making the group's 5-minute writes 1-hour ones saves (a negative amount)."""
    rates = group.rates(repricer)
    if rates is not None:
        return usd(Tokens(write_5m=group.tokens.write_5m), rates) - usd(Tokens(write_1h=group.tokens.write_5m), rates)
    total = 0.0
    for c in group_calls(conn, sel, "c.cache_write_5m_tokens > 0", {}, keys, group):
        total += repricer.saving(c.priced, c.tokens, one_hour) or 0.0
    return total


# -- model choice ---------------------------------------------------------------------------------

SMALL = "haiku"
JOBS = "(c.kind IN ('side', 'subagent') OR c.agent_id IS NOT NULL)"
KEYS = {
    "project": "coalesce(c.project_dir, '')",
    "job": "CASE WHEN c.kind = 'side' THEN 'side:' || coalesce(c.side_kind, 'unknown') "
           "ELSE 'subagent ' || coalesce(c.agent_type, 'unknown') END",
}


def model_findings(conn: sqlite3.Connection, sel: Selection, repricer: Repricer) -> list[Finding]:
    target = repricer.table.newest.get(SMALL)
    if target is None:
        return []
    sums: dict[tuple[str, str, str], dict[str, Any]] = defaultdict(
        lambda: {"saving": 0.0, "calls": 0, "tokens": Tokens(), "unpriced": 0, "first": None})
    for group in call_groups(conn, sel, JOBS, {}, KEYS):
        found = repricer.resolve(group.model) if group.model else None
        if found is None or found.priced_as is None or model_family(found.priced_as) in (None, SMALL):
            continue
        into = sums[(*group.keys, group.model or "")]
        saving, unpriced = _saving(conn, sel, repricer, group, target)
        into["saving"] += saving
        into["unpriced"] += unpriced
        into["calls"] += group.calls
        into["tokens"] = into["tokens"].plus(group.tokens)
        into["first"] = min(into["first"] or group.first_ns, group.first_ns)
    out = []
    for (project, job, model), s in sums.items():
        evidence: dict[str, Any] = {
            "project": project or None, "model": model, "priced_as": target, "tokens": tokens_json(s["tokens"]),
            "output_tokens": round(s["tokens"].output),
            "assumes": [f"the same tokens, in the same cache tiers, priced as {target}",
                        f"{target} would have done these jobs as well, with answers as long (not computable)"]}
        if s["unpriced"]:
            evidence["unpriced_calls"] = s["unpriced"]
        out.append(Finding("model_choice", f"{job} on {model}", s["saving"], s["calls"], evidence,
                           _action(job, target), s["first"] or 0))
    return out


def _saving(conn: sqlite3.Connection, sel: Selection, repricer: Repricer, group: CallGroup,
            target: str) -> tuple[float, int]:
    """What the group's calls would have saved on `target`, and how many could not be priced."""
    rates, other = group.rates(repricer), group.rates(repricer, target)
    if rates is not None and other is not None:
        return usd(group.tokens, rates) - usd(group.tokens, other), 0
    total, unpriced = 0.0, 0
    for call in group_calls(conn, sel, JOBS, {}, KEYS, group):
        saving = repricer.saving(call.priced, call.tokens, lambda t: t, model=target)
        if saving is None:
            unpriced += 1
        else:
            total += saving
    return total, unpriced


def _action(job: str, target: str) -> str:
    if job.startswith("side:"):
        return (f"have Claude Code make its background calls on {target}: set ANTHROPIC_DEFAULT_HAIKU_MODEL={target} "
                "(ANTHROPIC_SMALL_FAST_MODEL in older versions) in the `env` of its settings.json")
    agent = job.removeprefix("subagent ")
    if agent in OWN[AGENT]:
        return (f"run Claude Code's {agent} subagent on {target}: CLAUDE_CODE_SUBAGENT_MODEL={target} in the `env` of "
                "its settings.json (every subagent)")
    return (f"run the {agent} subagent on {target}: `model: haiku` in the front matter of its definition "
            f"(.claude/agents/{agent}.md), or CLAUDE_CODE_SUBAGENT_MODEL={target} for every subagent")
