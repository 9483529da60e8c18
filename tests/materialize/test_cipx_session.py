"""`metadata.cipx.session` on every trace version, and where a session works read off the wire
(the directory and branch its prompt names) for sessions no hook described."""

import json
from pathlib import Path

from opik_cipx import __version__
from opik_cipx.materialize.materializer import Materializer
from opik_cipx.materialize.pricing import load_price_table
from tests import cost_intelligence as ci
from tests.claude_code_corpus import exchanges
from tests.materialize.test_materializer import config

GIT_FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "git-status"
ACCOUNT = {"accountUuid": "u-1", "emailAddress": "ada@example.com", "displayName": "Ada",
           "organizationUuid": "o-1", "organizationName": "Acme", "billingType": "stripe_subscription"}


def records_of(scenario: str, tmp_path: Path, root: Path | None = None, **overrides) -> list[dict]:
    materializer = Materializer(config(tmp_path, **overrides), load_price_table())
    captures = exchanges(scenario, root) if root else exchanges(scenario)
    return [record for _, capture in captures for record in materializer.materialize(capture).records]


def traces(records: list[dict]) -> list[dict]:
    return [record["body"] for record in records if record["kind"] == "trace"]


def test_every_trace_version_says_who_ran_it_and_the_sessions_agent_totals(tmp_path):
    (tmp_path / ".claude.json").write_text(json.dumps({"oauthAccount": ACCOUNT}))
    versions = traces(records_of("subagent", tmp_path))
    assert versions
    for trace in versions:
        assert ci.has_identity(trace["metadata"])
        row = ci.identity(trace["id"], trace["project_name"], trace["metadata"])
        assert row.counted and (row.user_uuid, row.email, row.display_name, row.billing_type) == (
            "u-1", "ada@example.com", "Ada", "stripe_subscription")
        assert (row.schema_version, row.harness, row.cipx_version) == (2, "claude_code", __version__)
        assert row.session_id == trace["thread_id"]
    last = versions[-1]["metadata"]["cipx"]["session"]
    # one Agent call dispatched, its subagent linked to it
    assert (last["agents_dispatched"], last["agents_linked"], last["agents_ambiguous"]) == (1, 1, 0)
    first = versions[0]["metadata"]["cipx"]["session"]  # the main call whose answer dispatched it
    assert (first["agents_dispatched"], first["agents_linked"]) == (1, 0)


def test_without_an_account_the_identity_is_an_empty_object_and_no_user_is_counted(tmp_path):
    for trace in traces(records_of("simple", tmp_path)):
        session = trace["metadata"]["cipx"]["session"]
        assert session["identity"] == {} and "repository" not in session
        assert not ci.identity(trace["id"], trace["project_name"], trace["metadata"]).counted


def test_a_session_no_hook_described_works_where_its_prompt_says_subagents_included(tmp_path):
    records = records_of("subagent", tmp_path, GIT_FIXTURES)
    spans = [record["body"] for record in records if record["kind"] == "span" and record["body"]["type"] == "llm"]
    assert len(spans) == 5
    for body in spans + traces(records):
        session = body["metadata"]["cc"]["session"]
        assert session["cwd"] == "/home/dev/code/inventory-sync"
        assert session["git"] == {"remote": None, "branch": "survey-layout", "commit": None}
    for trace in traces(records):
        assert trace["metadata"]["cipx"]["session"]["repository"] == {"branch": "survey-layout"}


def test_side_calls_take_their_sessions_directory(tmp_path):
    """`nonstream_and_others` has side calls (titles, ...) whose requests name no directory."""
    materializer = Materializer(config(tmp_path), load_price_table())
    kinds = set()
    for _, capture in exchanges("nonstream_and_others"):
        result = materializer.materialize(capture)
        if result.call is not None and result.call.session.id != "unknown-session":
            kinds.add(result.call.kind.kind)
            assert result.call.session.cwd == "/home/dev/code/docs-portal", result.call.kind
    assert {"side", "count_tokens", "main"} <= kinds


def test_the_hooks_record_wins(tmp_path):
    (session_id,) = {json.loads(json.loads(capture.request_body)["metadata"]["user_id"])["session_id"]
                     for _, capture in exchanges("subagent", GIT_FIXTURES)}
    (tmp_path / "sessions").mkdir()
    (tmp_path / "sessions" / f"{session_id}.json").write_text(json.dumps({
        "session_id": session_id, "cwd": "/srv/inventory", "git": {"remote": "https://git.acme.test/inv.git",
                                                                   "branch": "main", "commit": "0" * 40}}))
    for trace in traces(records_of("subagent", tmp_path, GIT_FIXTURES)):
        assert trace["metadata"]["cc"]["session"]["cwd"] == "/srv/inventory"
        assert trace["metadata"]["cipx"]["session"]["repository"] == {"remote": "https://git.acme.test/inv.git",
                                                                      "branch": "main"}


def test_the_workspace_and_agent_totals_survive_a_restart(tmp_path):
    captures = exchanges("subagent", GIT_FIXTURES)
    first = Materializer(config(tmp_path), load_price_table())
    for _, capture in captures[:-1]:
        first.materialize(capture)
    second = Materializer(config(tmp_path), load_price_table())
    second.restore(json.loads(json.dumps(first.snapshot())))
    last = second.materialize(captures[-1][1]).records
    (trace,) = traces(last)
    assert trace["metadata"]["cipx"]["session"]["agents_linked"] == 1
    assert trace["metadata"]["cc"]["session"]["git"]["branch"] == "survey-layout"
    older = first.snapshot()
    for session in older["sessions"]:  # a checkpoint written before these fields existed
        for key in ("workspace", "workspace_main", "git_read", "agent_counts", "unlinked"):
            del session[key]
    second.restore(older)
