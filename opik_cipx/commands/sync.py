"""`opik-cipx sync`: the SessionStart entry point — supervisor, daemon, Claude Code settings.

Idempotent, and fast when nothing changed (it runs on every Claude Code session start and
prompt). Run from a Claude Code hook (JSON on stdin) it never fails the hook: it exits 0,
puts problems on stderr, and prints nothing on stdout (a SessionStart hook's stdout becomes
model context) except, when the user must know something, one JSON object whose
`systemMessage` Claude Code shows to the user and not to the model:
- this sync just pointed Claude Code at opik-cipx (first install, or back after a failure):
  calls go through opik-cipx from the next Claude Code session, the current one talks to
  Anthropic directly (Claude Code read its settings before the hook ran);
- at SessionStart, the running daemon uses other settings than this environment asks for
  (`state.json` holds a keyed digest per option, `config.settings_fingerprint`): which ones, and
  how to apply them;
- the session that runs the hook goes through opik-cipx (its `ANTHROPIC_BASE_URL`, which Claude
  Code passes to its hooks, is ours) while opik-cipx is down for good or switched off: that
  session cannot reach Anthropic, and a new one would;
- a spend cap of the session (`[budget]`, docs/BUDGETS.md) passed its warning share or was
  reached: once per cap and period (`$CIPX_HOME/budget-told.json` remembers what was told).
Run by hand it reports on stdout and exits 1 when opik-cipx is not up.

Where install.sh registered our hooks in Claude Code's settings, `sync` keeps the launcher copy
and their commands current; run by one of them while our plugin is enabled for the session, it
does nothing at all: the plugin's hook, which runs beside it, does the work.

While `uninstall` runs it does nothing at all and exits 0 (lifecycle.py: `unless_uninstalling`), so a
hook run meanwhile cannot start the daemon again.

`CIPX_DISABLED` truthy (environment or config file) tears the install down instead.
A config file that does not load never breaks Claude Code: a healthy daemon keeps running on
its old settings, and otherwise our `ANTHROPIC_BASE_URL` is removed (see lifecycle.py).
"""

import argparse
import json
import os
import sqlite3
import sys

from opik_cipx.clock import SYSTEM
from opik_cipx.config import ConfigError, Settings, differing_settings, is_truthy
from opik_cipx.control import claude_settings, install, lifecycle
from opik_cipx.control.daemon_control import admin_port, is_healthy, paths_only_settings, read_state
from opik_cipx.home import read_json, write_json
from opik_cipx.ledger.schema import SchemaError
from opik_cipx.materialize.identity import claude_json_path
from opik_cipx.materialize.sessions import parse_hook_input, read_hook_stdin, record_session


