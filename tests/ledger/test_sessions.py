"""Sessions as people know them: the writer keeps each session's start, project, Claude Code's
title and first prompt, the same whatever order its calls arrive in; none of the text when
content capture is off; readers get them with every session key."""

import dataclasses
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opik_cipx.ledger.db import connect, open_reader
from opik_cipx.ledger.entry import LABEL_CHARS, SessionText, ledger_entry, one_line, session_text, title_of
from opik_cipx.ledger.queries import recent_calls, report
from opik_cipx.ledger.schema import LATEST
from opik_cipx.ledger.sessions import SHORT_ID, session_info, short_ids
from opik_cipx.ledger.store import Ledger, delete_before, upsert
from opik_cipx.materialize.call_kind import CallKind
from tests.claude_code_corpus import corpus_clock, materialized
from tests.conftest import examples
from tests.ledger.test_queries import older_ledger

SUBAGENT = "1b15d3cd-b49e-410d-880f-1d1856a84f6c"
PROMPT = "Use a subagent to survey this project's layout and report back."


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return materialized(tmp_path_factory.mktemp("sessions"))


def title_call(corpus, answer: str, after_s: float):
    """A `side:title` call of the subagent session, `after_s` after its first call: the shape of the
    recorded side calls (a WebFetch call here) with Claude Code's title prompt's answer. The corpus
    holds no title call: `claude -p` does not ask for one."""
    side = next(r.call for s, n, _, r in corpus if (s, n) == ("nonstream_and_others", "032"))
    first = next(r.call for s, n, _, r in corpus if (s, n) == ("subagent", "001"))
    at = first.exchange.started_at_ns + int(after_s * 1e9)
    return dataclasses.replace(
        side,
        exchange=dataclasses.replace(side.exchange, capture_id=f"title-{after_s}", started_at_ns=at, ended_at_ns=at),
        kind=CallKind("side", side_kind="title", session_id=SUBAGENT),
        session=first.session,
        response=dataclasses.replace(side.response, content=[{"type": "text", "text": answer}]),
    )


def subagent_session(corpus) -> list:
    """The subagent scenario's calls, with two title calls (the later one wins)."""
    calls = [r.call for s, _, _, r in corpus if s == "subagent" and r.call]
    return [*calls, title_call(corpus, '{"title": "Survey the project"}', 1.0),
            title_call(corpus, "<title>Survey the inventory-sync layout</title>", 30.0)]


def sessions_of(path: Path) -> dict:
    conn = sqlite3.connect(path)
    try:
        return {row[0]: row[1:] for row in conn.execute("SELECT * FROM sessions ORDER BY session_id")}
    finally:
        conn.close()


def test_a_session_is_known_by_its_title_else_its_first_prompt(corpus, tmp_path):
    ledger = Ledger(tmp_path / "ledger.db", retention_days=400, clock=corpus_clock())
    for *_, result in corpus:
        ledger.write(result.call)
    ledger.close()
    conn = open_reader(tmp_path / "ledger.db")
    calls = {}
    for *_, result in corpus:
        if result.call:
            calls.setdefault(result.call.session.id, []).append(result.call)
    info = session_info(conn, calls)
    assert set(info) == set(calls) and len(info) == 9  # skills_agents ran twice
    for session_id, its_calls in calls.items():
        known = info[session_id]
        assert known.started_at_ns == min(c.exchange.started_at_ns for c in its_calls)
        assert known.project == its_calls[0].session.cwd and known.project.startswith("/home/dev/code/")
        mains = sorted((c for c in its_calls if c.kind.kind == "main"), key=lambda c: c.exchange.started_at_ns)
        assert known.first_prompt == session_text(mains[0]).prompt  # the earliest main call's
        assert known.title is None and known.label == known.first_prompt  # no title call in the corpus
    assert info[SUBAGENT].label == PROMPT
    assert info["9d041613-2d38-46f4-9e15-82f64d8f9a4e"].label == "/release-notes v1.3.0"  # opened by a slash command
    assert info["4cec060d-b129-4e6b-8778-2bf1e55e29e3"].label == "say hello"
    ledger = Ledger(tmp_path / "ledger.db", retention_days=400, clock=corpus_clock())
    for call in subagent_session(corpus)[-2:]:
        ledger.write(call)
    ledger.close()
    known = session_info(conn, [SUBAGENT])[SUBAGENT]
    assert (known.title, known.first_prompt, known.label) == ("Survey the inventory-sync layout", PROMPT,
                                                              "Survey the inventory-sync layout")
    assert known.started_at_ns == info[SUBAGENT].started_at_ns  # the title calls came later
    (row,) = [r for r in report(conn, ("session",)).rows if r["session"] == SUBAGENT]
    assert (row["session_label"], row["session_project"]) == (known.label, known.project)
    assert {c["session_label"] for c in recent_calls(conn, 100) if c["session_id"] == SUBAGENT} == {known.label}
    conn.close()


@settings(max_examples=examples(20), deadline=None)
@given(order=st.permutations(range(7)))
def test_the_session_row_is_the_same_whatever_order_its_calls_arrive_in(corpus_calls, order):
    entries = [ledger_entry(call) for call in corpus_calls]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.db"
        conn = connect(path, 1.0)
        for i in order:
            conn.execute("BEGIN")
            upsert(conn, entries[i])
            conn.execute("COMMIT")
        upsert(conn, entries[order[0]])  # written again: nothing changes
        conn.close()
        (session,) = sessions_of(path).values()
    first = min(call.exchange.started_at_ns for call in corpus_calls)
    assert session == (first, "/home/dev/code/inventory-sync", "Survey the inventory-sync layout",
                       corpus_calls[-1].exchange.started_at_ns, PROMPT, first)


