"""`advise`: every finding kind on a corpus (the recorded one, or fixtures derived from it where it
lacks the pattern), its saving checked against a computation of its own here: a definition's
tokens by tier summed from the llm span's `metadata.cipx.blocks` (what Opik is sent, not the
ledger), priced at the rates `price_call` applied to the call, or `price_call` itself on a usage
changed by hand."""

import importlib.util
import json
from pathlib import Path

import pytest

from opik_cipx.ledger.advice import advise
from opik_cipx.ledger.db import open_reader
from opik_cipx.ledger.entry import ledger_entry
from opik_cipx.ledger.periods import local_day
from opik_cipx.ledger.queries import Selection
from opik_cipx.ledger.reprice import Repricer
from opik_cipx.ledger.store import Ledger
from opik_cipx.materialize.materializer import Materializer, MaterializerConfig
from opik_cipx.materialize.pricing import load_price_table, price_call
from opik_cipx.store.captures import CaptureStore
from tests.claude_code_corpus import FIXTURES, corpus_clock, corpus_now_ns, exchange, materialized, write_session_files
from tests.fake_clock import FakeClock

ADVICE = FIXTURES.parent / "advice"  # derived from the corpus: see its README
CACHE_BREAKS = FIXTURES.parent / "cache-breaks"
TABLE = load_price_table()
TIERS = {"read": "cache_read_input_tokens", "write": "cache_creation_input_tokens", "fresh": "input_tokens"}


