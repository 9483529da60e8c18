"""The git probe: a turn's repository read off the wire, at its start and at its latest call, in real
repositories in tmp dirs; and the materializer's use of it (only for live calls, never waiting)."""

import dataclasses
import json
import os

import pytest

from opik_cipx.materialize import git_probe
from opik_cipx.materialize.call import TurnRepository
from opik_cipx.materialize.git_probe import GitProbe
from opik_cipx.materialize.materializer import Materializer
from opik_cipx.materialize.pricing import load_price_table
from opik_cipx.stats import Counters
from tests.claude_code_corpus import exchanges
from tests.conftest import wait_for
from tests.fake_clock import FakeClock
from tests.materialize.test_cipx_session import GIT_FIXTURES
from tests.materialize.test_materializer import config
from tests.materialize.test_repository import commit, git, make_repo

RECORDED_CWD = "/home/dev/code/inventory-sync"


@pytest.fixture(autouse=True)
def quiet_git(monkeypatch):
    """git as the probe runs it reads no config of this machine's user."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


@pytest.fixture
def probe():
    found = GitProbe(Counters(), timeout_s=30)  # room for a loaded machine
    found.start()
    yield found
    assert found.stop(30)


def answer(probe: GitProbe, turn_id: str, cwd) -> TurnRepository | None:
    probe.ask(turn_id, str(cwd))
    wait_for(lambda: turn_id in probe.answered(), what="git's answer")
    return probe.turn(turn_id)


def test_a_turn_is_read_at_its_start_and_at_its_latest_call(tmp_path, probe):
    repo = make_repo(tmp_path / "repo")
    git(repo, "remote", "add", "origin", "https://ada:secret@git.acme.test/acme/repo.git")
    start = commit(repo, {"app.py": "a\nb\n", "old.txt": "x\n"})
    assert probe.turn("t1") is None  # nothing asked yet
    assert answer(probe, "t1", repo) == TurnRepository(
        remote="https://git.acme.test/acme/repo.git", branch="main", head_sha=start, head_sha_end=start, dirty=False,
        commits=0, files_added=0, files_deleted=0, lines_added=0, lines_deleted=0)
    end = commit(repo, {"new.py": "1\n2\n3\n", "old.txt": None, "app.py": "a\nB\n"})
    (repo / "scratch.txt").write_text("not committed\n")
    assert answer(probe, "t1", repo) == TurnRepository(
        remote="https://git.acme.test/acme/repo.git", branch="main", head_sha=start, head_sha_end=end, dirty=True,
        commits=1, files_added=1, files_deleted=1, lines_added=4, lines_deleted=2)
    found = answer(probe, "t2", repo)
    assert found is not None and found.head_sha == end  # another turn starts where this one ended


def test_only_directories_the_daemons_user_owns_are_read(tmp_path):
    repo = make_repo(tmp_path / "repo")
    commit(repo, {"app.py": "a\n"})
    other = GitProbe(Counters(), timeout_s=30, owner_uid=os.getuid() + 1)
    other.start()
    try:
        assert answer(other, "t", repo) is None  # nothing known: the trace gets no later version
        assert answer(other, "u", "relative/path") is None
    finally:
        assert other.stop(30)


def test_a_directory_git_said_nothing_of_is_not_read_again_for_a_while(tmp_path, probe, monkeypatch):
    monkeypatch.setattr(git_probe, "NOTHING_TTL_S", 1e9)
    plain = tmp_path / "plain"
    plain.mkdir()
    assert answer(probe, "t1", plain) is None
    git(plain, "init", "-q", "-b", "main")
    head = commit(plain, {"app.py": "a\n"})
    assert answer(probe, "t2", plain) is None  # remembered as nothing
    monkeypatch.setattr(git_probe, "NOTHING_TTL_S", 0.0)
    found = answer(probe, "t3", plain)
    assert found is not None and found.head_sha == head


def captures_in(repo):
    """The derived git-status session (main, subagent x3, main) as if run in `repo`."""
    out = []
    for _, capture in exchanges("subagent", GIT_FIXTURES):
        body = capture.request_body.replace(RECORDED_CWD.encode(), str(repo).encode())
        out.append(dataclasses.replace(capture, request_body=body))
    return out


def test_a_live_turn_gets_git_state_in_a_later_trace_version_without_waiting(tmp_path, probe):
    repo = make_repo(tmp_path / "repo")
    git(repo, "remote", "add", "origin", "https://git.acme.test/acme/inventory-sync.git")
    head = commit(repo, {"app.py": "a\n"})
    captures = captures_in(repo)
    clock = FakeClock(captures[0].ended_at_ns + 10**9)  # a second after the first call ended: live
    materializer = Materializer(config(tmp_path), load_price_table(), clock=clock, git=probe)
    first = materializer.materialize(captures[0])
    (trace,) = [r["body"] for r in first.records if r["kind"] == "trace"]
    assert trace["metadata"]["cipx"]["session"]["repository"] == {"branch": "survey-layout"}  # git not asked yet
    late = wait_for(materializer.late_records, what="the trace version git's answer adds")
    (version,) = late
    assert version["body"]["id"] == trace["id"]
    assert version["body"]["last_updated_at"] > trace["last_updated_at"]
    repository = version["body"]["metadata"]["cipx"]["session"]["repository"]
    assert repository == {"remote": "https://git.acme.test/acme/inventory-sync.git", "branch": "survey-layout",
                          "head_sha": head, "head_sha_end": head, "dirty": False, "commits_in_trace": 0,
                          "files_added": 0, "files_deleted": 0, "lines_added": 0, "lines_deleted": 0}
    assert version["body"]["metadata"]["cc"]["session"]["git"] == {
        "remote": "https://git.acme.test/acme/inventory-sync.git", "branch": "survey-layout", "commit": head}
    clock.advance((captures[1].ended_at_ns - captures[0].ended_at_ns) / 1e9)
    second = materializer.materialize(captures[1]).call
    assert second is not None and second.kind.kind == "subagent"
    # the session's remote and commit, from git's first answer; its branch, from the prompt
    assert second.session.git is not None and (second.session.git.remote, second.session.git.branch,
                                               second.session.git.commit) == (
        "https://git.acme.test/acme/inventory-sync.git", "survey-layout", head)
    assert json.loads(json.dumps(materializer.snapshot()))["sessions"][0]["git_read"]["commit"] == head
    # the subagent commits; the turn's last call ends; git's answer gives the turn's end
    end = commit(repo, {"stock.py": "1\n2\n"})
    for capture in captures[2:]:
        clock.advance((capture.ended_at_ns - clock.time_ns()) / 1e9 + 0.001)
        result = materializer.materialize(capture)
        assert [r["body"]["id"] for r in result.records if r["kind"] == "trace"] == [trace["id"]]  # one turn

    def turn_end():
        versions = [r["body"] for r in materializer.late_records()]
        found = [v for v in versions if v["metadata"]["cipx"]["session"]["repository"].get("head_sha_end") == end]
        return found[-1] if found else None

    final = wait_for(turn_end, what="the version with the turn's end")["metadata"]["cipx"]["session"]["repository"]
    assert (final["head_sha"], final["head_sha_end"], final["commits_in_trace"], final["files_added"],
            final["lines_added"], final["lines_deleted"]) == (head, end, 1, 1, 2, 0)


def test_in_redacted_mode_the_later_version_carries_no_text_either(tmp_path, probe):
    repo = make_repo(tmp_path / "repo")
    head = commit(repo, {"app.py": "a\n"})
    capture = captures_in(repo)[0]
    materializer = Materializer(config(tmp_path, capture_content=False), load_price_table(),
                                clock=FakeClock(capture.ended_at_ns), git=probe)
    materializer.materialize(capture)
    (version,) = wait_for(materializer.late_records, what="the trace version git's answer adds")
    body = version["body"]
    assert "input" not in body and "output" not in body
    assert body["metadata"]["cc"]["privacy"]["capture_content"] is False
    assert body["metadata"]["cipx"]["session"]["repository"]["head_sha"] == head


def test_a_replay_of_old_captures_never_gets_todays_repository(tmp_path, probe):
    repo = make_repo(tmp_path / "repo")
    commit(repo, {"app.py": "a\n"})
    captures = captures_in(repo)
    clock = FakeClock(captures[-1].ended_at_ns + 86400 * 10**9)  # a day later: a replay
    asked: list[tuple] = []
    probe.ask = lambda *turn: asked.append(turn)  # the probe answers on its own thread: see what it is asked
    materializer = Materializer(config(tmp_path), load_price_table(), clock=clock, git=probe)
    for capture in captures:
        for record in materializer.materialize(capture).records:
            if record["kind"] == "trace":
                assert record["body"]["metadata"]["cipx"]["session"]["repository"] == {"branch": "survey-layout"}
    assert asked == [] and materializer.late_records() == [] and probe.answered() == []  # git never asked
