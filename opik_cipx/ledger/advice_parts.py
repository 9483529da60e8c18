"""Findings on what the requests define: MCP servers, skills and agents that cost and were not used,
memory files, and what is no longer listed (docs/ADVICE.md, "Definitions").

A definition group's saving in a call is the call's cost minus its cost without the group's
tokens, each tier losing the group's share of it (`call_parts`), re-priced (`ledger/reprice.py`).
Sessions wholly inside the period are read from their sums (`session_parts`), priced at one set of
rates when every call of the sum has the same (no dated price change between its first and last
call, no price tier its longest prompt reaches, no billed iterations); the others call by call.

- `unused_<part>` / `rarely_used_<part>` (`mcp_server`, `skill`, `agent`), per project: a group
  listed in the project's calls and used (called by an answer, or its use carried in a request) in
  none of its sessions, or in at most one in `RARELY` of them; the saving is its definitions' cost
  in the sessions that did not use it.
- `memory_file`: a memory file's cost in every call that carried it, with its cost per session
  and per week.
- `realised`: a group listed in a project's calls in the period before and in none of its calls
  now; what it saves is estimated at its cost per call before, times the project's calls now of
  the kinds that carried it.
"""

import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from opik_cipx.ledger.call_parts import AGENT, MCP, MEMORY_FILE, SKILL
from opik_cipx.ledger.findings import (
    SELECT_CALLS,
    WEEK_NS,
    CallRow,
    Finding,
    project_condition,
    tokens_json,
    window,
)
from opik_cipx.ledger.queries import MAX_NS, Selection
from opik_cipx.ledger.reprice import Repricer, Tokens, summed, usd, without
from opik_cipx.ledger.schema import PART_FIGURES, PROMPT, SESSION_PART_KEYS

RARELY = 10  # rarely used: in at most one in this many of the sessions that listed it
# Claude Code's own skills and agent types (as Claude Code 2.1.197 lists them): they cannot be
# removed, so they are never a finding (`report --by skill` shows what they cost).
OWN = {SKILL: frozenset({"claude-api", "code-review", "deep-research", "fewer-permission-prompts", "init",
                         "keybindings-help", "loop", "review", "run", "security-review", "simplify", "update-config",
                         "verify"}),
       AGENT: frozenset({"claude", "Explore", "general-purpose", "Plan", "statusline-setup"})}
NAMES = {MCP: "mcp_server", SKILL: "skill", AGENT: "agent"}
WORDS = {MCP: "MCP server", SKILL: "skill", AGENT: "agent", MEMORY_FILE: "memory file"}
SESSION_PART_FIELDS = (*SESSION_PART_KEYS, "calls", *PART_FIGURES, "iterations", "prompt_max", "first_ns", "last_ns")
CHUNK = 500


@dataclass
class Use:
    """A group in one session (within the period): the calls that listed it, its tokens and what
    removing it saves there, and its uses."""

    listed: int = 0
    tokens: Tokens = Tokens()
    saving: float = 0.0
    unpriced: int = 0
    uses: int = 0
    invocations: int = 0
    first_ns: int = MAX_NS
    kinds: set[str] = field(default_factory=set)

    def add(self, calls: int, tokens: Tokens, saving: float | None, invocations: int, loaded: int, first_ns: int,
            kind: str) -> None:
        if tokens.prompt > 0:
            self.listed += calls
            self.kinds.add(kind)
        self.tokens = self.tokens.plus(tokens)
        if saving is None:
            self.unpriced += calls
        else:
            self.saving += saving
        self.uses += invocations + loaded
        self.invocations += invocations
        self.first_ns = min(self.first_ns, first_ns)


Groups = dict[tuple[str, str, str], dict[str, Use]]  # (project, part, name) -> session -> use


