"""Issue 23's acceptance, with the real Claude Code CLI through the daemon (docs/BUDGETS.md): with a
day cap below what one prompt costs, the first prompt completes; the second ends at once with
our message on screen and no request reaching the upstream; after `opik-cipx budget allow` the
third (continuing the blocked session) completes.

The CLI is npm's `@anthropic-ai/claude-code` at the version docs/BUDGETS.md records: `.ci/run`
installs it into `.ci/claude-code/`; `CIPX_TEST_CLAUDE` names another `claude` executable. Where
neither is there the test is skipped, saying why.
"""

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.claude_code_corpus import corpus, response
from tests.conftest import REPO, DaemonProcess, run_command, wait_for
from tests.fake_anthropic import fixture_reply

VERSION = "2.1.197"  # the version .ci/run installs and docs/BUDGETS.md records as verified
INSTALLED = REPO / ".ci" / "claude-code" / "node_modules" / ".bin" / "claude"
PROMPT_S = 120  # where the test gives up on one prompt (a slow machine's start included)


def claude_cli() -> str:
    path = os.environ.get("CIPX_TEST_CLAUDE") or str(INSTALLED)
    if not Path(path).exists():
        npm = "found" if shutil.which("npm") else "missing"
        pytest.skip(f"the real Claude Code CLI is not installed: .ci/run installs @anthropic-ai/claude-code@{VERSION} "
                    f"with npm into {INSTALLED.parent.parent.parent} (npm {npm}), or set CIPX_TEST_CLAUDE to a claude "
                    "executable")
    probe = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"{path} --version fails ({probe.stderr.strip()[:200]}); reinstall it with npm")
    return path


def prompt_cost() -> float:
    (d,) = [d for d in corpus() if (d.scenario, d.number) == ("simple", "001")]  # `claude -p "say hello"`
    return d.result.call.cost.total_usd


class ClaudeCode:
    """`claude -p` in a project of its own, pointed at the daemon, as a user's shell would run it."""

    def __init__(self, cli: str, root: Path, port: int):
        self.cli = cli
        self.project = root / "project"
        self.project.mkdir(parents=True)
        (self.project / "README.md").write_text("A project.\n")
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root / "home"),
                    "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}", "ANTHROPIC_API_KEY": "sk-ant-test-not-a-real-key",
                    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1", "NO_COLOR": "1"}
        Path(self.env["HOME"]).mkdir()

    def ask(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.cli, "-p", *args], cwd=self.project, env=self.env, capture_output=True,
                              text=True, timeout=PROMPT_S, stdin=subprocess.DEVNULL)

    def ask_until_exit(self, answered: Callable[[], bool], *args: str) -> tuple[subprocess.CompletedProcess, float]:
        """Run a prompt; also return the seconds from `answered()` first holding to the CLI's exit."""
        with subprocess.Popen([self.cli, "-p", *args], cwd=self.project, env=self.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL) as proc, \
                ThreadPoolExecutor(1) as pool:
            output = pool.submit(proc.communicate, timeout=PROMPT_S)  # drains both pipes meanwhile
            wait_for(lambda: answered() or proc.poll() is not None, timeout_s=PROMPT_S, what="the request answered")
            answered_at = time.monotonic()
            stdout, stderr = output.result()
            exited_at = time.monotonic()
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), exited_at - answered_at


def messages_calls(upstream) -> int:
    return sum(1 for seen in upstream.seen if seen.method == "POST" and seen.path.startswith("/v1/messages?"))


def test_claude_code_stops_at_the_cap_shows_why_and_goes_on_once_allowed(tmp_path, home, upstream):
    cli = claude_cli()
    home.mkdir(parents=True)
    (home / "config.toml").write_text(f"[budget]\nday_usd = {prompt_cost() / 2}\n")  # below one prompt
    upstream.default = fixture_reply(response("simple", "001"))  # a recorded answer with its usage
    daemon = DaemonProcess(home, upstream.url)
    try:
        claude = ClaudeCode(cli, tmp_path / "user", daemon.port)
        first = claude.ask("say hello")
        assert first.returncode == 0, first.stdout + first.stderr
        assert messages_calls(upstream) == 1
        wait_for(lambda: daemon.stats()["budget"]["caps"][0]["spent_usd"] >= prompt_cost() * 0.99,
                 what="the first prompt's cost counted")

        second, after_block_s = claude.ask_until_exit(lambda: daemon.stats()["budget"]["blocked"] >= 1,
                                                      "say hello again")
        screen = second.stdout + second.stderr
        assert second.returncode != 0 and "Request rejected (429)" in screen, screen
        assert "opik-cipx kept this request from Anthropic" in screen and "day cap" in screen
        assert "opik-cipx budget allow" in screen
        assert messages_calls(upstream) == 1  # nothing reached the upstream
        assert daemon.stats()["budget"]["blocked"] == 1  # one attempt: Claude Code did not retry
        # it ends at once: within 5 s of our answer (its own start, slow on a loaded machine, is not counted)
        assert after_block_s <= 5.0, after_block_s

        allowed = run_command(home, "budget", "allow")  # the session blocked last
        assert allowed.returncode == 0 and "the daemon applied it" in allowed.stdout, allowed.stdout + allowed.stderr
        third = claude.ask("--continue", "and now?")
        assert third.returncode == 0, third.stdout + third.stderr
        assert messages_calls(upstream) == 2
    finally:
        daemon.kill()
