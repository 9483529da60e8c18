"""README.md speaks to users, and every command it shows works: each `sh` block and each row of
its command table runs here, in README's order, on a sandboxed machine with the daemon up.

`./install.sh` itself runs in tests/test_install_e2e.py; the test command is what `.ci/run` runs.
"""

import json
import re
import shlex
import tomllib

import pytest

from opik_cipx.config import load_settings
from tests.claude_code_corpus import write_session_files
from tests.conftest import REPO, wait_for
from tests.test_end_to_end import replay_scenario

# Each scenario starts on a machine with nothing of ours on it: the first install or sync builds
# or installs the executable (tests.lifecycle_helpers, `no_executable`).
pytestmark = pytest.mark.no_executable

README = (REPO / "README.md").read_text()
# How each command of README's table is run here (names the table's first column must list).
TABLE_RUNS = {
    "status": [("status",), ("status", "--json")],
    "viewer": [("viewer",)],
    "report": [("report",), ("report", "--by", "session", "--json"), ("report", "--by", "mcp", "--csv"),
               ("report", "--by", "cache_break")],
    "advise": [("advise",), ("advise", "--json")],
    "budget": [("budget",), ("budget", "--json"), ("budget", "allow", "--for", "1m")],
    "prices": [("prices",), ("prices", "--json")],
    "statusline": [("statusline",)],
    "sync": [("sync",)],
    "restart": [("restart",)],
    "logs": [("logs", "-n", "5", "--no-follow")],
    "config": [("config", "--example")],
    "ship": [("ship", "--retry-quarantine")],
    "replay": [("replay",), ("replay", "--ledger"), ("replay", "--out", "{tmp}/records.jsonl")],
    "purge": [("purge", "--yes")],
    "uninstall": [("uninstall", "--yes")],
}


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def shown_commands() -> list[list[str]]:
    """Every `opik-cipx ...` line of README's `sh` blocks, as argv after `opik-cipx`."""
    out = []
    for block in blocks("sh"):
        for line in map(str.strip, block.splitlines()):
            if line.startswith("opik-cipx "):
                out.append(shlex.split(line.split("#", 1)[0])[1:])
    return out


def table_commands() -> list[str]:
    return re.findall(r"^\| `opik-cipx (\w+)", README, flags=re.MULTILINE)


def test_readme_opens_with_install_then_the_test_command_ci_runs():
    install, tests = blocks("sh")[:2]
    assert install.strip() == "./install.sh"
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert tests.strip() == ci
    assert README.index("./install.sh") < 1500  # first thing a reader sees


def test_every_table_command_has_a_run_here():
    assert table_commands() == list(TABLE_RUNS)


def test_the_opik_example_is_valid_config(tmp_path):
    (example,) = [b for b in blocks("toml") if b.startswith("[opik]")]
    tomllib.loads(example)
    config = tmp_path / "config.toml"
    config.write_text(example.replace('"..."', '"sk-test"'))
    settings = load_settings({"CIPX_HOME": str(tmp_path), "CIPX_CONFIG": str(config)})
    assert settings.opik_api_key == "sk-test" and settings.opik_workspace == "my-workspace"
    assert settings.warnings == ()


def test_every_command_readme_shows_runs_on_a_fresh_machine(machine_with_upstream, upstream, tmp_path):
    m = machine_with_upstream
    env = {"BROWSER": "true"}  # `viewer --open` opens "a browser" that does nothing
    first = m.cli("sync", **env)
    assert first.returncode == 0, first.stderr
    write_session_files(m.home / "sessions")

    class Proxy:  # what replay_scenario needs of a daemon
        port = m.port

    # a few real calls, so reports, the ledger and replay have something to show
    calls = replay_scenario(Proxy, upstream, "tools")
    wait_for(lambda: m.stats()["counters"]["events_materialized"] == calls, what="the calls materialized")
    ran = []
    for argv in shown_commands():
        result = m.cli(*argv, **env)
        assert result.returncode == 0, (argv, result.stderr)
        ran.append(argv)
    assert ["viewer", "--open"] in ran and ["restart"] in ran
    report = m.cli("report", "--json")
    assert json.loads(report.stdout)["total"]["calls"] == calls
    for runs in TABLE_RUNS.values():
        for argv in runs:
            result = m.cli(*(arg.format(tmp=tmp_path) for arg in argv), **env)
            assert result.returncode == 0, (argv, result.stdout, result.stderr)
            if argv == ("viewer",):
                assert "/?signin=" in result.stdout
    assert (tmp_path / "records.jsonl").stat().st_size > 0
    assert not m.home.exists()  # uninstall ran last