def group_uses(conn: sqlite3.Connection, sel: Selection, repricer: Repricer) -> Groups:
    """Every definition group of the calls of `sel`, per project and session. Sessions wholly inside
    `sel` are read from their sums (`session_parts`), the calls in `sel` of the others summed alike;
    a session whose sums all have one set of rates is priced on them, any other call by call."""
    since, until = sel.since_ns or 0, sel.until_ns or MAX_NS
    params: dict[str, Any] = {"since": since, "until": until}
    sql = (f"SELECT {', '.join(SESSION_PART_FIELDS)} FROM session_parts sp WHERE sp.last_ns >= :since "
           f"AND sp.first_ns < :until" + project_condition("sp.project", sel.project, params))
    rows = [dict(zip(SESSION_PART_FIELDS, row, strict=True)) for row in conn.execute(sql, params)]
    cut = sorted({row["session_id"] for row in rows if row["first_ns"] < since or row["last_ns"] >= until})
    out: Groups = defaultdict(dict)
    by_call = _add_sums([row for row in rows if row["session_id"] not in set(cut)], repricer, out)
    for start in range(0, len(cut), CHUNK):
        by_call |= _add_sums(_window_sums(conn, sel, cut[start:start + CHUNK]), repricer, out)
    sessions = sorted(by_call)
    for start in range(0, len(sessions), CHUNK):
        _add_calls(conn, sel, repricer, sessions[start:start + CHUNK], out)
    return out


def _add_sums(rows: list[dict[str, Any]], repricer: Repricer, out: Groups) -> set[str]:
    """Add the sums of the sessions whose every sum has one set of rates (`Repricer.steady`);
    the other sessions, to be priced call by call."""
    by_call: set[str] = set()
    for row in rows:
        row["rates"] = None if row["iterations"] else repricer.steady(
            row["model"], row["first_ns"], row["last_ns"], row["prompt_max"], row["speed"], row["inference_geo"])
        if row["rates"] is None:
            by_call.add(row["session_id"])
    for row in rows:
        if row["session_id"] in by_call:
            continue
        tokens = Tokens(row["fresh_tokens"], row["write_5m_tokens"], row["write_1h_tokens"], row["read_tokens"])
        use = out[(row["project"], row["part"], row["name"])].setdefault(row["session_id"], Use())
        use.add(row["calls"], tokens, usd(tokens, row["rates"]), int(row["invocations"]), int(row["loaded"]),
                row["first_ns"], row["kind"])
    return by_call


def _window_sums(conn: sqlite3.Connection, sel: Selection, sessions: list[str]) -> list[dict[str, Any]]:
    """`session_parts`' rows of `sessions` made of their calls in `sel` alone."""
    params: dict[str, Any] = {f"s{i}": s for i, s in enumerate(sessions)}
    keys = ", ".join(SESSION_PART_KEYS.values())
    sums = ", ".join(f"total(p.{f})" for f in PART_FIGURES)
    sql = (f"SELECT {keys}, count(*), {sums}, count(c.usage_iterations), max({PROMPT}), min(c.started_at_ns), "
           f"max(c.started_at_ns) FROM calls c JOIN call_parts p ON p.call_id = c.id WHERE {window(sel, params)} "
           f"AND coalesce(c.session_id, '') IN ({', '.join(':' + k for k in params)}) GROUP BY {keys}")
    names = (*SESSION_PART_KEYS, "calls", *PART_FIGURES, "iterations", "prompt_max", "first_ns", "last_ns")
    return [dict(zip(names, row, strict=True)) for row in conn.execute(sql, params)]


def _add_calls(conn: sqlite3.Connection, sel: Selection, repricer: Repricer, sessions: list[str], out: Groups) -> None:
    """The groups of the calls of `sessions` in `sel`, each call re-priced on its own."""
    params: dict[str, Any] = {f"s{i}": s for i, s in enumerate(sessions)}
    sql = (f"SELECT {SELECT_CALLS}, p.part, p.name, p.fresh_tokens, p.read_tokens, p.write_5m_tokens, "
           "p.write_1h_tokens, p.invocations, p.loaded FROM calls c JOIN call_parts p ON p.call_id = c.id "
           f"WHERE {window(sel, params)} AND coalesce(c.session_id, '') IN ({', '.join(':' + k for k in params)})")
    width = len(SELECT_CALLS.split(", "))
    for row in conn.execute(sql, params):
        call = CallRow(*row[:width])
        part, name, fresh, read, write_5m, write_1h, invocations, loaded = row[width:]
        tokens = Tokens(fresh, write_5m, write_1h, read)
        saving = repricer.saving(call.priced, call.tokens, partial(without, tokens))
        use = out[(call.project_dir or "", part, name)].setdefault(call.session_id or "", Use())
        use.add(1, tokens, saving, invocations, loaded, call.started_at_ns, call.kind)


