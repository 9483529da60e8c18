"""`opik-cipx sync`: the SessionStart entry point — supervisor, daemon, Claude Code settings.

Idempotent, and fast when nothing changed (it runs on every Claude Code session start and
prompt). Run from a Claude Code hook (JSON on stdin) it never fails the hook: it exits 0,
prints nothing on stdout (a SessionStart hook's stdout becomes model context) and puts
problems on stderr. Run by hand it reports on stdout and exits 1 when opik-cipx is not up.

`CIPX_DISABLED` truthy (environment or config file) tears the install down instead.
A config file that does not load never breaks Claude Code: a healthy daemon keeps running on
its old settings, and otherwise our `ANTHROPIC_BASE_URL` is removed (see lifecycle.py).
"""

import argparse
import os
import sys

from opik_cipx.config import ConfigError, Settings, is_truthy
from opik_cipx.control import claude_settings, lifecycle
from opik_cipx.control.daemon_control import admin_port, is_healthy, paths_only_settings, read_state
from opik_cipx.materialize.identity import claude_json_path
from opik_cipx.materialize.sessions import parse_hook_input, read_hook_stdin, record_session


def configure(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(on_config_error=on_config_error, on_home_error=on_config_error)


def run(args: argparse.Namespace, settings: Settings) -> int:
    return sync(settings, dict(os.environ), config_error=None)


def on_config_error(args: argparse.Namespace, exc: ConfigError | str) -> int:
    """A config file that does not load, or a `$CIPX_HOME` that cannot be used: keep a healthy daemon, else fail open."""
    env = dict(os.environ)
    return sync(paths_only_settings(env), env, config_error=str(exc))


class _Report:
    def __init__(self, as_hook: bool):
        self.as_hook = as_hook
        self.failed = False

    def info(self, line: str) -> None:
        print(f"opik-cipx: {line}", file=sys.stderr if self.as_hook else sys.stdout)

    def problem(self, line: str) -> None:
        print(f"opik-cipx: {line}", file=sys.stderr)


def sync(settings: Settings, env: dict[str, str], config_error: str | None) -> int:
    raw = read_hook_stdin()
    report = _Report(as_hook=raw is not None)
    try:
        if is_truthy(env.get("CIPX_DISABLED")) or (config_error is None and settings.disabled):
            for line in lifecycle.tear_down(settings, env):
                report.info(line)
            report.info("disabled (CIPX_DISABLED): nothing is running and Claude Code talks to Anthropic directly")
            return 0
        if config_error is None:
            _bring_up(settings, env, report)
        else:
            _keep_or_fail_open(settings, env, config_error, report)
        if raw is not None:
            _record(settings, env, raw, report)
    except Exception as exc:  # fail open: a hook must never crash or leave a dead proxy configured
        report.failed = True
        report.problem(f"sync failed unexpectedly: {type(exc).__name__}: {exc}")
        try:
            state = read_state(settings)
            if not is_healthy(admin_port(settings, state)):
                lifecycle.unpoint(settings, env, state)
        except Exception:  # noqa: BLE001 - best effort, already reporting a failure
            pass
    return 0 if report.as_hook or not report.failed else 1


def _bring_up(settings: Settings, env: dict[str, str], report: _Report) -> None:
    outcome, problems = lifecycle.up_and_point(settings, env)
    for note in outcome.notes:
        report.info(note)
    for line in problems:
        report.problem(line)
    if not outcome.ok:
        report.failed = True
    elif not report.as_hook:
        report.info(lifecycle.summary(settings, outcome))


def _keep_or_fail_open(settings: Settings, env: dict[str, str], config_error: str, report: _Report) -> None:
    state = read_state(settings)
    if state is not None and is_healthy(admin_port(settings, state)):
        report.problem(f"{config_error}. The running daemon keeps its old settings but will not start again "
                       "until this is fixed; then run `opik-cipx restart`.")
        return
    report.failed = True
    change = lifecycle.unpoint(settings, env, state)
    tail = f" Removed {claude_settings.KEY} from {change.path}." if change.outcome == "removed" else ""
    report.problem(f"{config_error}. opik-cipx is not running, so Claude Code talks to Anthropic directly.{tail} "
                   "Fix it, then run `opik-cipx sync`.")


def _record(settings: Settings, env: dict[str, str], raw: bytes, report: _Report) -> None:
    hook = parse_hook_input(raw)
    if hook is None:
        report.problem("the hook input on stdin is not a JSON object; no session metadata written")
        return
    try:
        record_session(settings.sessions_dir, hook, claude_json_path(env))
    except ValueError as exc:
        report.problem(f"{exc}; no session metadata written")
    except OSError as exc:
        report.problem(f"cannot write session metadata to {settings.sessions_dir}: {exc.strerror or exc}; "
                       "calls are still proxied and counted")
