"""Issue 21's acceptance: a session no hook described is known by what its requests say. The derived
git-status session (tests/fixtures/git-status/subagent: main loop, a general-purpose subagent, main
loop), its directory rewritten to a git repository made here, replayed through the real daemon with
no `sessions/<id>.json`: every call, the subagent's included, carries the directory and branch its
system prompt names in the ledger, `report --by project,branch` and the Opik trace; the trace gets
the repository's remote and head from git, off the wire."""

import http.client
import json
import os
import sqlite3
from pathlib import Path

from tests.claude_code_corpus import request, requests, response
from tests.conftest import DaemonProcess, run_command, wait_for
from tests.fake_anthropic import fixture_reply
from tests.fake_opik import API_KEY, WORKSPACE, FakeOpik
from tests.test_daemon_cost_intelligence import git

GIT_FIXTURES = Path(__file__).parent / "fixtures" / "git-status"
RECORDED_CWD = "/home/dev/code/inventory-sync"
BRANCH = "survey-layout"  # what the prompt's git status says (the repository here is on `main`)
REMOTE = "https://git.acme.test/acme/inventory-sync.git"


def replay(daemon: DaemonProcess, upstream, cwd: Path) -> int:
    numbers = [number for number, _ in requests("subagent", GIT_FIXTURES)]
    upstream.script(*(fixture_reply(response("subagent", n, GIT_FIXTURES)) for n in numbers))
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    for number in numbers:
        req = request("subagent", number, GIT_FIXTURES)
        headers = {k: v for k, v in req["headers"].items() if k.lower() not in ("host", "content-length", "connection")}
        conn.request(req["method"], req["path"], body=req["body"].replace(RECORDED_CWD, str(cwd)).encode(),
                     headers=headers)
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read()
    conn.close()
    return len(numbers)


def test_every_call_of_a_session_no_hook_described_carries_its_directory_and_branch(home, upstream, monkeypatch):
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    repo = home.parent / "code" / "inventory-sync"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "remote", "add", "origin", REMOTE)
    (repo / "app.py").write_text("print('stock')\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "start")
    head = git(repo, "rev-parse", "HEAD")
    with FakeOpik() as opik:
        daemon = DaemonProcess(home, upstream.url, OPIK_CIPX_BASE_URL=opik.url, OPIK_CIPX_API_KEY=API_KEY,
                               OPIK_CIPX_WORKSPACE=WORKSPACE, GIT_CONFIG_GLOBAL=os.devnull)
        try:
            calls = replay(daemon, upstream, repo)
            wait_for(lambda: sum(s.get("type") == "llm" for s in opik.spans.values()) == calls, timeout_s=60,
                     what="every call's llm span at the fake Opik")
            # A call materialized after git answered carries the repository before the session has git's
            # remote and head; the follower's next step sends the trace's version with both.
            (trace,) = wait_for(lambda: [t for t in opik.traces.values()
                                         if t["metadata"]["cipx"]["session"]["repository"].get("head_sha") == head
                                         and (t["metadata"]["cc"]["session"]["git"] or {}).get("commit") == head],
                                timeout_s=60, what="the trace with git's answer")
            spans = [s for s in opik.spans.values() if s.get("type") == "llm"]
            assert opik.violations == []
        finally:
            assert daemon.stop() == 0
    assert not (home / "sessions").exists() or not list((home / "sessions").iterdir())  # no hook record
    # the Opik trace and every llm span
    assert trace["metadata"]["cc"]["session"]["cwd"] == str(repo)
    assert trace["metadata"]["cc"]["session"]["git"] == {"remote": REMOTE, "branch": BRANCH, "commit": head}
    assert trace["metadata"]["cipx"]["session"]["repository"] == {
        "remote": REMOTE, "branch": BRANCH, "head_sha": head, "head_sha_end": head, "dirty": False,
        "commits_in_trace": 0, "files_added": 0, "files_deleted": 0, "lines_added": 0, "lines_deleted": 0}
    assert sorted(s["metadata"]["cc"]["call"]["kind"] for s in spans) == ["main"] * 2 + ["subagent"] * 3
    for span in spans:
        assert span["metadata"]["cc"]["session"]["cwd"] == str(repo)
        assert span["metadata"]["cc"]["session"]["git"]["branch"] == BRANCH
    # the ledger
    with sqlite3.connect(home / "ledger.db") as db:
        rows = db.execute("SELECT kind, project_dir, git_branch FROM calls ORDER BY started_at_ns").fetchall()
    assert rows == [("main", str(repo), BRANCH)] + [("subagent", str(repo), BRANCH)] * 3 + [("main", str(repo), BRANCH)]
    # report --by project,branch, and --project as the user types it
    result = run_command(home, "report", "--by", "project,branch", "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["rows"]
    assert (row["project"], row["branch"], row["calls"]) == (str(repo), BRANCH, calls)
    for typed, cwd in ((f"{repo}/", home.parent), ("inventory-sync", repo.parent), (".", repo),
                       ("~/code/inventory-sync", home.parent)):
        result = run_command(home, "report", "--project", typed, "--json", cwd=cwd)
        assert result.returncode == 0 and json.loads(result.stdout)["total"]["calls"] == calls, (typed, result.stderr)
    result = run_command(home, "report", "--project", str(repo.parent / "elsewhere"))
    assert result.returncode == 1 and "no call in the ledger was made in" in result.stderr