def findings(conn: sqlite3.Connection, sel: Selection, repricer: Repricer) -> list[Finding]:
    """Unused and rarely used MCP servers, skills and agents per project; memory files (`sel` has
    both ends: its length is what "per week" divides by)."""
    groups = group_uses(conn, sel, repricer)
    out = [f for (project, part, name), sessions in groups.items() if part != MEMORY_FILE
           for f in [_unused(project, part, name, sessions)] if f is not None]
    memory: dict[str, dict[str, Use]] = defaultdict(dict)
    for (project, part, name), sessions in groups.items():
        if part == MEMORY_FILE:
            for session, use in sessions.items():
                memory[name][f"{project}\0{session}"] = use
    weeks = max((sel.until_ns or 0) - (sel.since_ns or 0), 1) / WEEK_NS
    out += [f for name, sessions in memory.items() for f in [_memory(name, sessions, weeks)] if f is not None]
    _examples(conn, sel, out)
    return out


def _unused(project: str, part: str, name: str, sessions: dict[str, Use]) -> Finding | None:
    listed = {s: u for s, u in sessions.items() if u.listed}
    used = [s for s, u in sessions.items() if u.uses]
    if not listed or (used and len(used) * RARELY > len(listed)) or name in OWN.get(part, ()):
        return None
    kind = f"{'rarely_used' if used else 'unused'}_{NAMES[part]}"
    spared = [u for s, u in listed.items() if s not in used]
    tokens = summed(u.tokens for u in spared)
    calls = sum(u.listed for u in spared)
    evidence: dict[str, Any] = {
        "project": project or None, "listed_in_calls": sum(u.listed for u in listed.values()),
        "sessions": len(listed), "used_in_sessions": len(used),
        "invocations": sum(u.invocations for u in sessions.values()), "tokens": tokens_json(tokens),
        "sessions_counted": sorted(s for s in listed if s not in used)[:5]}
    _unpriced(evidence, spared)
    finding = Finding(kind, name, sum(u.saving for u in spared), calls, evidence, _action(part, name, project, used),
                      min(u.first_ns for u in spared))
    finding.evidence["assumes"] = ASSUMES[part]
    return finding


ASSUMES = {
    MCP: ["its tool schemas and instructions leave every call that listed them; each tier loses its share, the rest "
          "of the prompt keeps its tiers", "the answers would have been the same without it (not computable)"],
    SKILL: ["its entry leaves the list of available skills in every call that carried it; the rest keeps its tiers",
            "the answers would have been the same without it (not computable)"],
    AGENT: ["its entry leaves the list of agent types in every call that carried it; the rest keeps its tiers",
            "the answers would have been the same without it (not computable)"],
    MEMORY_FILE: ["the whole file leaves every call that carried it; the rest of the prompt keeps its tiers",
                  "the answers would have been the same without it (not computable)"],
}


def _action(part: str, name: str, project: str, used: list[str]) -> str:
    where = f" in {project}" if project else ""
    if part == MCP:
        keep = (f"; it was used in {len(used)} session(s): add it only to the sessions that need it "
                "(`claude --mcp-config <file>`)") if used else ""
        return (f"remove the MCP server {name}{where}: `claude mcp remove {name}`, or take it out of .mcp.json or "
                f"the --mcp-config file{keep}")
    keep = f"; it was used in {len(used)} session(s)" if used else ""
    if part == SKILL:
        return (f"remove the skill {name}{where}: delete or move .claude/skills/{name}/ (or ~/.claude/skills/{name}/), "
                f"or disable the plugin that brings it{keep}")
    return (f"remove the agent {name}{where}: delete or move .claude/agents/{name}.md (or ~/.claude/agents/{name}.md), "
            f"or disable the plugin that brings it{keep}")


