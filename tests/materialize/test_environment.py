"""read_workspace: the directory and git state a Claude Code request names, in every wording found."""

import importlib.util
import json
from pathlib import Path

from hypothesis import assume, given
from hypothesis import strategies as st

from opik_cipx.materialize.attribution.environment import Workspace, parse_workspace, read_workspace
from opik_cipx.materialize.call_kind import classify
from tests.claude_code_corpus import SCENARIOS, body_json, header_pairs, requests

GIT_FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "git-status"
# The project directory of each recorded scenario (tests/fixtures/claude-code/README.md).
PROJECTS = {"simple": "acme-api", "tools": "billing-svc", "subagent": "inventory-sync", "mcp": "weather-dash",
            "skills_agents": "release-bot", "compact": "greeter-cli", "nonstream_and_others": "docs-portal",
            "error": "status-page"}
INTRO = ("This is the git status at the start of the conversation. Note that this status is a snapshot in time, "
         "and will not update during the conversation.")


def test_every_recorded_main_loop_and_subagent_request_names_its_project_and_no_repository():
    seen = set()
    for scenario in SCENARIOS:
        for number, req in requests(scenario):
            body = body_json(req)
            kind = classify(req["method"], req["path"], header_pairs(req), body).kind
            workspace = read_workspace(body)
            if kind in ("main", "subagent", "compaction"):
                assert workspace == Workspace(cwd=f"/home/dev/code/{PROJECTS[scenario]}", is_git=False,
                                              platform="linux"), (scenario, number)
                seen.add(kind)
            else:  # side calls, count_tokens, preconnects, other routes: nothing says where
                assert workspace is None, (scenario, number, kind)
    assert seen == {"main", "subagent", "compaction"}


def test_a_session_in_a_repository_names_its_branch_state_and_head_in_every_call():
    expected = Workspace(cwd="/home/dev/code/inventory-sync", is_git=True, platform="linux", branch="survey-layout",
                         main_branch="main", dirty=True, head="5d0c9e1")
    kinds = []
    for number, req in requests("subagent", GIT_FIXTURES):
        body = body_json(req)
        kinds.append(classify(req["method"], req["path"], header_pairs(req), body).kind)
        assert read_workspace(body) == expected, number
    assert kinds == ["main", "subagent", "subagent", "subagent", "main"]  # the derivation kept what each call is


def test_the_derived_fixture_is_what_its_generator_writes():
    spec = importlib.util.spec_from_file_location("generate_git_status", GIT_FIXTURES / "generate.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    built = generator.build()
    committed = {str(path.relative_to(GIT_FIXTURES)): path.read_text() for path in GIT_FIXTURES.glob("*/*.json")}
    assert built == committed
    for name, text in built.items():
        if not name.endswith(".response.json"):
            request = json.loads(text)
            assert request["headers"]["Content-Length"] == str(len(request["body"].encode()))
            assert request["derived_from"] == f"claude-code/subagent/{Path(name).stem}"


# --- wordings of other builds (quoted from public captures, see tests/fixtures/git-status/README.md) ---------


def test_the_git_status_as_a_context_reminder_key_with_single_line_breaks():
    """1.0.x and later 2.1 builds: `# gitStatus` in the reminder that opens the first user message."""
    reminder = ("<system-reminder>\nAs you answer the user's questions, you can use the following context:\n"
                "# userEmail\nThe user's email address is ada@example.com.\n"
                f"# gitStatus\n{INTRO}\nCurrent branch: feat/x\n"
                "Main branch (you will usually use this for PRs): master\nGit user: Ada\n"
                "Status:\nM src/a.js\nA src/b.js\n?? c.js\n\nRecent commits:\nabc1234 Add b\ndef5678 Start\n\n"
                "IMPORTANT: this context may or may not be relevant to your tasks.\n</system-reminder>\n")
    body = {"system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.282"},
                       {"type": "text", "text": "# Environment\nYou have been invoked in the following environment: \n"
                                                " - Primary working directory: /Users/ada/w t/app\n"
                                                " - This is a git worktree — an isolated copy of the repository.\n"
                                                " - Is a git repository: true\n - Platform: darwin\n - Shell: zsh\n\n"
                                                "You are powered by the model named Opus 5.5."}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": reminder},
                                                      {"type": "text", "text": "fix it"}]}]}
    assert read_workspace(body) == Workspace(cwd="/Users/ada/w t/app", is_git=True, platform="darwin", branch="feat/x",
                                             main_branch="master", dirty=True, head="abc1234")


def test_the_git_status_as_an_early_context_tag_and_the_env_block_of_older_builds():
    text = ("Here is useful information about the environment you are running in:\n<env>\nWorking directory: /srv/app\n"
            "Is directory a git repo: Yes\nAdditional working directories: /tmp\nPlatform: linux\n"
            "Today's date: 2025-03-01\nModel: claude-3-7-sonnet\n</env>\n\n"
            f'<context name="gitStatus">{INTRO}\nCurrent branch: main\n'
            "Main branch (you will usually use this for PRs):\nStatus: M a.py\n\nRecent commits:\n</context>\n")
    assert parse_workspace([text]) == Workspace(cwd="/srv/app", is_git=True, platform="linux", branch="main",
                                                main_branch=None, dirty=True, head=None)