def configure(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(on_config_error=on_config_error, on_home_error=on_config_error)


def run(args: argparse.Namespace, settings: Settings) -> int:
    return sync(settings, dict(os.environ), config_error=None)


def on_config_error(args: argparse.Namespace, exc: ConfigError | str) -> int:
    """A config file that does not load, or a `$CIPX_HOME` that cannot be used: keep a healthy daemon, else fail
    open."""
    env = dict(os.environ)
    return sync(paths_only_settings(env), env, config_error=str(exc))


TOLD_FILE = "budget-told.json"  # the spend cap warnings told, by cap, period and level
TOLD_KEEP_S = 35 * 86400  # a warning told longer ago is forgotten (its period is over)
NEXT_SESSION_HOOK = ("set up: Claude Code's calls go through opik-cipx from your next Claude Code session; this one "
                     "talks to Anthropic directly (it read its settings before opik-cipx was running). "
                     "`opik-cipx status` shows what opik-cipx sees.")
NEXT_SESSION = ("Claude Code sessions started from now on go through opik-cipx; a session that is already open "
                "talks to Anthropic directly until you start a new one.")
DOWN_THIS_SESSION = ("opik-cipx is down and could not be started again. This Claude Code session goes through it and "
                     "cannot reach Anthropic: start a new session (new ones talk to Anthropic directly). "
                     "`opik-cipx status` says why.")
OFF_THIS_SESSION = ("opik-cipx is off (CIPX_DISABLED). This Claude Code session was started going through it and "
                    "cannot reach Anthropic: start a new session (new ones talk to Anthropic directly).")


class _Report:
    def __init__(self, hook: dict | None, as_hook: bool):
        self.as_hook = as_hook
        self.event = (hook or {}).get("hook_event_name")
        self.failed = False
        self.for_user: list[str] = []

    def info(self, line: str) -> None:
        print(f"opik-cipx: {line}", file=sys.stderr if self.as_hook else sys.stdout)

    def problem(self, line: str) -> None:
        print(f"opik-cipx: {line}", file=sys.stderr)

    def tell(self, line: str) -> None:
        """Something the user must read: by hand on stdout, as a hook in the `systemMessage`."""
        if self.as_hook:
            self.for_user.append(line)
        else:
            self.info(line)

    def finish(self) -> None:
        if self.for_user:
            print(json.dumps({"systemMessage": "opik-cipx: " + "\n".join(self.for_user)}))


def sync(settings: Settings, env: dict[str, str], config_error: str | None) -> int:
    raw = read_hook_stdin()
    hook = parse_hook_input(raw) if raw is not None else None
    if raw is not None and _plugin_does_it(env, hook):
        return 0
    with lifecycle.unless_uninstalling(settings) as free:
        if not free:  # uninstall wins: nothing comes up, nothing is written, and a hook never fails
            if raw is None:
                print("opik-cipx: an uninstall is under way; nothing done")
            return 0
        return _sync(settings, env, config_error, raw, hook)


def _sync(settings: Settings, env: dict[str, str], config_error: str | None, raw: bytes | None,
          hook: dict | None) -> int:
    report = _Report(hook, as_hook=raw is not None)
    try:
        if is_truthy(env.get("CIPX_DISABLED")) or (config_error is None and settings.disabled):
            for line in lifecycle.tear_down(settings, env):
                report.info(line)
            report.info("disabled (CIPX_DISABLED): nothing is running and Claude Code talks to Anthropic directly")
            if report.as_hook and _goes_through_us(settings, env):
                report.tell(OFF_THIS_SESSION)
            return 0
        if config_error is None:
            _bring_up(settings, env, report)
        else:
            _keep_or_fail_open(settings, env, config_error, report)
        if not env.get("CLAUDE_PLUGIN_ROOT"):
            _refresh_hooks(settings, env, report)
        if raw is not None:
            _record(settings, env, hook, report)
            if config_error is None and settings.budget.enabled:
                _warn_budget(settings, hook, report)
    except Exception as exc:  # fail open: a hook must never crash or leave a dead proxy configured
        report.failed = True
        report.problem(f"sync failed unexpectedly: {type(exc).__name__}: {exc}")
        try:
            state = read_state(settings)
            if not is_healthy(admin_port(settings, state)):
                lifecycle.unpoint(settings, env, state)
        except Exception:  # noqa: BLE001 - best effort, already reporting a failure
            pass
    finally:
        report.finish()
    return 0 if report.as_hook or not report.failed else 1


def _bring_up(settings: Settings, env: dict[str, str], report: _Report) -> None:
    outcome, problems = lifecycle.up_and_point(settings, env)
    for note in outcome.notes:
        report.info(note)
    for line in problems:
        report.problem(line)
    if not outcome.ok:
        report.failed = True
        if report.as_hook and _goes_through_us(settings, env):
            report.tell(DOWN_THIS_SESSION)
        return
    if not report.as_hook:
        report.info(lifecycle.summary(settings, outcome))
    if outcome.change is not None and outcome.change.outcome == "set":
        report.tell(NEXT_SESSION_HOOK if report.as_hook else NEXT_SESSION)
    installed = install.installed_path(settings, env)
    if installed.is_file() and install.find_link(installed, env) is None:
        with lifecycle.serialised(settings):  # another sync may be making it: one does, and says so
            linked, link_note = install.ensure_link(installed, env, settings.home)
        if link_note and linked:
            report.tell(link_note)
        elif link_note:
            report.problem(link_note)
    drift = _settings_drift(settings, env, outcome.state or {})
    if drift and report.event in (None, "SessionStart"):
        report.tell(drift)
    elif drift:
        report.problem(drift)


def _plugin_does_it(env: dict[str, str], hook: dict | None) -> bool:
    """As a hook that is not the plugin's (Claude Code sets `CLAUDE_PLUGIN_ROOT` for those), while our
    plugin is enabled for the session: the plugin's own hook does the work, this one nothing."""
    if env.get("CLAUDE_PLUGIN_ROOT"):
        return False
    project = env.get("CLAUDE_PROJECT_DIR") or (hook or {}).get("cwd")
    return claude_settings.plugin_enabled(claude_settings.settings_files(env, project if isinstance(project, str)
                                                                        else None))


def _refresh_hooks(settings: Settings, env: dict[str, str], report: _Report) -> None:
    """Where our hooks are registered (install.sh did), keep the launcher copy and their commands current."""
    if not claude_settings.hooks_registered(claude_settings.settings_path(env)):
        return
    with lifecycle.serialised(settings):  # its settings write must not undo another sync's
        note, problem = install.ensure_hooks(settings, env, install.target(settings, env)[0])
    if note:
        report.info(note)
    if problem:
        report.problem(problem)


def _goes_through_us(settings: Settings, env: dict[str, str]) -> bool:
    """As a hook: whether the Claude Code session that runs it talks to our port (Claude Code gives
    its hooks the environment it runs with, `ANTHROPIC_BASE_URL` from its settings included)."""
    return env.get(claude_settings.KEY) == claude_settings.our_url(settings)


def _settings_drift(settings: Settings, env: dict[str, str], state: dict) -> str | None:
    """Which settings this environment asks for that the running daemon does not use, and the fix."""
    differing = differing_settings(settings, state)
    if not differing:
        return None
    names = ", ".join(f"{opt.key} ({opt.env})" if opt.env and opt.env in env else opt.key for opt in differing)
    return (f"the running daemon does not use these settings of this environment: {names}. To apply them, put them "
            f"in {settings.config_path} (a daemon run by systemd or launchd never sees your shell's environment), "
            "then run `opik-cipx restart`.")


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
    if report.as_hook and _goes_through_us(settings, env):
        report.tell(DOWN_THIS_SESSION)


def _warn_budget(settings: Settings, hook: dict | None, report: _Report) -> None:
    """Past `warn_at` of a spend cap of this session, or at it: tell the user, once per cap and
    period (`budget-told.json`: what was told, for 35 days)."""
    from opik_cipx.ledger.db import open_reader
    from opik_cipx.ledger.spent import standings

    hook, now = hook or {}, SYSTEM.time_ns()
    session, cwd = hook.get("session_id"), hook.get("cwd")
    try:
        conn = open_reader(settings.ledger_path)
        if conn is None:
            return
        try:
            rows = standings(conn, settings.budget, now, session_id=session if isinstance(session, str) else None,
                             directory=cwd if isinstance(cwd, str) else None)
        finally:
            conn.close()
        path = settings.home / TOLD_FILE
        told = found if isinstance(found := read_json(path), dict) else {}
        fresh = {f"{row.key(now)}:{row.level(settings.budget.warn_at)}": line for row in rows
                 if (line := row.warning(settings.budget.warn_at, now)) is not None}
        fresh = {key: line for key, line in fresh.items() if key not in told}
        if fresh:
            keep = now - TOLD_KEEP_S * 1_000_000_000
            write_json(path, {**{k: at for k, at in told.items() if isinstance(at, int) and at >= keep},
                              **dict.fromkeys(fresh, now)})
    except (sqlite3.Error, SchemaError, OSError) as exc:
        report.problem(f"cannot read the spend caps' totals: {exc}")
        return
    for line in fresh.values():
        report.tell(line)


def _record(settings: Settings, env: dict[str, str], hook: dict | None, report: _Report) -> None:
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
