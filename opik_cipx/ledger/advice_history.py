"""Findings on history weight: sessions whose earlier turns dominate the bill, and what compacting at
the best point would have saved net of the compaction's own cost (docs/ADVICE.md, "History").

A session's main loop (its `main` calls; `compaction` calls split it into epochs) carries the
conversation in every call. Its history share is what the calls paid for the conversation they
read from the cache (`calls.history_read_tokens` at each call's cache-read rate) over what the
main loop cost; a session is a finding when that share is over one half.

Compacting just before main call `c` of an epoch (after the call `p` before it), with a summary of
`S` tokens (the median output of the compactions the ledger holds):
- the compaction call reads what `p` cached (its cache reads and writes), is sent `p`'s uncached
  input and answer, and writes `S` tokens of output, at `p`'s model and rates;
- `c` carries the summary instead of the `H` history tokens it read; the prefix changed, so it
  writes again what it read of its messages besides that history, and the summary
  (`messages_read - H + S` more cache writes, `messages_read` fewer reads);
- every later main call `j` of the epoch reads the summary instead of that history (`min(H,
  history_read_j) - S` fewer reads).
The point with the largest saving is the finding's; none saves anything, no finding.
"""

import sqlite3
from collections import defaultdict
from functools import partial
from statistics import median
from typing import Any

from opik_cipx.ledger.findings import PROMPT, CallRow, Finding, calls, window
from opik_cipx.ledger.queries import Selection
from opik_cipx.ledger.reprice import MTOK, Repricer, Tokens
from opik_cipx.ledger.sessions import session_info

DOMINATES = 0.5  # the history share over which earlier turns dominate a session's bill
MAIN_LOOP = "c.agent_id IS NULL AND c.kind IN ('main', 'compaction')"


def summary_tokens(conn: sqlite3.Connection) -> tuple[float | None, int]:
    """The median output of the compactions the ledger holds (a summary's size), and how many."""
    sizes = [row[0] for row in conn.execute(
        "SELECT output_tokens FROM calls WHERE kind = 'compaction' AND error_type IS NULL AND output_tokens > 0")]
    return (median(sizes) if sizes else None), len(sizes)


def findings(conn: sqlite3.Connection, sel: Selection, repricer: Repricer) -> list[Finding]:
    # a necessary condition, in tokens: the read rate is the lowest, so a dollar share over one half
    # needs a token share over one half too
    params: dict[str, Any] = {}
    heavy = [row[0] for row in conn.execute(
        f"SELECT c.session_id FROM calls c WHERE {window(sel, params)} AND {MAIN_LOOP} AND c.session_id IS NOT NULL "
        f"GROUP BY c.session_id HAVING total(c.history_read_tokens) > {DOMINATES} * total({PROMPT})", params)]
    if not heavy:
        return []
    summary, compactions = summary_tokens(conn)
    sessions: dict[str, list[CallRow]] = defaultdict(list)
    for start in range(0, len(heavy), 500):
        chunk = {f"s{i}": s for i, s in enumerate(heavy[start:start + 500])}
        for call in calls(conn, sel, f"{MAIN_LOOP} AND c.session_id IN ({', '.join(':' + k for k in chunk)})", chunk):
            sessions[call.session_id or ""].append(call)
    info = session_info(conn, sessions)
    out = []
    for session, main in sessions.items():
        finding = _session(session, main, summary, compactions, repricer)
        if finding is not None:
            known = info.get(session)
            finding.evidence["label"] = known.label if known else None
            out.append(finding)
    return out


