"""repository: a directory's git state and what a turn delivered, read from real repositories in tmp dirs,
and every failure (no git, no repository, a detached head, an empty repository, a git that hangs) as None."""

import os
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from opik_cipx.materialize import repository
from opik_cipx.materialize.repository import RepoChanges, RepoState
from tests.conftest import wait_for

# A fixed author and date, and no user or system config, for the repositories the tests make.
GIT_ENV = {"GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "ada@example.com", "GIT_COMMITTER_NAME": "Ada",
           "GIT_COMMITTER_EMAIL": "ada@example.com", "GIT_AUTHOR_DATE": "2026-11-23T10:00:00Z",
           "GIT_COMMITTER_DATE": "2026-11-23T10:00:00Z", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


@pytest.fixture(autouse=True)
def quiet_git(monkeypatch):
    """The code under test runs git with the process's environment: no config of this machine's user."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


def read_state(cwd, **options) -> RepoState:
    """The function under test with room for a loaded machine (its own 2 s are tested below)."""
    return repository.read_state(cwd, **{"timeout_s": 30, **options})


def read_changes(cwd, start, end, **options) -> RepoChanges:
    return repository.read_changes(cwd, start, end, **{"timeout_s": 30, **options})


def git(cwd, *args) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout.strip()


def make_repo(path: Path) -> Path:
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    return path


def commit(repo: Path, files: dict[str, str | None], message: str = "work") -> str:
    """Write (or, for None, delete) `files`, commit everything, return the new head."""
    for name, text in files.items():
        if text is None:
            (repo / name).unlink()
        else:
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def test_the_state_of_a_repository_with_a_remote_that_carries_credentials(tmp_path):
    repo = make_repo(tmp_path / "repo")
    head = commit(repo, {"app.py": "print(1)\n", ".gitignore": "*.log\n", "src/util.py": "x = 1\n"})
    git(repo, "remote", "add", "upstream", "git@github.com:acme/fork.git")
    git(repo, "remote", "add", "origin", "https://ada:ghp_s3cret@github.com/acme/api.git")
    state = read_state(str(repo))
    assert state == RepoState(remote="https://github.com/acme/api.git", branch="main", head_sha=head, dirty=False)
    assert "s3cret" not in repr(state)
    assert read_state(str(repo / "src")) == state  # any directory inside it
    (repo / "debug.log").write_text("ignored\n")
    assert read_state(str(repo)).dirty is False
    (repo / "notes.txt").write_text("untracked\n")
    assert read_state(str(repo)).dirty is True
    (repo / "notes.txt").unlink()
    (repo / "app.py").write_text("print(2)\n")
    assert read_state(str(repo)).dirty is True
    git(repo, "add", "app.py")  # staged counts too
    assert read_state(str(repo)).dirty is True
    assert read_state(str(repo), dirty=False) == RepoState(remote=state.remote, branch="main", head_sha=head)
    git(repo, "remote", "remove", "origin")
    assert read_state(str(repo)).remote == "git@github.com:acme/fork.git"  # no origin: the first remote


def test_a_detached_head_an_empty_repository_and_directories_that_are_none(tmp_path):
    repo = make_repo(tmp_path / "repo")
    first = commit(repo, {"a.txt": "a\n"})
    commit(repo, {"a.txt": "b\n"})
    git(repo, "checkout", "-q", first)
    assert read_state(str(repo)) == RepoState(branch=None, head_sha=first, dirty=False)
    empty = make_repo(tmp_path / "empty")
    assert read_state(str(empty)) == RepoState(branch="main", head_sha=None, dirty=False)
    (empty / "new.txt").write_text("x\n")
    assert read_state(str(empty)).dirty is True
    plain = tmp_path / "plain"
    plain.mkdir()
    for cwd in (str(plain), str(tmp_path / "missing"), "", None):
        assert read_state(cwd) == RepoState()


def test_the_repository_git_is_run_for_is_the_directory_asked_about(tmp_path, monkeypatch):
    """A daemon started from a git hook inherits GIT_DIR, GIT_INDEX_FILE...: they must not redirect the read."""
    repo = make_repo(tmp_path / "repo")
    head = commit(repo, {"a.txt": "a\n"})
    other = make_repo(tmp_path / "other")
    commit(other, {"b.txt": "b\n"})
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other))
    monkeypatch.setenv("GIT_INDEX_FILE", str(other / ".git" / "index"))
    monkeypatch.setenv("GIT_COMMON_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_OBJECT_DIRECTORY", str(other / ".git" / "objects"))
    assert read_state(str(repo)) == RepoState(branch="main", head_sha=head, dirty=False)


def test_what_a_turn_delivered_is_its_commits_and_their_diff(tmp_path):
    repo = make_repo(tmp_path / "repo")
    start = commit(repo, {"keep.py": "1\n2\n3\n", "old.py": "a\nb\n", "move.py": "m\n"})
    commit(repo, {"keep.py": "1\ntwo\n3\n", "new.py": "x\ny\nz\n"})
    (repo / "moved").mkdir()
    os.rename(repo / "move.py", repo / "moved" / "move.py")
    end = commit(repo, {"old.py": None})
    (repo / "keep.py").write_text("uncommitted\n")  # not delivered yet: counted with the commit that carries it
    (repo / "draft.py").write_text("draft\n")
    # keep.py: +1 -1; new.py: +3; old.py: -2; move.py: -1 and moved/move.py: +1 (no rename detection)
    assert read_changes(str(repo), start, end) == RepoChanges(commits=2, files_added=2, files_deleted=2,
                                                             lines_added=5, lines_deleted=4)
    assert read_changes(str(repo), end, end) == RepoChanges(commits=0, files_added=0, files_deleted=0,
                                                           lines_added=0, lines_deleted=0)
    back = read_changes(str(repo), end, start)  # the head moved back (a reset): nothing committed, lines undone
    assert back == RepoChanges(commits=0, files_added=2, files_deleted=2, lines_added=4, lines_deleted=5)


def test_heads_that_cannot_be_compared_give_nothing_and_never_reach_git_as_options(tmp_path):
    repo = make_repo(tmp_path / "repo")
    head = commit(repo, {"a.txt": "a\n"})
    unknown = "0" * 40
    assert read_changes(str(repo), unknown, head) == RepoChanges()
    written = tmp_path / "written"
    for bad in (None, "", "HEAD", head[:7], f"--output={written}", head + "\n"):
        assert read_changes(str(repo), bad, head) == RepoChanges()
        assert read_changes(str(repo), head, bad) == RepoChanges()
    assert not written.exists()
    assert read_changes(str(tmp_path / "missing"), head, head) == RepoChanges()
    assert read_changes(None, head, head) == RepoChanges()


def test_a_large_diff_is_counted_exactly(tmp_path):
    repo = make_repo(tmp_path / "repo")
    start = commit(repo, {"seed.txt": "seed\n"})
    lines = "".join(f"line {n}\n" for n in range(200)).encode()
    # the commit that adds 1,500 files and deletes the seed, made by fast-import: read_changes reads
    # commits only, and 1,500 files written to the work tree cost far more than the test
    stream = b"".join([
        b"blob\nmark :1\ndata %d\n%s\n" % (len(lines), lines),
        b"commit refs/heads/main\ncommitter Ada <ada@example.com> 1795428000 +0000\ndata 4\nwork\n",  # GIT_ENV's date
        b"from %s\n" % start.encode(),
        *(b"M 100644 :1 gen/%04d.txt\n" % n for n in range(1500)),
        b"D seed.txt\n\n",
    ])
    subprocess.run(["git", "-C", str(repo), "fast-import", "--quiet"], input=stream, check=True,
                   env={**os.environ, **GIT_ENV})
    end = git(repo, "rev-parse", "main")
    assert read_changes(str(repo), start, end, timeout_s=60) == RepoChanges(
        commits=1, files_added=1500, files_deleted=1, lines_added=300_000, lines_deleted=1)


def test_more_output_than_the_limit_is_a_failure(tmp_path, monkeypatch):
    repo = make_repo(tmp_path / "repo")
    commit(repo, {"a.txt": "a\n"})
    for n in range(40):
        (repo / f"untracked-{n:02}.txt").write_text("x\n")  # `git status` prints 40 lines of 20 bytes
    assert read_state(str(repo)).dirty is True
    monkeypatch.setattr(repository, "OUTPUT_LIMIT", 799)
    assert read_state(str(repo)).dirty is None
    assert read_state(str(repo)).head_sha is not None  # the other reads are small


def test_a_repositorys_config_cannot_make_a_read_run_a_program(tmp_path):
    repo = make_repo(tmp_path / "repo")
    marker = tmp_path / "ran"
    hook = tmp_path / "hook"
    hook.write_text(f"#!/bin/sh\necho \"$0\" >> {marker}\n")
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    start = commit(repo, {"a.txt": "a\n", ".gitattributes": "*.txt diff=evil\n"})
    end = commit(repo, {"a.txt": "a\nb\n"})
    git(repo, "config", "core.fsmonitor", str(hook))
    git(repo, "config", "diff.external", str(hook))
    git(repo, "config", "diff.evil.textconv", str(hook))
    git(repo, "status", "--porcelain")
    assert marker.exists()  # plain git would have run it
    marker.unlink()
    assert read_state(str(repo)) == RepoState(branch="main", head_sha=end, dirty=False)
    assert read_changes(str(repo), start, end) == RepoChanges(commits=1, files_added=0, files_deleted=0,
                                                             lines_added=1, lines_deleted=0)
    assert not marker.exists()


def fake_git(tmp_path: Path, monkeypatch, script: str) -> Path:
    """A `git` first on PATH that runs `script` (sh)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "git"
    fake.write_text("#!/bin/sh\n" + script)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting for a parent that does not reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def test_a_git_that_hangs_is_killed_at_the_deadline_with_what_it_started(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    pids = tmp_path / "pids"
    fake_git(tmp_path, monkeypatch, f"sleep 3600 &\necho $$ $! >> {pids}\nwait\n")
    results = []
    reader = threading.Thread(target=lambda: results.append(repository.read_state(str(repo))), daemon=True)
    reader.start()
    reader.join(60)  # a deadline for a read that never gives up, not a speed target
    assert results == [RepoState()]
    started = [int(pid) for pid in pids.read_text().split()]
    assert len(started) == 2  # one git ran (the deadline had passed for the next), and its sleep
    wait_for(lambda: not any(alive(pid) for pid in started), what="the hanging git and its child to be gone")


def test_no_git_at_all(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert read_state(str(repo)) == RepoState()
    assert read_changes(str(repo), "a" * 40, "b" * 40) == RepoChanges()