@pytest.fixture(scope="module")
def corpus_calls(corpus):
    calls = subagent_session(corpus)
    assert len(calls) == 7
    return calls


def test_without_content_capture_the_ledger_keeps_no_title_or_prompt(corpus_calls, tmp_path):
    path = tmp_path / "ledger.db"
    ledger = Ledger(path, retention_days=400, clock=corpus_clock(), keep_text=False)
    for call in corpus_calls:
        ledger.write(call)
    ledger.close()
    (session,) = sessions_of(path).values()
    assert session[:2] == (min(c.exchange.started_at_ns for c in corpus_calls), "/home/dev/code/inventory-sync")
    assert session[2:] == (None, None, None, None)
    assert ledger_entry(corpus_calls[0], keep_text=False).session == SessionText()
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir())  # the database, its WAL
    assert b"survey" not in stored and b"Survey" not in stored


def test_a_v3_ledger_gains_its_sessions_and_the_writer_adds_their_labels(corpus, tmp_path):
    entries = [ledger_entry(r.call) for *_, r in corpus if r.call]
    path = tmp_path / "ledger.db"
    older_ledger(path, entries, version=3)
    connect(path, busy_timeout_s=1.0).close()  # what the daemon's Ledger (and `replay --ledger`) opens
    conn = open_reader(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST
    info = session_info(conn, {e.call["session_id"] for e in entries})
    assert len(info) == 9 and all(i.project and i.label is None for i in info.values())  # the texts were never kept
    assert info[SUBAGENT].started_at_ns == min(e.call["started_at_ns"] for e in entries
                                               if e.call["session_id"] == SUBAGENT)
    ledger = Ledger(path, retention_days=400, clock=corpus_clock())  # `replay --ledger` writes them again
    assert ledger.write_entries(entries)
    ledger.close()
    assert session_info(conn, [SUBAGENT])[SUBAGENT].label == PROMPT
    conn.close()


def test_retention_takes_a_session_with_its_last_call(corpus_calls, tmp_path):
    path = tmp_path / "ledger.db"
    ledger = Ledger(path, retention_days=400, clock=corpus_clock())
    assert ledger.write_entries([ledger_entry(c) for c in corpus_calls])
    ledger.close()
    conn = connect(path, 1.0)
    delete_before(conn, "2026-01-01")
    assert list(sessions_of(path)) == [SUBAGENT]
    delete_before(conn, "2999-01-01")
    conn.close()
    assert sessions_of(path) == {}


def test_only_title_and_main_calls_speak_for_their_session(corpus, corpus_calls):
    texts = {(s, n): session_text(r.call) for s, n, _, r in corpus if r.call}
    assert texts[("subagent", "001")] == SessionText(prompt=PROMPT)
    assert texts[("subagent", "005")] == SessionText(prompt=PROMPT)  # a later call of the same turn
    assert texts[("subagent", "002")] == SessionText()  # a subagent's prompt is not the user's
    assert texts[("compact", "014")] == SessionText()  # count_tokens
    assert texts[("nonstream_and_others", "032")] == SessionText()  # another side call
    assert session_text(corpus_calls[-1]) == SessionText(title="Survey the inventory-sync layout")
    failed = dataclasses.replace(corpus_calls[-1], response=dataclasses.replace(
        corpus_calls[-1].response, error={"type": "overloaded_error", "message": "busy"}))
    assert session_text(failed) == SessionText()


@pytest.mark.parametrize("answer, title", [
    ('{"title": "Fix login button on mobile", "branch": "claude/fix-mobile-login"}', "Fix login button on mobile"),
    ('```json\n{"title": "Fenced JSON"}\n```', "Fenced JSON"),
    ("<title>Update README</title>\n<branch>claude/update-readme</branch>", "Update README"),
    ('"Quoted plain title"\n', "Quoted plain title"),
    ("  Plain   title\n\nwith a second line", "Plain title"),
    ('{"branch": "claude/x"}', None),
    ("", None),
])
def test_title_of_reads_each_answer_claude_codes_title_prompts_ask_for(answer, title):
    assert title_of(answer) == title


@given(st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=300)
       .filter(lambda t: t.strip().strip("\"'`*#").strip() == t and "</title>" not in t.lower()))
def test_a_title_comes_back_on_one_bounded_line_however_it_is_wrapped(title):
    import json

    for answer in (json.dumps({"title": title}), f"<title>{title}</title>"):
        assert title_of(answer) == one_line(title)
    bare = title_of(title)  # bare text may itself read as JSON or hold a tag
    assert bare is None or ("\n" not in bare and 0 < len(bare) <= LABEL_CHARS)


@given(st.lists(st.text("0123456789a", min_size=12, max_size=12), min_size=1, max_size=30))  # ids of one length
def test_short_ids_are_unique_starts_of_at_least_eight_characters(ids):
    shorts = short_ids(ids)
    assert set(shorts) == set(ids)
    assert all(session_id.startswith(short) and len(short) >= SHORT_ID for session_id, short in shorts.items())
    for a, short in shorts.items():
        assert [b for b in set(ids) if b.startswith(short)] == [a]