def test_a_clean_tree_a_detached_head_and_an_unknown_directory():
    section = (f"gitStatus: {INTRO}\n\nCurrent branch: \n\nMain branch (you will usually use this for PRs): \n\n"
               "Status:\n(clean)\n\nRecent commits:\n167d4afde Route53: add CallerReference")
    environment = ("# Environment\nYou have been invoked in the following environment: \n"
                   " - Primary working directory: (no project folder associated with this session)\n"
                   " - Is a git repository: maybe\n")
    assert parse_workspace([environment, section]) == Workspace(dirty=False, head="167d4afde")
    assert parse_workspace([section.replace("Current branch: ", "Current branch: HEAD")]).branch is None
    assert parse_workspace([environment]) == Workspace()  # the section is there, but says nothing usable
    assert parse_workspace(["no sections here", ""]) is None
    assert read_workspace({"system": "plain", "messages": "not a list"}) is None
    assert read_workspace(None) is None and read_workspace([1, 2]) is None


def test_the_git_status_ends_where_its_parts_end():
    """A section without `Recent commits:` ends at the first line that is none of its parts; the list of
    recent commits ends at a line that is not a commit."""
    cut = f"gitStatus: {INTRO}\nCurrent branch: main\n\n\n# Final Reminder\nCurrent branch: other\nStatus:\nM x"
    assert parse_workspace([cut]) == Workspace(branch="main")
    trailer = (f"# gitStatus\n{INTRO}\n\nStatus:\n(clean)\n\nRecent commits:\nc7e6a02 init\n\n"
               "Claude Code attached this context automatically; it isn't part of the user's message.")
    assert parse_workspace([trailer]) == Workspace(dirty=False, head="c7e6a02")


def test_the_first_environment_and_the_last_git_status_count():
    def env(directory):
        return f"<env>\nWorking directory: {directory}\nIs directory a git repo: Yes\n</env>"

    def status(branch):
        return f"gitStatus: {INTRO}\n\nCurrent branch: {branch}\n\nStatus:\n(clean)\n\nRecent commits:\naaaaaaa x"

    assert parse_workspace([env("/a"), env("/b")]).cwd == "/a"
    assert parse_workspace([status("quoted") + "\n\n" + status("real")]).branch == "real"
    assert parse_workspace([status("first"), status("second")]).branch == "second"
    assert parse_workspace([status("first"), f"gitStatus: {INTRO}\n\nUnknown: x"]) == Workspace()


# --- properties ------------------------------------------------------------------------------------------


@given(st.text())
def test_arbitrary_text_never_raises(text):
    workspace = parse_workspace([text, f"gitStatus: {INTRO}\n{text}", f"<env>\n{text}", text + "\n<env>"])
    assert workspace is None or isinstance(workspace, Workspace)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=30),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(
                        st.sampled_from(["system", "messages", "text", "content", "type", "role"]), children,
                        max_size=4),
                    max_leaves=20))
def test_arbitrary_bodies_never_raise(body):
    workspace = read_workspace(body)
    assert workspace is None or isinstance(workspace, Workspace)


line = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), min_size=1, max_size=40)
names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,30}", fullmatch=True).filter(lambda name: name != "HEAD")
paths = st.from_regex(r"/[A-Za-z0-9 ._/-]{0,40}[A-Za-z0-9._/-]", fullmatch=True)
status_lines = st.lists(st.from_regex(r"(M |A |D |\?\?) [a-z]{1,8}\.py", fullmatch=True), max_size=4)
commits = st.lists(st.from_regex(r"[0-9a-f]{7} [A-Za-z ]{1,20}", fullmatch=True), max_size=5)


@st.composite
def sections(draw):
    """An environment section and a git status section in one of the wordings Claude Code used."""
    cwd, platform, branch, main = draw(paths), draw(st.sampled_from(["linux", "darwin"])), draw(names), draw(names)
    if draw(st.booleans()):
        environment = (f"# Environment\nYou have been invoked in the following environment: \n"
                       f" - Primary working directory: {cwd}\n - Is a git repository: true\n - Platform: {platform}\n"
                       " - Shell: zsh")
    else:
        environment = f"<env>\nWorking directory: {cwd}\nIs directory a git repo: Yes\nPlatform: {platform}\n</env>"
    status, log = draw(status_lines), draw(commits)
    parts = [f"Current branch: {branch}", f"Main branch (you will usually use this for PRs): {main}",
             "Git user: Ada Lovelace", "Status:\n" + ("\n".join(status) or "(clean)"),
             "Recent commits:\n" + "\n".join(log)]
    joiner = draw(st.sampled_from(["\n\n", "\n"]))
    intro = draw(st.sampled_from(["gitStatus: ", "# gitStatus\n"]))
    git = intro + INTRO + joiner + joiner.join(parts)
    expected = Workspace(cwd=cwd, is_git=True, platform=platform, branch=branch, main_branch=main,
                         dirty=bool(status), head=log[0][:7] if log else None)
    return environment, git, expected


MARKERS = ("You have been invoked in the following environment:", "<env>", "This is the git status at the start")


@given(sections(), st.text(max_size=200), st.text(max_size=200), st.text(max_size=200))
def test_sections_embedded_in_any_text_parse_the_same(drawn, before, between, after):
    environment, git, expected = drawn
    assume(not any(marker in text for marker in MARKERS for text in (before, between, after)))
    assert parse_workspace([environment, git]) == expected
    embedded = f"{before}\n{environment}\n\n{between}\n{git}\n\n{after}"
    assert parse_workspace([embedded]) == expected
    assert parse_workspace([before, environment + "\n\n" + after, between + "\n" + git]) == expected
