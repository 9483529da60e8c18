"""The recorded corpus through the real daemon into a fake Opik, read by Opik's Cost Intelligence rules
(tests/cost_intelligence.py) from what the fake Opik stored, in arrival order.

The corpus's sessions get made-up accounts and git repositories in the test's HOME: each
recorded SessionStart hook is recorded by `sync`'s own code (`record_session`) with its `cwd`
moved to a repository made here, and the account of one of two made-up `~/.claude.json`."""

import json
import math
import os
import subprocess
from pathlib import Path

from opik_cipx import __version__
from opik_cipx.materialize.sessions import record_session
from tests import cost_intelligence as ci
from tests.claude_code_corpus import FIXTURES, SCENARIOS, request, requests
from tests.conftest import DaemonProcess, wait_for
from tests.fake_opik import API_KEY, WORKSPACE, FakeOpik
from tests.test_end_to_end import replay_scenario

GIT_ENV = {"GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "dev@acme.test", "GIT_COMMITTER_NAME": "Dev",
           "GIT_COMMITTER_EMAIL": "dev@acme.test", "GIT_AUTHOR_DATE": "2026-11-23T10:00:00Z",
           "GIT_COMMITTER_DATE": "2026-11-23T10:00:00Z", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
ACCOUNTS = {  # made up; the second user ran the sessions whose scenario sorts after "m"
    "ada": {"accountUuid": "0b7e2c41-5a8f-4d6e-9c3b-1f2a3b4c5d6e", "emailAddress": "ada@acme.test",
            "displayName": "Ada", "organizationUuid": "o-1", "organizationName": "Acme",
            "billingType": "stripe_subscription"},
    "bo": {"accountUuid": "7c1d9e82-3b4a-4f5c-8d6e-2a3b4c5d6e7f", "emailAddress": "bo@acme.test",
           "displayName": "Bo", "organizationUuid": "o-1", "organizationName": "Acme"},
}


def llm_calls() -> int:
    """Model calls of the corpus that get an llm span (every Messages API call but count_tokens)."""
    return sum(request(scenario, number)["path"].startswith("/v1/messages?")
               for scenario in SCENARIOS for number, _ in requests(scenario))


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout.strip()


def make_accounts_and_repositories(root: Path, sessions_dir: Path) -> dict[str, tuple[str, str]]:
    """A repository per recorded project under `root`, `~/.claude.json` files of the made-up
    accounts, and `sessions/<id>.json` for every recorded SessionStart hook; session id -> (remote,
    head)."""
    remotes = {}
    for hook_path in sorted(FIXTURES.glob("*/hook_SessionStart_*.json")):
        hook = json.loads(hook_path.read_text())
        project = hook["cwd"].rsplit("/", 1)[-1]
        repo = root / "code" / project
        if not repo.exists():
            repo.mkdir(parents=True)
            git(repo, "init", "-q", "-b", "main")
            git(repo, "remote", "add", "origin", f"https://git.acme.test/acme/{project}.git")
            (repo / "README.md").write_text(f"# {project}\n")
            git(repo, "add", "-A")
            git(repo, "commit", "-q", "-m", "start")
        user = "ada" if hook_path.parent.name < "m" else "bo"
        account = root / "accounts" / user / ".claude.json"
        account.parent.mkdir(parents=True, exist_ok=True)
        account.write_text(json.dumps({"oauthAccount": ACCOUNTS[user]}))
        record_session(sessions_dir, {**hook, "cwd": str(repo)}, account)
        remotes[hook["session_id"]] = (f"https://git.acme.test/acme/{project}.git", git(repo, "rev-parse", "HEAD"))
    return remotes


def test_every_llm_span_the_daemon_ships_is_ingested_and_gives_back_its_usage(home, upstream, monkeypatch):
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)  # record_session runs git as `sync` does
    remotes = make_accounts_and_repositories(home.parent, home / "sessions")
    expected = llm_calls()
    with FakeOpik() as opik:
        daemon = DaemonProcess(home, upstream.url, OPIK_CIPX_BASE_URL=opik.url, OPIK_CIPX_API_KEY=API_KEY,
                               OPIK_CIPX_WORKSPACE=WORKSPACE)
        try:
            for scenario in SCENARIOS:
                replay_scenario(daemon, upstream, scenario)

            def llm_spans() -> int:
                return sum(span.get("type") == "llm" for span in opik.spans.values())

            wait_for(lambda: llm_spans() == expected, timeout_s=60, what=f"{expected} llm spans at the fake Opik")

            def heads_read() -> bool:  # git's answers arrive as later versions of the traces
                stored = [trace["metadata"]["cipx"]["session"] for trace in opik.traces.values()]
                return all(session["repository"].get("head_sha") == remotes[session["session_id"]][1]
                           for session in stored)

            wait_for(heads_read, timeout_s=60, what="every trace with its repository's head")
            assert opik.violations == []
            ingested = ci.ingest(opik.arrivals())
            versions = [trace for received in opik.arrivals() if received.path.endswith("/traces/batch")
                        for trace in received.body["traces"]]
        finally:
            assert daemon.stop() == 0
    assert len(ingested.spends) == expected == 43 and ingested.repeated_creates == ()
    for row in ingested.spends.values():
        assert row.project == ci.PROJECT and not [block for block in row.blocks if block.residual]
        for tier, tokens in ci.allocated(row).items():
            assert math.isclose(tokens, row.usage[tier], rel_tol=1e-9, abs_tol=1e-6), (row.span_id, tier)
    assert ci.unattributed_input_share(ingested) <= 0.03
    assert set(ci.breakdown(ingested, "mcp_servers")) == {"weather", "notes"}
    assert {"release-notes", "lint-rules"} <= set(ci.breakdown(ingested, "skills"))
    assert "/home/dev/.claude/CLAUDE.md" in ci.breakdown(ingested, "memory")
    # Users and repositories: every trace version says who and where, and every span has its user.
    assert versions and all(ci.has_identity(trace["metadata"]) for trace in versions)
    for trace in versions:
        session = trace["metadata"]["cipx"]["session"]
        assert (session["schema_version"], session["harness"], session["cipx_version"]) == (2, "claude_code",
                                                                                             __version__)
        assert session["session_id"] == trace["thread_id"] and session["repository"]["remote"] == remotes[
            session["session_id"]][0]
    users = ci.users(ingested)
    assert {uuid: (row.email, row.display_name) for uuid, row in users.items()} == {
        account["accountUuid"]: (account["emailAddress"], account["displayName"]) for account in ACCOUNTS.values()}
    assert users[ACCOUNTS["ada"]["accountUuid"]].billing_type == "stripe_subscription"
    assert ci.by_repository(ingested).keys() == {remote for remote, _ in remotes.values()}
    for row in ingested.identities.values():  # the newest version: git's state of each turn
        assert (row.head_sha, row.head_sha_end, row.commits_in_trace, row.dirty) == (
            remotes[row.session_id][1], remotes[row.session_id][1], 0, False)
    everyone = sum(sum(tiers.values()) for tiers in ci.by_lane(ingested).values())
    per_user = sum(sum(tiers.values()) for tiers in ci.by_user(ingested).values())
    assert math.isclose(per_user, everyone, rel_tol=1e-9)