def generator(folder: Path):
    spec = importlib.util.spec_from_file_location(f"generate_{folder.name}", folder / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def derived(tmp_path, root: Path, scenario: str, numbers: tuple[str, ...]) -> list:
    """(call record, llm span) of derived exchanges, through one materializer as the daemon runs it."""
    sessions = tmp_path / "sessions"
    write_session_files(sessions)
    materializer = Materializer(MaterializerConfig("claude-code", True, 500_000, sessions, sessions / "no.json"),
                                TABLE)
    out = []
    for number in numbers:
        result = materializer.materialize(exchange(scenario, number, root))
        out.append((result.call, llm_span(result.records)))
    return out


def llm_span(records: list[dict]) -> dict | None:
    return next((r["body"] for r in records if r["kind"] == "span" and r["body"].get("type") == "llm"), None)


def ledger(tmp_path, calls) -> object:
    path = tmp_path / "ledger.db"
    writer = Ledger(path, retention_days=400, clock=corpus_clock())
    assert writer.write_entries([ledger_entry(call) for call in calls])
    writer.close()
    return open_reader(path)


def advice_of(conn, since_ns: int = 0, until_ns: int | None = None):
    return advise(conn, Selection(since_ns=since_ns, until_ns=until_ns or corpus_now_ns()), Repricer(TABLE),
                  corpus_now_ns())


def found(advice, kind: str, subject: str):
    return next((f for f in advice.findings if (f.kind, f.subject) == (kind, subject)), None)


def usage_of(call) -> dict:
    u = call.usage
    return {"input_tokens": u.input, "cache_read_input_tokens": u.cache_read,
            "cache_creation_input_tokens": u.cache_write_5m + u.cache_write_1h, "output_tokens": u.output,
            "cache_creation": {"ephemeral_5m_input_tokens": u.cache_write_5m,
                               "ephemeral_1h_input_tokens": u.cache_write_1h}}


def without_blocks(call, span: dict, pick) -> float:
    """What the call saves without the input blocks `pick` selects: each cache tier's tokens shared
    by characters among the tier's blocks (Cost Intelligence's rule), the picked ones' shares
    priced at the rates the call was priced at (its writes 5-minute and 1-hour in its own split)."""
    blocks = [b for b in span["metadata"]["cipx"]["blocks"] if b["side"] == "input"]
    usage, rates = usage_of(call), call.cost.rates
    written = usage["cache_creation_input_tokens"]
    write_rate = ((call.usage.cache_write_5m * rates["cache_write_5m"] + call.usage.cache_write_1h
                   * rates["cache_write_1h"]) / written) if written else 0.0
    per_tier = {"read": rates["cache_read"], "write": write_rate, "fresh": rates["input"]}
    saving = 0.0
    for tier, key in TIERS.items():
        chars = sum(b["chars"] for b in blocks if b["cache_status"] == tier)
        picked = sum(b["chars"] for b in blocks if b["cache_status"] == tier and pick(b))
        if chars:
            saving += usage[key] * picked / chars * per_tier[tier] / 1e6
    return saving


def test_the_advice_fixtures_are_what_the_generator_writes():
    files = generator(ADVICE).build()
    assert files and all((ADVICE / name).read_text() == text for name, text in files.items())


# -- definitions ----------------------------------------------------------------------------------

def calendar(block: dict) -> bool:
    return block.get("tool_server") == "calendar" and block["category"].startswith("mcp_")


def test_a_server_listed_in_every_call_and_never_called_is_named_with_its_exact_saving(tmp_path):
    calls = derived(tmp_path, ADVICE, "unused_server", ("001", "002", "003"))
    conn = ledger(tmp_path, [call for call, _ in calls])
    advice = advice_of(conn)
    finding = found(advice, "unused_mcp_server", "calendar")
    assert finding is not None and finding.calls == 3
    expected = sum(without_blocks(call, span, calendar) for call, span in calls)
    assert expected > 0 and finding.saving_usd == pytest.approx(expected, abs=1e-6)
    assert finding.evidence["project"] == "/home/dev/code/weather-dash"
    assert "claude mcp remove calendar" in finding.action
    flagged = {f.subject for f in advice.findings if f.kind.endswith("_mcp_server")}
    assert flagged == {"calendar"}  # weather and notes were called
    # a window that cuts the session: its calls are re-priced one by one, to the same figures
    later = advice_of(conn, since_ns=calls[1][0].exchange.started_at_ns)
    part = found(later, "unused_mcp_server", "calendar")
    assert part.calls == 2
    assert part.saving_usd == pytest.approx(sum(without_blocks(c, s, calendar) for c, s in calls[1:]), abs=1e-6)
    assert json.loads(json.dumps(advice.to_json()))["findings"][0].keys() == {
        "kind", "subject", "saving_usd", "calls", "evidence", "action"}


def test_memory_files_cost_per_session_and_per_week(tmp_path):
    calls = derived(tmp_path, ADVICE, "unused_server", ("001", "002", "003"))
    conn = ledger(tmp_path, [call for call, _ in calls])
    path = "/home/dev/code/weather-dash/CLAUDE.md"
    since = calls[0][0].exchange.started_at_ns
    until = since + 14 * 86400 * 10**9  # two weeks
    finding = found(advice_of(conn, since, until), "memory_file", path)
    expected = sum(without_blocks(call, span, lambda b: b["category"] == "memory" and b.get("resource") == path)
                   for call, span in calls)
    assert expected > 0 and finding.saving_usd == pytest.approx(expected, abs=1e-6)
    assert finding.evidence["sessions"] == 1
    assert finding.evidence["usd_per_session"] == pytest.approx(expected, abs=1e-6)
    assert finding.evidence["usd_per_week"] == pytest.approx(expected / 2, abs=1e-6)


@pytest.fixture(scope="module")
def corpus_advice(tmp_path_factory):
    corpus = materialized(tmp_path_factory.mktemp("sessions"))
    calls = [(r.call, llm_span(r.records)) for _, _, _, r in corpus if r.call is not None]
    conn = ledger(tmp_path_factory.mktemp("ledger"), [call for call, _ in calls])
    return calls, advice_of(conn)


def test_a_skill_never_used_is_flagged_and_the_used_ones_are_not(corpus_advice):
    calls, advice = corpus_advice
    finding = found(advice, "unused_skill", "lint-rules")
    lint = [(c, s) for c, s in calls if s and any(b.get("resource") == "lint-rules" for b in
                                                  s["metadata"]["cipx"]["blocks"])]
    expected = sum(without_blocks(c, s, lambda b: b["category"] == "skills_menu" and b.get("resource") == "lint-rules")
                   for c, s in lint)
    assert finding.calls == len(lint) and finding.saving_usd == pytest.approx(expected, abs=1e-6)
    assert finding.evidence["project"] == "/home/dev/code/release-bot"
    flagged = {f.subject for f in advice.findings if f.kind.endswith(("_skill", "_agent"))}
    assert not flagged & {"release-notes", "code-auditor"}  # called in its sessions
    assert not flagged & {"update-config", "Explore"}  # Claude Code's own: they cannot be removed


# -- models ---------------------------------------------------------------------------------------

def test_subagents_and_side_calls_on_a_large_model_are_priced_on_the_small_one(corpus_advice):
    calls, advice = corpus_advice
    target = TABLE.newest["haiku"]
    jobs = [c for c, _ in calls if c.kind.kind in ("side", "subagent") and "haiku" not in (c.model or "")
            and c.usage is not None]
    expected = 0.0
    for call in jobs:
        start = call.exchange.started_at_ns
        now, then = price_call(call.model, usage_of(call), TABLE, start), price_call(target, usage_of(call), TABLE,
                                                                                      start)
        expected += (now.total_usd - (now.web_search_usd or 0)) - (then.total_usd - (then.web_search_usd or 0))
    findings = [f for f in advice.findings if f.kind == "model_choice"]
    assert {f.subject for f in findings} == {"side:web_search on claude-opus-4-8", "side:web_fetch on claude-opus-4-8",
                                             "subagent general-purpose on claude-opus-4-8"}
    assert sum(f.calls for f in findings) == len(jobs)
    assert expected > 0 and sum(f.saving_usd for f in findings) == pytest.approx(expected, abs=1e-6)
    assert all(target in f.action for f in findings)
    own = found(advice, "model_choice", "subagent general-purpose on claude-opus-4-8")
    assert "CLAUDE_CODE_SUBAGENT_MODEL" in own.action and ".claude/agents" not in own.action  # Claude Code's own


# -- cache ----------------------------------------------------------------------------------------

def test_a_cache_break_by_cause_and_what_one_hour_writes_would_have_saved(tmp_path):
    calls = derived(tmp_path, CACHE_BREAKS, "ttl_expired", ("001", "002"))
    conn = ledger(tmp_path, [call for call, _ in calls])
    advice = advice_of(conn)
    second = calls[1][0]
    lost = second.cache.cache_break.lost_tokens
    rates = second.cost.rates
    rewritten = min(lost, second.usage.cache_write_5m)  # every write of the corpus is a 5-minute one
    assert rewritten > 0
    finding = found(advice, "cache_break", "ttl_expired")
    assert finding.calls == 1
    assert finding.saving_usd == pytest.approx(rewritten * (rates["cache_write_5m"] - rates["cache_read"]) / 1e6,
                                               abs=1e-6)
    # 1-hour writes: the break reads what it wrote again, every write of the project costs the 1-hour price
    writes = sum(c.usage.cache_write_5m for c, _ in calls)
    net = (rewritten * (rates["cache_write_1h"] - rates["cache_read"])
           - writes * (rates["cache_write_1h"] - rates["cache_write_5m"])) / 1e6
    one_hour = found(advice, "cache_ttl_1h", "/home/dev/code/billing-svc")
    assert net > 0 and one_hour.saving_usd == pytest.approx(net, abs=1e-6)
    assert one_hour.evidence["breaks_spared"] == 1 and "ENABLE_PROMPT_CACHING_1H" in one_hour.action


# -- history --------------------------------------------------------------------------------------

def heavier(entry, extra: int):
    """The entry as if its conversation were `extra` tokens longer, all read from the cache (its
    history and messages rounded to whole tokens, so `price_call` prices them exactly)."""
    call = dict(entry.call)
    call["cache_read_input_tokens"] += extra
    call["history_read_tokens"] = round(call["history_read_tokens"]) + extra
    call["messages_read_tokens"] = round(call["messages_read_tokens"]) + extra
    call["cost_usd"] = price_call(call["model"], row_usage(call), TABLE, call["started_at_ns"]).total_usd
    return entry.__class__(**{**entry.__dict__, "call": call})


def row_usage(row: dict, **change: int) -> dict:
    counts = {"input_tokens": row["input_tokens"], "cache_read_input_tokens": row["cache_read_input_tokens"],
              "w5m": row["cache_write_5m_tokens"], "w1h": row["cache_write_1h_tokens"],
              "output_tokens": row["output_tokens"]}
    for key, value in change.items():
        counts[key] += value
    return {"input_tokens": counts["input_tokens"], "cache_read_input_tokens": counts["cache_read_input_tokens"],
            "cache_creation_input_tokens": counts["w5m"] + counts["w1h"], "output_tokens": counts["output_tokens"],
            "cache_creation": {"ephemeral_5m_input_tokens": counts["w5m"], "ephemeral_1h_input_tokens": counts["w1h"]}}


def priced(row: dict, usage: dict) -> float:
    return price_call(row["model"], usage, TABLE, row["started_at_ns"]).total_usd


def best_compaction(main: list[dict], summary: int) -> tuple[int, float]:
    """(1-based index in the session's main loop, saving) of the best call to have compacted
    before, by brute force: every candidate's calls priced by `price_call` on changed usages."""
    epochs: list[list[tuple[int, dict]]] = [[]]
    for number, row in enumerate(main, 1):
        if row["kind"] == "compaction":
            epochs.append([])
        else:
            epochs[-1].append((number, row))
    best = (0, float("-inf"))
    for epoch in epochs:
        for i in range(1, len(epoch)):
            (number, c), (_, p) = epoch[i], epoch[i - 1]
            history = c["history_read_tokens"]
            if history <= summary:
                continue
            compaction = priced(p, {"input_tokens": p["input_tokens"] + p["output_tokens"], "output_tokens": summary,
                                    "cache_read_input_tokens": p["cache_read_input_tokens"] + p["cache_write_5m_tokens"]
                                    + p["cache_write_1h_tokens"]})
            messages = c["messages_read_tokens"]
            saving = priced(c, row_usage(c)) - priced(c, row_usage(c, cache_read_input_tokens=-messages,
                                                                       w5m=messages - history + summary))
            for _, later in epoch[i + 1:]:
                fewer = min(history, later["history_read_tokens"]) - summary
                saving += priced(later, row_usage(later)) - priced(later, row_usage(later,
                                                                                    cache_read_input_tokens=-fewer))
            if saving - compaction > best[1]:
                best = (number, saving - compaction)
    return best


def test_a_session_whose_history_dominates_is_told_where_compacting_would_have_saved_most(tmp_path):
    """The recorded `compact` session, its first epoch's conversation made longer: the calls that
    read history read 100k, 200k, 300k, 400k tokens more of it from the cache."""
    corpus = materialized(tmp_path / "sessions")
    entries = [ledger_entry(r.call) for s, _, _, r in corpus if s == "compact" and r.call is not None]
    reading = [e for e in entries if e.call["kind"] == "main" and e.call["history_read_tokens"] > 0][:4]
    extra = {id(e): 100_000 * (i + 1) for i, e in enumerate(reading)}
    entries = [heavier(e, extra[id(e)]) if id(e) in extra else e for e in entries]
    path = tmp_path / "ledger.db"
    writer = Ledger(path, retention_days=400, clock=corpus_clock())
    assert writer.write_entries(entries)
    writer.close()
    advice = advice_of(open_reader(path))
    session = entries[0].call["session_id"]
    finding = found(advice, "history_weight", session)
    main = [e.call for e in entries if e.call["kind"] in ("main", "compaction") and e.call["agent_id"] is None]
    summary = next(e.call["output_tokens"] for e in entries if e.call["kind"] == "compaction")
    number, saving = best_compaction(main, summary)
    assert saving > 0 and finding.saving_usd == pytest.approx(saving, abs=1e-6)
    assert finding.evidence["compact_before_call"] == number
    assert finding.evidence["history_share"] > 0.5 and finding.evidence["summary_tokens"] == summary


# -- checked against reality, and what the captures still hold -------------------------------------

def moved(entry, by_ns: int):
    """The entry as if its call had been made `by_ns` later (a capture of its own)."""
    at = entry.call["started_at_ns"] + by_ns
    call = {**entry.call, "capture_id": entry.call["capture_id"] + "-later", "started_at_ns": at,
            "ended_at_ns": entry.call["ended_at_ns"] + by_ns, "day": local_day(at)}
    return entry.__class__(**{**entry.__dict__, "call": call})


def test_a_server_no_longer_listed_is_reported_as_realised(tmp_path):
    """A week with `calendar` connected (the derived session), then a week without it (the recorded
    one, a week later): the saving realised is its cost per call before, times the calls now."""
    before = derived(tmp_path, ADVICE, "unused_server", ("001", "002", "003"))
    after = derived(tmp_path, FIXTURES, "mcp", ("001", "002", "003"))
    week = 7 * 86400 * 10**9
    start = before[0][0].exchange.started_at_ns - 3600 * 10**9
    path = tmp_path / "ledger.db"
    writer = Ledger(path, retention_days=400, clock=corpus_clock())
    assert writer.write_entries([ledger_entry(c) for c, _ in before] + [moved(ledger_entry(c), week) for c, _ in after])
    writer.close()
    advice = advice_of(open_reader(path), start + week, start + 2 * week)
    assert found(advice, "unused_mcp_server", "calendar") is None
    done = next(f for f in advice.realised if f.subject == "MCP server calendar")
    per_call = sum(without_blocks(c, s, calendar) for c, s in before) / 3
    assert done.kind == "no_longer_listed" and done.calls == 3
    assert done.saving_usd == pytest.approx(per_call * 3, abs=1e-6)
    assert [f.subject for f in advice.realised] == ["MCP server calendar"]  # weather and notes still listed


def test_a_finding_says_whether_its_captures_are_still_stored(tmp_path):
    calls = derived(tmp_path, ADVICE, "unused_server", ("001", "002", "003"))
    conn = ledger(tmp_path, [call for call, _ in calls])
    sel = Selection(since_ns=0, until_ns=corpus_now_ns())
    kept = CaptureStore(tmp_path / "captures", segment_bytes=10**6,
                        clock=FakeClock(calls[0][0].exchange.ended_at_ns))
    kept.append(exchange("unused_server", "001", ADVICE))
    kept.close()
    advice = advise(conn, sel, Repricer(TABLE), corpus_now_ns(), tmp_path / "captures")
    assert found(advice, "unused_mcp_server", "calendar").evidence["captures"] == "stored"
    retained = tmp_path / "retained"
    later = CaptureStore(retained, segment_bytes=10**6,
                         clock=FakeClock(calls[-1][0].exchange.ended_at_ns + 1))  # the older ones were deleted
    later.append(exchange("unused_server", "003", ADVICE))
    later.close()
    note = found(advise(conn, sel, Repricer(TABLE), corpus_now_ns(), retained), "unused_mcp_server",
                 "calendar").evidence["captures"]
    assert note.startswith("deleted by retention for calls before ")
    none = found(advise(conn, sel, Repricer(TABLE), corpus_now_ns(), tmp_path / "nothing"), "unused_mcp_server",
                 "calendar").evidence["captures"]
    assert none.startswith("none stored")


def test_a_server_used_in_one_session_of_eleven_is_rarely_used(tmp_path):
    """The recorded `mcp` session (it calls `notes` in its second call), and ten more sessions made
    of its first call alone (it lists `notes` and calls only `weather`): `notes` is rarely used, and
    what it saves is its cost in those ten calls."""
    calls = derived(tmp_path, FIXTURES, "mcp", ("001", "002", "003"))
    first, span = calls[0]
    copies = []
    for n in range(10):
        entry = moved(ledger_entry(first), (n + 1) * 3600 * 10**9)
        call = {**entry.call, "capture_id": f"{entry.call['capture_id']}-{n}", "session_id": f"copy-{n}"}
        copies.append(entry.__class__(**{**entry.__dict__, "call": call}))
    path = tmp_path / "ledger.db"
    writer = Ledger(path, retention_days=400, clock=corpus_clock())
    assert writer.write_entries([ledger_entry(c) for c, _ in calls] + copies)
    writer.close()
    advice = advice_of(open_reader(path))
    notes = found(advice, "rarely_used_mcp_server", "notes")
    assert notes.calls == 10 and notes.evidence["used_in_sessions"] == 1 and notes.evidence["sessions"] == 11
    expected = 10 * without_blocks(first, span, lambda b: b.get("tool_server") == "notes"
                                   and b["category"].startswith("mcp_"))
    assert expected > 0 and notes.saving_usd == pytest.approx(expected, abs=1e-6)
    assert not [f for f in advice.findings if f.subject == "weather"]  # called in every session