def _session(session: str, main: list[CallRow], summary: float | None, compactions: int,
             repricer: Repricer) -> Finding | None:
    cost = sum(c.cost_usd or 0.0 for c in main)
    history = 0.0
    for c in main:
        rates = repricer.rates(c.model, c.started_at_ns, c.tokens.prompt, c.speed, c.inference_geo)
        history += c.history_read * rates["cache_read"] / MTOK if rates else 0.0
    if not cost or history <= DOMINATES * cost:
        return None
    evidence: dict[str, Any] = {
        "project": main[0].project_dir, "main_calls": len(main), "main_loop_usd": round(cost, 6),
        "history_usd": round(history, 6), "history_share": round(history / cost, 4),
        "history_tokens_read": round(sum(c.history_read for c in main), 2)}
    action = "compact earlier in sessions like this one (`/compact` at a natural break), or start a new session"
    if summary is None:
        evidence["why_no_saving"] = ("no compaction in the ledger to size a summary by: after one `/compact`, "
                                     "advise prices compacting earlier")
        return Finding("history_weight", session, None, len(main), evidence, action, main[0].started_at_ns)
    best = None
    for epoch in _epochs(main):
        found = best_point(epoch, summary, repricer)
        if found is not None and (best is None or found[1] > best[1]):
            best = found
    if best is None or best[1] <= 0:
        return None
    at, saving, compaction, later = best
    evidence.update(
        compact_before=at.capture_id, compact_before_call=main.index(at) + 1, history_tokens_replaced=round(
            at.history_read, 2), summary_tokens=summary, summary_from_compactions=compactions,
        compaction_call_usd=round(compaction, 6), later_calls=later,
        assumes=["the session goes on as it did: the same prompts, answers and tool results (not computable)",
                 f"the summary is {summary:g} tokens, the median of the {compactions} compaction(s) in the ledger",
                 "the compaction call reads what the call before it cached; the next call writes its messages "
                 "again; every later call reads the summary instead of the history it replaced"])
    action = (f"compact this session before its call {main.index(at) + 1} of {len(main)} (`/compact`); "
              "compact at such points in sessions like it")
    return Finding("history_weight", session, saving, later, evidence, action, at.started_at_ns)


def _epochs(main: list[CallRow]) -> list[list[CallRow]]:
    """The main calls between compactions (a compaction call ends an epoch)."""
    out: list[list[CallRow]] = [[]]
    for call in main:
        if call.kind == "compaction":
            out.append([])
        else:
            out[-1].append(call)
    return [epoch for epoch in out if len(epoch) > 1]


def best_point(epoch: list[CallRow], summary: float, repricer: Repricer) -> tuple[CallRow, float, float, int] | None:
    """The call of `epoch` before which compacting saves most: (it, the saving net of the compaction
    call, what the compaction call costs, the calls from it to the epoch's end)."""
    n = len(epoch)
    steady = [None if c.iterations else repricer.steady(c.model, c.started_at_ns, c.started_at_ns, c.tokens.prompt,
                                                        c.speed, c.inference_geo) for c in epoch]
    suffix_rate = [0.0] * (n + 1)  # cache-read rate (USD per token) summed over the later calls priced alike
    suffix_history = [float("inf")] * (n + 1)  # the least history any later call read
    for j in range(n - 1, -1, -1):
        rates = steady[j]
        suffix_rate[j] = suffix_rate[j + 1] + (rates["cache_read"] / MTOK if rates else 0.0)
        suffix_history[j] = min(suffix_history[j + 1], epoch[j].history_read)
    others = [j for j in range(n) if steady[j] is None]
    best = None
    for index in range(1, n):
        call, before = epoch[index], epoch[index - 1]
        replaced = call.history_read
        if replaced <= summary:
            continue
        compaction = repricer.cost(before.priced._replace(iterations=None), Tokens(
            fresh=before.fresh + before.output, read=before.read + before.write_5m + before.write_1h, output=summary))
        first = repricer.saving(call.priced, call.tokens,
                                partial(_rewritten, call=call, replaced=replaced, summary=summary))
        if compaction is None or first is None:
            continue
        later = 0.0
        if suffix_history[index + 1] >= replaced:
            later = (replaced - summary) * suffix_rate[index + 1]
            ahead = [j for j in others if j > index]
        else:
            ahead = list(range(index + 1, n))
        for j in ahead:
            later += repricer.saving(epoch[j].priced, epoch[j].tokens,
                                     partial(_summarised, call=epoch[j], replaced=replaced, summary=summary)) or 0.0
        saving = first + later - compaction
        if best is None or saving > best[1]:
            best = (call, saving, compaction, n - index)
    return best


def _rewritten(t: Tokens, call: CallRow, replaced: float, summary: float) -> Tokens:
    """The first call after the compaction: what it read of its messages is written again, the history
    it read replaced by the summary."""
    rewrite = call.messages_read - replaced + summary
    if call.write_1h and not call.write_5m:
        return t._replace(read=t.read - call.messages_read, write_1h=t.write_1h + rewrite)
    return t._replace(read=t.read - call.messages_read, write_5m=t.write_5m + rewrite)


def _summarised(t: Tokens, call: CallRow, replaced: float, summary: float) -> Tokens:
    """A later call: it reads the summary instead of the history it replaced."""
    return t._replace(read=t.read - min(replaced, call.history_read) + summary)