def _memory(path: str, sessions: dict[str, Use], weeks: float) -> Finding | None:
    listed = {s: u for s, u in sessions.items() if u.listed}
    if not listed:
        return None
    saving = sum(u.saving for u in listed.values())
    tokens = summed(u.tokens for u in listed.values())
    calls = sum(u.listed for u in listed.values())
    evidence: dict[str, Any] = {
        "projects": sorted({s.split("\0", 1)[0] or "(unknown)" for s in listed}), "sessions": len(listed),
        "tokens": tokens_json(tokens), "tokens_per_call": round(tokens.prompt / calls, 2),
        "usd_per_session": round(saving / len(listed), 6), "usd_per_week": round(saving / weeks, 6),
        "assumes": ASSUMES[MEMORY_FILE]}
    _unpriced(evidence, listed.values())
    action = (f"trim {path}: it rides in every call ({round(tokens.prompt / calls):,} tokens each), "
              f"${saving / len(listed):,.4f} a session, ${saving / weeks:,.4f} a week; move what is rarely needed "
              "into files Claude reads when it needs them")
    return Finding("memory_file", path, saving, calls, evidence, action, min(u.first_ns for u in listed.values()))


def _unpriced(evidence: dict[str, Any], uses: Any) -> None:
    unpriced = sum(u.unpriced for u in uses)
    if unpriced:
        evidence["unpriced_calls"] = unpriced  # a model the price table cannot price: not in the saving


def _examples(conn: sqlite3.Connection, sel: Selection, found: list[Finding]) -> None:
    """Up to three of the latest calls each finding concerns, by capture id."""
    params: dict[str, Any] = {}
    where = window(sel, params)
    for finding in found:
        part = MEMORY_FILE if finding.kind == "memory_file" else next(p for p, n in NAMES.items()
                                                                        if finding.kind.endswith(n))
        params.update(part=part, name=finding.subject)
        project = "" if part == MEMORY_FILE else project_condition("c.project_dir", finding.evidence["project"], params)
        finding.evidence["examples"] = [row[0] for row in conn.execute(
            f"SELECT c.capture_id FROM calls c WHERE {where}{project} AND EXISTS (SELECT 1 FROM call_parts p WHERE "
            "p.call_id = c.id AND p.part = :part AND p.name = :name AND p.fresh_tokens + p.read_tokens + "
            "p.write_5m_tokens + p.write_1h_tokens > 0) ORDER BY c.started_at_ns DESC LIMIT 3", params)]


def realised(conn: sqlite3.Connection, sel: Selection, before: Selection, repricer: Repricer) -> list[Finding]:
    """Groups a project's calls listed in `before` and none of its calls list in `sel`, with the saving
    since estimated at their cost per call before."""
    now: dict[tuple[str, str], int] | None = None  # calls per project and kind, read when needed
    params: dict[str, Any] = {"since": sel.since_ns or 0, "until": sel.until_ns or MAX_NS}
    still = set(conn.execute(
        "SELECT DISTINCT project, part, name FROM session_parts sp WHERE sp.last_ns >= :since AND sp.first_ns < :until "
        "AND fresh_tokens + read_tokens + write_5m_tokens + write_1h_tokens > 0", params))
    out = []
    for (project, part, name), sessions in group_uses(conn, before, repricer).items():
        listed = [u for u in sessions.values() if u.listed]
        if not listed or (project, part, name) in still:
            continue
        kinds = set().union(*(u.kinds for u in listed))
        now = _calls_now(conn, sel) if now is None else now
        calls_now = sum(now.get((project, kind), 0) for kind in kinds)
        if not calls_now:
            continue
        calls_before = sum(u.listed for u in listed)
        per_call = sum(u.saving for u in listed) / calls_before
        evidence = {"project": project or None, "listed_before_in_calls": calls_before, "calls_now": calls_now,
                    "usd_per_call_before": round(per_call, 6),
                    "assumes": ["the calls now would have carried it as the calls before did, at its cost per call "
                                "then (an estimate: these calls never carried it)"]}
        subject = f"{WORDS[part]} {name}"
        action = f"nothing: {subject} is no longer in the requests of {project or 'these calls'}"
        out.append(Finding("no_longer_listed", subject, per_call * calls_now, calls_now, evidence, action,
                           sel.since_ns or 0))
    return out


def _calls_now(conn: sqlite3.Connection, sel: Selection) -> dict[tuple[str, str], int]:
    """The calls of `sel` per project and kind."""
    params: dict[str, Any] = {}
    return {(project, kind): count for project, kind, count in conn.execute(
        f"SELECT coalesce(c.project_dir, ''), c.kind, count(*) FROM calls c WHERE {window(sel, params)} "
        "GROUP BY 1, 2", params)}
